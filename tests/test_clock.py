"""The frame clock: the virtual one runs the live loop without waiting, and waits for
pictures instead of dropping them."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from streamer.pipeline.clock import VirtualClock
from streamer.pipeline.frames import FRAME_SECONDS, AVFrame


class Recorder:
    """A frame path stand-in: records when frames are prepared and published."""

    def __init__(self, render_s: float = 0.0) -> None:
        self.next_prepare = 0
        self.prepared: list[tuple[int, float]] = []
        self.inflight: list[tuple[int, asyncio.Task[None]]] = []
        self.render_s = render_s
        self.clock: VirtualClock | None = None

    def head(self) -> int | None:
        return self.inflight[0][0] if self.inflight else None

    def prepare(self, due: float) -> None:
        assert self.clock is not None
        self.prepared.append((self.next_prepare, self.clock.now()))
        task = asyncio.ensure_future(asyncio.sleep(self.render_s))
        self.inflight.append((self.next_prepare, task))
        self.next_prepare += 1

    async def finish_head(self) -> None:
        await self.inflight[0][1]

    def publish(self, now: float) -> AVFrame:
        k, task = self.inflight.pop(0)
        assert task.done(), "the virtual clock published a frame before its picture"
        return AVFrame(k, np.zeros((2, 2, 3), np.uint8), np.zeros(640, np.int16), published_at=now)


async def test_virtual_clock_publishes_on_the_grid_without_waiting() -> None:
    clock = VirtualClock(lead_s=0.1)
    path = Recorder()
    path.clock = clock
    started = time.perf_counter()
    frames = [await clock.tick(path) for _ in range(250)]  # 10 s of frames
    assert time.perf_counter() - started < 2.0
    assert [f.index for f in frames] == list(range(250))
    assert [f.published_at for f in frames] == [k * FRAME_SECONDS for k in range(250)]
    # Each frame is prepared the lead before it is due (the first ones at the start).
    for k, at in path.prepared[5:50]:
        assert abs(at - (k * FRAME_SECONDS - 0.1)) < 1e-9


async def test_virtual_clock_waits_for_slow_pictures() -> None:
    clock = VirtualClock(lead_s=0.0)
    path = Recorder(render_s=0.01)
    path.clock = clock
    frames = [await clock.tick(path) for _ in range(5)]
    assert [f.published_at for f in frames] == [k * FRAME_SECONDS for k in range(5)]
