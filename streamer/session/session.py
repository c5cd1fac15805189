"""A live session: speech in, one clock, AV frames and encoded frames out.

The data's path, stage by stage:

1. Speech comes in as utterances (:mod:`.utterances`), played strictly in order: text (the
   built-in TTS), decoded audio, or a live stream fed while it plays.
2. The feeder (:mod:`.feeder`) writes them into the timeline
   (:mod:`streamer.pipeline.timeline`) no earlier than ``now + latency``.
3. The clock (:mod:`streamer.pipeline.clock`) prepares frame ``k`` ``lead`` seconds before
   it is due (:mod:`streamer.pipeline.prepare`), renders it in the background
   (:mod:`streamer.pipeline.render`) and publishes it on time on the AV frame bus
   (:mod:`streamer.pipeline.path`), with the previous picture if its own is late.
4. Encode once (:mod:`streamer.pipeline.encode`): one encoder per codec, owned here, gets each
   picture as soon as it is composited and publishes encoded frames next to the AV frames.

``interrupt`` asks each stage to reset: the queue drops its utterances, the feeder starts
afresh, the frames in flight are silenced, the timeline is cut after them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, Literal

import numpy as np

from models.audio import SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from models.avatar import Avatar
from streamer.engine.worker import InferenceWorker
from streamer.metrics import Metrics
from streamer.pipeline.canvas import Canvas
from streamer.pipeline.clock import FrameClock, LiveClock
from streamer.pipeline.encode import EncodedStream, EncodeStage, VideoCodec
from streamer.pipeline.frames import AVFrame, FrameBus
from streamer.pipeline.lead import AdaptiveLead
from streamer.pipeline.path import FramePath
from streamer.pipeline.prepare import PreparedFrame, prepare_frame
from streamer.pipeline.provenance import Provenance
from streamer.pipeline.render import FrameRenderer
from streamer.pipeline.timeline import Timeline
from streamer.session import utterances
from streamer.session.config import SessionConfig, SessionOptions, SpeechSource
from streamer.session.events import (
    AvatarChanged,
    EventHub,
    SessionClosed,
    SessionEvent,
    SessionFailed,
)
from streamer.session.feeder import Feeder
from streamer.session.outputs import SessionOutputs
from streamer.session.stats import SessionStats
from streamer.session.utterances import Kind, LiveStream, SpeechRejected, UtteranceQueue

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = SessionConfig.max_text_chars  # the default; the server's is in its config


class Session:
    """One avatar's live session (see the module docstring for the data's path).

    ``clock`` is the frame clock. By default the session makes a :class:`LiveClock` on its
    worker's phase when it starts; a :class:`~streamer.pipeline.clock.VirtualClock` runs the
    same frame path as fast as the machine allows, so tests can check pacing on its time.
    """

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
        clock: FrameClock | None = None,
    ) -> None:
        self.id = session_id or secrets.token_hex(8)
        self.avatar = avatar
        self.view_token = secrets.token_urlsafe(24)
        self.created = time.time()
        self.options = options or SessionOptions()
        height, width = avatar.frames.shape[1:3]  # the canvas: every output's size, for life
        self.canvas = Canvas.choose((width, height), self.options.width, self.options.height)
        self.config = config or SessionConfig()
        self.bus: FrameBus[AVFrame] = FrameBus()
        self.viewers = 0
        self.stats = SessionStats()
        self._worker = worker
        self._executor = executor
        self._speech = speech
        self._metrics = metrics
        self._on_failure = on_failure
        self._events = EventHub(self.config.event_queue)
        # Every picture is marked (and labelled when on) before anything sees it.
        self.provenance = Provenance(avatar.name, self.id, label=self.options.label)
        # RTMP, WHIP, recordings...: closed with the session, their states told as its events
        self.outputs = SessionOutputs(self._events.emit, on_add=self.provenance.output_added)
        self._utterances = UtteranceQueue(self._events.emit)
        self._timeline = Timeline(self.config.max_buffer_s)
        self.lead = AdaptiveLead(self.config.lead_s, self.config.lead_extra_max_s)
        self.stats.lead_ms = round(self.lead.lead_s * 1000.0, 1)
        self._clock = clock
        self._encode = EncodeStage(self.id, self.bus, lambda: self.options.video_codec)
        self._path = FramePath(
            self._prepare,
            FrameRenderer(
                avatar,
                worker,
                executor,
                transparent=self.options.transparent,
                provenance=self.provenance,
                canvas=self.canvas,
            ),
            self.bus,
            sinks=self._encode.running,
            on_published=self._published,
            name=f"session {self.id}",
        )
        self.feeder = Feeder(
            self._utterances,
            self._timeline,
            config=self.config,
            now_pos=self._now_pos,
            now=self._now,
            emit=self._events.emit,
            speech=speech,
            speech_executor=speech_executor or executor,
            start_task=self._own,
            name=f"session {self.id}",
            extra_latency_s=lambda: self.lead.extra_s,
        )
        self._ready = asyncio.Event()
        self._last_published: float | None = None
        self._clock_task: asyncio.Task[None] | None = None
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
        self.feeder.start()

    def _own(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=f"session-{self.id}-{name}")
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closed:
            return
        exc = task.exception()
        if exc is None:
            return
        log.error("session %s failed in %s", self.id, task.get_name(), exc_info=exc)
        # Its listeners hear why before session_closed; the exception's text stays in the log.
        message = f"the session failed ({type(exc).__name__}) and is closed: start a new one"
        self._events.emit(SessionFailed("session_failed", message))
        if self._on_failure is not None:
            self._on_failure(self, exc)

    async def _run_clock(self) -> None:
        config = self.config
        if self._clock is None:
            self._clock = LiveClock(self.lead.lead_s, config.start_delay_s, self._worker)
        clock = self._clock
        while True:
            await clock.tick(self._path)

    async def aclose(self, reason: str = "deleted") -> None:
        """Stop every stage, end every stream, listener and encoder; ``reason`` goes with
        the ``session_closed`` event. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._clock_task is not None:
            self._clock_task.cancel()
            await asyncio.gather(self._clock_task, return_exceptions=True)
        await self.feeder.aclose()
        await self._path.aclose()
        if self._clock is not None:
            self._clock.close()
        self._utterances.drop_all()
        self._events.emit(SessionClosed(self.id, reason))
        await self.outputs.aclose()
        await self._encode.aclose()
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
    def busy(self) -> bool:
        """Something to do or someone to do it for: speech queued or playing, a viewer, an
        output, or a listener of its events (a WebSocket client). The idle reaper closes
        a session that has not been busy for a while."""
        return bool(
            self.queued
            or self._utterances.speaking
            or self.viewers
            or len(self.outputs)
            or self._events.listeners
        )

    @property
    def state(self) -> Literal["idle", "speaking"]:
        return "speaking" if self._utterances.speaking else "idle"

    @property
    def video_codec(self) -> VideoCodec:
        return self.options.video_codec

    def viewer_added(self) -> None:
        self.viewers += 1

    def viewer_removed(self) -> None:
        self.viewers = max(0, self.viewers - 1)

    # --- speech in -------------------------------------------------------------------------

    def _new(self, kind: Kind, key_id: str | None = None) -> Any:
        if self._closed:
            raise SpeechRejected("session_closed", f"session {self.id} is closed")
        most = self.config.max_queued_utterances
        if len(self._utterances.pending()) >= most:
            raise SpeechRejected(
                "too_many_utterances",
                f"this session already has {most} utterances queued or playing: wait for "
                "playback_finished, or interrupt",
            )
        return self._utterances.new(kind, self._now(), key_id)

    def speak_text(self, text: str, key_id: str | None = None) -> str:
        utterances.check_text(text, self.config.max_text_chars)
        if self._speech is None:
            raise SpeechRejected("tts_unavailable", "this server has no text-to-speech")
        utt = self._new("text", key_id)
        utt.text = text
        return self._utterances.add(utt)

    def speak_audio(self, samples16k: np.ndarray, key_id: str | None = None) -> str:
        x = np.asarray(samples16k, np.float32).reshape(-1)
        if not len(x):
            raise SpeechRejected("empty_audio", "the audio has no samples")
        utt = self._new("audio", key_id)
        self._check_budget(len(x))
        utt.samples = np.clip(np.nan_to_num(x), -1.0, 1.0)
        return self._utterances.add(utt)

    def open_stream(self, key_id: str | None = None) -> LiveStream:
        utt = self._new("stream", key_id)
        stream = LiveStream(utt, self._check_budget)
        utt.stream = stream
        self._utterances.add(utt)
        return stream

    def asking_keys(self) -> set[str]:
        """The API keys whose speech is queued or playing here."""
        return {u.key_id for u in self._utterances.pending() if u.key_id and not u.finished}

    def buffered_samples(self) -> int:
        """Audio ahead of the clock: in the timeline plus queued and not yet written."""
        return self._timeline.ahead(self._now_pos()) + sum(
            u.unwritten for u in self._utterances.pending()
        )

    def _check_budget(self, extra: int) -> None:
        limit = int(self.config.max_buffer_s * SAMPLE_RATE)
        if self.buffered_samples() + extra > limit:
            raise SpeechRejected(
                "buffer_full",
                f"more than {self.config.max_buffer_s:.0f} s of audio would be queued in this "
                "session: send audio no faster than real time, or wait for playback",
            )

    @property
    def queued(self) -> int:
        return self._utterances.queued

    def switch_avatar(self, avatar: Avatar, worker: InferenceWorker) -> None:
        """Show ``avatar`` from the next frame prepared on. The clock, the speech and the
        outputs carry on (another size is fitted to :attr:`canvas`: no output sees a change);
        frames already in flight finish with the avatar they started with."""
        self.avatar = avatar
        self._worker = worker
        self.provenance.switch(avatar.name)
        renderer = FrameRenderer(
            avatar,
            worker,
            self._executor,
            transparent=self.options.transparent,
            provenance=self.provenance,
            canvas=self.canvas,
        )
        self._path.switch(renderer)
        self._events.emit(AvatarChanged(avatar.name))

    def interrupt(self, key_ids: set[str] | None = None) -> list[str]:
        """Drop queued and playing speech; the next frame published is silent and idle. With
        ``key_ids`` (revoked keys), only what they asked for (:meth:`UtteranceQueue.drop_of`):
        the rest plays."""
        if key_ids is None:
            dropped, cut, feeding = self._utterances.drop_all(), True, True
        else:
            dropped, cut, feeding = self._utterances.drop_of(key_ids, self._timeline.write_pos)
        if feeding and not self._closed:
            self.feeder.reset()
        if cut:
            self._timeline.cut(self._path.reset() * SAMPLES_PER_VIDEO_FRAME)
        return [u.id for u in dropped]

    # --- events and encoded frames out -----------------------------------------------------

    def subscribe_events(self) -> asyncio.Queue[SessionEvent]:
        return self._events.subscribe()

    def unsubscribe_events(self, queue: asyncio.Queue[SessionEvent]) -> None:
        self._events.unsubscribe(queue)

    def encoded(self, codec: VideoCodec | None = None) -> EncodedStream:
        """This session's frames encoded once in ``codec`` (its own codec by default)."""
        return self._encode.encoded(codec)

    def encoders(self) -> list[EncodedStream]:
        """The encoders at work now (those with a subscriber)."""
        return self._encode.running()

    # --- the frame path's two ends ---------------------------------------------------------

    def _now(self) -> float:
        """The clock's time: the event loop's until a live clock starts (they agree)."""
        return asyncio.get_running_loop().time() if self._clock is None else self._clock.now()

    def _now_pos(self) -> int:
        return 0 if self._clock is None else self._clock.position(SAMPLE_RATE)

    def _prepare(self, k: int) -> PreparedFrame:
        return prepare_frame(self._timeline, k, self.avatar.window, self._utterances.is_live)

    def _published(self, frame: PreparedFrame, out: AVFrame, fresh: bool) -> None:
        now = out.published_at
        self._ready.set()
        interval = None if self._last_published is None else (now - self._last_published) * 1e3
        self._last_published = now
        latency = None if frame.live_in_at is None else (now - frame.live_in_at) * 1000.0
        audible = [
            (now - u.requested_at) * 1000.0 for u in self._utterances.played(frame) if not u.live
        ]
        self.stats.record(fresh, interval, latency, audible)
        if self._metrics is not None:
            self._metrics.observe_frame(fresh, interval, latency, audible)
        if self.lead.observe(fresh):  # late pictures: prepare earlier (streamer/pipeline/lead.py)
            self.stats.lead_ms = round(self.lead.lead_s * 1000.0, 1)
            if self._clock is not None:
                self._clock.lead_s = self.lead.lead_s

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "avatar": self.avatar.name,
            "state": self.state,
            "ready": self.ready,
            "viewers": self.viewers,
            "outputs": self.outputs.describe(),
            "created": self.created,
            "video_codec": self.options.video_codec,
            "width": self.canvas.width,
            "height": self.canvas.height,
            "background": self.options.background,
            "label": bool(self.provenance.label),
            **self.stats.figures(),
            "queued_utterances": self.queued,
            "buffered_s": round(self.buffered_samples() / SAMPLE_RATE, 3),
        }
