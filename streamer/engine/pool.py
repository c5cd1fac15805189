"""The server's engines: each avatar's model, loaded on first use, on its device's one worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from models.avatar import Avatar
from streamer.engine.base import Backend
from streamer.engine.worker import Clock, DeviceWorker, InferenceWorker, WorkerClosed


@dataclass(frozen=True)
class Engine:
    """An avatar with the worker that runs its generator."""

    avatar: Avatar
    worker: InferenceWorker


EngineLoader = Callable[[str], tuple[Avatar, Backend]]  # blocking: run in an executor


class EnginePool:
    """One engine per avatar, loaded on first use (off the event loop) and kept until close.

    Models share their device's worker thread (DESIGN.md: one inference worker per device), so
    sessions of different avatars on one GPU meet in its batches and those on one CPU spread
    over the frame period together. ``max_batch``, ``on_batch`` and ``clock`` configure each
    device worker (see :class:`~streamer.engine.worker.DeviceWorker`).
    """

    def __init__(
        self,
        loader: EngineLoader,
        max_batch: int | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self._loader = loader
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._clock = clock
        self._engines: dict[str, Engine] = {}
        self._devices: dict[str, DeviceWorker] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    async def get(self, name: str) -> Engine:
        async with self._lock:
            if self._closed:
                raise WorkerClosed("the engines are closed")
            engine = self._engines.get(name)
            if engine is None:
                avatar, backend = await asyncio.to_thread(self._loader, name)
                worker = InferenceWorker(backend, shared=self._device(backend.device))
                engine = self._engines[name] = Engine(avatar, worker)
            return engine

    def _device(self, device: str) -> DeviceWorker:
        worker = self._devices.get(device)
        if worker is None:
            name = f"inference-{device}"
            worker = self._devices[device] = DeviceWorker(
                device, self._max_batch, self._on_batch, name=name, clock=self._clock
            )
        return worker

    @property
    def depth(self) -> int:
        return sum(worker.depth for worker in self._devices.values())

    @property
    def frames_given_up(self) -> int:
        return sum(worker.stats.skipped for worker in self._devices.values())

    async def aclose(self) -> None:
        self._closed = True
        self._engines = {}
        devices, self._devices = list(self._devices.values()), {}
        for worker in devices:
            await worker.aclose()
