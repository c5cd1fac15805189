"""The feeder: one task that writes the queued utterances into the timeline, in order.

Each utterance is written no earlier than ``now + latency`` and no more than the session's
buffer ahead: decoded audio a second at a time, text a sentence at a time (synthesised once
less than ``tts_ahead_s`` is buffered), a live stream chunk by chunk as it arrives. A live
stream that fell behind real time is caught up (:meth:`Feeder.reclaim`); one sent at or
ahead of real time plays every sample. An interrupt
(:meth:`Feeder.reset`) abandons the utterance being fed and starts the task afresh.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Executor
from typing import Any

import numpy as np

from models.audio import SAMPLE_RATE
from streamer.pipeline.catchup import shorten
from streamer.pipeline.timeline import Timeline, TimelineFull
from streamer.session.config import SessionConfig, SpeechSource
from streamer.session.events import SessionEvent, SpeechFailed
from streamer.session.utterances import LiveStream, Utterance, UtteranceQueue

log = logging.getLogger(__name__)

RECLAIM_SLACK = SAMPLE_RATE // 200  # 5 ms of delay is tolerated ...
QUIET = 0.01  # ... beyond it, samples quieter than -40 dBFS are dropped to catch up ...
MIN_PAUSE = SAMPLE_RATE // 200  # ... from a pause of 5 ms at least (a zero crossing is not one)
# A hold-up longer than this is the client pausing, not a delay to give back.
RECLAIM_MAX = SAMPLE_RATE * 2 // 5
CATCHUP_RATE = 10  # a voice without pauses loses at most 1 sample in 10 (10 % faster)


class Feeder:
    """Writes utterances into ``timeline``; ``now_pos()`` is the sample playing now and
    ``now()`` the session clock's time (when a live stream's piece arrived)."""

    def __init__(
        self,
        queue: UtteranceQueue,
        timeline: Timeline,
        *,
        config: SessionConfig,
        now_pos: Callable[[], int],
        now: Callable[[], float],
        emit: Callable[[SessionEvent], None],
        speech: SpeechSource | None,
        speech_executor: Executor | None,
        start_task: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]],
        name: str,
        extra_latency_s: Callable[[], float] | None = None,
    ) -> None:
        self._queue = queue
        self._timeline = timeline
        self._config = config
        # The latency budget grows with the session's frame lead (streamer/pipeline/lead.py):
        # windows taken earlier must still find the audio they look ahead into.
        self._extra_latency_s = extra_latency_s or (lambda: 0.0)
        self._limit = int(config.max_buffer_s * SAMPLE_RATE)
        self._now_pos = now_pos
        self._now = now
        self._emit = emit
        self._speech = speech
        self._speech_executor = speech_executor
        self._start_task = start_task  # the session owns the task (and its failure)
        self._name = name
        self._task: asyncio.Task[None] | None = None

    @property
    def latency(self) -> int:
        """Samples between the one playing and where new speech is written."""
        return int((self._config.latency_s + self._extra_latency_s()) * SAMPLE_RATE)

    def start(self) -> None:
        self._task = self._start_task(self.run(), "feeder")

    def reset(self) -> None:
        """Abandon what is being fed (an interrupt) and wait for the next utterance."""
        if self._task is not None:
            self._task.cancel()
            self.start()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def excess(self) -> int:
        """How far the timeline is written beyond ``now + latency``, in samples."""
        return self._timeline.write_pos - (self._now_pos() + self.latency)

    async def run(self) -> None:
        while True:
            utt = await self._queue.next()
            try:
                await self._feed(utt)
            except Exception as exc:  # this utterance fails, not the session
                log.exception("%s: utterance %s failed", self._name, utt.id)
                message = str(exc) or type(exc).__name__
                self._emit(SpeechFailed("speech_failed", utt.id, message))
            self._queue.fed(utt)

    async def _feed(self, utt: Utterance) -> None:
        if utt.samples is not None:
            await self._feed_audio(utt, utt.samples)
        elif utt.stream is not None:
            await self._feed_stream(utt, utt.stream)
        else:
            await self._feed_text(utt)

    async def _feed_audio(self, utt: Utterance, samples: np.ndarray) -> None:
        for start in range(0, len(samples), SAMPLE_RATE):
            piece = samples[start : start + SAMPLE_RATE]
            await self._until_buffered_below(self._limit - len(piece))
            self._write(utt, piece)

    async def _feed_stream(self, utt: Utterance, stream: LiveStream) -> None:
        while (chunk := await stream.next_chunk()) is not None:
            chunk = self.reclaim(stream, chunk)
            joins, before = utt.written > 0, self._timeline.write_pos
            try:
                pos = self._write(utt, chunk)
            except TimelineFull:
                log.warning("%s: stream %s overflowed; dropping", self._name, utt.id)
                stream.drop()
                continue
            if joins:
                held_up(stream, pos - before)

    async def _feed_text(self, utt: Utterance) -> None:
        assert self._speech is not None
        loop = asyncio.get_running_loop()
        pool = self._speech_executor
        chunks: Iterator[np.ndarray] = await loop.run_in_executor(pool, self._speech, utt.text)
        ahead = int(self._config.tts_ahead_s * SAMPLE_RATE)
        half = self._limit // 2
        while True:
            await self._until_buffered_below(ahead)
            chunk = await loop.run_in_executor(pool, next, chunks, None)
            if chunk is None:
                return
            for start in range(0, len(chunk), half):
                piece = chunk[start : start + half]
                await self._until_buffered_below(self._limit - len(piece))
                self._write(utt, piece)

    def _write(self, utt: Utterance, chunk: np.ndarray) -> int:
        pos = self._timeline.write(
            chunk,
            now_pos=self._now_pos(),
            latency=self.latency,
            utterance_id=utt.id,
            arrived_at=self._now(),
            # A live stream's next piece joins the last one (jitter costs no gap)
            contiguous=utt.live and utt.written > 0,
        )
        utt.written += len(chunk)
        utt.end_pos = pos + len(chunk)
        self._queue.written(utt)
        return pos

    def reclaim(self, stream: LiveStream, chunk: np.ndarray) -> np.ndarray:
        """Give back the delay a live stream carries (``stream.behind``), never more than
        it is written ahead of ``now + latency``.

        A stream carries a delay only when it fell behind real time: one of its pieces
        came after its place had played, so silence played there and the rest of the
        stream plays that much later (:func:`held_up`). Pauses give the time back: their
        quiet samples are skipped. A voice that never pauses loses a pitch period now and
        then instead (:mod:`streamer.pipeline.catchup`), at most one sample in
        ``CATCHUP_RATE``. A client that sends at or ahead of real time never carries a
        delay, however far ahead it is written, so it keeps every sample and every pause.
        """
        budget = min(stream.behind, self.excess())
        stream.since_cut += len(chunk)
        if budget <= RECLAIM_SLACK or not len(chunk):
            return chunk
        loud = np.flatnonzero(np.abs(chunk) >= QUIET)
        quiet_head = int(loud[0]) if len(loud) else len(chunk)
        if quiet_head >= MIN_PAUSE:  # a pause (a zero crossing is not one)
            dropped = min(quiet_head, budget)
            stream.behind -= dropped
            return chunk[dropped:]
        shorter = shorten(chunk, min(budget, stream.since_cut // CATCHUP_RATE))
        if len(shorter) < len(chunk):
            stream.since_cut = 0
            stream.behind -= len(chunk) - len(shorter)
        return shorter

    async def _until_buffered_below(self, samples: int) -> None:
        # Only the clock drains the timeline, at exactly real time (and only this task
        # writes it), so the wait is known in advance.
        ahead = self._timeline.ahead(self._now_pos())
        if ahead > samples:
            await asyncio.sleep((ahead - samples) / SAMPLE_RATE)


def held_up(stream: LiveStream, gap: int) -> None:
    """A piece of ``stream`` was written ``gap`` samples after its previous one: the
    silence that played while it was late. Up to ``RECLAIM_MAX`` that is a delay the stream
    now carries (a network hold-up, a busy machine); longer, it is the client pausing, and
    the stream starts over on a new schedule with nothing to give back."""
    if gap <= 0:
        return
    stream.behind = stream.behind + gap if gap <= RECLAIM_MAX else 0
