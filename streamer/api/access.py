"""What the access check consults: the API keys and the sessions' view tokens, per app; and
what each key holds open, so that revoking it ends that too (:mod:`.revocation`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from streamer.api.revocation import KeyHolds, watch
from streamer.api.viewtokens import ViewTokens
from streamer.config import Settings
from streamer.keys import Keyring
from streamer.session import SessionRegistry


@dataclass
class Access:
    keyring: Keyring
    views: ViewTokens
    holds: KeyHolds = field(default_factory=KeyHolds)

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        return cls(Keyring(settings.home, settings.api_key), ViewTokens(settings.view_token_ttl_s))

    async def watch_revocations(self, registry: SessionRegistry) -> None:
        """End what revoked keys opened, until cancelled (the app's lifespan owns it)."""

        def forget_closed() -> None:  # a closed session's view tokens go with it
            self.views.forget_except({s.id for s in registry.list()})

        await watch(self.keyring, self.holds, registry, forget_closed)
