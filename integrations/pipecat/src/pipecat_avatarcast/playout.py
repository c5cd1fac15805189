"""One clock for the avatar's two tracks: each frame leaves at its own time on one timeline.

avatarcast stamps a viewer's video and audio from one frame index and starts both RTP streams
on the same frame (its WHEP tracks' ``SharedStart``), so each track's first timestamp is the
same instant. :class:`RtpTime` turns a track's 32-bit timestamps, which start at a random
origin and wrap, into seconds since that first frame. :class:`Playout` then releases every
frame at ``anchor + delay + t``: video and audio from one clock, paced by their own pts, and
never by the order or the moment in which the network delivered them. The delay absorbs the
two tracks' different decode times and arrival jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

RTP_WRAP = 1 << 32
Item = TypeVar("Item")


class RtpTime:
    """Seconds since a track's first frame, from its RTP timestamps (unwrapped)."""

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self._last: int | None = None
        self._ticks = 0

    def seconds(self, timestamp: int) -> float:
        if self._last is not None:
            step = (timestamp - self._last) % RTP_WRAP
            self._ticks += step - RTP_WRAP if step >= RTP_WRAP // 2 else step
        self._last = timestamp
        return self._ticks / self.clock_rate


class Playout(Generic[Item]):
    """Frames from both tracks, released in time order at ``anchor + delay_s + t``.

    The anchor is set by the first frame put. A frame that arrives more than ``max_late_s``
    after its time (a stall upstream) moves the anchor on by its lateness, for both tracks at
    once, so they stay together and later frames are on time again. ``clear()`` drops what
    waits (an interrupt: those frames carry the speech that was cut off).
    """

    def __init__(
        self,
        emit: Callable[[Item], Awaitable[None]],
        delay_s: float,
        max_late_s: float = 0.5,
    ) -> None:
        self._emit = emit
        self.delay_s = delay_s
        self.max_late_s = max_late_s
        self._heap: list[tuple[float, int, int, Item]] = []
        self._order = itertools.count()
        self._anchor: float | None = None
        self._wake = asyncio.Event()
        self.reanchored = 0

    def put(self, t: float, item: Item, rank: int = 0) -> None:
        """``item`` is due ``t`` seconds into the timeline; at one time, lower ranks first."""
        now = asyncio.get_running_loop().time()
        if self._anchor is None:
            self._anchor = now - t
        due = self._anchor + self.delay_s + t
        heapq.heappush(self._heap, (due, rank, next(self._order), item))
        self._wake.set()

    def clear(self) -> None:
        self._heap.clear()

    def __len__(self) -> int:
        return len(self._heap)

    async def run(self) -> None:
        """Release frames at their times, forever (the owner cancels it)."""
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            if not self._heap:
                await self._wake.wait()
                continue
            due = self._heap[0][0]
            wait = due - loop.time()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                continue
            _, _, _, item = heapq.heappop(self._heap)
            if -wait > self.max_late_s and self._anchor is not None:
                self._anchor += -wait
                self.reanchored += 1
            await self._emit(item)


class Flush:
    """After an interrupt, the frames already on their way (encoded, in the network, in the
    jitter buffers) still carry the speech the user cut off. Like an output transport's
    buffers on an interruption, they are flushed: the audio is replaced by silence and the
    pictures are dropped (the last one stays on screen) until the avatar's own audio has been
    quiet for ``quiet_s``, or ``max_s`` after the interrupt at most. Pictures from before
    the end of the flush are dropped too, since video arrives a little after its audio.
    """

    def __init__(self, quiet_s: float = 0.2, max_s: float = 0.6) -> None:
        self.quiet_s = quiet_s
        self.max_s = max_s
        self._since: float | None = None
        self._quiet = 0.0
        self._until_t = float("-inf")

    def start(self, now: float) -> None:
        self._since = now
        self._quiet = 0.0

    def audio(self, t: float, seconds: float, loud: bool, now: float) -> bool:
        """Whether the audio frame at ``t`` is flushed (given ``now``, the wall clock)."""
        if self._since is None:
            return False
        self._quiet = 0.0 if loud else self._quiet + seconds
        if self._quiet >= self.quiet_s - 1e-9 or now - self._since >= self.max_s:
            self._since = None
            self._until_t = t + seconds
        return True

    def video(self, t: float) -> bool:
        """Whether the picture at ``t`` is flushed."""
        return self._since is not None or t < self._until_t
