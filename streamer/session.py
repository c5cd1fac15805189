"""A live session: one clock, one playout timeline, an utterance queue, AV frames out.

The clock publishes frame k at ``t0 + k * 40 ms`` (paced by those timestamps, never by a
fixed sleep). ``lead`` seconds before that it commits frame k's audio window from the
timeline, asks the inference worker for the mouth (or reuses the cached idle mouth when the
window is digital silence) and composites it in an executor. A frame whose picture is late
is still published on time with its own audio and the previous picture (a dropped frame),
so audio never stops and never drifts from video.

Speech comes in as utterances, played strictly in order: text (the built-in TTS, synthesised
a few seconds ahead), decoded audio, or a live stream fed while it plays. Each is written into
the timeline no earlier than ``now + latency``. ``interrupt`` drops queued and playing speech
from the first frame not yet prepared; the frame in flight is re-rendered idle and silenced.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from models.audio import (
    SAMPLE_RATE,
    SAMPLES_PER_VIDEO_FRAME,
    silence_mel,
    window_mel,
    window_range,
)
from models.avatar import Avatar
from models.compositor import Compositor
from streamer.engine.worker import InferenceWorker, TooLate, WorkerClosed
from streamer.metrics import Metrics
from streamer.pipeline.catchup import shorten
from streamer.pipeline.frames import FRAME_SECONDS, AVFrame, FrameBus
from streamer.pipeline.timeline import Timeline, TimelineFull, frame_range

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 100_000
RECLAIM_SLACK = SAMPLE_RATE // 200  # 5 ms of live-stream lateness is tolerated ...
QUIET = 0.01  # ... beyond it, samples quieter than -40 dBFS are dropped to catch up ...
RECLAIM_MAX = SAMPLE_RATE * 2 // 5  # ... up to 400 ms behind, once it has been steady ...
MIN_PAUSE = SAMPLE_RATE // 200  # 5 ms of quiet at least: a pause to shorten
STEADY = SAMPLE_RATE // 2  # ... for 0.5 s of its audio (not sent faster than real time)
CATCHUP_RATE = 10  # a voice without pauses loses at most 1 sample in 10 (10 % faster)
SpeechSource = Callable[[str], Iterator[np.ndarray]]  # text -> 16 kHz float32 chunks (blocking)


class SpeechRejected(ValueError):
    """Speech the session cannot take; ``code`` names why (for API errors)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SessionConfig:
    latency_s: float = 0.135  # speech is written this far ahead of the sample playing now
    lead_s: float = 0.025  # a frame's window is taken this long before it is published
    max_buffer_s: float = 60.0  # audio buffered ahead (timeline + queued) per session
    tts_ahead_s: float = 4.0  # synthesise the next sentence when less than this is buffered
    start_delay_s: float = 0.05
    event_queue: int = 256


@dataclass(frozen=True)
class SessionOptions:
    video_codec: Literal["vp8", "h264"] = "vp8"
    width: int | None = None
    height: int | None = None


@dataclass(eq=False)
class Utterance:
    id: str
    kind: Literal["text", "audio", "stream"]
    text: str = ""
    samples: np.ndarray | None = None
    stream: LiveStream | None = None
    written: int = 0
    end_pos: int = 0  # timeline position after its last written sample
    input_done: bool = False
    published: int = 0  # its samples published so far
    started: bool = False
    finished: bool = False

    @property
    def unwritten(self) -> int:
        if self.kind == "audio" and self.samples is not None:
            return len(self.samples) - self.written
        if self.kind == "stream" and self.stream is not None:
            return self.stream.pending
        return 0


