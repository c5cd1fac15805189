"""One inference thread per device, micro-batching the frames of every session by due time.

Sessions submit one frame at a time with the deadline of its publication, on the event loop's
clock. The thread takes everything pending, earliest deadline first, runs the earliest frame's
model once on up to ``max_batch`` frames of that model (same input shapes), and hands each
result back to its session's event loop; frames of another model make their own batch on the
next call, again in deadline order. It never waits to fill a batch: an idle machine answers one
frame at once, a busy one amortises the per-call cost over all sessions.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from streamer.engine.base import Backend, device_kind

log = logging.getLogger(__name__)

FRAME_PERIOD_S = 0.040
CPU_MAX_BATCH, GPU_MAX_BATCH = 8, 64
PHASE_SLOTS = 8  # a session's frames fall due at one of 8 points 5 ms apart (CPU backends)
SKIP_DECAY = 0.7  # a round that gives up all of a model's frames lowers its cost estimate

Clock = Callable[[], float]


class WorkerClosed(RuntimeError):
    """The worker was closed; no more frames are generated."""


class TooLate(RuntimeError):
    """The worker gave a frame up: it was due before it could have been generated."""


@dataclass(eq=False)
class _Request:
    backend: Backend
    reference: np.ndarray
    masked: np.ndarray
    mel: np.ndarray
    deadline: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[np.ndarray]
    # What to do with the mouth before the caller gets it, run in ``executor`` straight from
    # the worker thread: no trip through the event loop between the two steps.
    then: Callable[[np.ndarray], np.ndarray] | None = None
    executor: Executor | None = None

    @property
    def key(self) -> tuple[int, tuple[tuple[int, ...], ...]]:
        """Requests with equal keys can share one call: one model, the same shapes."""
        return id(self.backend), (self.reference.shape, self.masked.shape, self.mel.shape)


@dataclass
class WorkerStats:
    calls: int = 0
    frames: int = 0
    batches: dict[int, int] = field(default_factory=dict)  # calls by batch size
    skipped: int = 0  # requests given up as hopeless (due before they could be done)


class DeviceWorker:
    """The one inference thread of a device (``cpu``, ``cuda:0``), shared by every model on it.

    ``clock`` is the clock of the deadlines: the event loop's (``time.monotonic`` on asyncio's
    default loop), which sessions stamp them with; backend calls are timed with it too.
    ``on_batch(batch_size, ms)`` is called from the worker thread after every backend call
    (the metrics hook); it must be thread-safe and quick.
    """

    def __init__(
        self,
        device: str,
        max_batch: int | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        *,
        name: str = "inference",
        clock: Clock = time.monotonic,
    ) -> None:
        self.device = device
        self.on_cpu = device_kind(device) == "cpu"
        # A CPU gains little from big batches and a late batch delays all its frames; a GPU
        # serves dozens of sessions' frames in one call.
        default = CPU_MAX_BATCH if self.on_cpu else GPU_MAX_BATCH
        self.max_batch = max(1, max_batch or default)
        self.stats = WorkerStats()
        self._on_batch = on_batch
        self._clock = clock
        self._pending: list[_Request] = []
        self._cond = threading.Condition()
        self._closed = False
        self._phases: collections.Counter[int] = collections.Counter()
        # Smoothed seconds per frame of each model's recent calls, by id(backend).
        self._frame_s: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def claim_phase(self) -> float:
        """Where in the 40 ms frame period a new session's frames fall due, in seconds.

        On a GPU every session is due at the same instants, so their frames meet in one
        batch: a GPU call costs nearly the same for 1 frame or 16. On a CPU a batch costs
        about its size in single calls (about 3 against 3.5 ms a frame here), and sessions due
        together all wait for the whole batch, so their frames are spread over the period
        instead: each slot goes to the one farthest from those already taken.
        """
        if not self.on_cpu:
            return 0.0
        with self._cond:
            taken = [slot for slot, n in self._phases.items() if n > 0]

            def distance(slot: int) -> int:
                gaps = [min((slot - t) % PHASE_SLOTS, (t - slot) % PHASE_SLOTS) for t in taken]
                return min(gaps, default=PHASE_SLOTS)

            slot = max(range(PHASE_SLOTS), key=lambda s: (distance(s), -self._phases[s], -s))
            self._phases[slot] += 1
        return slot * FRAME_PERIOD_S / PHASE_SLOTS

    def release_phase(self, phase: float) -> None:
        slot = round(phase * PHASE_SLOTS / FRAME_PERIOD_S) % PHASE_SLOTS
        with self._cond:
            if self._phases[slot] > 0:
                self._phases[slot] -= 1

    @property
    def depth(self) -> int:
        """Requests waiting for the thread."""
        with self._cond:
            return len(self._pending)

    async def submit(
        self,
        backend: Backend,
        reference: np.ndarray,
        masked: np.ndarray,
        mel: np.ndarray,
        deadline: float,
        *,
        then: Callable[[np.ndarray], np.ndarray] | None = None,
        executor: Executor | None = None,
    ) -> np.ndarray:
        """``backend``'s mouth for one frame, or ``then(mouth)`` computed in ``executor``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        request = _Request(backend, reference, masked, mel, deadline, loop, future, then, executor)
        with self._cond:
            if self._closed:
                raise WorkerClosed("the inference worker is closed")
            self._pending.append(request)
            self._cond.notify()
        return await future

    def _take(self) -> list[_Request] | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            # Cancelled requests (their frame was published without them) cost nothing, and
            # nor do hopeless ones: due before even a call of one frame could finish, their
            # frames will go out with the previous picture anyway. Serving them would only
            # make the next frames late too: an overloaded machine would fall behind for
            # every session at once instead of dropping a few frames.
            now = self._clock()
            live: list[_Request] = []
            hopeless: set[int] = set()
            for r in self._pending:
                if r.future.cancelled():
                    continue
                if r.deadline < now + self._frame_s.get(id(r.backend), 0.0):
                    self.stats.skipped += 1
                    _give_up(r)
                    hopeless.add(id(r.backend))
                else:
                    live.append(r)
            # Only a call corrects the estimate, so one slow call (a cold start, a burst of
            # load) must not stop every later call: a model none of whose frames is tried
            # this round has its estimate lowered, until one is tried again. A model that
            # still gets calls (an overloaded machine) keeps its measured cost.
            for backend in hopeless - {id(r.backend) for r in live}:
                if backend in self._frame_s:  # a model never called yet has no estimate
                    self._frame_s[backend] *= SKIP_DECAY
            live.sort(key=_by_due)
            batch = self._batch(live, now)
            taken = {id(r) for r in batch}
            self._pending = [r for r in live if id(r) not in taken]
            return batch

    def _batch(self, live: list[_Request], now: float) -> list[_Request]:
        """The earliest request's model and shapes: as many of its frames, earliest first, as
        can finish before the earliest of them is due (one at least)."""
        if not live:
            return []
        first = live[0]
        room = self.max_batch
        frame_s = self._frame_s.get(id(first.backend), 0.0)
        if frame_s > 0:
            room = max(1, int((first.deadline - now) / frame_s))
        return [r for r in live if r.key == first.key][: min(self.max_batch, room)]

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if batch:
                self._call(batch)

    def _call(self, batch: list[_Request]) -> None:
        """One backend call for a batch of one model's frames, timed on the worker's clock."""
        backend = batch[0].backend
        started = self._clock()
        try:
            out = backend.infer(
                np.stack([r.reference for r in batch]),
                np.stack([r.masked for r in batch]),
                np.stack([r.mel for r in batch]),
            )
        except Exception as exc:  # one bad call fails its frames, not the thread
            log.exception("generator call failed for a batch of %d", len(batch))
            for r in batch:
                _resolve(r, None, exc)
            return
        seconds = self._clock() - started
        # What one frame costs, smoothed: the worker's estimate for what fits in time.
        per_frame = seconds / len(batch)
        frame_s = self._frame_s.get(id(backend), 0.0)
        self._frame_s[id(backend)] = frame_s + (0.1 if frame_s else 1.0) * (per_frame - frame_s)
        self.stats.calls += 1
        self.stats.frames += len(batch)
        self.stats.batches[len(batch)] = self.stats.batches.get(len(batch), 0) + 1
        if self._on_batch is not None:
            self._on_batch(len(batch), seconds * 1000.0)
        for r, mouth in zip(batch, out, strict=True):
            _finish(r, np.asarray(mouth, np.float32))

    async def aclose(self) -> None:
        """Stop the thread (after its current call); pending requests fail. Idempotent."""
        with self._cond:
            if self._closed and not self._thread.is_alive():
                return
            self._closed = True
            pending, self._pending = self._pending, []
            self._cond.notify_all()
        for r in pending:
            _resolve(r, None, WorkerClosed("the inference worker is closed"))
        await asyncio.to_thread(self._thread.join)


