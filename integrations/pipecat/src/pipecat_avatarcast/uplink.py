"""The speech uplink: the TTS's PCM to the session's WebSocket, its playback events back.

Audio waits in an outbox until the service opens the gate (its viewer sees the avatar and the
output transport is ready), so the avatar never speaks a word nobody can see. An interrupt
jumps the outbox: it drops what is queued and goes out at once, and an epoch keeps an item the
sender had already taken from following it onto the socket (it would open a new utterance
and make the avatar speak on after the interrupt).

The server plays each streamed utterance (binary messages up to ``audio_end``) once and then
sends one ``playback_finished``, interrupted or not; counting both sides tells when all the
speech sent has been played, which is what a graceful ``EndFrame`` waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from fractions import Fraction
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import av
import numpy as np
from loguru import logger
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from pipecat_avatarcast.api import AvatarcastError

MIN_RATE, MAX_RATE = 8_000, 48_000  # what the server's WebSocket accepts
CHUNK_BYTES = 64 * 1024  # well under the server's 1 MiB per message

ErrorSink = Callable[[str], Awaitable[None]]


def with_sample_rate(ws_url: str, rate: int) -> str:
    """``ws_url`` with its ``sample_rate`` query parameter set to ``rate``."""
    parts = urlsplit(ws_url)
    query = dict(parse_qsl(parts.query))
    query["sample_rate"] = str(rate)
    return urlunsplit(parts._replace(query=urlencode(query)))


class PcmConverter:
    """s16 PCM of any rate and channel count to s16 mono at one rate, stateful across chunks
    so the resampler's filter history carries over and chunking never clicks."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._resampler: av.AudioResampler | None = None
        self._in_rate = 0
        self._pts = 0

    def convert(self, audio: bytes, sample_rate: int, channels: int) -> bytes:
        channels = max(1, channels)
        whole = len(audio) // (2 * channels) * 2 * channels
        pcm = np.frombuffer(audio[:whole], "<i2")
        if channels > 1:
            mixed = pcm.reshape(-1, channels).astype(np.int32).mean(axis=1)
            pcm = np.round(mixed).astype("<i2")
        if sample_rate == self.rate:
            return self.flush() + pcm.tobytes()
        head = b""
        if self._resampler is None or sample_rate != self._in_rate:
            head = self.flush()
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.rate)
            self._in_rate = sample_rate
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = self._pts
        frame.time_base = Fraction(1, sample_rate)
        self._pts += len(pcm)
        return head + self._collect(self._resampler.resample(frame))

    def flush(self) -> bytes:
        """The resampler's tail, at the end of an utterance."""
        if self._resampler is None:
            return b""
        tail = self._collect(self._resampler.resample(None))
        self.reset()
        return tail

    def reset(self) -> None:
        """Forget the filter history (an interrupt: the tail is not wanted)."""
        self._resampler = None
        self._in_rate = 0
        self._pts = 0

    @staticmethod
    def _collect(frames: list[av.AudioFrame]) -> bytes:
        return b"".join(f.to_ndarray().astype("<i2").tobytes() for f in frames)