class LiveStream:
    """Audio pushed while it plays (the WebSocket, the microphone uplink): one utterance."""

    def __init__(self, session: Session, utterance: Utterance) -> None:
        self._session = session
        self.utterance = utterance
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self.pending = 0
        self.ended = False
        self.dropped = False  # interrupted or session closed: pushes are ignored
        self.since_cut = 0  # samples since catch-up last shortened this stream
        self.last_excess = 0  # how far behind it was at its last chunk, in samples
        self.steady = 0  # samples since its lead last grew
        self._wake = asyncio.Event()

    @property
    def utterance_id(self) -> str:
        return self.utterance.id

    def push(self, samples16k: np.ndarray) -> None:
        """Queue 16 kHz mono float samples; raises :class:`SpeechRejected` when the session
        would buffer more than its limit (a client sending faster than real time)."""
        if self.dropped:
            return
        if self.ended:
            raise SpeechRejected("stream_ended", "this audio stream has already ended")
        x = np.asarray(samples16k, np.float32).reshape(-1)
        if not len(x):
            return
        self._session._check_budget(len(x))
        self._chunks.append(x)
        self.pending += len(x)
        self._wake.set()

    def end(self) -> None:
        self.ended = True
        self._wake.set()

    def drop(self) -> None:
        self.dropped = True
        self.ended = True
        self._chunks.clear()
        self.pending = 0
        self._wake.set()

    async def next_chunk(self) -> np.ndarray | None:
        """The next pushed chunk, or None once the stream has ended and is drained."""
        while not self._chunks:
            if self.ended:
                return None
            self._wake.clear()
            await self._wake.wait()
        chunk = self._chunks.popleft()
        self.pending -= len(chunk)
        return chunk


@dataclass(eq=False)
class _Job:
    """A prepared frame waiting for its publication time."""

    index: int
    audio: np.ndarray  # int16 (640,)
    counts: dict[str, int]
    utterance_id: str | None
    audio_in_at: float | None
    task: asyncio.Task[np.ndarray]
    # Its picture, handed to the shared encoder once composited (see Session._commit_ready).
    encoded: concurrent.futures.Future[tuple[bytes | None, bool]] | None = None
    committed: bool = False


class PictureSink(Protocol):
    """Takes each frame's picture as soon as it is composited, in frame order (an encoder)."""

    def commit(
        self, index: int, rgb: np.ndarray
    ) -> concurrent.futures.Future[tuple[bytes | None, bool]] | None: ...


@dataclass
class SessionStats:
    frames: int = 0
    generated: int = 0
    dropped: int = 0
    intervals_ms: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=250)
    )
    latency_ms: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=250)
    )


