"""Frame rendering: a prepared frame's mel window -> the generated mouth -> the composited
picture.

A window of digital silence reuses the idle mouth of its base frame, generated once. Every
other window goes to the generator, which composites in the executor straight from its own
thread (no hop through the event loop). A renderer belongs to one avatar: switching the
avatar makes a new renderer, and frames in flight finish with the one they started with.
A transparent renderer's pictures are colour and alpha side by side (twice as wide; see
:mod:`models.compositor`).

With a :class:`~streamer.pipeline.provenance.Provenance`, every picture is labelled and
marked here, the one place that all pictures of a session or a render pass through. With a
:class:`~streamer.pipeline.canvas.Canvas`, every picture is first fitted to the session's
fixed size, so an avatar of another size never changes the size its outputs were made for.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Protocol

import numpy as np

from models.audio import silence_mel
from models.avatar import Avatar
from models.compositor import Compositor
from streamer.pipeline.canvas import Canvas
from streamer.pipeline.provenance import Provenance


class Generator(Protocol):
    """The mouth generator, by due time (:class:`~streamer.engine.worker.InferenceWorker`)."""

    async def submit(
        self,
        reference: np.ndarray,
        masked: np.ndarray,
        mel: np.ndarray,
        deadline: float,
        *,
        then: Callable[[np.ndarray], np.ndarray] | None = None,
        executor: Executor | None = None,
    ) -> np.ndarray: ...


class FrameRenderer:
    """One avatar's pictures: the generator's mouth pasted into its base frame."""

    def __init__(
        self,
        avatar: Avatar,
        generator: Generator,
        executor: Executor,
        compositor: Compositor | None = None,
        *,
        transparent: bool = False,
        provenance: Provenance | None = None,
        canvas: Canvas | None = None,
    ) -> None:
        self.avatar = avatar
        self.canvas = canvas
        self.generator = generator
        self.compositor = compositor or Compositor(avatar, transparent=transparent)
        self.provenance = provenance
        self._executor = executor
        self._silence = np.tile(silence_mel(), (avatar.window.length, 1))
        self._idle_mouths: dict[int, np.ndarray] = {}

    def still(self, k: int) -> np.ndarray:
        """Frame ``k``'s base frame as it is: the picture when none was ever rendered."""
        still = self.compositor.still(k)
        if self.provenance is None and self.canvas is None:
            return still
        return self._finish(k, still.copy())  # the base frame itself stays unmarked

    def _finish(self, k: int, picture: np.ndarray) -> np.ndarray:
        if self.canvas is not None:
            picture = self.canvas.fit(picture, self.compositor.transparent)
        if self.provenance is not None:
            self.provenance.apply(picture, transparent=self.compositor.transparent)
        return picture

    def compose(self, k: int, mouth: np.ndarray | None) -> np.ndarray:
        """Composite frame ``k`` and apply the provenance: in the executor, off the loop."""
        return self._finish(k, self.compositor.compose(k, mouth))

    async def render(self, k: int, mel: np.ndarray | None, due: float) -> np.ndarray:
        compositor, generator = self.compositor, self.generator
        if mel is not None:
            reference, masked = compositor.inputs(k)
            compose = functools.partial(self.compose, k)
            return await generator.submit(
                reference, masked, mel, due, then=compose, executor=self._executor
            )
        base = compositor.base_index(k)  # digital silence: the idle mouth, computed once
        mouth = self._idle_mouths.get(base)
        if mouth is None:
            reference, masked = compositor.inputs(k)
            mouth = await generator.submit(reference, masked, self._silence, due)
            self._idle_mouths[base] = mouth
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.compose, k, mouth)