class InferenceWorker:
    """What a session submits its frames to: one model (``backend``) on a device worker.

    Given a ``shared`` device worker, it adds this model to that thread: the server runs every
    model of a device on one (:class:`~streamer.engine.pool.EnginePool`). Given none, it starts
    a device worker of its own, configured by ``max_batch``, ``on_batch``, ``name`` and
    ``clock``, and closes it in :meth:`aclose`: one model alone, as bench's capacity measure
    and tests run it.
    """

    def __init__(
        self,
        backend: Backend,
        max_batch: int | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "inference",
        *,
        clock: Clock = time.monotonic,
        shared: DeviceWorker | None = None,
    ) -> None:
        if shared is not None and shared.device != backend.device:
            raise ValueError(f"a {backend.device} model cannot run on the {shared.device} worker")
        self.backend = backend
        self._owned = shared is None
        self.device_worker = shared or DeviceWorker(
            backend.device, max_batch, on_batch, name=name, clock=clock
        )

    async def submit(
        self,
        reference: np.ndarray,
        masked: np.ndarray,
        mel: np.ndarray,
        deadline: float,
        *,
        then: Callable[[np.ndarray], np.ndarray] | None = None,
        executor: Executor | None = None,
    ) -> np.ndarray:
        """The mouth for one frame, or ``then(mouth)`` computed in ``executor`` if given."""
        return await self.device_worker.submit(
            self.backend, reference, masked, mel, deadline, then=then, executor=executor
        )

    def claim_phase(self) -> float:
        """See :meth:`DeviceWorker.claim_phase`: phases are the device's, shared by its models."""
        return self.device_worker.claim_phase()

    def release_phase(self, phase: float) -> None:
        self.device_worker.release_phase(phase)

    @property
    def depth(self) -> int:
        """Requests waiting for the device's thread, of every model on it."""
        return self.device_worker.depth

    @property
    def stats(self) -> WorkerStats:
        """The device's figures, of every model on it."""
        return self.device_worker.stats

    async def aclose(self) -> None:
        """Close the device worker if this model has it alone; a shared one is its pool's."""
        if self._owned:
            await self.device_worker.aclose()


