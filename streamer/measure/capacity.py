"""How many live sessions one inference worker keeps in real time: generation alone.

Every simulated session asks for one frame every 40 ms exactly as a live session does: the
real :class:`~streamer.engine.worker.InferenceWorker`, the session's lead (its window is
taken ``lead_s`` before the frame is due), the phase the worker gives it (all sessions due
together on a GPU, so their frames meet in one batch; spread over the period on a CPU), and
the avatar's real input shapes. A frame is on time when its mouth is back before the frame
is due. ``n`` sessions hold when at least 99 % of their frames are on time; the ramp doubles
``n`` until a step fails, then bisects between the last step that held and the first that did
not. Compositing and encoding are not part of this figure (bench reports them per frame).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.audio import N_MELS
from streamer.engine.worker import FRAME_PERIOD_S, InferenceWorker, TooLate
from streamer.session import SessionConfig

ON_TIME = 0.99


@dataclass(frozen=True)
class GenerationStep:
    sessions: int
    on_time: float  # share of frames back before they were due
    margin_ms_p5: float  # 5th percentile of (due - done); -1 when more than 5 % were late
    mean_batch: float
    held: bool


async def _step(
    worker: InferenceWorker, inputs: tuple[np.ndarray, ...], n: int, seconds: float, lead: float
) -> GenerationStep:
    loop = asyncio.get_running_loop()
    phases = [worker.claim_phase() for _ in range(n)]
    calls, frames = worker.stats.calls, worker.stats.frames
    margins: list[float] = []
    reference, masked, mel = inputs

    async def frame(due: float) -> None:
        # As in a session: a frame not back when it is due is published without its new
        # picture, and its request is cancelled (the worker skips it).
        try:
            async with asyncio.timeout_at(due):
                await worker.submit(reference, masked, mel, due)
        except (TimeoutError, TooLate):
            margins.append(-1.0)
        else:
            margins.append((due - loop.time()) * 1000.0)

    async def session(phase: float, start: float) -> None:
        tasks = []
        for k in range(int(seconds / FRAME_PERIOD_S)):
            due = start + phase + k * FRAME_PERIOD_S
            await asyncio.sleep(max(0.0, due - lead - loop.time()))
            tasks.append(asyncio.ensure_future(frame(due)))
        await asyncio.gather(*tasks)

    try:
        start = math.ceil((loop.time() + 0.2) / FRAME_PERIOD_S) * FRAME_PERIOD_S
        await asyncio.gather(*(session(p, start) for p in phases))
    finally:
        for phase in phases:
            worker.release_phase(phase)
    # The first half second warms caches and lets the phases settle: not counted.
    skip = n * int(0.5 / FRAME_PERIOD_S)
    counted = np.asarray(margins[skip:] or margins)
    on_time = float(np.mean(counted >= 0.0))
    batches = max(1, worker.stats.calls - calls)
    return GenerationStep(
        sessions=n,
        on_time=round(on_time, 4),
        margin_ms_p5=round(float(np.percentile(counted, 5)), 2),
        mean_batch=round((worker.stats.frames - frames) / batches, 2),
        held=on_time >= ON_TIME,
    )


async def ramp(
    worker: InferenceWorker,
    inputs: tuple[np.ndarray, ...],
    seconds: float,
    limit: int,
    progress: Callable[[str], None],
    lead: float | None = None,
) -> tuple[int, list[GenerationStep]]:
    """The most sessions that held (0 if even one did not), and every step measured."""
    lead = SessionConfig().lead_s if lead is None else lead
    steps: list[GenerationStep] = []

    async def measure(n: int) -> bool:
        step = await _step(worker, inputs, n, seconds, lead)
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
    from models.compositor import Compositor

    reference, masked = Compositor(avatar).inputs(0)
    rng = np.random.default_rng(0)
    mel = (rng.standard_normal((avatar.window.length, N_MELS)) - 2.0).astype(np.float32)

    async def run() -> tuple[int, list[GenerationStep]]:
        # The deadlines below are stamped with the loop's clock: the worker reads the same one.
        clock = asyncio.get_running_loop().time
        worker = InferenceWorker(backend, name="inference-capacity", clock=clock)
        try:
            return await ramp(worker, (reference, masked, mel), seconds, limit, progress)
        finally:
            await worker.aclose()

    best, steps = asyncio.run(run())
    return {
        "generation_sessions": best,
        "generation_ramp": [step.__dict__ for step in steps],
    }
