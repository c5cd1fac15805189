"""The aiortc tracks of one viewer: they forward a session's frames and never clock anything.

The session publishes frame ``k`` at its due time; the video track hands aiortc the newest
unread frame, the audio track every frame's 40 ms in order, both stamped from the frame index
(video ``pts = n * 3600`` at 1/90000, audio ``pts = n * 640`` at 1/16000) counted from one
:class:`SharedStart`, so both RTP streams start on the same frame and the receiver's
RTCP-based lip sync lines them up. Because frames are sent when they are published, each RTCP
sender report maps both streams to the same wall clock. A slow viewer loses video frames (the
subscription's short video queue), never audio.

A viewer starts at the live edge. Its tracks subscribe when its offer is answered, but aiortc
reads them only once ICE and DTLS are up, half a second or more later. The audio queued
meanwhile is skipped (:meth:`SharedStart.skip_to_live`) rather than sent in one burst, which
the receiver would hold in its jitter buffer and play that late for seconds. The audio starts
on the video's first frame, a key frame made when sending starts (:class:`SharedStart`). Video
needs no such step: its queue holds a few pictures at most.

Two kinds of tracks: ``Encoded*`` forward the packets of the session's shared encoder (aiortc
only packetises them); ``AV*`` forward raw frames for aiortc to encode for one viewer alone (a
client whose offer lacks the session's codec).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from models.audio import SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from streamer.pipeline.codecs import EncodedFrame
from streamer.pipeline.frames import AVFrame, Subscription

VIDEO_CLOCK = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
VIDEO_TICKS_PER_FRAME = VIDEO_CLOCK // 25  # 3600
AUDIO_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
# Opus's RTP clock. Shared packets are stamped on it: stamped at 1/16000, aiortc converted
# every packet's timestamp through Fraction arithmetic, for every viewer: a fifth of the event
# loop's work per viewer (profiled with 10 viewers, docs/benchmarks.md).
OPUS_CLOCK = 48_000
OPUS_TIME_BASE = fractions.Fraction(1, OPUS_CLOCK)
OPUS_TICKS_PER_SAMPLE = OPUS_CLOCK // SAMPLE_RATE  # 3
HALF = SAMPLES_PER_VIDEO_FRAME // 2  # 20 ms
# How long a viewer's audio waits for its video's first key frame (normally a frame or two,
# at most the encoder's minimum key frame gap) before it starts alone.
VIDEO_START_WAIT_S = 1.0
# How often a viewer still waiting for its first key frame asks the encoder again.
KEYFRAME_RETRY_S = 0.5

log = logging.getLogger(__name__)

Item = TypeVar("Item", AVFrame, EncodedFrame)


class EncodedStream(Protocol):
    """A session's frames encoded once (one video codec + Opus), shared by every viewer."""

    def subscribe(self) -> Subscription[EncodedFrame]: ...

    def attach(
        self, sub: Subscription[EncodedFrame], keyframe: bool = True
    ) -> Subscription[EncodedFrame]: ...

    def unsubscribe(self, sub: Subscription[EncodedFrame]) -> None: ...

    def request_keyframe(self) -> None: ...

    @property
    def encode_ms(self) -> float: ...

    @property
    def viewers(self) -> int: ...


class KeyframeStart:
    """Where a viewer's video starts: on a key frame, which the encoder makes only when asked.
    One asked for and then lost would leave the viewer without a picture for good: sent before
    its connection was quite up, or older than the start its audio fixed after
    ``VIDEO_START_WAIT_S``. So while the viewer waits, it asks anew every ``KEYFRAME_RETRY_S``
    (the encoder's own limit spaces key frames for all viewers)."""

    def __init__(self, encoder: EncodedStream, start: SharedStart) -> None:
        self._encoder = encoder
        self._start = start
        self._asked_at = -float("inf")
        self.waiting = True

    def ask(self) -> None:
        self._asked_at = asyncio.get_running_loop().time()
        self._encoder.request_keyframe()

    def again(self) -> None:
        """The viewer lost frames: it waits for a key frame again, and asks for one."""
        self.waiting = True
        self.ask()

    def offset(self, item: EncodedFrame) -> int | None:
        """Frames since the viewer's start for this picture; None while it cannot be sent."""
        n = self._start.offset(item.index) if item.keyframe or not self.waiting else None
        if n is not None:
            self.waiting = False
        elif (
            self.waiting and asyncio.get_running_loop().time() - self._asked_at >= KEYFRAME_RETRY_S
        ):
            self.ask()
        return n


class SharedStart:
    """The frame index both tracks of one viewer count their pts from, and start on.

    The video starts on a key frame, made when its sending starts. The audio waits for it
    (``VIDEO_START_WAIT_S`` at most) and starts on that same frame, so both RTP streams begin
    with one instant, at the live edge, rather than the audio running ahead of a picture the
    viewer cannot show yet.
    """

    def __init__(self, video: bool = False) -> None:
        self.base: int | None = None
        self._video = video  # a video track of this viewer fixes the start
        self._fixed = asyncio.Event()

    def offset(self, index: int) -> int | None:
        """Frames since the first one either track forwarded; ``None`` for earlier frames."""
        if self.base is None:
            self.base = index
            self._fixed.set()
        return index - self.base if index >= self.base else None

    def waiting_for_video(self, until: float) -> bool:
        """True while this viewer's audio should still wait for its video's first frame."""
        return self._video and self.base is None and asyncio.get_running_loop().time() < until

    async def skip_to_live(self, subscription: Subscription[Item]) -> None:
        """Drop the audio queued while the connection was set up, called as sending starts.

        The audio then starts on the video's first frame (at most the video's short queue
        old), or without video, on the newest frame queued: sent at once, the backlog would
        sit in the receiver's jitter buffer and everything after it would play that late.
        """
        if self._video and self.base is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(VIDEO_START_WAIT_S):
                    await self._fixed.wait()
        base = self.base
        skipped = subscription.skip_to_live(None if base is None else lambda f: f.index >= base)
        if skipped:
            log.debug("a viewer starts at the live edge: %d queued audio items skipped", skipped)


