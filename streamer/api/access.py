"""What the access check consults: the API keys and the sessions' view tokens, per app."""

from __future__ import annotations

from dataclasses import dataclass

from streamer.api.viewtokens import ViewTokens
from streamer.config import Settings
from streamer.keys import Keyring


@dataclass
class Access:
    keyring: Keyring
    views: ViewTokens

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        return cls(Keyring(settings.home, settings.api_key), ViewTokens(settings.view_token_ttl_s))
