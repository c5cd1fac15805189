"""The inference worker: one thread per device serving every model on it, on a virtual clock.

The fake backends advance the clock by what their call "costs", so whether a frame was in
time is decided by the worker's own clock, never by how fast this machine happens to be.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from streamer.engine.pool import EnginePool
from streamer.engine.worker import DeviceWorker, InferenceWorker, TooLate

CROP = 8


class VirtualClock:
    """Seconds that pass only when a fake backend says its call took them."""

    def __init__(self) -> None:
        self._now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class Model:
    """A fake backend: a call of ``n`` frames costs ``fixed + per_frame * n`` virtual seconds.

    It records each call as (virtual time it ended, the ids of its frames); the mouth of a
    frame is filled with its id (the first value of its mel), so a mix-up shows. With a
    ``gate``, its first call waits for it: frames submitted meanwhile queue up.
    """

    precision = "fp32"

    def __init__(
        self,
        name: str,
        clock: VirtualClock,
        device: str = "cpu",
        fixed: float = 0.001,
        per_frame: float = 0.001,
        gate: threading.Event | None = None,
    ) -> None:
        self.name, self.device, self.clock = name, device, clock
        self.fixed, self.per_frame = fixed, per_frame
        self.gate = gate
        self.entered = threading.Event()
        self.calls: list[tuple[float, list[float]]] = []

    def infer(self, reference: np.ndarray, masked: np.ndarray, mel: np.ndarray) -> np.ndarray:
        if self.gate is not None:
            self.entered.set()
            assert self.gate.wait(10)
            self.gate = None
        ids = mel[:, 0, 0].copy()
        self.clock.advance(self.fixed + self.per_frame * len(ids))
        self.calls.append((self.clock(), ids.tolist()))
        return np.broadcast_to(ids[:, None, None, None], reference.shape).astype(np.float32)


def frame(ident: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    crop = np.zeros((3, CROP, CROP), np.float32)
    return crop, crop, np.full((24, 80), ident, np.float32)


async def test_one_device_worker_batches_each_model_apart_and_in_time() -> None:
    clock = VirtualClock()
    gate = threading.Event()
    a = Model("a", clock, gate=gate)
    b = Model("b", clock)
    device = DeviceWorker("cpu", clock=clock)
    first, second = InferenceWorker(a, shared=device), InferenceWorker(b, shared=device)
    try:
        # A first frame occupies the thread (and teaches it what a frame of `a` costs)...
        opening = asyncio.ensure_future(first.submit(*frame(0.0), 1.0))
        assert await asyncio.to_thread(a.entered.wait, 10)
        # ... while two sessions of each model queue a frame each every 10 ms, interleaved.
        due: dict[float, float] = {}
        tasks = {}
        for k in range(8):
            for worker, ident in ((first, 100 + k), (second, 200 + k)):
                due[ident] = 0.020 + 0.010 * k + (0.005 if worker is second else 0.0)
                tasks[ident] = asyncio.ensure_future(worker.submit(*frame(ident), due[ident]))
        await asyncio.sleep(0)
        assert device.depth == 16
        gate.set()
        mouths = await asyncio.gather(opening, *tasks.values())
    finally:
        await device.aclose()
    # Each frame got its own mouth back.
    for ident, mouth in zip([0.0, *tasks], mouths, strict=True):
        assert mouth.shape == (3, CROP, CROP) and np.all(mouth == ident)
    # Each call ran one model's frames only, and every frame was done before it was due.
    for model, base in ((a, 100), (b, 200)):
        served = [i for _, ids in model.calls for i in ids if i != 0.0]
        assert sorted(served) == [base + k for k in range(8)]
        for ended, ids in model.calls:
            assert all(ended <= due.get(i, 1.0) for i in ids), (model.name, model.calls)
        assert max(len(ids) for _, ids in model.calls) > 1  # sessions' frames met in a batch
    # The calls went in deadline order: each call's earliest frame was due no sooner than
    # the previous call's earliest.
    calls = sorted(a.calls + b.calls)
    earliest = [min(due.get(i, 1.0) for i in ids) for _, ids in calls[1:]]
    assert earliest == sorted(earliest)
    assert device.stats.calls == len(calls) and device.stats.frames == 17
    assert device.stats.skipped == 0


async def test_hopeless_frames_fail_with_too_late_on_the_workers_clock() -> None:
    clock = VirtualClock()
    worker = InferenceWorker(Model("slow", clock, fixed=0.0, per_frame=0.020), clock=clock)
    try:
        await worker.submit(*frame(1.0), clock() + 1.0)  # learns that a frame costs 20 ms
        with pytest.raises(TooLate):
            await worker.submit(*frame(2.0), clock() + 0.005)
        assert worker.stats.skipped == 1
        # A frame that fits is still served.
        mouth = await worker.submit(*frame(3.0), clock() + 0.030)
        assert np.all(mouth == 3.0)
    finally:
        await worker.aclose()


async def test_a_frame_already_late_before_any_call_does_not_stop_the_worker() -> None:
    """A session's first frame can be due before the model was ever called (a busy machine at
    start): it is given up, and the worker, with no estimate yet to lower, goes on."""
    clock = VirtualClock()
    clock.advance(1.0)
    worker = InferenceWorker(Model("fresh", clock), clock=clock)
    try:
        with pytest.raises(TooLate):
            await worker.submit(*frame(1.0), clock() - 0.010)
        mouth = await asyncio.wait_for(worker.submit(*frame(2.0), clock() + 1.0), 10)
        assert np.all(mouth == 2.0)
    finally:
        await worker.aclose()


async def test_one_slow_call_does_not_stop_the_worker_for_good() -> None:
    clock = VirtualClock()
    model = Model("cold", clock, fixed=0.0, per_frame=0.200)  # a cold start: 200 ms
    worker = InferenceWorker(model, clock=clock)
    try:
        await worker.submit(*frame(1.0), clock() + 1.0)
        model.per_frame = 0.005  # warm: 5 ms a frame, well within the 30 ms each is given
        served = []
        for k in range(20):
            try:
                served.append(await worker.submit(*frame(10.0 + k), clock() + 0.030))
            except TooLate:
                assert not served, "a frame that fits was given up after the worker recovered"
        assert 10 <= len(served) < 20 and worker.stats.skipped == 20 - len(served)
    finally:
        await worker.aclose()


async def test_a_scheduling_error_fails_its_frames_not_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = VirtualClock()
    worker = InferenceWorker(Model("m", clock), clock=clock)
    device = worker.device_worker
    batch = device._batch
    calls = []

    def broken_once(live: list, now: float) -> list:  # type: ignore[type-arg]
        calls.append(now)
        if len(calls) == 1:
            raise KeyError("a bug in the scheduling")
        return batch(live, now)

    monkeypatch.setattr(device, "_batch", broken_once)
    try:
        # (Bounded waits: a dead worker thread would leave these futures pending for good.)
        with pytest.raises(KeyError):
            await asyncio.wait_for(worker.submit(*frame(1.0), clock() + 1.0), 10.0)
        # The thread lives on: the next frame is generated.
        mouth = await asyncio.wait_for(worker.submit(*frame(2.0), clock() + 1.0), 10.0)
        assert np.all(mouth == 2.0)
    finally:
        await worker.aclose()


async def test_phases_belong_to_the_device_not_to_the_model() -> None:
    clock = VirtualClock()
    cpu = DeviceWorker("cpu", clock=clock)
    one, other = (InferenceWorker(Model(n, clock), shared=cpu) for n in "ab")
    # Two avatars on one CPU spread over the frame period together...
    assert [one.claim_phase(), other.claim_phase()] == pytest.approx([0.0, 0.020])
    other.release_phase(0.020)
    assert one.claim_phase() == pytest.approx(0.020)
    await one.aclose()  # a shared worker is its pool's: still running
    assert one.depth == 0 and await one.submit(*frame(4.0), 1.0) is not None
    await cpu.aclose()
    # ... and on a GPU every session is due together, whatever its model.
    gpu = DeviceWorker("cuda:0", clock=clock)
    a, b = (InferenceWorker(Model(n, clock, "cuda:0"), shared=gpu) for n in "ab")
    assert [a.claim_phase(), b.claim_phase(), a.claim_phase()] == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="cannot run on"):
        InferenceWorker(Model("c", clock, "cpu"), shared=gpu)
    await gpu.aclose()


async def test_the_pool_gives_each_device_one_worker() -> None:
    clock = VirtualClock()
    models = {
        "anna": Model("anna", clock, "cpu"),
        "ben": Model("ben", clock, "cpu"),
        "cleo": Model("cleo", clock, "cuda:0"),
    }
    pool = EnginePool(lambda name: (name, models[name]), clock=clock)  # type: ignore[arg-type]
    anna, ben, cleo = [await pool.get(name) for name in models]
    assert await pool.get("anna") is anna
    assert anna.worker.device_worker is ben.worker.device_worker
    assert cleo.worker.device_worker is not anna.worker.device_worker
    assert cleo.worker.device_worker.max_batch == 64 and anna.worker.device_worker.max_batch == 8
    mouths = await asyncio.gather(
        anna.worker.submit(*frame(1.0), 1.0), ben.worker.submit(*frame(2.0), 1.0)
    )
    assert [float(m.flat[0]) for m in mouths] == [1.0, 2.0]
    assert [ids for _, ids in models["anna"].calls] == [[1.0]]
    assert [ids for _, ids in models["ben"].calls] == [[2.0]]
    assert pool.depth == 0 and pool.frames_given_up == 0
    await pool.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await anna.worker.submit(*frame(3.0), 1.0)