def _by_due(request: _Request) -> float:
    return request.deadline


def _give_up(request: _Request) -> None:
    """Fail a hopeless request with :class:`TooLate`: its frame keeps the previous picture."""
    _resolve(request, None, TooLate("the frame was due before it could be generated"))


def _finish(request: _Request, mouth: np.ndarray) -> None:
    """Hand the mouth back, or on to the request's next step first."""
    then, executor = request.then, request.executor
    if then is None or executor is None:
        _resolve(request, mouth, None)
        return
    try:
        step = executor.submit(then, mouth)
    except RuntimeError as exc:  # the executor was shut down
        _resolve(request, None, exc)
        return

    def done(step: concurrent.futures.Future[np.ndarray]) -> None:
        if step.cancelled():
            _resolve(request, None, concurrent.futures.CancelledError())
        elif (error := step.exception()) is not None:
            _resolve(request, None, error)
        else:
            _resolve(request, step.result(), None)

    step.add_done_callback(done)


def _resolve(request: _Request, value: np.ndarray | None, error: BaseException | None) -> None:
    def settle() -> None:
        if request.future.done():
            return
        if error is not None:
            request.future.set_exception(error)
        else:
            assert value is not None
            request.future.set_result(value)

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        request.loop.call_soon_threadsafe(settle)
