"""The limits on what one client may take (``Settings.limits``, docs/limits.md) that are
checked at the API's edge: who is asking (for sessions per key), request bodies, the
WebSocket's message rate and the viewers of a session.

The others are checked where the thing is counted: sessions in the registry, utterances
queued and text length in the session, outputs in the output factory.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamer.api.errors import ApiError, error_response
from streamer.api.state import app_state
from streamer.config import Limits
from streamer.session import Session

RETRY_AFTER = {"Retry-After": "5"}


def _limits(scope: Scope) -> Limits | None:
    state = getattr(scope["app"].state, "avatarcast", None)
    return None if state is None else state.settings.limits


def body_limit(limits: Limits, path: str) -> int:
    """An audio file may be as large as an upload; any other body (JSON, SDP) is small."""
    return limits.max_upload_bytes if path.endswith("/speak") else limits.max_body_bytes


class BodyTooLarge(HTTPException):
    """Raised while a body is read (FastAPI passes HTTP exceptions through its body
    parsing, where it would turn any other into a 400); answered as 413 ``too_large``."""

    code = "too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large(limit))


def too_large(limit: int) -> str:
    size = f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit} bytes"
    return f"the request body is larger than {size}: send less"


class BodyLimit:
    """Refuses a request body over its limit with 413 before the route reads it: at once
    when ``Content-Length`` says so, else (a chunked body) as soon as the bytes read pass
    it, so a 2 GB upload is never held in memory."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = _limits(scope) if scope["type"] == "http" else None
        if limits is None:
            await self.app(scope, receive, send)
            return
        limit = body_limit(limits, scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            response = error_response(413, "too_large", too_large(limit), {"Connection": "close"})
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


class MessageRate:
    """A token bucket: ``rate`` messages a second on average, a second's worth at once."""

    def __init__(self, rate: float, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = rate
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


def check_viewers(conn: HTTPConnection, session: Session) -> None:
    """503 when the session has as many WHEP viewers as it may (connected or connecting:
    offers that never connect count too, until they time out)."""
    state = app_state(conn)
    most = state.settings.limits.max_viewers_per_session
    peers = [p for p in state.webrtc.of_session(session.id) if p.info.kind == "whep"]
    if len(peers) >= most:
        raise ApiError(
            503,
            "too_many_viewers",
            f"this session has {most} viewers, its most: retry later, or restream it "
            "(an RTMP or WHIP output) to reach more",
            RETRY_AFTER,
        )
