"""``virtualcam``: the session's pictures as a camera that desktop apps (Zoom, Teams, Discord,
OBS) pick from their camera list, and its voice as a microphone beside it.

Pictures go to ``pyvirtualcam.Camera`` (v4l2loopback on Linux; an optional extra,
``pip install 'avatarcast[virtualcam]'``). They are the session's decoded AV frames, not the
encoded stream: a camera takes raw pictures, so nothing is encoded for it. Each is sent when
the session publishes it, so the camera runs at 25 fps on the session's clock; pyvirtualcam's
own pacing (``sleep_until_next_frame``) is not used, it would be a second clock.

Audio cannot go through a camera. When the request names an audio pipe, each frame's 40 ms
is written, in the same step as its picture, to a FIFO in the server's audio-pipes folder
as 48 kHz signed 16-bit mono; a PulseAudio or PipeWire ``module-pipe-source`` reading that
FIFO is a virtual microphone whose voice stays on the picture's clock (docs/outputs.md has the
commands). Writes never block: with nobody reading, or a reader that fell behind by the
pipe's 0.68 s, a chunk is dropped and counted.

Everything that can block (the device, the FIFO) runs in the output's own thread; the loop
only hands it frames through a short queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

from models.audio import SAMPLE_RATE
from streamer.outputs.base import HasStatus, OutputStatus, Report
from streamer.outputs.muxed import MediaSource
from streamer.outputs.spec import OutputSpec
from streamer.pipeline.frames import FPS, AVFrame, Subscription

log = logging.getLogger(__name__)

PIPE_RATE = 48_000
QUEUE_FRAMES = FPS  # 1 s: a stalled device drops the oldest frames, never the session's
POLL_S = 0.5
REOPEN_PIPE_S = 1.0
NO_DEVICE = (
    "no virtual camera device: load v4l2loopback first "
    "(sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=avatarcast)"
)


class AudioPipe:
    """The FIFO a virtual microphone reads: opened without blocking, written without blocking."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = 0
        self.dropped = 0
        self._fd: int | None = None
        self._next_try = 0.0
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=PIPE_RATE)

    @property
    def reading(self) -> bool:
        return self._fd is not None

    def create(self) -> None:
        """Make the FIFO unless the audio server made it first."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkfifo(self.path, 0o600)
        except FileExistsError:
            if not stat.S_ISFIFO(self.path.stat().st_mode):
                raise OSError(errno.EEXIST, f"{self.path.name} exists and is not a FIFO") from None

    def write(self, frame: AVFrame) -> None:
        data = self._pcm(frame)
        fd = self._open()
        if fd is None:
            self.dropped += 1
            return
        try:
            os.write(fd, data)  # at most PIPE_BUF bytes: all or nothing
            self.written += 1
        except BlockingIOError:
            self.dropped += 1  # the reader is 0.68 s behind: drop, never wait
        except OSError:  # the reader went away (EPIPE): open again later
            self.dropped += 1
            self.close()

    def _pcm(self, frame: AVFrame) -> bytes:
        pcm = av.AudioFrame.from_ndarray(frame.audio.reshape(1, -1), format="s16", layout="mono")
        pcm.sample_rate = SAMPLE_RATE
        return b"".join(out.to_ndarray().tobytes() for out in self._resampler.resample(pcm))

    def _open(self) -> int | None:
        if self._fd is None and time.monotonic() >= self._next_try:
            self._next_try = time.monotonic() + REOPEN_PIPE_S
            with contextlib.suppress(OSError):  # ENXIO: no reader yet
                self._fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class VirtualcamOutput(HasStatus):
    """The session's pictures to a virtual camera and, optionally, its voice to a FIFO."""

    def __init__(
        self,
        output_id: str,
        spec: OutputSpec,
        source: MediaSource,
        report: Report,
        *,
        backend: str | None = None,
    ) -> None:
        self.id = output_id
        self.kind = "virtualcam"
        self.spec = spec
        self.device: str | None = None
        self.frames_sent = 0
        self._backend = backend  # None: the platform's (v4l2loopback); tests register one
        self._source = source
        self._loop = asyncio.get_running_loop()
        self._status = OutputStatus(output_id, self.kind, report, self._loop)
        self._pipe = AudioPipe(spec.path) if spec.path is not None else None
        self._queue: collections.deque[AVFrame] = collections.deque(maxlen=QUEUE_FRAMES)
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._sub: Subscription[AVFrame] | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def describe(self) -> dict[str, Any]:
        pipe = self._pipe
        return {
            **self._status_fields(),
            "target": self.spec.target,
            "device": self.device,
            "frames_sent": self.frames_sent,
            "audio_pipe": None
            if pipe is None
            else {
                "name": pipe.path.name,
                "reading": pipe.reading,
                "written": pipe.written,
                "dropped": pipe.dropped,
            },
        }

    def start(self) -> None:
        self._sub = self._source.bus.subscribe(video_depth=1)
        self._task = self._loop.create_task(self._pump(self._sub), name=f"virtualcam-{self.id}")
        self._thread = threading.Thread(target=self._run, name=f"virtualcam-{self.id}", daemon=True)
        self._thread.start()

    async def _pump(self, sub: Subscription[AVFrame]) -> None:
        while True:
            frame = await sub.next_audio()  # every frame, in order, picture included
            with self._ready:
                self._queue.append(frame)
                self._ready.notify()

    def _next(self) -> AVFrame | None:
        with self._ready:
            while not self._stop.is_set():
                if self._queue:
                    return self._queue.popleft()
                self._ready.wait(POLL_S)
            return None

    def _run(self) -> None:
        camera: Any = None
        try:
            if self._pipe is not None:
                self._pipe.create()
            while (frame := self._next()) is not None:
                height, width = frame.video.shape[:2]
                if camera is None or (camera.width, camera.height) != (width, height):
                    if camera is not None:
                        camera.close()
                    camera = self._open(width, height)
                camera.send(np.ascontiguousarray(frame.video))
                if self._pipe is not None:
                    self._pipe.write(frame)
                self.frames_sent += 1
        except Exception as exc:
            log.info("virtualcam %s failed", self.id, exc_info=True)
            self._status.set("failed", str(exc) or type(exc).__name__)
        finally:
            if camera is not None:
                camera.close()
            if self._pipe is not None:
                self._pipe.close()
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._unsubscribe)

    def _open(self, width: int, height: int) -> Any:
        import pyvirtualcam

        try:
            camera = pyvirtualcam.Camera(width, height, FPS, backend=self._backend)
        except RuntimeError as exc:  # every backend refused: say what they said
            raise RuntimeError(f"{NO_DEVICE}; {exc}".replace("\n", "; ")) from None
        self.device = camera.device
        self._status.set("live")
        return camera

    def _unsubscribe(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._sub is not None:
            self._source.bus.unsubscribe(self._sub)
            self._sub = None

    async def aclose(self) -> None:
        """Stop: the camera and the FIFO closed, state ``stopped``. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._status.set("stopped")
        self._stop.set()
        self._unsubscribe()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