class SpeechUplink:
    """One WebSocket to one session: audio and ``audio_end`` out in order, interrupts at
    once, events in. It takes audio from its creation, before the session exists."""

    def __init__(self, rate: int, api_key: str | None, on_error: ErrorSink):
        if not MIN_RATE <= rate <= MAX_RATE:
            raise ValueError(f"the WebSocket sample rate must be {MIN_RATE}-{MAX_RATE} Hz")
        self.rate = rate
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._on_error = on_error
        self._converter = PcmConverter(rate)
        self._outbox: asyncio.Queue[tuple[int, bytes | str]] = asyncio.Queue()
        self._epoch = 0
        self._send_lock = asyncio.Lock()
        self._gate = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._sender: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._queued_open = False  # audio queued since the last audio_end or interrupt
        self._sent_open = False  # the same, for what actually went out
        self._closing = False
        self.streams = 0  # utterances this uplink started on the server
        self.finished = 0  # playback_finished events received
        self._progress = asyncio.Event()
        self._play_until = 0.0  # monotonic time by which the audio sent will have played

    async def connect(self, ws_url: str) -> None:
        """Open the session's socket (the gate stays shut: audio waits in the outbox)."""
        url = with_sample_rate(ws_url, self.rate)
        try:
            self._ws = await connect(url, additional_headers=self._headers, open_timeout=10)
        except InvalidStatus as exc:
            body = exc.response.body.decode("utf-8", "replace")[:300] if exc.response.body else ""
            raise AvatarcastError(
                f"the avatarcast WebSocket refused the connection with HTTP "
                f"{exc.response.status_code} {body}"
            ) from exc
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise AvatarcastError(f"cannot open the avatarcast WebSocket: {exc!r}") from exc
        self._reader = asyncio.create_task(self._read(self._ws), name="avatarcast-ws-events")
        self._sender = asyncio.create_task(self._send_outbox(), name="avatarcast-ws-audio")

    def open_gate(self) -> None:
        """Let queued and future audio go out."""
        self._gate.set()

    def push_audio(self, audio: bytes, sample_rate: int, channels: int) -> None:
        data = self._converter.convert(audio, sample_rate, channels)
        for i in range(0, len(data), CHUNK_BYTES):
            self._outbox.put_nowait((self._epoch, data[i : i + CHUNK_BYTES]))
            self._queued_open = True

    def end_utterance(self) -> None:
        """The TTS finished this utterance: its resampler tail, then ``audio_end``."""
        tail = self._converter.flush()
        if tail and self._queued_open:
            self._outbox.put_nowait((self._epoch, tail))
        if self._queued_open:
            self._outbox.put_nowait((self._epoch, json.dumps({"type": "audio_end"})))
        self._queued_open = False

    async def interrupt(self) -> None:
        """Drop the queued audio and tell the session to stop speaking, now."""
        self._epoch += 1
        while not self._outbox.empty():
            self._outbox.get_nowait()
            self._outbox.task_done()
        self._converter.reset()
        self._queued_open = False
        if self._ws is None:
            return
        async with self._send_lock:
            self._sent_open = False
            self._play_until = time.monotonic()
            await self._send(json.dumps({"type": "interrupt"}))

    async def drained(self, margin_s: float) -> bool:
        """Wait until every utterance sent has been played (``playback_finished`` for each),
        or until the audio sent would have played plus ``margin_s``. True if played."""
        self.end_utterance()
        if self._gate.is_set() and self._ws is not None:  # the sender writes the tail
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), margin_s)
        deadline = max(self._play_until, time.monotonic()) + margin_s
        while self.finished < self.streams:
            self._progress.clear()
            left = deadline - time.monotonic()
            if left <= 0 or self._ws is None:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), left)
        return True

    async def aclose(self) -> None:
        """Close the socket and stop both tasks. Idempotent."""
        self._closing = True
        for task in (self._sender, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._sender = self._reader = None
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    async def _send(self, message: bytes | str) -> None:
        if self._ws is None:
            return
        with contextlib.suppress(ConnectionClosed):  # the reader reports why it closed
            await self._ws.send(message)

    async def _send_outbox(self) -> None:
        await self._gate.wait()
        while True:
            epoch, item = await self._outbox.get()
            try:
                async with self._send_lock:
                    if epoch != self._epoch:
                        continue  # queued before an interrupt that has already gone out
                    if isinstance(item, bytes):
                        self._count_audio(len(item))
                    else:
                        self._sent_open = False
                    await self._send(item)
            finally:
                self._outbox.task_done()

    def _count_audio(self, nbytes: int) -> None:
        if not self._sent_open:
            self._sent_open = True
            self.streams += 1
        now = time.monotonic()
        self._play_until = max(self._play_until, now) + nbytes / 2 / self.rate

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                if isinstance(message, str):
                    await self._on_event(message)
        except ConnectionClosed:
            pass
        if not self._closing:
            self._ws = None
            self._progress.set()
            code = ws.close_code
            reason = ws.close_reason or "no reason given"
            await self._on_error(
                f"the avatarcast session's WebSocket closed (code {code}: {reason}); "
                "the session was deleted or the server stopped"
            )

    async def _on_event(self, message: str) -> None:
        try:
            event = json.loads(message)
        except json.JSONDecodeError:
            logger.warning(f"avatarcast: a WebSocket message that is not JSON: {message[:100]!r}")
            return
        kind = event.get("type")
        if kind == "playback_finished":
            self.finished += 1
            self._progress.set()
        elif kind == "error":
            code, text = event.get("code", "error"), event.get("message", "")
            await self._on_error(f"the avatarcast session reported {code}: {text}")
