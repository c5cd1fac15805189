"""The WebSocket: PCM in (any rate 8-48 kHz, resampled to 16 kHz), commands, events out.

Binary messages are signed 16-bit little-endian mono PCM at ``?sample_rate=``; they form one
streamed utterance until ``{"type": "audio_end"}``. Text messages: ``speak``, ``audio_end``,
``interrupt``. The session's events are pushed as text. A client sending audio faster than
the session can buffer (more than its 60 s), a message over ``ws_max_message_bytes`` or
more messages than ``ws_max_messages_per_s`` gets an error event and is disconnected (1008
or 1009, with the reason); what it had sent before still plays, and the session, and every
other, keeps running. When the key it was opened with is revoked, it gets an ``error`` event
``key_revoked`` and close code 4401 (:mod:`streamer.api.revocation`); nothing it sends after
that is taken, and what it streamed and has not played yet is dropped (``playback_finished``
with ``interrupted``), while speech queued after it by others plays.

A browser's WebSocket cannot send an Authorization header: it offers the subprotocols
``avatarcast`` and ``avatarcast.bearer.<key>`` (``?token=<key>`` is still taken, for older
clients; see :mod:`streamer.api.auth`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from fractions import Fraction
from typing import Any

import av
import numpy as np
from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from starlette.requests import HTTPConnection

from models.audio import SAMPLE_RATE
from streamer.api.auth import WS_SUBPROTOCOL, acting_key_id, controlled_session, offered_protocols
from streamer.api.errors import ApiError
from streamer.api.limits import MessageRate
from streamer.api.state import app_state
from streamer.config import Limits
from streamer.session import LiveStream, Session, SessionClosed, SessionEvent, SpeechRejected

log = logging.getLogger(__name__)
router = APIRouter(tags=["websocket"])

MIN_RATE, MAX_RATE = 8_000, 48_000
CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_GOING_AWAY = 1008, 1009, 1001
CLOSE_KEY_REVOKED = 4401  # 4000 + the 401 a call with the revoked key gets


class PcmResampler:
    """s16le mono bytes at ``rate`` -> 16 kHz float32, stateful across messages (filter
    history and odd trailing bytes carry over, so chunking never clicks)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._carry = b""
        self._pts = 0
        self._resampler = (
            None
            if rate == SAMPLE_RATE
            else av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        )

    def feed(self, data: bytes) -> np.ndarray:
        data = self._carry + data
        whole = len(data) // 2 * 2
        self._carry = data[whole:]
        pcm = np.frombuffer(data[:whole], "<i2")
        if not len(pcm):
            return np.zeros(0, np.float32)
        if self._resampler is None:
            return pcm.astype(np.float32) / 32768.0
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._pts
        frame.time_base = Fraction(1, self.rate)
        self._pts += len(pcm)
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        if self._resampler is None:
            return np.zeros(0, np.float32)
        out = self._collect(self._resampler.resample(None))
        self.__init__(self.rate)  # type: ignore[misc]
        return out

    @staticmethod
    def _collect(frames: list[av.AudioFrame]) -> np.ndarray:
        parts = [f.to_ndarray().reshape(-1).astype(np.float32) for f in frames]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _sample_rate(conn: HTTPConnection) -> int:
    raw = conn.query_params.get("sample_rate", str(SAMPLE_RATE))
    rate = int(raw) if raw.isdigit() else 0
    if not MIN_RATE <= rate <= MAX_RATE:
        message = f"sample_rate must be an integer from {MIN_RATE} to {MAX_RATE} Hz, not {raw!r}"
        raise ApiError(400, "bad_sample_rate", message)
    return rate


