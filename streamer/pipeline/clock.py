"""The frame clock: when frame ``k`` is due, and one loop that prepares and publishes frames.

Frame ``k`` is due at ``t0 + k * 40 ms``. Its audio window is taken ``lead`` seconds before
that (the frame is *prepared*: mel, then the generator and the compositor start on it) and it
is *published* when due, with whatever picture is ready by then. :meth:`FrameClock.tick`
is that loop, up to the next published frame; two clocks run it:

- :class:`LiveClock`: the event loop's time. Its frames fall on one 40 ms grid shifted by the
  phase the inference worker gives the session (the same for all sessions on a GPU, so their
  frames batch; spread over the period on a CPU). A late picture is dropped, never waited for.
- :class:`VirtualClock`: time that jumps to the next event at once and stands still while
  the frame to publish is still being rendered, so nothing is ever late. Offline ``render``
  and tests run the live frame path on it, as fast as the machine allows.
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

from streamer.pipeline.frames import FRAME_SECONDS, AVFrame


class Phases(Protocol):
    """Where in the frame period a session's frames fall due (the inference worker)."""

    def claim_phase(self) -> float: ...

    def release_phase(self, phase: float) -> None: ...


class Scheduled(Protocol):
    """What the clock drives: the frames in flight between preparation and publication."""

    @property
    def next_prepare(self) -> int: ...

    def head(self) -> int | None:
        """The index of the next frame to publish, if one is in flight."""

    def prepare(self, due: float) -> None:
        """Prepare frame ``next_prepare``, due at ``due``."""

    async def finish_head(self) -> None:
        """Wait until the next frame to publish has its picture (or has failed)."""

    def publish(self, now: float) -> AVFrame:
        """Publish the next frame in flight at ``now``."""


class FrameClock:
    """The common part: due times and the prepare/publish loop (see the module docstring)."""

    wait_for_pictures = False  # publish only rendered pictures (no frame is ever late)

    def __init__(self, lead_s: float) -> None:
        self.lead_s = lead_s
        self.t0 = 0.0

    def now(self) -> float:
        raise NotImplementedError

    async def wait_until(self, when: float) -> None:
        raise NotImplementedError

    def due(self, k: int) -> float:
        return self.t0 + k * FRAME_SECONDS

    def position(self, rate: int) -> int:
        """The sample (at ``rate`` per second) playing now; 0 before the first frame."""
        return max(0, int((self.now() - self.t0) * rate))

    async def tick(self, path: Scheduled) -> AVFrame:
        """Prepare what falls due for preparation, until the next frame is published."""
        while True:
            head = path.head()
            next_prep = self.due(path.next_prepare) - self.lead_s
            next_pub = self.due(head) if head is not None else math.inf
            await self.wait_until(min(next_prep, next_pub))
            now = self.now()
            if head is not None and next_pub <= now:
                if self.wait_for_pictures:
                    await path.finish_head()
                return path.publish(now)
            if next_prep <= now:
                path.prepare(self.due(path.next_prepare))

    def close(self) -> None:
        """Give back what the clock holds (a live clock's phase). Idempotent."""


class LiveClock(FrameClock):
    """The event loop's clock, on the 40 ms grid shifted by the worker's phase."""

    def __init__(self, lead_s: float, start_delay_s: float, phases: Phases) -> None:
        super().__init__(lead_s)
        self._phases: Phases | None = phases
        self._phase = phases.claim_phase()
        loop = asyncio.get_running_loop()
        self._loop = loop
        grid = math.ceil((loop.time() + start_delay_s) / FRAME_SECONDS)
        self.t0 = grid * FRAME_SECONDS + self._phase

    def now(self) -> float:
        return self._loop.time()

    async def wait_until(self, when: float) -> None:
        delay = when - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    def close(self) -> None:
        if self._phases is not None:
            self._phases.release_phase(self._phase)
            self._phases = None


class VirtualClock(FrameClock):
    """Time that advances instantly to the next event and waits for every picture."""

    wait_for_pictures = True

    def __init__(self, lead_s: float, t0: float = 0.0) -> None:
        super().__init__(lead_s)
        self.t0 = t0
        self._now = t0

    def now(self) -> float:
        return self._now

    async def wait_until(self, when: float) -> None:
        self._now = max(self._now, when)
        await asyncio.sleep(0)  # other tasks (renders) get their turn, as on a real clock