class AVVideoTrack(MediaStreamTrack):
    """The session's video, newest frame first: a viewer that falls behind skips frames."""

    kind = "video"

    def __init__(self, subscription: Subscription[AVFrame], start: SharedStart) -> None:
        super().__init__()
        self._subscription = subscription
        self._start = start

    async def recv(self) -> av.VideoFrame:
        while True:
            frame = await _next(self._subscription.next_video, self)
            n = self._start.offset(frame.index)
            if n is not None:
                break
        out = av.VideoFrame.from_ndarray(frame.video, format="rgb24")
        out.pts = n * VIDEO_TICKS_PER_FRAME
        out.time_base = VIDEO_TIME_BASE
        return out


class AVAudioTrack(MediaStreamTrack):
    """The session's audio, every frame's 40 ms in order (silence when nobody speaks).

    Each AV frame goes out as two 20 ms audio frames: aiortc's Opus encoder stamps every
    packet it makes from one input frame with that frame's timestamp, so an input longer than
    one 20 ms Opus packet would give two packets the same RTP timestamp.
    """

    kind = "audio"

    def __init__(self, subscription: Subscription[AVFrame], start: SharedStart) -> None:
        super().__init__()
        self._subscription = subscription
        self._start = start
        self._pending: av.AudioFrame | None = None
        self._live = False

    async def recv(self) -> av.AudioFrame:
        if self._pending is not None:
            out, self._pending = self._pending, None
            return out
        if not self._live:
            self._live = True
            await self._start.skip_to_live(self._subscription)
        while True:
            frame = await _next(self._subscription.next_audio, self)
            n = self._start.offset(frame.index)
            if n is not None:
                break
        first, second = (
            _audio_frame(half, n * SAMPLES_PER_VIDEO_FRAME + i * HALF)
            for i, half in enumerate((frame.audio[:HALF], frame.audio[HALF:]))
        )
        self._pending = second
        return first


def _audio_frame(samples: np.ndarray, pts: int) -> av.AudioFrame:
    out = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    out.sample_rate = SAMPLE_RATE
    out.pts = pts
    out.time_base = AUDIO_TIME_BASE
    return out


class EncodedVideoTrack(MediaStreamTrack):
    """The shared encoder's pictures for one viewer, from a key frame on.

    A picture this viewer's queue had to drop breaks its decoding chain: it then skips
    pictures until the next key frame, which it asks the encoder for.
    """

    kind = "video"

    def __init__(
        self,
        subscription: Subscription[EncodedFrame],
        start: SharedStart,
        encoder: EncodedStream,
    ) -> None:
        super().__init__()
        self._subscription = subscription
        self._start = start
        self._encoder = encoder
        self._keyframe = KeyframeStart(encoder, start)
        self._drops: int | None = None

    async def recv(self) -> av.Packet:
        stats = self._subscription.stats
        if self._drops is None:
            # Sending starts once the connection is up, by which time the key frame made when
            # this viewer subscribed has usually left its short queue: ask for a fresh one.
            self._drops = stats.video_dropped
            self._keyframe.ask()
        while True:
            item = await _next(self._subscription.next_video, self)
            if stats.video_dropped != self._drops:
                self._drops = stats.video_dropped
                self._keyframe.again()
            if item.video is None:
                continue
            n = self._keyframe.offset(item)
            if n is None:
                continue
            packet = av.Packet(item.video)
            packet.pts = n * VIDEO_TICKS_PER_FRAME
            packet.time_base = VIDEO_TIME_BASE
            return packet


class EncodedAudioTrack(MediaStreamTrack):
    """The shared encoder's Opus packets for one viewer: every frame's, in order, stamped on
    Opus's own 48 kHz clock."""

    kind = "audio"

    def __init__(self, subscription: Subscription[EncodedFrame], start: SharedStart) -> None:
        super().__init__()
        self._subscription = subscription
        self._start = start
        self._pending: list[av.Packet] = []
        self._live = False

    async def recv(self) -> av.Packet:
        if not self._live:
            self._live = True
            await self._start.skip_to_live(self._subscription)
        while not self._pending:
            item = await _next(self._subscription.next_audio, self)
            n = self._start.offset(item.index)
            if n is None:
                continue
            for i, data in enumerate(item.audio):
                packet = av.Packet(data)
                at = n * SAMPLES_PER_VIDEO_FRAME + item.audio_offset + i * HALF
                packet.pts = at * OPUS_TICKS_PER_SAMPLE
                packet.time_base = OPUS_TIME_BASE
                self._pending.append(packet)
        return self._pending.pop(0)


async def _next(read: Callable[[], Awaitable[Item]], track: MediaStreamTrack) -> Item:
    if track.readyState != "live":
        raise MediaStreamError
    try:
        return await read()
    except ConnectionError:  # the subscription was closed: the viewer is going away
        track.stop()
        raise MediaStreamError from None
