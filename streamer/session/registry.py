"""The live sessions of one app, how they are made, and when they end: deleted, failed on
their own, idle for too long, or drained when the server stops."""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import Awaitable, Callable

from streamer.session.config import SessionOptions
from streamer.session.session import Session

log = logging.getLogger(__name__)

SessionFactory = Callable[
    [str, SessionOptions, Callable[[Session, BaseException], None]], Awaitable[Session]
]
ANONYMOUS = "anonymous"


class TooManySessions(RuntimeError):
    """A session refused for a limit: ``status`` 429 when the caller's key holds its share
    (its own doing), 503 when the server is full (anyone's: retry later)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class SessionRegistry:
    """The live sessions of one app. A session whose tasks fail is closed and removed alone."""

    def __init__(
        self,
        factory: SessionFactory,
        max_sessions: int = 16,
        on_closed: Callable[[Session], Awaitable[None]] | None = None,
        per_key: int | None = None,
    ) -> None:
        self._factory = factory
        self.max_sessions = max_sessions
        self.per_key = per_key or max_sessions
        self._on_closed = on_closed  # e.g. hang up the session's WebRTC peers
        self._sessions: dict[str, Session] = {}
        self._keys: dict[str, str] = {}  # session id -> the key that created it
        self._last_busy: dict[str, float] = {}  # session id -> when it last had work
        self._creating: dict[str, int] = {}  # key -> sessions being made (not yet counted)
        self._reapers: set[asyncio.Task[bool]] = set()
        self._closed = False

    def owned_by(self, key: str) -> int:
        return sum(1 for k in self._keys.values() if k == key) + self._creating.get(key, 0)

    def _admit(self, key: str) -> None:
        if self._closed:
            raise TooManySessions(503, "shutting_down", "the server is shutting down")
        if len(self._sessions) + sum(self._creating.values()) >= self.max_sessions:
            raise TooManySessions(
                503,
                "server_full",
                f"this server runs at most {self.max_sessions} sessions: retry later",
            )
        if self.owned_by(key) >= self.per_key:
            raise TooManySessions(
                429,
                "too_many_sessions",
                f"this key holds {self.per_key} sessions, its most: delete one first",
            )

    async def create(
        self, avatar: str, options: SessionOptions | None = None, key: str = ANONYMOUS
    ) -> Session:
        """A started session for ``key`` (a hash of the caller's credential), within the
        server's and the key's limits (:class:`TooManySessions`)."""
        self._admit(key)
        self._creating[key] = self._creating.get(key, 0) + 1
        try:  # the count holds the place while the avatar loads (1,000 requests at once)
            session = await self._factory(avatar, options or SessionOptions(), self._failed)
        finally:
            self._creating[key] -= 1
            if not self._creating[key]:
                del self._creating[key]
        self._sessions[session.id] = session
        self._keys[session.id] = key
        self._last_busy[session.id] = time.monotonic()
        try:
            await session.start()
        except BaseException:
            self._forget(session.id)
            await session.aclose("failed")
            raise
        return session

    def _failed(self, session: Session, exc: BaseException) -> None:
        task = asyncio.get_running_loop().create_task(self.delete(session.id, "failed"))
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def list(self) -> list[Session]:
        return list(self._sessions.values())

    def __len__(self) -> int:
        return len(self._sessions)

    def _forget(self, session_id: str) -> Session | None:
        self._keys.pop(session_id, None)
        self._last_busy.pop(session_id, None)
        return self._sessions.pop(session_id, None)

    async def delete(self, session_id: str, reason: str = "deleted") -> bool:
        session = self._forget(session_id)
        if session is None:
            return False
        await self._close(session, reason)
        return True

    async def _close(self, session: Session, reason: str) -> None:
        await session.aclose(reason)
        if self._on_closed is not None:
            try:
                await self._on_closed(session)
            except Exception:
                log.exception("session %s: closing its outputs failed", session.id)

    def idle(self, idle_s: float, now: float | None = None) -> builtins.list[str]:
        """The sessions not busy (:attr:`Session.busy`) for ``idle_s`` seconds or more."""
        now = time.monotonic() if now is None else now
        quiet = []
        for session_id, session in self._sessions.items():
            if session.busy:
                self._last_busy[session_id] = now
            elif now - self._last_busy.get(session_id, now) >= idle_s:
                quiet.append(session_id)
        return quiet

    async def reap_idle(self, idle_s: float) -> None:
        """Close, every so often, the sessions idle for ``idle_s``; runs until cancelled."""
        while True:
            await asyncio.sleep(min(5.0, idle_s / 4))
            for session_id in self.idle(idle_s):
                log.info("session %s: idle for %.0f s, closing it", session_id, idle_s)
                try:
                    await self.delete(session_id, "idle")
                except Exception:  # one that fails to close does not stop the reaping
                    log.exception("session %s: closing it failed", session_id)

    async def aclose(self, reason: str = "shutdown") -> None:
        """Close every session, telling each ``reason``. Idempotent."""
        self._closed = True
        # All at once: each waits for its recordings to be finalised, not for the others'.
        sessions = [s for s in map(self._forget, list(self._sessions)) if s is not None]
        results = await asyncio.gather(
            *(self._close(s, reason) for s in sessions), return_exceptions=True
        )
        for session, result in zip(sessions, results, strict=True):
            if isinstance(result, Exception):
                log.error("session %s failed to close", session.id, exc_info=result)
        if self._reapers:
            await asyncio.gather(*self._reapers, return_exceptions=True)
