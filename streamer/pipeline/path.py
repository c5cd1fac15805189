"""The frames in flight: prepared, rendering, then published in order on the AV frame bus.

The clock (:mod:`streamer.pipeline.clock`) says when; this says what. A frame is prepared
from the timeline, rendered in the background, its picture handed to the session's encoders
as soon as it is composited (in frame order, ahead of its due time), and published when due.
A frame whose picture is late is still published on time with its own audio and the
previous picture (a dropped frame), so audio never stops and never drifts from video; its
encoders get that previous picture at publication, which encodes to a small frame.

:meth:`FramePath.reset` is the interrupt: every frame in flight is silenced and, unless its
picture is already encoding, rendered again idle; the epoch makes any late result of the
old render be discarded.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from streamer.engine.worker import TooLate, WorkerClosed
from streamer.pipeline.frames import AVFrame, FrameBus
from streamer.pipeline.prepare import PreparedFrame
from streamer.pipeline.render import FrameRenderer

log = logging.getLogger(__name__)


class PictureSink(Protocol):
    """Takes each frame's picture as soon as it is composited, in frame order (an encoder)."""

    @property
    def next_index(self) -> int:
        """The first frame index it has no picture for yet."""

    def commit(self, index: int, rgb: np.ndarray) -> None: ...


@dataclass(eq=False)
class _Job:
    """A prepared frame waiting for its publication time."""

    frame: PreparedFrame
    due: float
    task: asyncio.Task[np.ndarray]
    epoch: int


Prepare = Callable[[int], PreparedFrame]
Published = Callable[[PreparedFrame, AVFrame, bool], None]


class FramePath:
    """Prepare -> render -> commit pictures -> publish, for one session's frames."""

    def __init__(
        self,
        prepare: Prepare,
        renderer: FrameRenderer,
        bus: FrameBus[AVFrame],
        *,
        sinks: Callable[[], Iterable[PictureSink]] = tuple,
        on_published: Published | None = None,
        flush: Callable[[], None] | None = None,
        name: str = "",
    ) -> None:
        self.renderer = renderer
        self.bus = bus
        self._prepare = prepare
        self._sinks = sinks
        self._on_published = on_published
        self._flush = flush  # an offline generator runs what it holds before we wait on it
        self._name = name
        self._inflight: collections.deque[_Job] = collections.deque()
        self._next_prepare = 0
        self._epoch = 0
        self._last_video: np.ndarray | None = None

    @property
    def next_prepare(self) -> int:
        return self._next_prepare

    @property
    def epoch(self) -> int:
        return self._epoch

    def head(self) -> int | None:
        return self._inflight[0].frame.index if self._inflight else None

    def prepare(self, due: float) -> None:
        k = self._next_prepare
        frame = self._prepare(k)
        self._next_prepare = k + 1
        self._inflight.append(_Job(frame, due, self._render(frame, due), self._epoch))

    def _render(self, frame: PreparedFrame, due: float) -> asyncio.Task[np.ndarray]:
        task = asyncio.get_running_loop().create_task(
            self.renderer.render(frame.index, frame.mel, due)
        )
        task.add_done_callback(self._commit_ready)
        return task

    async def finish_head(self) -> None:
        task = self._inflight[0].task
        # An offline generator holds requests until a batch is full: run what it holds only
        # when the frame to publish is still among them, so the others keep filling batches.
        if not task.done() and self._flush is not None:
            self._flush()
        await asyncio.wait((task,))

    def _commit_ready(self, _: object = None) -> None:
        """Hand composited pictures to the encoders in frame order, ahead of their due time.

        A frame whose picture is not ready holds back the later ones until it is published
        (without a new picture); from then on it is out of the way.
        """
        sinks = tuple(self._sinks())
        if not sinks:
            return
        for job in self._inflight:
            task = job.task
            if not task.done() or task.cancelled() or task.exception() is not None:
                return
            for sink in sinks:
                if sink.next_index <= job.frame.index:
                    sink.commit(job.frame.index, task.result())

    def publish(self, now: float) -> AVFrame:
        job = self._inflight.popleft()
        video, fresh = self._take_video(job)
        frame = job.frame
        for sink in self._sinks():
            # Late: the encoder repeats the previous picture (a small, cheap frame), so the
            # viewers' video keeps its 40 ms cadence.
            if sink.next_index <= frame.index:
                sink.commit(frame.index, video)
        out = AVFrame(
            index=frame.index,
            video=video,
            audio=frame.audio,
            utterance_id=frame.utterance_id,
            audio_in_at=frame.audio_in_at,
            published_at=now,
        )
        self.bus.publish(out)
        self._commit_ready()  # a late picture no longer holds the next ones back
        if self._on_published is not None:
            self._on_published(frame, out, fresh)
        return out

    def _take_video(self, job: _Job) -> tuple[np.ndarray, bool]:
        """The job's picture and True, or the previous picture and False (dropped)."""
        task = job.task
        video: np.ndarray | None = None
        if task.done() and not task.cancelled() and job.epoch == self._epoch:
            exc = task.exception()
            if exc is None:
                video = task.result()
            elif isinstance(exc, WorkerClosed):
                raise exc
            elif not isinstance(exc, TooLate):  # too late: the worker gave up, dropped
                log.error("%s: frame %d failed", self._name, job.frame.index, exc_info=exc)
        else:
            task.cancel()
        if video is None:
            if self._last_video is None:
                self._last_video = self.renderer.still(job.frame.index)
            return self._last_video, False
        self._last_video = video
        return video, True

    def switch(self, renderer: FrameRenderer) -> None:
        """Render with ``renderer`` from the next frame prepared on (a new avatar)."""
        self.renderer = renderer
        self._last_video = None

    def reset(self) -> int:
        """Silence every frame in flight (an interrupt); returns the first frame not yet
        prepared, from which on the timeline must be cut."""
        self._epoch += 1
        sinks = tuple(self._sinks())
        for job in self._inflight:
            job.frame.silence()
            index = job.frame.index
            if sinks and all(sink.next_index > index for sink in sinks):
                job.epoch = self._epoch  # already encoding: its picture stays (one frame)
                continue
            job.task.cancel()
            job.task = self._render(job.frame, job.due)
            job.epoch = self._epoch
        return self._next_prepare

    async def aclose(self) -> None:
        tasks = [job.task for job in self._inflight]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
