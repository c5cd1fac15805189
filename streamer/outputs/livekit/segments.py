"""Agent audio in: LiveKit ``lk.audio_stream`` byte streams, one session stream each.

LiveKit Agents' ``DataStreamAudioOutput`` sends each segment of the agent's speech as one
byte stream of signed 16-bit PCM, with ``sample_rate`` and ``num_channels`` attributes. The
segments are played in order. One ends when its stream ends; also when a newer stream opens
(the old stream's trailer was lost), on ``lk.clear_buffer``, or after 10 s without a chunk
(the last trailer was lost): the same rules as the SDK's own ``DataStreamAudioReceiver``.

A stream that cannot be played (attributes missing or out of range, more audio than the
session may buffer) is logged and its bytes are read and thrown away, so the SDK never holds
them; the session and the worker go on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping

import numpy as np
from livekit import rtc

from models.audio import SAMPLE_RATE
from streamer.session import Session, SpeechRejected

log = logging.getLogger(__name__)

AUDIO_STREAM_TOPIC = "lk.audio_stream"
IDLE_TIMEOUT_S = 10.0  # the SDK's STREAM_IDLE_TIMEOUT
MIN_RATE, MAX_RATE = 8_000, 48_000
MAX_CHANNELS = 2


class StreamRejected(ValueError):
    """A byte stream whose attributes do not describe PCM this worker can play."""


def stream_format(attributes: Mapping[str, str] | None) -> tuple[int, int]:
    """``(sample_rate, num_channels)`` from a stream's attributes, or :class:`StreamRejected`
    saying what is wrong."""
    attrs = attributes or {}
    missing = [k for k in ("sample_rate", "num_channels") if k not in attrs]
    if missing:
        raise StreamRejected(f"the audio stream has no {' or '.join(missing)} attribute")
    rate_s, channels_s = attrs["sample_rate"], attrs["num_channels"]
    rate = int(rate_s) if rate_s.isdigit() else 0
    channels = int(channels_s) if channels_s.isdigit() else 0
    if not MIN_RATE <= rate <= MAX_RATE:
        raise StreamRejected(f"sample_rate must be {MIN_RATE} to {MAX_RATE} Hz, not {rate_s!r}")
    if not 1 <= channels <= MAX_CHANNELS:
        raise StreamRejected(f"num_channels must be 1 or {MAX_CHANNELS}, not {channels_s!r}")
    return rate, channels


class PcmDecoder:
    """Interleaved s16 PCM bytes at any rate and 1-2 channels → 16 kHz mono float32.

    Chunks may split a sample anywhere: the odd bytes wait for the next chunk. The
    resampler is the SDK's own (its filter state carries across chunks, so nothing clicks).
    """

    def __init__(self, rate: int, channels: int) -> None:
        self.rate = rate
        self.channels = channels
        self._carry = b""
        self._resampler = (
            None if rate == SAMPLE_RATE else rtc.AudioResampler(rate, SAMPLE_RATE, num_channels=1)
        )

    def feed(self, data: bytes) -> np.ndarray:
        data = self._carry + data
        whole = len(data) // (2 * self.channels) * (2 * self.channels)
        self._carry = data[whole:]
        pcm = np.frombuffer(data[:whole], "<i2").reshape(-1, self.channels)
        if not len(pcm):
            return np.zeros(0, np.float32)
        mono = pcm.mean(axis=1).astype(np.int16) if self.channels > 1 else pcm[:, 0]
        if self._resampler is None:
            return mono.astype(np.float32) / 32768.0
        frame = rtc.AudioFrame(mono.tobytes(), self.rate, 1, len(mono))
        return self._collect(self._resampler.push(frame))

    def flush(self) -> np.ndarray:
        if self._resampler is None:
            return np.zeros(0, np.float32)
        return self._collect(self._resampler.flush())

    @staticmethod
    def _collect(frames: list[rtc.AudioFrame]) -> np.ndarray:
        parts = [np.frombuffer(f.data, np.int16).astype(np.float32) / 32768.0 for f in frames]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class Segments:
    """Plays the agent's byte streams through ``session`` one after another.

    ``opened(utterance_id)`` is told of each segment's utterance as it opens, so the worker
    can tell the agent when that utterance starts and finishes playing.
    """

    def __init__(
        self,
        session: Session,
        opened: Callable[[str], None],
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self._session = session
        self._opened = opened
        self._idle_timeout_s = idle_timeout_s
        self._readers: collections.deque[rtc.ByteStreamReader] = collections.deque()
        self._arrived = asyncio.Event()
        self._superseded = asyncio.Event()
        self._reading = False
        self._cleared = False
        self.played = 0
        self.rejected = 0
        self.last_error: str | None = None

    def offer(self, reader: rtc.ByteStreamReader) -> None:
        """A new stream from the agent: it ends the one being read, if any."""
        self._readers.append(reader)
        if self._reading:
            self._superseded.set()
        self._arrived.set()

    def clear(self) -> None:
        """``lk.clear_buffer``: stop reading the current stream (its rest is discarded)."""
        if self._reading:
            self._cleared = True
            self._superseded.set()

    async def run(self) -> None:
        while True:
            while not self._readers:
                self._arrived.clear()
                await self._arrived.wait()
            reader = self._readers.popleft()
            self._reading, self._cleared = True, False
            self._superseded.clear()
            if self._readers:  # a newer stream is already waiting: read what this one has
                self._superseded.set()
            try:
                await self._play(reader)
            except (
                Exception
            ) as exc:  # a broken stream (the SDK's reader failed): the next one plays
                self._reject(reader, f"reading it failed: {exc}")
            finally:
                self._reading = False

    def _reject(self, reader: rtc.ByteStreamReader, why: str) -> None:
        self.rejected += 1
        self.last_error = why
        log.warning(
            "session %s: audio stream %s ignored: %s",
            self._session.id,
            reader.info.stream_id,
            why,
        )

    async def _play(self, reader: rtc.ByteStreamReader) -> None:
        try:
            rate, channels = stream_format(reader.info.attributes)
        except StreamRejected as exc:
            self._reject(reader, str(exc))
            await self._discard(reader)
            return
        try:
            stream = self._session.open_stream()
        except SpeechRejected as exc:
            self._reject(reader, str(exc))
            return
        self.played += 1
        self._opened(stream.utterance_id)
        decoder = PcmDecoder(rate, channels)
        try:
            async for chunk in self._chunks(reader):
                if self._cleared or stream.dropped:
                    break
                stream.push(decoder.feed(chunk))
            if not (self._cleared or stream.dropped):
                stream.push(decoder.flush())
        except SpeechRejected as exc:  # faster than real time, past the session's buffer
            self._reject(reader, str(exc))
            await self._discard(reader)
        finally:
            stream.end()

    async def _discard(self, reader: rtc.ByteStreamReader) -> None:
        async for _ in self._chunks(reader):
            pass

    async def _chunks(self, reader: rtc.ByteStreamReader) -> AsyncIterator[bytes]:
        """The reader's chunks until it ends, is superseded or cleared, or goes idle."""
        superseded = asyncio.ensure_future(self._superseded.wait())
        try:
            while True:
                chunk = asyncio.ensure_future(reader.__anext__())
                done, _ = await asyncio.wait(
                    {chunk, superseded},
                    timeout=self._idle_timeout_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if chunk not in done:
                    chunk.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await chunk
                    if not self._cleared:
                        why = "a newer stream began" if superseded in done else "it went idle"
                        log.info(
                            "session %s: audio stream %s ended early: %s",
                            self._session.id,
                            reader.info.stream_id,
                            why,
                        )
                    return
                try:
                    yield chunk.result()
                except StopAsyncIteration:
                    return
        finally:
            superseded.cancel()


__all__ = ["AUDIO_STREAM_TOPIC", "PcmDecoder", "Segments", "StreamRejected", "stream_format"]
