"""The virtual camera: the session's pictures reach pyvirtualcam in order and at their size,
its voice reaches the FIFO a virtual microphone reads (48 kHz s16le), and a machine with no
camera device fails the output with the reason while the session goes on.

v4l2loopback cannot load on the test machines, so the pictures are caught by a pyvirtualcam
backend registered here (``pyvirtualcam.register_backend``): everything up to the device
driver is the real path.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from streamer.outputs.base import OutputRejected
from streamer.outputs.spec import OutputSpec, parse_spec
from streamer.outputs.virtualcam import PIPE_RATE, VirtualcamOutput
from streamer.pipeline.frames import AVFrame
from tests.conftest import Live, tone
from tests.test_outputs import attach, wait_for

pyvirtualcam = pytest.importorskip(
    "pyvirtualcam", reason="needs the virtualcam extra: pip install 'avatarcast[virtualcam]'"
)
BACKEND = "avatarcast-test"
CHUNK_BYTES = PIPE_RATE * 2 // 25  # one frame's 40 ms of 16-bit mono: 3840 bytes


class Recorder:
    """A pyvirtualcam backend that keeps a digest of each picture sent, in order."""

    made: ClassVar[list[Recorder]] = []

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: Any) -> None:
        self.size = (width, height)
        self.fps = fps
        self.digests: list[str] = []
        self.lengths: set[int] = set()
        Recorder.made.append(self)

    def send(self, frame: np.ndarray) -> None:
        self.lengths.add(frame.size)
        self.digests.append(hashlib.sha1(frame.tobytes()).hexdigest())

    def device(self) -> str:
        return "recorder"

    def native_fourcc(self) -> None:
        return None

    def close(self) -> None:
        pass


@pytest.fixture()
def recorder_backend() -> Iterator[None]:
    Recorder.made.clear()
    pyvirtualcam.register_backend(BACKEND, Recorder)
    yield
    pyvirtualcam.camera.BACKENDS.pop(BACKEND, None)


def digest(frame: AVFrame) -> str:
    return hashlib.sha1(np.ascontiguousarray(frame.video).tobytes()).hexdigest()


async def test_pictures_reach_the_camera_in_order_and_the_voice_reaches_the_fifo(
    live: Live, tmp_path: Path, recorder_backend: None
) -> None:
    session = live.session
    published: list[str] = []
    watch = session.bus.subscribe(video_depth=1)

    async def follow() -> None:
        while True:
            published.append(digest(await watch.next_audio()))

    follower = asyncio.create_task(follow())
    fifo = tmp_path / "pipes" / "mic"
    spec = OutputSpec("virtualcam", path=fifo)
    output = VirtualcamOutput("out_cam", spec, session, lambda _: None, backend=BACKEND)
    output.start()
    session.outputs.add(output)
    await wait_for(fifo.exists, 10, "the FIFO made")
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the virtual microphone
    try:
        await wait_for(lambda: output.state == "live", 10, "live")
        session.speak_audio(tone(1.0, amp=0.5))
        received = bytearray()
        while output.frames_sent < 60:
            await asyncio.sleep(0.1)
            received += read_all(reader)
        assert await session.outputs.remove(output.id)
        received += read_all(reader)
    finally:
        os.close(reader)
        follower.cancel()
        session.bus.unsubscribe(watch)

    [camera] = Recorder.made
    assert camera.size == (512, 512) and camera.fps == 25
    assert camera.lengths == {512 * 512 * 3}
    sent = camera.digests
    assert len(sent) == output.frames_sent >= 60
    starts = [i for i, d in enumerate(published) if d == sent[0]]
    assert any(published[i : i + len(sent)] == sent for i in starts), "pictures out of order"
    assert output.describe()["device"] == "recorder"
    # 48 kHz mono: 1920 samples a frame (the resampler's few samples of delay aside)
    written = output.describe()["audio_pipe"]["written"]
    assert written >= 40 and abs(len(received) - written * CHUNK_BYTES) <= CHUNK_BYTES
    samples = np.frombuffer(bytes(received), "<i2")
    assert np.abs(samples).max() > 0.3 * 32767  # the tone came through, at full scale
    assert output.state == "stopped"


def read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


async def test_no_camera_device_fails_the_output_not_the_session(
    live: Live, tmp_path: Path
) -> None:
    session = live.session
    output = attach(session, "virtualcam", tmp_path)
    await wait_for(lambda: output.state == "failed", 10, "failed")
    assert output.last_error and "v4l2loopback" in output.last_error
    frames = session.stats.frames
    await wait_for(lambda: session.stats.frames > frames + 10, 5, "publishing")
    assert not session.closed


def test_requests_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pipes = tmp_path / "pipes"
    pipes.mkdir()
    (pipes / "plain").write_bytes(b"")

    def refused(**fields: object) -> tuple[int, str]:
        with pytest.raises(OutputRejected) as caught:
            parse_spec("virtualcam", recordings=tmp_path, audio_pipes=pipes, **fields)
        return caught.value.status, caught.value.code

    assert parse_spec("virtualcam", recordings=tmp_path).path is None
    good = parse_spec("virtualcam", recordings=tmp_path, audio_pipes=pipes, name="mic")
    assert good.path == pipes.resolve() / "mic"
    assert refused(name="../mic") == (400, "invalid_name")
    assert refused(name="a/b") == (400, "invalid_name")
    assert refused(name="plain") == (409, "not_a_fifo")
    assert refused(url="/dev/video0") == (400, "invalid_request")
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)
    assert refused() == (424, "output_unavailable")
