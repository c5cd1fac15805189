"""AV frames and their fan-out to outputs.

An :class:`AVFrame` is one 40 ms video frame and exactly the 40 ms of audio it belongs to,
under one presentation index from the session's clock. Every output consumes AV frames
through a :class:`Subscription` of the session's :class:`FrameBus`; outputs never clock
anything themselves.

A subscriber that falls behind loses video, never audio: each subscription keeps a short
video queue that drops its oldest frame when full, and a longer audio queue (seconds) that
only drops when the subscriber has stopped reading altogether. Publishing never waits, so
one slow viewer cannot slow the session or any other viewer.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

import numpy as np

from models.audio import FPS, SAMPLES_PER_VIDEO_FRAME

FRAME_SECONDS = 1.0 / FPS


@dataclass(frozen=True)
class AVFrame:
    """Frame ``index`` of a session: shown from ``index * 40 ms`` on the session's clock."""

    index: int
    video: np.ndarray  # (H, W, 3) uint8 RGB
    audio: np.ndarray  # (640,) int16 mono at 16 kHz: the 40 ms this frame shows
    utterance_id: str | None = None  # the utterance whose speech is in `audio`, if any
    # Wall-clock (loop.time()) at which the frame's audio entered the session; the
    # speech-to-mouth latency is the publish time minus this.
    audio_in_at: float | None = None
    published_at: float = 0.0

    @property
    def seconds(self) -> float:
        return self.index * FRAME_SECONDS

    def __post_init__(self) -> None:
        if self.audio.shape != (SAMPLES_PER_VIDEO_FRAME,) or self.audio.dtype != np.int16:
            raise ValueError("AVFrame audio must be 640 int16 samples (40 ms at 16 kHz)")


_NO_PIXELS = np.zeros(3, np.uint8)
_NO_PIXELS.flags.writeable = False


def without_picture(frame: AVFrame) -> AVFrame:
    """``frame`` whose picture keeps its shape but holds no pixels (one black pixel,
    broadcast): for a queue that needs a frame's audio and size only. A backlog of such
    frames (a stalled output holds up to 5 s) then keeps the audio alone alive, not every
    picture (0.8 MB each at 512x512, 6 MB at 1080p)."""
    return replace(frame, video=np.broadcast_to(_NO_PIXELS, frame.video.shape))


# What a bus carries: the session's AV frames, or an encoder's packets made from them.
T = TypeVar("T")


@dataclass
class SubscriptionStats:
    video_dropped: int = 0
    audio_dropped: int = 0
    audio_skipped: int = 0  # queued before the consumer started reading: see skip_to_live


@dataclass(eq=False)
class Subscription(Generic[T]):
    """One consumer's view of a session's frames: separate audio and video queues."""

    video_depth: int = 2
    audio_depth: int = 5 * FPS  # 5 s: only a consumer that stopped reading loses audio
    stats: SubscriptionStats = field(default_factory=SubscriptionStats)

    def __post_init__(self) -> None:
        self._video: collections.deque[T] = collections.deque()
        self._audio: collections.deque[T] = collections.deque()
        self._video_ready = asyncio.Event()
        self._audio_ready = asyncio.Event()
        self.closed = False

    def offer(self, frame: T, *, video: bool = True, audio: bool = True) -> None:
        """Called by the bus for each published frame (or part of one); never blocks."""
        if self.closed:
            return
        if video:
            if len(self._video) >= self.video_depth:
                self._video.popleft()
                self.stats.video_dropped += 1
            self._video.append(frame)
            self._video_ready.set()
        if audio:
            if len(self._audio) >= self.audio_depth:
                self._audio.popleft()
                self.stats.audio_dropped += 1
            self._audio.append(frame)
            self._audio_ready.set()

    async def next_video(self) -> T:
        """The newest-but-unread video frame (older ones may have been dropped)."""
        while not self._video:
            if self.closed:
                raise ConnectionError("subscription closed")
            self._video_ready.clear()
            await self._video_ready.wait()
        return self._video.popleft()

    async def next_audio(self) -> T:
        """The next frame's audio, in order and without gaps while the consumer keeps up."""
        while not self._audio:
            if self.closed:
                raise ConnectionError("subscription closed")
            self._audio_ready.clear()
            await self._audio_ready.wait()
        return self._audio.popleft()

    def skip_to_live(self, start: Callable[[T], bool] | None = None) -> int:
        """Drop the queued audio before the first item ``start`` accepts (before the newest
        item, which is always kept, when none is or ``start`` is ``None``); returns how many
        items went.

        A consumer calls this once, as it starts reading. What queued before then (a WebRTC
        viewer subscribes when its offer is answered, and reads from when ICE and DTLS are
        up, half a second or more later) is already late: sent at once, it would sit in the
        receiver's jitter buffer, and everything after it would play that late until the
        receiver caught up. From here on audio is kept in order and without gaps.
        """
        skipped = 0
        while len(self._audio) > 1 and not (start is not None and start(self._audio[0])):
            self._audio.popleft()
            skipped += 1
        self.stats.audio_skipped += skipped
        return skipped

    @property
    def depth(self) -> tuple[int, int]:
        return len(self._video), len(self._audio)

    def close(self) -> None:
        self.closed = True
        self._video_ready.set()
        self._audio_ready.set()


class FrameBus(Generic[T]):
    """Fan-out of one session's AV frames (or of packets encoded from them) to its outputs."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription[T]] = set()
        self.last: T | None = None

    def subscribe(self, video_depth: int = 2, audio_depth: int = 5 * FPS) -> Subscription[T]:
        return self.attach(Subscription(video_depth=video_depth, audio_depth=audio_depth))

    def attach(self, sub: Subscription[T]) -> Subscription[T]:
        """Add ``sub`` (a :class:`Subscription` or a subclass that handles what it is offered
        at once) to the subscribers."""
        self._subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription[T]) -> None:
        sub.close()
        self._subscriptions.discard(sub)

    def publish(self, frame: T, *, video: bool = True, audio: bool = True) -> None:
        """Hand ``frame`` to every subscriber's video and/or audio queue."""
        self.last = frame
        for sub in tuple(self._subscriptions):
            sub.offer(frame, video=video, audio=audio)

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    def close(self) -> None:
        for sub in tuple(self._subscriptions):
            self.unsubscribe(sub)
