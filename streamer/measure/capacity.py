"""How many live sessions one inference worker keeps in real time, through the server's path.

Every simulated session is a live session without its network ends. It runs the session's
own stages: a :class:`~streamer.pipeline.clock.LiveClock` on the phase the worker gives it
(all sessions due together on a GPU, so their frames meet in one batch; spread over the period
on a CPU), a timeline fed with a voice without pauses ``latency`` ahead of the clock (as the
feeder writes speech), and the :class:`~streamer.pipeline.path.FramePath`: the mel window is
taken ``lead`` before the frame is due, the :class:`~streamer.pipeline.render.FrameRenderer`
sends it to the real :class:`~streamer.engine.worker.InferenceWorker` and composites the mouth
in a thread pool the size of the server's, and the frame is published when due. A frame is
on time when its picture was ready before it was due. ``n`` sessions hold when at least 99 %
of their frames are on time; the ramp doubles ``n`` until a step fails, then bisects between
the last step that held and the first that did not.

The figure keeps its name (``generation_sessions``) but since issue 10 it counts what the
server runs per frame besides encoding: the mel window on the event loop and the compositor
in its pool, not the generator alone. On a CPU the compositor shares the cores with inference
and on a GPU the one event loop serves every session, so the figure is lower than the former
generator-only one. Encoding is still not part of it (bench reports it per frame).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.audio import SAMPLE_RATE
from models.avatar import Avatar
from models.compositor import Compositor
from streamer.engine.worker import InferenceWorker
from streamer.measure.signals import voiced
from streamer.pipeline.clock import LiveClock
from streamer.pipeline.frames import FRAME_SECONDS, AVFrame, FrameBus
from streamer.pipeline.path import FramePath
from streamer.pipeline.prepare import PreparedFrame, prepare_frame
from streamer.pipeline.render import FrameRenderer
from streamer.pipeline.timeline import Timeline
from streamer.session import SessionConfig

ON_TIME = 0.99
WARMUP_S = 0.5  # warms caches and lets the phases settle: not counted
START_DELAY_S = 0.2  # every session of a step is set up before its first frame is due
VOICE_S = 10  # the voice's pitch contour repeats every 10 s, so it loops without a seam


@dataclass(frozen=True)
class GenerationStep:
    sessions: int
    on_time: float  # share of frames whose picture was ready before they were due
    margin_ms_p5: float  # 5th percentile of (due - ready), a frame without its picture as -1
    mean_batch: float
    held: bool


@functools.cache
def _voice() -> np.ndarray:
    return voiced(VOICE_S * SAMPLE_RATE)


class _TimedRenderer(FrameRenderer):
    """The session's renderer, noting how long before its due time each picture was ready."""

    def __init__(
        self, avatar: Avatar, worker: InferenceWorker, executor: Executor, compositor: Compositor
    ) -> None:
        super().__init__(avatar, worker, executor, compositor)
        self.margins_ms: dict[int, float] = {}  # frame index -> due - ready, until published

    async def render(self, k: int, mel: np.ndarray | None, due: float) -> np.ndarray:
        picture = await super().render(k, mel, due)
        self.margins_ms[k] = (due - asyncio.get_running_loop().time()) * 1000.0
        return picture


class _SimulatedSession:
    """One live session's frame path on its own clock, speaking without a pause."""

    def __init__(
        self,
        avatar: Avatar,
        worker: InferenceWorker,
        executor: Executor,
        config: SessionConfig,
        compositor: Compositor,
        counted_from: int,
    ) -> None:
        self._worker = worker
        self._window = avatar.window
        self._lead_s = config.lead_s
        self._latency = int(config.latency_s * SAMPLE_RATE)
        self._counted_from = counted_from
        self._timeline = Timeline(max_ahead_s=2.0)
        self._renderer = _TimedRenderer(avatar, worker, executor, compositor)
        self._path = FramePath(
            self._prepare, self._renderer, FrameBus(), on_published=self._published
        )
        self.margins_ms: list[float] = []  # per counted frame; -1 when published without it

    def _prepare(self, k: int) -> PreparedFrame:
        return prepare_frame(self._timeline, k, self._window)

    def _speak(self, clock: LiveClock) -> None:
        """Write the voice up to ``latency`` ahead of the sample playing now, as the feeder
        does; no further than the timeline holds when an overloaded loop reads behind it."""
        timeline = self._timeline
        now_pos = clock.position(SAMPLE_RATE)
        start = timeline.write_pos
        missing = min(now_pos + self._latency, timeline.read_pos + timeline.max_ahead) - start
        if missing <= 0:
            return
        voice = _voice()
        piece = voice[(start + np.arange(missing)) % len(voice)]
        timeline.write(
            piece, now_pos=now_pos, latency=0, utterance_id="voice", arrived_at=clock.now()
        )

    def _published(self, frame: PreparedFrame, out: AVFrame, fresh: bool) -> None:
        margin = self._renderer.margins_ms.pop(frame.index, None)
        if frame.index >= self._counted_from:
            self.margins_ms.append(margin if fresh and margin is not None else -1.0)

    async def run(self, frames: int) -> None:
        clock = LiveClock(self._lead_s, START_DELAY_S, self._worker)
        try:
            for _ in range(frames):
                self._speak(clock)
                await clock.tick(self._path)
        finally:
            clock.close()
            await self._path.aclose()


