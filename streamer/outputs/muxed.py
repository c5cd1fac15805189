"""An output that muxes the session's media into a container in its own thread: what RTMP
and recording share.

On the loop, two small tasks only listen: one takes the session's shared H.264 pictures
(``session.encoded("h264")``, encode once), the other each AV frame's audio
(``session.bus``); both hand them to an :class:`~streamer.outputs.inbox.Inbox` without
waiting. The thread opens a container at a key frame and feeds it: a
:class:`~streamer.outputs.mux.Muxer` in the thread (a recording), or a connection of a
muxing child process (an RTMP push, :mod:`~streamer.outputs.rtmp_link`). It asks the
encoder for a key frame every 2 s (the GOP a live platform expects), after losing a
picture, and on each (re)connection.

A network error is the thread's alone: the output goes ``retrying``, waits (0.5 s doubling
to 10 s) and connects again at a fresh key frame; a recording, which cannot retry, goes
``failed``. Either way the session and its other outputs never notice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from typing import Any, Protocol

from streamer.outputs.base import Backoff, HasStatus, OutputStatus, Report
from streamer.outputs.inbox import Inbox
from streamer.outputs.mux import Container, Muxer, MuxError, Target, describe_error
from streamer.outputs.spec import OutputSpec
from streamer.pipeline.codecs import EncodedFrame
from streamer.pipeline.encode import EncodedStream, VideoCodec
from streamer.pipeline.frames import FPS, AVFrame, FrameBus, Subscription, without_picture

log = logging.getLogger(__name__)

GOP_FRAMES = 2 * FPS  # a key frame every 2 s
POLL_S = 0.5  # how often a waiting thread looks at its stop flag
STOP_WAIT_S = 10.0  # how long aclose waits for the thread (a blocked write times out)


class MediaSource(Protocol):
    """What an output reads from a session: its AV frames and its encoded streams."""

    id: str
    bus: FrameBus[AVFrame]

    def encoded(self, codec: VideoCodec | None = None) -> EncodedStream: ...


class Stopped(Exception):
    """The output was asked to stop while its thread waited."""


class MuxedOutput(HasStatus):
    """A session's media in a container (FLV over RTMP, a fragmented MP4), in a thread."""

    retry = True  # reconnect after an error (a push), or fail (a recording)

    def __init__(
        self,
        output_id: str,
        kind: str,
        spec: OutputSpec,
        source: MediaSource,
        report: Report,
        target: Target,
    ) -> None:
        self.id = output_id
        self.kind = kind
        self.spec = spec
        self.target = target
        self.connections = 0
        self._source = source
        self._loop = asyncio.get_running_loop()
        self._status = OutputStatus(output_id, kind, report, self._loop)
        self._inbox = Inbox()
        self._stop = threading.Event()
        self._stream = source.encoded("h264")
        self._video: Subscription[EncodedFrame] | None = None
        self._audio: Subscription[AVFrame] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._thread: threading.Thread | None = None
        self._ended: asyncio.Future[None] = self._loop.create_future()
        self._backoff = Backoff()
        self._last_key = -GOP_FRAMES
        self._frames_sent = 0  # AV frames muxed over all connections
        self._cpu_s = 0.0  # CPU time so far: the thread's and its child processes' (muxing,
        # AAC, network writes)
        self._closed = False

    # --- the loop's side -------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe and start the thread (the first state is ``connecting``)."""
        self._video = self._stream.subscribe()
        self._audio = self._source.bus.subscribe(video_depth=1)
        name = f"output-{self.kind}-{self.id}"
        self._tasks = [
            self._loop.create_task(self._pump_video(self._video), name=f"{name}-video"),
            self._loop.create_task(self._pump_audio(self._audio), name=f"{name}-audio"),
        ]
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def describe(self) -> dict[str, Any]:
        return {
            **self._status_fields(),
            "target": self.spec.target,
            "video_bitrate_kbps": self.spec.video_bitrate_kbps,
            "connections": self.connections,
            "video_dropped": self._inbox.video_dropped,
            "audio_dropped": self._inbox.audio_dropped,
            # What this output costs on top of the shared encode: the budget is 3 ms.
            "cpu_ms_per_frame": (
                round(1000 * self._cpu_s / self._frames_sent, 3) if self._frames_sent else None
            ),
        }

    async def _pump_video(self, sub: Subscription[EncodedFrame]) -> None:
        dropped = 0
        while True:
            frame = await sub.next_video()
            if sub.stats.video_dropped != dropped:  # this output's encoder queue overflowed
                dropped = sub.stats.video_dropped
                self._inbox.lose_video()
            if frame.video is None:
                continue
            if frame.keyframe:
                self._last_key = frame.index
            elif frame.index - self._last_key >= GOP_FRAMES - 1:  # the next commit gets it
                self._stream.request_keyframe()  # a flag; the encoder rate-limits them
            self._inbox.put_video(frame)

    async def _pump_audio(self, sub: Subscription[AVFrame]) -> None:
        while True:
            # The thread needs the audio and the frame size: a stalled connection's backlog
            # (up to 5 s) must not keep the session's pictures alive.
            self._inbox.put_audio(without_picture(await sub.next_audio()))

    def _request_keyframe(self) -> None:  # from the thread
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self._loop.call_soon_threadsafe(self._stream.request_keyframe)

    def _thread_ended(self) -> None:
        """The thread is done (stopped, or failed for good): stop listening."""
        self._unsubscribe()
        if not self._ended.done():
            self._ended.set_result(None)

    def _unsubscribe(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._video is not None:
            self._stream.unsubscribe(self._video)
            self._video = None
        if self._audio is not None:
            self._source.bus.unsubscribe(self._audio)
            self._audio = None

    async def aclose(self) -> None:
        """Stop: state ``stopped``, the container closed (its trailer written). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._status.set("stopped")
        self._stop.set()
        self._inbox.close()
        self._unsubscribe()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._thread is not None and not self._ended.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._ended), STOP_WAIT_S)
            except TimeoutError:
                log.warning("output %s: its thread is still blocked in a write", self.id)

    # --- the thread's side -----------------------------------------------------------------

    def _run(self) -> None:
        backoff = self._backoff
        origin: list[int] = []  # the first frame ever sent: time 0 of every connection
        try:
            self.prepare()
            while not self._stop.is_set():
                try:
                    self._connection(origin)
                except Stopped:
                    return
                except MuxError as exc:
                    if not self._failed(str(exc), backoff):
                        return
        except Exception as exc:
            log.exception("output %s (%s) failed", self.id, self.kind)
            self._status.set("failed", describe_error(exc))
        finally:
            try:
                self.finish()
            except Exception:
                log.exception("output %s (%s) failed to finish", self.id, self.kind)
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._thread_ended)

    def prepare(self) -> None:
        """Blocking set-up before the first connection (a recording's file)."""

    def finish(self) -> None:
        """Blocking work once the last container is closed (signing a recording)."""

    def _failed(self, error: str, backoff: Backoff) -> bool:
        """After an error: whether to connect again (after waiting)."""
        if not self.retry:
            self._status.set("failed", error)
            return False
        self._status.set("retrying", error)
        if self._stop.wait(backoff.next()):
            return False
        self._status.set("connecting")
        return True

    def _connection(self, origin: list[int]) -> None:
        """One container, from a key frame until an error or a stop."""
        self._inbox.clear()
        self._request_keyframe()
        key, audio, size = self._wait_for_keyframe()
        if not origin:
            origin.append(key.index)
        self.connections += 1
        target = self.open_target()
        try:
            muxer = self.open_container(target, origin[0], size)
            try:
                muxer.video(key)  # the header: connects, or creates the file
                for frame in audio:
                    muxer.audio(frame)
                if not muxer.ready(self._stop):
                    return
                self.header_written()
                self._feed(muxer)
            finally:
                muxer.close()
        finally:
            self.close_target()

    def open_container(self, target: Target, origin: int, size: tuple[int, int]) -> Container:
        """This connection's container (PyAV's, in this thread, unless overridden)."""
        return Muxer(target, origin, size)

    def child_cpu_s(self) -> float:
        """CPU time of the processes this output ran, for ``cpu_ms_per_frame``."""
        return 0.0

    def open_target(self) -> Target:
        """Where this connection's container goes (a process to pipe into starts here)."""
        return self.target

    def header_written(self) -> None:
        """The container's header went out: for FFmpeg's own protocols, the link is up."""
        self._status.set("live")
        self._backoff.reset()

    def close_target(self) -> None:
        """After each connection's container has closed."""

    def _wait_for_keyframe(self) -> tuple[EncodedFrame, list[AVFrame], tuple[int, int]]:
        """The next key frame, the audio from its frame on (the tracks start together) and
        the frame size (width, height)."""
        audio: collections.deque[AVFrame] = collections.deque(maxlen=2 * FPS)
        while True:
            item = self._next()
            if isinstance(item, AVFrame):
                audio.append(item)
            elif item.keyframe and audio:
                self._inbox.take_loss()
                height, width = audio[-1].video.shape[:2]
                return item, [a for a in audio if a.index >= item.index], (width, height)

    def _next(self) -> EncodedFrame | AVFrame:
        while True:
            if self._stop.is_set():
                raise Stopped
            item = self._inbox.get(POLL_S)
            if item is not None:
                return item

    def _feed(self, muxer: Container) -> None:
        """Mux until an error (raised) or a stop (returns)."""
        broken = False  # a picture was lost: skip to the next key frame
        while True:
            try:
                item = self._next()
            except Stopped:
                return
            if isinstance(item, AVFrame):
                height, width = item.video.shape[:2]
                if (width, height) != muxer.size:
                    raise MuxError(f"the frame size changed to {width}x{height}")
                muxer.audio(item)
                self._frames_sent += 1
                if self._frames_sent % FPS == 0:
                    self._cpu_s = time.thread_time() + self.child_cpu_s()
                continue
            if self._inbox.take_loss():
                broken = True
                self._request_keyframe()
            if broken and not item.keyframe:
                continue
            broken = False
            muxer.video(item)
