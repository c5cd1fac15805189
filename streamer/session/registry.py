"""The live sessions of one app, and how they are made."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from streamer.session.config import SessionOptions
from streamer.session.session import Session

log = logging.getLogger(__name__)

SessionFactory = Callable[
    [str, SessionOptions, Callable[[Session, BaseException], None]], Awaitable[Session]
]


class TooManySessions(RuntimeError):
    pass


class SessionRegistry:
    """The live sessions of one app. A session whose tasks fail is closed and removed alone."""

    def __init__(
        self,
        factory: SessionFactory,
        max_sessions: int = 16,
        on_closed: Callable[[Session], Awaitable[None]] | None = None,
    ) -> None:
        self._factory = factory
        self.max_sessions = max_sessions
        self._on_closed = on_closed  # e.g. hang up the session's WebRTC peers
        self._sessions: dict[str, Session] = {}
        self._reapers: set[asyncio.Task[bool]] = set()
        self._closed = False

    async def create(self, avatar: str, options: SessionOptions | None = None) -> Session:
        if self._closed:
            raise RuntimeError("the server is shutting down")
        if len(self._sessions) >= self.max_sessions:
            raise TooManySessions(
                f"this server runs at most {self.max_sessions} sessions: delete one first"
            )
        session = await self._factory(avatar, options or SessionOptions(), self._failed)
        self._sessions[session.id] = session
        try:
            await session.start()
        except BaseException:
            self._sessions.pop(session.id, None)
            await session.aclose()
            raise
        return session

    def _failed(self, session: Session, exc: BaseException) -> None:
        task = asyncio.get_running_loop().create_task(self.delete(session.id))
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def list(self) -> list[Session]:
        return list(self._sessions.values())

    def __len__(self) -> int:
        return len(self._sessions)

    async def delete(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        await self._close(session)
        return True

    async def _close(self, session: Session) -> None:
        await session.aclose()
        if self._on_closed is not None:
            try:
                await self._on_closed(session)
            except Exception:
                log.exception("session %s: closing its outputs failed", session.id)

    async def aclose(self) -> None:
        """Close every session. Idempotent."""
        self._closed = True
        while self._sessions:
            _, session = self._sessions.popitem()
            await self._close(session)
        if self._reapers:
            await asyncio.gather(*self._reapers, return_exceptions=True)