async def _step(
    worker: InferenceWorker,
    avatar: Avatar,
    executor: Executor,
    n: int,
    seconds: float,
    config: SessionConfig,
    compositor: Callable[[Avatar], Compositor],
) -> GenerationStep:
    frames = max(1, int(seconds / FRAME_SECONDS))
    warmup = int(WARMUP_S / FRAME_SECONDS)
    counted_from = warmup if frames > warmup else 0
    sessions = [
        _SimulatedSession(avatar, worker, executor, config, compositor(avatar), counted_from)
        for _ in range(n)
    ]
    calls, generated = worker.stats.calls, worker.stats.frames
    async with asyncio.TaskGroup() as group:
        for session in sessions:
            group.create_task(session.run(frames))
    counted = np.asarray([m for s in sessions for m in s.margins_ms])
    on_time = float(np.mean(counted >= 0.0))
    batches = max(1, worker.stats.calls - calls)
    return GenerationStep(
        sessions=n,
        on_time=round(on_time, 4),
        margin_ms_p5=round(float(np.percentile(counted, 5)), 2),
        mean_batch=round((worker.stats.frames - generated) / batches, 2),
        held=on_time >= ON_TIME,
    )


async def ramp(
    worker: InferenceWorker,
    avatar: Avatar,
    executor: Executor,
    seconds: float,
    limit: int,
    progress: Callable[[str], None],
    config: SessionConfig | None = None,
    compositor: Callable[[Avatar], Compositor] = Compositor,
) -> tuple[int, list[GenerationStep]]:
    """The most sessions that held (0 if even one did not), and every step measured.

    ``executor`` composites the pictures, as the server's compose pool does; ``compositor``
    makes each session's own (the server's by default; a test of the worker alone passes
    one that costs nothing)."""
    config = config or SessionConfig()
    _voice()  # made once, before the first step's clocks start
    steps: list[GenerationStep] = []

    async def measure(n: int) -> bool:
        step = await _step(worker, avatar, executor, n, seconds, config, compositor)
        steps.append(step)
        progress(
            f"generation: {n} session(s): {step.on_time:.1%} of frames on time, "
            f"p5 margin {step.margin_ms_p5} ms, mean batch {step.mean_batch}: "
            + ("held" if step.held else "did not hold")
        )
        return step.held

    good, bad = 0, None
    n = 1
    while n <= limit:
        if not await measure(n):
            bad = n
            break
        good, n = n, n * 2
    if bad is None:
        return good, steps
    while bad - good > max(1, good // 8):  # bisect to within 1/8
        mid = (good + bad) // 2
        if await measure(mid):
            good = mid
        else:
            bad = mid
    return good, steps


def measure_generation(
    avatar: Any, backend: Any, seconds: float, limit: int, progress: Callable[[str], None]
) -> dict[str, Any]:
    """``generation_sessions`` and its ramp, for bench's JSON."""

    async def run() -> tuple[int, list[GenerationStep]]:
        # The deadlines are stamped with the loop's clock (the live clock's): the worker reads
        # the same one.
        clock = asyncio.get_running_loop().time
        worker = InferenceWorker(backend, name="inference-capacity", clock=clock)
        # The server's compose pool (streamer.app) has this size.
        pool = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="compose")
        try:
            return await ramp(worker, avatar, pool, seconds, limit, progress)
        finally:
            await worker.aclose()
            pool.shutdown()

    best, steps = asyncio.run(run())
    return {
        "generation_sessions": best,
        "generation_ramp": [step.__dict__ for step in steps],
    }
