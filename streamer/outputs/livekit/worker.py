"""The LiveKit worker: a session joins a room as the avatar of a LiveKit Agents agent.

It follows the avatar protocol of ``livekit-agents`` (``voice/avatar/_datastream_io.py``):

- the agent sends its speech as ``lk.audio_stream`` byte streams (:mod:`.segments`);
- it calls the ``lk.clear_buffer`` RPC on the avatar to interrupt: the session is
  interrupted and the audio queued in the published track is dropped;
- the avatar calls ``lk.playback_started`` and ``lk.playback_finished`` (JSON
  ``{"playback_position", "interrupted"}``) on the agent, from the session's own events;
- the avatar publishes one audio and one video track. Both are fed from the session's AV
  frames, each frame's picture and its 40 ms of audio together, so they share one clock.

The agent is the participant the avatar publishes on behalf of (the token's
``lk.publish_on_behalf`` attribute), else the first agent participant. The worker leaves when
the agent leaves, when the room disconnects, or when no agent has come within
``agent_wait_s``; then ``ended`` closes its session.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import numpy as np
from livekit import rtc

from models.audio import SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from streamer.outputs.base import StateName
from streamer.outputs.livekit.segments import AUDIO_STREAM_TOPIC, Segments
from streamer.pipeline.frames import FPS, AVFrame
from streamer.session import PlaybackFinished, Session, SessionEvent, SpeakingStarted
from streamer.session.stats import percentile

log = logging.getLogger(__name__)

RPC_CLEAR_BUFFER = "lk.clear_buffer"
RPC_PLAYBACK_STARTED = "lk.playback_started"
RPC_PLAYBACK_FINISHED = "lk.playback_finished"
PUBLISH_ON_BEHALF = "lk.publish_on_behalf"
RPC_ATTEMPTS = 3  # as the SDK's receiver
AUDIO_QUEUE_MS = 100  # what the published audio track holds ahead: cleared on interrupt
FRAME_US = 1_000_000 // FPS
CATCH_UP_FRAMES = 3  # frames waiting in the worker before silent ones are skipped

RoomFactory = Callable[[], rtc.Room]


class LiveKitWorker:
    """One session's presence in one LiveKit room (an output of that session)."""

    kind = "livekit"

    def __init__(
        self,
        session: Session,
        room: rtc.Room,
        url: str,
        token: str,
        *,
        ended: Callable[[], Awaitable[Any]] | None = None,
        agent_wait_s: float = 60.0,
    ) -> None:
        self.id = secrets.token_hex(4)
        self.state: StateName = "connecting"  # the states of every output (outputs.base)
        self.last_error: str | None = None
        self.agent: str | None = None
        self.frames = 0
        self.skipped = 0  # silent frames skipped to catch up
        self.clear_to_silence_ms: float | None = None
        self._latency_ms: collections.deque[float] = collections.deque(maxlen=1000)
        self._cleared_at: float | None = None
        self._last_utterance: str | None = None
        self._session = session
        self._room = room
        self._url = url
        self._token = token
        self._ended = ended
        self._agent_wait_s = agent_wait_s
        self._agent_here = asyncio.Event()
        self._segments = Segments(session, self._segment_opened)
        self._ours: set[str] = set()  # utterances that are the agent's segments
        self._rpcs: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._audio: rtc.AudioSource | None = None
        self._video: rtc.VideoSource | None = None
        self._events: asyncio.Queue[SessionEvent] | None = None
        self._leaving: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None
        self._joined = False
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the room and publish the tracks; raises (``rtc.ConnectError``...) when the
        room cannot be joined, leaving nothing behind."""
        try:
            await self._room.connect(self._url, self._token, rtc.RoomOptions(auto_subscribe=False))
        except BaseException as exc:
            self.state, self.last_error = "failed", str(exc) or type(exc).__name__
            raise
        self._joined = True
        room, local = self._room, self._room.local_participant
        room.on("participant_connected", self._on_participant)
        room.on("participant_disconnected", self._on_participant_left)
        room.on("disconnected", self._on_disconnected)
        room.register_byte_stream_handler(AUDIO_STREAM_TOPIC, self._on_stream)
        local.register_rpc_method(RPC_CLEAR_BUFFER, self._on_clear_buffer)
        self.agent = local.attributes.get(PUBLISH_ON_BEHALF) or None
        for participant in room.remote_participants.values():
            self._on_participant(participant)
        await self._publish()
        self._events = self._session.subscribe_events()
        self._own(self._forward(), "media")
        self._own(self._segments.run(), "segments")
        self._own(self._tell_agent(), "rpc")
        self._own(self._watch_events(self._events), "events")
        self._own(self._await_agent(), "agent")
        self.state = "live"
        log.info(
            "session %s: joined LiveKit room %s as %s", self._session.id, room.name, local.identity
        )

    async def _publish(self) -> None:
        width, height = self._session.canvas.width, self._session.canvas.height  # fixed
        if self._session.options.transparent:
            width *= 2  # colour and alpha side by side
        self._audio = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=AUDIO_QUEUE_MS)
        self._video = rtc.VideoSource(width, height)
        local = self._room.local_participant
        audio = rtc.LocalAudioTrack.create_audio_track("avatar_audio", self._audio)
        video = rtc.LocalVideoTrack.create_video_track("avatar_video", self._video)
        await local.publish_track(
            audio, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        )
        await local.publish_track(
            video, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA)
        )

    def _own(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(
            coro, name=f"livekit-{self._session.id}-{name}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or self._closed or task.exception() is None:
            return
        log.error(
            "session %s: LiveKit worker failed in %s",
            self._session.id,
            task.get_name(),
            exc_info=task.exception(),
        )
        self.last_error = str(task.exception())
        self._leave("failed")

    def _leave(self, state: StateName) -> None:
        """End the worker from one of its callbacks: its session is closed with it."""
        if self._closed or self._leaving is not None:
            return
        self.state = state
        self._leaving = asyncio.get_running_loop().create_task(
            self._end(), name=f"livekit-{self._session.id}-leave"
        )

    async def _end(self) -> None:
        if self._ended is not None:
            await self._ended()  # closes the session, which closes this worker
        await self.aclose()

    async def aclose(self) -> None:
        """Leave the room, stop every task. Idempotent: a second caller waits for the first."""
        if self._closing is None:
            self._closed = True
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self.state != "failed":
            self.state = "stopped"
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._events is not None:
            self._session.unsubscribe_events(self._events)
        if not self._joined:
            return
        try:
            self._room.unregister_byte_stream_handler(AUDIO_STREAM_TOPIC)
            self._room.local_participant.unregister_rpc_method(RPC_CLEAR_BUFFER)
            await self._room.disconnect()
        except Exception:
            log.exception("session %s: leaving the LiveKit room failed", self._session.id)
        for source in (self._audio, self._video):
            if source is not None:
                await source.aclose()

    def describe(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "last_error": self.last_error or self._segments.last_error,
            "room": self._room.name,
            "agent": self.agent,
            "segments": self._segments.played,
            "streams_rejected": self._segments.rejected,
            "frames": self.frames,
            "silent_frames_skipped": self.skipped,
            "first_frame_ms_p50": _round(percentile(self._latency_ms, 50)),
            "first_frame_ms_p95": _round(percentile(self._latency_ms, 95)),
            "clear_to_silence_ms": self.clear_to_silence_ms,
        }

    # --- the room's events -----------------------------------------------------------------

    def _is_agent(self, participant: rtc.RemoteParticipant) -> bool:
        if self.agent is not None:
            return participant.identity == self.agent
        return participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT

    def _on_participant(self, participant: rtc.RemoteParticipant) -> None:
        if self._is_agent(participant):
            self.agent = participant.identity
            self._agent_here.set()

    def _on_participant_left(self, participant: rtc.RemoteParticipant) -> None:
        if self.agent is not None and participant.identity == self.agent:
            log.info("session %s: agent %s left the room", self._session.id, self.agent)
            self._leave("stopped")

    def _on_disconnected(self, reason: Any = None) -> None:
        log.info("session %s: LiveKit room disconnected (%s)", self._session.id, reason)
        self._leave("stopped")

    async def _await_agent(self) -> None:
        try:
            await asyncio.wait_for(self._agent_here.wait(), self._agent_wait_s)
        except TimeoutError:
            self.last_error = f"no agent joined the room within {self._agent_wait_s:g} s"
            log.warning("session %s: %s", self._session.id, self.last_error)
            self._leave("stopped")

    def _on_stream(self, reader: rtc.ByteStreamReader, participant_identity: str) -> None:
        if participant_identity != self.agent:
            log.warning(
                "session %s: audio stream from %s ignored: not the agent (%s)",
                self._session.id,
                participant_identity,
                self.agent,
            )
            return
        self._segments.offer(reader)

    def _on_clear_buffer(self, data: rtc.RpcInvocationData) -> str:
        if data.caller_identity != self.agent:
            log.warning(
                "session %s: lk.clear_buffer from %s refused: not the agent",
                self._session.id,
                data.caller_identity,
            )
            return "reject"
        self._cleared_at = asyncio.get_running_loop().time()
        self._segments.clear()
        self._session.interrupt()
        if self._audio is not None:
            self._audio.clear_queue()  # speech already handed to the track goes too
        return "ok"

    # --- the agent's playback events -------------------------------------------------------

    def _segment_opened(self, utterance_id: str) -> None:
        self._ours.add(utterance_id)

    async def _watch_events(self, events: asyncio.Queue[SessionEvent]) -> None:
        while True:
            event = await events.get()
            if isinstance(event, SpeakingStarted) and event.utterance_id in self._ours:
                self._rpcs.put_nowait((RPC_PLAYBACK_STARTED, ""))
            elif isinstance(event, PlaybackFinished) and event.utterance_id in self._ours:
                self._ours.discard(event.utterance_id)
                payload = {"playback_position": event.position_s, "interrupted": event.interrupted}
                self._rpcs.put_nowait((RPC_PLAYBACK_FINISHED, json.dumps(payload)))

    async def _tell_agent(self) -> None:
        """Perform the playback RPCs on the agent in order, each retried like the SDK."""
        local = self._room.local_participant
        while True:
            method, payload = await self._rpcs.get()
            for attempt in range(RPC_ATTEMPTS):
                if self.agent is None:
                    break
                try:
                    await local.perform_rpc(
                        destination_identity=self.agent, method=method, payload=payload
                    )
                    break
                except rtc.RpcError as exc:
                    log.warning(
                        "session %s: %s failed (%s), attempt %d",
                        self._session.id,
                        method,
                        exc.message,
                        attempt + 1,
                    )
                    if exc.code == rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD:
                        break
                    await asyncio.sleep(0.1)

    # --- the session's frames out ----------------------------------------------------------

    def _timing(self, frame: AVFrame) -> None:
        """Two live figures, read in GET /v1/sessions/{id}: how long a segment's first audio
        took to leave as a frame (an agent sends speech faster than real time, so later
        samples wait their turn by design), and how soon after a clear the avatar is silent."""
        now = asyncio.get_running_loop().time()
        first = frame.utterance_id is not None and frame.utterance_id != self._last_utterance
        if first and frame.audio_in_at is not None:
            self._latency_ms.append((now - frame.audio_in_at) * 1000.0)
        self._last_utterance = frame.utterance_id
        if self._cleared_at is not None and not frame.audio.any():
            self.clear_to_silence_ms = round((now - self._cleared_at) * 1000.0, 1)
            self._cleared_at = None

    async def _forward(self) -> None:
        """Each AV frame's picture and its 40 ms of audio, in order, stamped with its pts.

        The SDK's audio source plays at its own steady rate and has no timestamps: a frame
        that comes late (a busy machine) leaves a gap that every later frame would keep, and
        the delays would add up. So once frames wait here, silent ones are skipped (nothing
        audible is lost, and the avatar is idle in them) until the wait is gone.
        """
        assert self._audio is not None and self._video is not None
        sub = self._session.bus.subscribe()
        sub.skip_to_live()
        try:
            while True:
                try:
                    frame = await sub.next_audio()
                except ConnectionError:  # the session closed
                    return
                if sub.depth[1] >= CATCH_UP_FRAMES and not frame.audio.any():
                    self.skipped += 1
                    continue
                self._video.capture_frame(video_frame(frame), timestamp_us=frame.index * FRAME_US)
                await self._audio.capture_frame(audio_frame(frame))
                self.frames += 1
                self._timing(frame)
        finally:
            self._session.bus.unsubscribe(sub)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def default_room() -> rtc.Room:
    """The SDK's Room (made on the running loop, which it binds to)."""
    return rtc.Room()


def video_frame(frame: AVFrame) -> rtc.VideoFrame:
    height, width = frame.video.shape[:2]
    rgba = np.empty((height, width, 4), np.uint8)
    rgba[..., :3] = frame.video
    rgba[..., 3] = 255
    return rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, rgba.tobytes())


def audio_frame(frame: AVFrame) -> rtc.AudioFrame:
    return rtc.AudioFrame(frame.audio.tobytes(), SAMPLE_RATE, 1, SAMPLES_PER_VIDEO_FRAME)
