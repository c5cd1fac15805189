"""The generation-only session ramp, and how the worker sheds frames it cannot make in time
(frame by frame, on a virtual clock: tests/test_worker.py)."""

from __future__ import annotations

import time

import numpy as np

from streamer.engine.worker import InferenceWorker
from streamer.measure.capacity import ramp

INPUTS = (
    np.zeros((3, 16, 16), np.float32),
    np.zeros((3, 16, 16), np.float32),
    np.zeros((24, 80), np.float32),
)


class Sleeper:
    """A backend whose call costs ``fixed + per_frame * batch`` seconds (sleeping, no CPU)."""

    name, precision = "sleeper", "fp32"

    def __init__(self, device: str, fixed: float, per_frame: float) -> None:
        self.device, self.fixed, self.per_frame = device, fixed, per_frame

    def infer(self, reference: np.ndarray, masked: np.ndarray, mel: np.ndarray) -> np.ndarray:
        time.sleep(self.fixed + self.per_frame * len(reference))
        return np.zeros_like(reference)


def quiet(message: str) -> None:
    pass


async def test_a_cpu_like_backend_holds_what_its_frame_cost_allows() -> None:
    worker = InferenceWorker(Sleeper("cpu", 0.0, 0.006))  # ~6 frames per 40 ms
    try:
        best, steps = await ramp(worker, INPUTS, 0.8, 64, quiet)
    finally:
        await worker.aclose()
    assert 3 <= best <= 6, steps
    # Overloaded, the worker gives hopeless frames up rather than making every frame late.
    failed = [s for s in steps if not s.held]
    assert failed and max(s.on_time for s in failed) > 0.5


async def test_a_gpu_like_backend_batches_many_sessions() -> None:
    worker = InferenceWorker(Sleeper("cuda:0", 0.004, 0.0001))  # batching is nearly free
    try:
        best, steps = await ramp(worker, INPUTS, 0.8, 64, quiet)
    finally:
        await worker.aclose()
    # Unbatched, 4 ms a call holds at most 10 sessions; the ramp's top is 64. On a slow, shared
    # machine the event loop's own overhead can stop it short of the top.
    assert best >= 32, steps
    assert steps[-1].mean_batch > 16  # sessions due together meet in one call