async def _deny(websocket: WebSocket, error: ApiError) -> None:
    """Refuse the handshake with the error's HTTP status where the server supports it, else
    with an error event and close code ``4000 + status``."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error.response())
        return
    await websocket.accept()
    await websocket.send_text(
        json.dumps({"type": "error", "code": error.code, "message": error.message})
    )
    await websocket.close(4000 + error.status)


class _Connection:
    """One client: its outgoing messages go through one lock so events and replies never
    interleave mid-frame."""

    def __init__(
        self, websocket: WebSocket, session: Session, rate: int, limits: Limits, key_id: str
    ) -> None:
        self.key_id = key_id  # what it asks for is this key's (revocation drops it)
        self.ws = websocket
        self.session = session
        self.limits = limits
        self.messages = MessageRate(limits.ws_max_messages_per_s)
        self.resampler = PcmResampler(rate)
        self.stream: LiveStream | None = None
        self.revoked = False
        self._send_lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.ws.send_text(json.dumps(message))

    async def error(self, code: str, message: str) -> None:
        await self.send({"type": "error", "code": code, "message": message})

    async def forward_events(self, events: asyncio.Queue[SessionEvent]) -> None:
        while True:
            event = await events.get()
            await self.send(event.to_json())
            if isinstance(event, SessionClosed):
                await self.ws.close(CLOSE_GOING_AWAY)
                return

    def end_stream(self) -> None:
        if self.stream is not None:
            tail = self.resampler.flush()
            if len(tail) and not self.stream.dropped:
                with contextlib.suppress(SpeechRejected):
                    self.stream.push(tail)
            self.stream.end()
            self.stream = None

    async def refuse(self, code: str, message: str, close_code: int) -> bool:
        """Tell the client why, then close; what it sent before is kept (the stream ends
        normally when the socket goes). Returns False: the connection must close."""
        log.warning("session %s: websocket closed: %s", self.session.id, message)
        await self.error(code, message)
        await self.ws.close(close_code, reason=message[:120])
        return False

    async def revoke(self) -> None:
        """The key this socket was opened with was revoked: take nothing more, say why, close."""
        self.revoked = True
        if self.stream is not None:  # what it streamed and has not played goes with the key
            self.session.interrupt({self.key_id})
            self.stream = None
        message = "the API key this WebSocket was opened with was revoked"
        with contextlib.suppress(Exception):  # the client may be gone already
            await self.refuse("key_revoked", message, CLOSE_KEY_REVOKED)

    async def admit(self, size: int) -> bool:
        """The message limits: its size, and the rate of messages."""
        most = self.limits.ws_max_message_bytes
        if size > most:
            return await self.refuse(
                "message_too_large", f"messages are at most {most} bytes", CLOSE_TOO_BIG
            )
        if not self.messages.take():
            rate = self.limits.ws_max_messages_per_s
            return await self.refuse(
                "rate_limited",
                f"more than {rate:g} messages a second: send larger chunks (20-100 ms of audio)",
                CLOSE_POLICY,
            )
        return True

    async def on_audio(self, data: bytes) -> bool:
        """Returns False when the connection must close."""
        samples = self.resampler.feed(data)
        try:
            if self.stream is None or self.stream.dropped:
                self.stream = self.session.open_stream(self.key_id)
            self.stream.push(samples)
        except SpeechRejected as exc:
            return await self.refuse(exc.code, str(exc), CLOSE_POLICY)
        return True

    async def on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):  # also numbers over 4300 digits, deep nesting
            await self.error("invalid_json", "text messages must be JSON objects")
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "speak":
            try:
                uid = self.session.speak_text(message.get("text", ""), self.key_id)
            except SpeechRejected as exc:
                await self.error(exc.code, str(exc))
                return
            await self.send({"type": "queued", "utterance_id": uid})
        elif kind == "audio_end":
            self.end_stream()
        elif kind == "interrupt":
            self.resampler.flush()
            ids = self.session.interrupt()
            self.stream = None
            await self.send({"type": "interrupted", "utterance_ids": ids})
        else:
            await self.error("unknown_message", "type must be one of speak, audio_end, interrupt")


@router.websocket("/v1/sessions/{session_id}/ws")
async def session_ws(websocket: WebSocket, session_id: str) -> None:
    try:
        # A key that controls the session (never a view token): the socket makes it speak.
        session = controlled_session(websocket, session_id)
        key_id = acting_key_id(websocket)
        rate = _sample_rate(websocket)
    except ApiError as exc:
        await _deny(websocket, exc)
        return
    # A client that offered a subprotocol must be answered with one it offered: never the key.
    chosen = WS_SUBPROTOCOL if WS_SUBPROTOCOL in offered_protocols(websocket) else None
    await websocket.accept(subprotocol=chosen)
    state = app_state(websocket)
    conn = _Connection(websocket, session, rate, state.settings.limits, key_id)
    held = state.access.holds.hold(key_id, conn.revoke)
    events = session.subscribe_events()
    forwarder = asyncio.create_task(conn.forward_events(events))
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect" or conn.revoked:
                break
            data, text = message.get("bytes"), message.get("text")
            if not await conn.admit(len(data if data is not None else (text or "").encode())):
                break
            if data is not None:
                if not await conn.on_audio(data):
                    break
            elif text is not None:
                await conn.on_text(text)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away, or the session closed the socket
    finally:
        state.access.holds.release(held)
        conn.end_stream()
        session.unsubscribe_events(events)
        forwarder.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await forwarder


# OpenAPI has no words for a WebSocket: the protocol is described on a GET of the same path,
# which is what a plain HTTP client (or schemathesis) reaches. It checks what the handshake
# checks, then answers 426: the route is only a WebSocket.
WS_PARAMETERS = {
    "parameters": [
        {
            "name": "sample_rate",
            "in": "query",
            "required": False,
            "description": f"the PCM's rate in Hz, {MIN_RATE} to {MAX_RATE} "
            f"(default {SAMPLE_RATE})",
            "schema": {"type": "integer", "minimum": MIN_RATE, "maximum": MAX_RATE},
        },
        {
            "name": "token",
            "in": "query",
            "required": False,
            "description": "an API key, for clients that can send neither Authorization nor "
            "the subprotocol avatarcast.bearer.<key> (this route only: elsewhere a key in the "
            "URL is refused)",
            "schema": {"type": "string"},
        },
    ]
}
WS_PROTOCOL = (
    "Connect with `Upgrade: websocket`. Binary messages: signed 16-bit little-endian mono PCM "
    "at `sample_rate`, one streamed utterance until `audio_end`. Text messages (JSON): "
    '`{"type": "speak", "text": ...}`, `{"type": "audio_end"}`, `{"type": "interrupt"}`. '
    "Text events out: `queued`, `interrupted`, `speaking_started`, `playback_finished` "
    "(`position_s`, `interrupted`), `session_closed`, `error` (`code`, `message`). A message "
    "over the size limit closes with 1009, too many a second or a full buffer with 1008, "
    "each after an `error` event. A plain HTTP GET (no upgrade) is answered 426."
)


@router.get(
    "/v1/sessions/{session_id}/ws",
    summary="WebSocket: PCM and commands in, session events out",
    description=WS_PROTOCOL,
    status_code=101,
    response_description="Switching Protocols: the WebSocket is open",
    responses={426: {"description": "a plain HTTP request: connect as a WebSocket"}},
    openapi_extra=WS_PARAMETERS,
)
async def session_ws_described(request: Request, session_id: str) -> None:
    controlled_session(request, session_id)
    _sample_rate(request)
    raise ApiError(
        426,
        "upgrade_required",
        "this is a WebSocket: connect with ws:// (or wss://) and Upgrade: websocket",
        {"Upgrade": "websocket"},
    )