def _p(values: collections.deque[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if values else None


class Session:
    def __init__(
        self,
        avatar: Avatar,
        worker: InferenceWorker,
        *,
        executor: Executor,
        speech: SpeechSource | None = None,
        speech_executor: Executor | None = None,
        metrics: Metrics | None = None,
        config: SessionConfig | None = None,
        options: SessionOptions | None = None,
        on_failure: Callable[[Session, BaseException], None] | None = None,
        session_id: str | None = None,
    ) -> None:
        self.id = session_id or secrets.token_hex(8)
        self.avatar = avatar
        self.view_token = secrets.token_urlsafe(24)
        self.created = time.time()
        self.options = options or SessionOptions()
        self.config = config or SessionConfig()
        self.bus: FrameBus[AVFrame] = FrameBus()
        self.outputs: dict[str, dict[str, Any]] = {}  # output id -> description (outputs add)
        self.viewers = 0
        self.stats = SessionStats()
        # The shared encoder of this session's viewers, while it has any (outputs set it).
        self.picture_sink: PictureSink | None = None
        self.failure: BaseException | None = None
        self._worker = worker
        self._executor = executor
        self._speech = speech
        self._speech_executor = speech_executor or executor
        self._metrics = metrics
        self._on_failure = on_failure
        self._compositor = Compositor(avatar)
        self._window_cfg = avatar.window
        self._timeline = Timeline(self.config.max_buffer_s)
        self._latency = int(self.config.latency_s * SAMPLE_RATE)
        self._silence = np.tile(silence_mel(), (self._window_cfg.length, 1))
        self._idle_mouths: dict[int, np.ndarray] = {}
        self._queue: collections.deque[Utterance] = collections.deque()
        self._queue_wake = asyncio.Event()
        self._feeding: Utterance | None = None
        self._active: dict[str, Utterance] = {}  # written into the timeline, not finished
        self._inflight: collections.deque[_Job] = collections.deque()
        self._event_queues: set[asyncio.Queue[dict[str, Any]]] = set()
        self._ready = asyncio.Event()
        self._t0: float | None = None
        self._next_prep = 0
        self._epoch = 0
        self._last_video: np.ndarray | None = None
        self._last_published: float | None = None
        self._clock_task: asyncio.Task[None] | None = None
        self._release_phase: Callable[[], None] | None = None
        self._feeder_task: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        if self._closed:
            raise RuntimeError(f"session {self.id} is closed")
        self._started = True
        self._clock_task = self._own(self._run_clock(), "clock")
        self._feeder_task = self._own(self._run_feeder(), "feeder")

    def _own(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            coro, name=f"session-{self.id}-{name}"
        )
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closed:
            return
        exc = task.exception()
        if exc is None:
            return
        self.failure = exc
        log.error("session %s failed in %s", self.id, task.get_name(), exc_info=exc)
        if self._on_failure is not None:
            self._on_failure(self, exc)

    async def aclose(self) -> None:
        """Stop the clock and the feeder, end every stream and event listener. Idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks: list[asyncio.Task[Any]] = [job.task for job in self._inflight]
        tasks += [t for t in (self._clock_task, self._feeder_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
        if self._release_phase is not None:
            self._release_phase()
            self._release_phase = None
        for utt in self._pending_utterances():
            if utt.stream is not None:
                utt.stream.drop()
            if not utt.finished:
                self._finish(utt, interrupted=True)
        self._queue.clear()
        self._active.clear()
        self._feeding = None
        self._emit({"type": "session_closed", "session_id": self.id})
        self.bus.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def ready(self) -> bool:
        """True once the first frame has been published."""
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    @property
    def state(self) -> Literal["idle", "speaking"]:
        speaking = any(u.started and not u.finished for u in self._active.values())
        return "speaking" if speaking else "idle"

    @property
    def video_codec(self) -> Literal["vp8", "h264"]:
        return self.options.video_codec

    def viewer_added(self) -> None:
        self.viewers += 1

    def viewer_removed(self) -> None:
        self.viewers = max(0, self.viewers - 1)

    # --- speech in -------------------------------------------------------------------------

    def _new_utterance(self, kind: Literal["text", "audio", "stream"]) -> Utterance:
        if self._closed:
            raise SpeechRejected("session_closed", f"session {self.id} is closed")
        return Utterance(id=secrets.token_hex(6), kind=kind)

    def _enqueue(self, utt: Utterance) -> str:
        self._queue.append(utt)
        self._queue_wake.set()
        return utt.id

    def speak_text(self, text: str) -> str:
        if not isinstance(text, str) or not any(c.isalnum() for c in text):
            raise SpeechRejected("empty_text", "text is empty: give at least one word to speak")
        if len(text) > MAX_TEXT_CHARS:
            raise SpeechRejected(
                "text_too_long", f"text has {len(text)} characters; at most {MAX_TEXT_CHARS}"
            )
        if self._speech is None:
            raise SpeechRejected("tts_unavailable", "this server has no text-to-speech")
        utt = self._new_utterance("text")
        utt.text = text
        return self._enqueue(utt)

    def speak_audio(self, samples16k: np.ndarray) -> str:
        x = np.asarray(samples16k, np.float32).reshape(-1)
        if not len(x):
            raise SpeechRejected("empty_audio", "the audio has no samples")
        utt = self._new_utterance("audio")
        self._check_budget(len(x))
        utt.samples = np.clip(np.nan_to_num(x), -1.0, 1.0)
        return self._enqueue(utt)

    def open_stream(self) -> LiveStream:
        utt = self._new_utterance("stream")
        stream = LiveStream(self, utt)
        utt.stream = stream
        self._enqueue(utt)
        return stream

    def buffered_samples(self) -> int:
        """Audio ahead of the clock: in the timeline plus queued and not yet written."""
        return self._timeline.ahead(self._now_pos()) + sum(
            u.unwritten for u in self._pending_utterances()
        )

    def _check_budget(self, extra: int) -> None:
        limit = int(self.config.max_buffer_s * SAMPLE_RATE)
        if self.buffered_samples() + extra > limit:
            raise SpeechRejected(
                "buffer_full",
                f"more than {self.config.max_buffer_s:.0f} s of audio would be queued in this "
                "session: send audio no faster than real time, or wait for playback",
            )

    def _pending_utterances(self) -> list[Utterance]:
        seen: dict[str, Utterance] = dict(self._active)
        if self._feeding is not None:
            seen[self._feeding.id] = self._feeding
        for utt in self._queue:
            seen[utt.id] = utt
        return list(seen.values())

    @property
    def queued(self) -> int:
        return len(self._queue) + (1 if self._feeding is not None else 0)

    def switch_avatar(self, avatar: Avatar, worker: InferenceWorker) -> None:
        """Show ``avatar`` from the next frame prepared on. The clock, the speech and the
        outputs carry on, so viewers stay connected (they get the new frame size, if it
        differs); frames already in flight finish with the avatar they started with."""
        self.avatar = avatar
        self._worker = worker
        self._compositor = Compositor(avatar)
        self._window_cfg = avatar.window
        self._silence = np.tile(silence_mel(), (self._window_cfg.length, 1))
        self._idle_mouths = {}
        self._last_video = None
        self._emit({"type": "avatar_changed", "avatar": avatar.name})

    def interrupt(self) -> list[str]:
        """Drop queued and playing speech; the next frame published is silent and idle."""
        dropped = [u for u in self._pending_utterances() if not u.finished]
        self._queue.clear()
        self._feeding = None
        self._epoch += 1
        if self._feeder_task is not None and not self._closed:
            self._feeder_task.cancel()
            self._feeder_task = self._own(self._run_feeder(), "feeder")
        cut = self._next_prep * SAMPLES_PER_VIDEO_FRAME
        self._timeline.cut(cut)
        for job in self._inflight:
            job.audio = np.zeros(SAMPLES_PER_VIDEO_FRAME, np.int16)
            job.counts, job.utterance_id, job.audio_in_at = {}, None, None
            if job.committed:  # already encoding: its picture stays (one frame at most)
                continue
            job.task.cancel()
            job.task = asyncio.get_running_loop().create_task(
                self._render(job.index, None, self._due(job.index))
            )
            job.task.add_done_callback(self._commit_ready)
        for utt in dropped:
            if utt.stream is not None:
                utt.stream.drop()
            self._finish(utt, interrupted=True)
        self._active.clear()
        return [u.id for u in dropped]

    # --- events ----------------------------------------------------------------------------

    def subscribe_events(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.config.event_queue)
        self._event_queues.add(queue)
        return queue

    def unsubscribe_events(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._event_queues.discard(queue)

    def _emit(self, event: dict[str, Any]) -> None:
        for queue in tuple(self._event_queues):
            if queue.full():  # a listener that stopped reading loses its oldest events
                queue.get_nowait()
            queue.put_nowait(event)

    def _finish(self, utt: Utterance, interrupted: bool) -> None:
        if utt.finished:
            return
        utt.finished = True
        self._active.pop(utt.id, None)
        self._emit(
            {
                "type": "playback_finished",
                "utterance_id": utt.id,
                "position_s": round(utt.published / SAMPLE_RATE, 3),
                "interrupted": interrupted,
            }
        )

    # --- feeding the timeline --------------------------------------------------------------

    def _now_pos(self) -> int:
        if self._t0 is None:
            return 0
        return max(0, int((asyncio.get_running_loop().time() - self._t0) * SAMPLE_RATE))

    def _write(self, utt: Utterance, chunk: np.ndarray) -> None:
        pos = self._timeline.write(
            chunk,
            now_pos=self._now_pos(),
            latency=self._latency,
            utterance_id=utt.id,
            arrived_at=asyncio.get_running_loop().time(),
            # A live stream's next piece joins the last one (jitter costs no gap)
            contiguous=utt.kind == "stream" and utt.written > 0,
        )
        utt.written += len(chunk)
        utt.end_pos = pos + len(chunk)
        self._active[utt.id] = utt

    def _reclaim(self, stream: LiveStream, chunk: np.ndarray) -> np.ndarray:
        """A live stream held up for longer than the timeline lets a late piece keep its
        place (``timeline.RESUME``) starts again a whole latency budget later, and stays
        that much behind, since its later chunks queue after it. Pauses give the time
        back: quiet samples beyond the latency budget are skipped. A voice that never pauses
        loses a pitch period now and then instead (:mod:`streamer.pipeline.catchup`), at most
        one sample in ``CATCHUP_RATE``.

        Only a stream that is steadily behind is caught up: one whose lead has not grown for
        ``STEADY`` of its audio, and is under ``RECLAIM_MAX``. A client sending faster than
        real time, or far ahead on purpose, keeps every sample and every pause.
        """
        excess = self._timeline.write_pos - (self._now_pos() + self._latency)
        growing = excess > stream.last_excess + len(chunk) // 2
        stream.last_excess = excess
        stream.steady = 0 if growing else stream.steady + len(chunk)
        stream.since_cut += len(chunk)
        if (
            excess <= RECLAIM_SLACK
            or excess > RECLAIM_MAX
            or stream.steady < STEADY
            or not len(chunk)
        ):
            return chunk
        loud = np.flatnonzero(np.abs(chunk) >= QUIET)
        quiet_head = int(loud[0]) if len(loud) else len(chunk)
        if quiet_head >= MIN_PAUSE:  # a pause (a zero crossing is not one)
            return chunk[min(quiet_head, excess) :]
        budget = min(excess, stream.since_cut // CATCHUP_RATE)
        shorter = shorten(chunk, budget)
        if len(shorter) < len(chunk):
            stream.since_cut = 0
        return shorter

    async def _until_buffered_below(self, samples: int) -> None:
        # Only the clock drains the timeline, at exactly real time (and only this task
        # writes it), so the wait is known in advance.
        ahead = self._timeline.ahead(self._now_pos())
        if ahead > samples:
            await asyncio.sleep((ahead - samples) / SAMPLE_RATE)

    async def _run_feeder(self) -> None:
        while True:
            while not self._queue:
                self._queue_wake.clear()
                await self._queue_wake.wait()
            utt = self._queue.popleft()
            self._feeding = utt
            try:
                await self._feed(utt)
            except Exception as exc:  # this utterance fails, not the session
                log.exception("session %s: utterance %s failed", self.id, utt.id)
                self._emit(
                    {
                        "type": "error",
                        "code": "speech_failed",
                        "utterance_id": utt.id,
                        "message": str(exc) or type(exc).__name__,
                    }
                )
            utt.input_done = True
            self._feeding = None
            if utt.written == 0:  # nothing to play (an empty stream): finished at once
                self._finish(utt, interrupted=False)

    async def _feed(self, utt: Utterance) -> None:
        loop = asyncio.get_running_loop()
        limit = int(self.config.max_buffer_s * SAMPLE_RATE)
        if utt.kind == "audio":
            assert utt.samples is not None
            step = SAMPLE_RATE
            for start in range(0, len(utt.samples), step):
                piece = utt.samples[start : start + step]
                await self._until_buffered_below(limit - len(piece))
                self._write(utt, piece)
        elif utt.kind == "stream":
            assert utt.stream is not None
            while (chunk := await utt.stream.next_chunk()) is not None:
                chunk = self._reclaim(utt.stream, chunk)
                try:
                    self._write(utt, chunk)
                except TimelineFull:
                    log.warning("session %s: stream %s overflowed; dropping", self.id, utt.id)
                    utt.stream.drop()
        else:
            assert self._speech is not None
            chunks: Iterator[np.ndarray] = await loop.run_in_executor(
                self._speech_executor, self._speech, utt.text
            )
            ahead = int(self.config.tts_ahead_s * SAMPLE_RATE)
            while True:
                await self._until_buffered_below(ahead)
                chunk = await loop.run_in_executor(self._speech_executor, next, chunks, None)
                if chunk is None:
                    return
                for start in range(0, len(chunk), limit // 2):
                    piece = chunk[start : start + limit // 2]
                    await self._until_buffered_below(limit - len(piece))
                    self._write(utt, piece)

    # --- the clock -------------------------------------------------------------------------

    def _due(self, k: int) -> float:
        assert self._t0 is not None
        return self._t0 + k * FRAME_SECONDS

    async def _run_clock(self) -> None:
        loop = asyncio.get_running_loop()
        # Every session's frames fall on one 40 ms grid, shifted by the phase its worker
        # gives it: the same for all on a GPU (their frames batch), spread out on a CPU.
        worker = self._worker
        phase = worker.claim_phase()
        self._release_phase = functools.partial(worker.release_phase, phase)
        grid = math.ceil((loop.time() + self.config.start_delay_s) / FRAME_SECONDS)
        self._t0 = grid * FRAME_SECONDS + phase
        lead = self.config.lead_s
        while True:
            next_prep = self._due(self._next_prep) - lead
            next_pub = self._due(self._inflight[0].index) if self._inflight else float("inf")
            delay = min(next_prep, next_pub) - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            if self._inflight and self._due(self._inflight[0].index) <= now:
                self._publish(self._inflight.popleft(), now)
            elif next_prep <= now:
                self._inflight.append(self._prepare(self._next_prep))
                self._next_prep += 1

    def _prepare(self, k: int) -> _Job:
        tl = self._timeline
        lo, hi = window_range(k, self._window_cfg)
        tl.commit(hi)
        a0, a1 = frame_range(k)
        pcm = tl.samples(a0, a1)
        tl.hear(a1)
        audio = np.clip(np.rint(pcm * 32767.0), -32768, 32767).astype(np.int16)
        counts: dict[str, int] = {}
        audio_in_at: float | None = None
        for span in tl.spans(a0, a1):
            s0, s1 = max(a0, span.start), min(a1, span.end)
            counts[span.utterance_id] = counts.get(span.utterance_id, 0) + (s1 - s0)
            # A span written at once plays from its start on: its later samples "arrive" as
            # they would have in real time, so a whole file does not count as late.
            arrived = span.arrived_at + (s0 - span.start) / SAMPLE_RATE
            audio_in_at = arrived if audio_in_at is None else min(audio_in_at, arrived)
        samples = tl.samples(lo, hi)
        mel = window_mel(samples, k, self._window_cfg) if samples.any() else None
        uid = max(counts, key=lambda u: counts[u]) if counts else None
        task = asyncio.get_running_loop().create_task(self._render(k, mel, self._due(k)))
        task.add_done_callback(self._commit_ready)
        return _Job(k, audio, counts, uid, audio_in_at, task)

    def _commit_ready(self, _: object = None) -> None:
        """Hand composited pictures to the encoder in frame order, ahead of their due time.

        A frame whose picture is not ready holds back the later ones until it is published
        (without a new picture); from then on it is out of the way.
        """
        sink = self.picture_sink
        if sink is None:
            return
        for job in self._inflight:
            if job.committed:
                continue
            task = job.task
            if not task.done() or task.cancelled() or task.exception() is not None:
                return
            job.committed = True
            job.encoded = sink.commit(job.index, task.result())

    async def _render(self, k: int, mel: np.ndarray | None, due: float) -> np.ndarray:
        # Taken once: a frame in flight during an avatar switch finishes with its own avatar.
        compositor, worker, idle_mouths = self._compositor, self._worker, self._idle_mouths
        mouth: np.ndarray | None
        if mel is None:  # digital silence: the idle mouth of this base frame, computed once
            base = compositor.base_index(k)
            mouth = idle_mouths.get(base)
            if mouth is None:
                reference, masked = compositor.inputs(k)
                mouth = await worker.submit(reference, masked, self._silence, due)
                idle_mouths[base] = mouth
        else:
            # Composited in the pool straight from the inference thread (no loop hop).
            reference, masked = compositor.inputs(k)
            compose = functools.partial(compositor.compose, k)
            return await worker.submit(
                reference, masked, mel, due, then=compose, executor=self._executor
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, compositor.compose, k, mouth)

    def _publish(self, job: _Job, now: float) -> None:
        video = self._take_video(job)
        sink = self.picture_sink
        if sink is not None and not job.committed:
            # Late: the encoder repeats the previous picture (a small, cheap frame), so the
            # viewers' video keeps its 40 ms cadence.
            job.committed = True
            job.encoded = sink.commit(job.index, video)
        frame = AVFrame(
            index=job.index,
            video=video,
            audio=job.audio,
            utterance_id=job.utterance_id,
            audio_in_at=job.audio_in_at,
            published_at=now,
            encoded_video=job.encoded,
        )
        self.bus.publish(frame)
        self._commit_ready()  # a late picture no longer holds the next ones back
        self._ready.set()
        stats, metrics = self.stats, self._metrics
        stats.frames += 1
        if self._last_published is not None:
            interval = (now - self._last_published) * 1000.0
            stats.intervals_ms.append(interval)
            if metrics is not None:
                metrics.frame_interval_ms.observe(interval)
        self._last_published = now
        if job.audio_in_at is not None:
            latency = (now - job.audio_in_at) * 1000.0
            stats.latency_ms.append(latency)
            if metrics is not None:
                metrics.speech_to_mouth_ms.observe(latency)
        self._advance_utterances(job)

    def _take_video(self, job: _Job) -> np.ndarray:
        task = job.task
        video: np.ndarray | None = None
        if task.done() and not task.cancelled():
            exc = task.exception()
            if exc is None:
                video = task.result()
            elif isinstance(exc, WorkerClosed):
                raise exc
            elif not isinstance(exc, TooLate):  # too late: the worker gave up, dropped
                log.error("session %s: frame %d failed", self.id, job.index, exc_info=exc)
        else:
            task.cancel()
        if video is None:
            self.stats.dropped += 1
            if self._metrics is not None:
                self._metrics.frames_dropped.inc()
            if self._last_video is None:
                self._last_video = self.avatar.frames[self._compositor.base_index(job.index)]
            return self._last_video
        self.stats.generated += 1
        if self._metrics is not None:
            self._metrics.frames_generated.inc()
        self._last_video = video
        return video

    def _advance_utterances(self, job: _Job) -> None:
        frame_end = (job.index + 1) * SAMPLES_PER_VIDEO_FRAME
        # In timeline order, so one utterance ending and the next starting in the same frame
        # give their events in that order.
        for uid, n in job.counts.items():
            utt = self._active.get(uid)
            if utt is None or utt.finished:
                continue
            if not utt.started:
                utt.started = True
                self._emit({"type": "speaking_started", "utterance_id": uid})
            utt.published += n
            if utt.input_done and utt.end_pos <= frame_end:
                self._finish(utt, interrupted=False)
        for utt in list(self._active.values()):
            if utt.input_done and utt.end_pos <= frame_end:
                self._finish(utt, interrupted=False)

    # --- figures ---------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        s = self.stats
        intervals = s.intervals_ms
        fps = 1000.0 / float(np.mean(intervals)) if intervals else 0.0
        return {
            "id": self.id,
            "avatar": self.avatar.name,
            "state": self.state,
            "ready": self.ready,
            "viewers": self.viewers,
            "outputs": [{"id": oid, **desc} for oid, desc in self.outputs.items()],
            "created": self.created,
            "video_codec": self.options.video_codec,
            "frames": s.frames,
            "frames_generated": s.generated,
            "frames_dropped": s.dropped,
            "fps": round(fps, 2),
            "frame_interval_ms_p95": _round(_p(intervals, 95)),
            "speech_to_mouth_ms_p50": _round(_p(s.latency_ms, 50)),
            "speech_to_mouth_ms_p95": _round(_p(s.latency_ms, 95)),
            "queued_utterances": self.queued,
            "buffered_s": round(self.buffered_samples() / SAMPLE_RATE, 3),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


SessionFactory = Callable[
    [str, SessionOptions, Callable[[Session, BaseException], None]], Awaitable[Session]
]


class TooManySessions(RuntimeError):
    pass


class SessionRegistry:
    """The live sessions of one app. A session whose tasks fail is closed and removed alone."""

    def __init__(
        self,
        factory: SessionFactory,
        max_sessions: int = 16,
        on_closed: Callable[[Session], Awaitable[None]] | None = None,
    ) -> None:
        self._factory = factory
        self.max_sessions = max_sessions
        self._on_closed = on_closed  # e.g. hang up the session's WebRTC peers
        self._sessions: dict[str, Session] = {}
        self._reapers: set[asyncio.Task[bool]] = set()
        self._closed = False

    async def create(self, avatar: str, options: SessionOptions | None = None) -> Session:
        if self._closed:
            raise RuntimeError("the server is shutting down")
        if len(self._sessions) >= self.max_sessions:
            raise TooManySessions(
                f"this server runs at most {self.max_sessions} sessions: delete one first"
            )
        session = await self._factory(avatar, options or SessionOptions(), self._failed)
        self._sessions[session.id] = session
        try:
            await session.start()
        except BaseException:
            self._sessions.pop(session.id, None)
            await session.aclose()
            raise
        return session

    def _failed(self, session: Session, exc: BaseException) -> None:
        task = asyncio.get_running_loop().create_task(self.delete(session.id))
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def list(self) -> list[Session]:
        return list(self._sessions.values())

    def __len__(self) -> int:
        return len(self._sessions)

    async def delete(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        await self._close(session)
        return True

    async def _close(self, session: Session) -> None:
        await session.aclose()
        if self._on_closed is not None:
            try:
                await self._on_closed(session)
            except Exception:
                log.exception("session %s: closing its outputs failed", session.id)

    async def aclose(self) -> None:
        """Close every session. Idempotent."""
        self._closed = True
        while self._sessions:
            _, session = self._sessions.popitem()
            await self._close(session)
        if self._reapers:
            await asyncio.gather(*self._reapers, return_exceptions=True)
