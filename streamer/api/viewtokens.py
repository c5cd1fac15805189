"""Per-session view tokens: they let their holder watch (WHEP, the pages), nothing else.

Each session starts with one token, ``t0``: the ``view_token`` of its ``POST /v1/sessions``
answer, valid for ``Settings.view_token_ttl_s`` from the session's creation. Its controller
may mint more (each with its own lifetime) and revoke any; revoking one also hangs up the
viewers that joined with it. Expiry is checked when a viewer connects: a viewer already
watching keeps its stream until it leaves or its token is revoked.

Tokens are kept as SHA-256 digests and compared with :func:`hmac.compare_digest`, one by one.
They live as long as their session, in memory: a restart ends every session anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

MAX_TOKENS = 32  # per session, revoked and expired ones included until pruned
MAX_TTL_S = 30 * 86400


class Viewed(Protocol):
    """What a view token needs of a session."""

    id: str
    view_token: str
    created: float


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class ViewToken:
    id: str
    session_id: str
    digest: str = field(repr=False)
    created: float
    expires: float
    revoked: bool = False
    peers: set[str] = field(default_factory=set)  # WHEP resources that joined with it

    def state(self, now: float) -> str:
        return "revoked" if self.revoked else "expired" if now >= self.expires else "valid"

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": self.created,
            "expires": self.expires,
            "state": self.state(now),
            "viewers": len(self.peers),
        }


class TooManyTokens(RuntimeError):
    pass


class ViewTokens:
    """Every live session's view tokens."""

    def __init__(self, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._by_session: dict[str, dict[str, ViewToken]] = {}

    def of(self, session: Viewed) -> dict[str, ViewToken]:
        """The session's tokens, ``t0`` (its own ``view_token``) registered on first sight."""
        tokens = self._by_session.get(session.id)
        if tokens is None:
            first = ViewToken(
                "t0",
                session.id,
                _digest(session.view_token),
                session.created,
                session.created + self.ttl_s,
            )
            tokens = self._by_session[session.id] = {first.id: first}
        return tokens

    def mint(self, session: Viewed, ttl_s: int | None = None) -> tuple[ViewToken, str]:
        """A new token for ``session``: its record and the token itself (returned once)."""
        tokens = self.of(session)
        now = self.clock()
        if len(tokens) >= MAX_TOKENS:
            for stale in [t.id for t in tokens.values() if t.state(now) != "valid"]:
                del tokens[stale]
        if len(tokens) >= MAX_TOKENS:
            raise TooManyTokens(
                f"a session holds at most {MAX_TOKENS} view tokens: revoke one first"
            )
        token = secrets.token_urlsafe(24)
        token_id = f"t{secrets.token_hex(4)}"
        ttl = self.ttl_s if ttl_s is None else ttl_s
        made = ViewToken(token_id, session.id, _digest(token), now, now + ttl)
        tokens[token_id] = made
        return made, token

    def revoke(self, session: Viewed, token_id: str) -> ViewToken | None:
        made = self.of(session).get(token_id)
        if made is not None:
            made.revoked = True
        return made

    def match(self, session: Viewed, token: str) -> ViewToken | None:
        """The session's token that ``token`` is (whatever its state), or None."""
        presented = _digest(token)
        found = None
        for made in self.of(session).values():  # no early exit: every entry costs the same
            if hmac.compare_digest(presented, made.digest):
                found = made
        return found

    def is_view_token(self, token: str, sessions: Iterable[Viewed]) -> bool:
        """Whether ``token`` is (or was) a view token of any live session, so that a control
        route can say 403 "a view token only watches" rather than 401."""
        live = list(sessions)
        self.forget_except({s.id for s in live})
        return any(self.match(session, token) is not None for session in live)

    def __contains__(self, session_id: object) -> bool:
        """Whether any token of the session is held."""
        return session_id in self._by_session

    def forget(self, session_id: str) -> None:
        """Drop a closed session's tokens: a server that makes and closes sessions for days
        would otherwise keep every one it ever made."""
        self._by_session.pop(session_id, None)

    def forget_except(self, live_ids: set[str]) -> None:
        """Drop the tokens of sessions that are gone."""
        for gone in [sid for sid in self._by_session if sid not in live_ids]:
            del self._by_session[gone]
