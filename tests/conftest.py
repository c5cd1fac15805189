"""What the tests share: a stand-in avatar, live sessions on it, the app and a server.

- The stand-in avatar: a tiny generator exported to ONNX with the real input and output names
  and shapes; its mouth brightness follows the audio energy, so tests can see the audio drive
  the picture. :func:`make_stand_in_avatar` writes it as a package.
- Sessions: the ``standin`` fixture (that avatar and its ONNX backend, once per module), the
  ``live`` fixture (a started :class:`Live` session), a deterministic TTS (:func:`fake_speech`)
  and :func:`tone`.
- The app: :func:`make_app` on the stand-in, :func:`state_of`, and :func:`serving` (a real
  uvicorn server on a free loopback port).
- :func:`write_video`: a small MP4 for the avatar-creation tests; ``talking_video``: the
  default face talking for 10 s (tests/talking_video.py), made once per run.

Fixtures need no import; helpers are imported as ``from tests.conftest import ...``.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI

from models.audio import SAMPLE_RATE
from models.avatar import Avatar, AvatarError, read_avatar, write_avatar
from streamer.api.state import AppState
from streamer.app import create_app
from streamer.config import Settings
from streamer.engine import make_backend
from streamer.engine.base import Backend
from streamer.engine.worker import InferenceWorker
from streamer.metrics import Metrics
from streamer.pipeline.clock import FrameClock, VirtualClock
from streamer.session import Session, SessionConfig


@pytest.fixture(autouse=True, scope="session")
def isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test reads or writes the developer's ``~/.avatarcast``: keys kept there would make
    every test server ask for them, and tests must not leave avatars or certificates behind."""
    patch = pytest.MonkeyPatch()
    patch.setenv("AVATARCAST_HOME", str(tmp_path_factory.mktemp("home")))
    yield
    patch.undo()


# --- the stand-in avatar ---------------------------------------------------------------------

SIZE = 512
CROP = 160
BOX = (176, 300, 336, 460)


def stand_in_generator(path: Path) -> Path:
    """Export a tiny generator: brightness of the masked region rises with the mel energy."""
    torch = pytest.importorskip("torch")
    nn: Any = torch.nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(6, 3, 3, padding=1)
            self.gain = nn.Linear(1, 3)

        def forward(self, reference: Any, masked: Any, mel: Any) -> Any:
            energy = (mel.mean(dim=(1, 2)).unsqueeze(1) + 5.0) / 5.0  # silence (-5) -> 0
            bias = self.gain(energy).unsqueeze(-1).unsqueeze(-1)
            return torch.sigmoid(self.conv(torch.cat([reference, masked], dim=1)) + bias)

    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():
        model.conv.weight.mul_(0.1)
        model.gain.weight.fill_(2.0)
        model.gain.bias.fill_(-1.0)
    args = (torch.rand(1, 3, CROP, CROP), torch.rand(1, 3, CROP, CROP), torch.rand(1, 24, 80))
    with warnings.catch_warnings():  # the legacy exporter needs no onnxscript; it warns
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=["reference", "masked", "mel"],
            output_names=["mouth"],
            dynamic_axes={n: {0: "batch"} for n in ("reference", "masked", "mel", "mouth")},
            opset_version=17,
            dynamo=False,
        )
    return path


def stand_in_assets(width: int = SIZE, height: int = SIZE) -> dict[str, np.ndarray]:
    """A smooth synthetic face-like picture, blink frames with darker eyes, a feather mask
    (any size that holds ``BOX``: a second stand-in of another size for size switches)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [120 + 80 * np.sin(xx / 90.0), 100 + 60 * np.cos(yy / 70.0), 90 + 0.2 * xx], axis=-1
    )
    frame0 = np.clip(base, 0, 255).astype(np.uint8)
    frames = [frame0]
    for closed in (0.3, 0.6, 1.0):
        blink = frame0.copy()
        cv2.ellipse(blink, (200, 200), (30, 12), 0, 0, 360, (40, 30, 30), -1)
        frames.append(cv2.addWeighted(frame0, 1 - closed, blink, closed, 0))
    r = np.hypot(*np.mgrid[-1 : 1 : CROP * 1j, -1 : 1 : CROP * 1j])
    mask = np.clip((0.8 - r) / 0.3, 0.0, 1.0).astype(np.float32)
    x0, y0, x1, y1 = BOX
    return {
        "frames": np.stack(frames),
        "boxes": np.array([BOX] * 4),
        "mask": mask,
        "reference": frame0[y0:y1, x0:x1].copy(),
    }


def make_stand_in_avatar(
    directory: Path, name: str = "standin", size: tuple[int, int] = (SIZE, SIZE)
) -> Path:
    """The stand-in avatar package, ``size`` (width, height) pictures."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    model = stand_in_generator(directory.parent / f".{name}-generator.onnx")
    assets = stand_in_assets(*size)
    return write_avatar(
        directory,
        name=name,
        kind="photo",
        frames=assets["frames"],
        boxes=assets["boxes"],
        mask=assets["mask"],
        reference=assets["reference"],
        model=model,
        blink_frames=(1, 2, 3),
    )


# --- sessions on it --------------------------------------------------------------------------


def build_standin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Avatar, Backend]:
    """The stand-in avatar package and its real ONNX backend (one inference thread)."""
    avatar = read_avatar(make_stand_in_avatar(tmp_path_factory.mktemp("live") / "standin"))
    return avatar, make_backend("onnx", avatar, threads=1)


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Avatar, Backend]:
    return build_standin(tmp_path_factory)


def tone(seconds: float, freq: float = 220.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amp * np.sin(2 * np.pi * freq * t + 0.3)).astype(np.float32)  # x[0] != 0


def fake_speech(text: str) -> object:
    """A deterministic TTS stand-in: 0.2 s of tone per word."""
    return iter([tone(0.2 * len(text.split()), 300.0)])


def standing_still() -> float:
    """A deadline clock at 0: every frame of a virtual clock (due at 0 or later) is on time."""
    return 0.0


class Live:
    """A session on a real worker, for one test: on ``clock`` if one is given (a virtual
    clock, whose time the test then reads), else on the live clock as in the server."""

    def __init__(
        self,
        avatar: Avatar,
        backend: Backend,
        config: SessionConfig | None = None,
        worker: InferenceWorker | None = None,
        clock: FrameClock | None = None,
    ):
        self.clock = clock
        self.pool = ThreadPoolExecutor(2)
        self.metrics = Metrics()
        if worker is None:
            # On a virtual clock no frame is ever late: the worker's deadlines are then read
            # on a clock that stands still, so it never gives a frame up as hopeless.
            deadlines = time.monotonic if clock is None else standing_still
            worker = InferenceWorker(backend, 8, self.metrics.observe_batch, clock=deadlines)
        self.worker = worker
        self.session = Session(
            avatar,
            self.worker,
            executor=self.pool,
            speech=fake_speech,  # type: ignore[arg-type]
            metrics=self.metrics,
            config=config,
            clock=clock,
        )

    async def aclose(self) -> None:
        await self.session.aclose()
        await self.worker.aclose()
        self.pool.shutdown()


@pytest.fixture()
async def live(standin: tuple[Avatar, Backend]) -> AsyncIterator[Live]:
    made = Live(*standin)
    await made.session.start()
    yield made
    await made.aclose()


@pytest.fixture()
async def virtual(standin: tuple[Avatar, Backend]) -> AsyncIterator[Live]:
    """A started session on a :class:`VirtualClock`: the server's frame path as fast as the
    machine renders it, never late, so pacing is checked on the clock's time, not the wall's."""
    made = Live(*standin, clock=VirtualClock(SessionConfig().lead_s))
    await made.session.start()
    yield made
    await made.aclose()


# --- the app and a server --------------------------------------------------------------------


def make_app(standin: tuple[Avatar, Backend], **settings: Any) -> FastAPI:
    avatar, backend = standin

    def loader(name: str) -> tuple[Avatar, Backend]:
        if name not in ("default", avatar.name):
            raise AvatarError(f"no avatar named {name!r}: see `avatarcast avatar list`")
        return avatar, backend

    return create_app(
        Settings(**settings),
        loader=loader,
        speech=fake_speech,  # type: ignore[arg-type]
    )


def state_of(app: FastAPI) -> AppState:
    state = app.state.avatarcast
    assert isinstance(state, AppState)
    return state


async def wait_for(condition: Callable[[], object], seconds: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail saying ``what`` did not happen in time."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {seconds} s")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """Serve ``app`` (its lifespan included) until the block ends; yields its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, ws="websockets", log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


# --- videos ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def talking_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.talking_video import make_talking_video

    return make_talking_video(tmp_path_factory.mktemp("talk") / "talk.mp4", seconds=10.0)


def write_video(
    path: Path,
    frame: Callable[[int], np.ndarray],
    n: int,
    *,
    times: list[float] | None = None,
    audio: bool = True,
    rate: int = 30,
) -> Path:
    """A small H.264 (+ AAC tone) MP4; ``times`` gives each frame's pts in seconds (VFR)."""
    container = av.open(str(path), "w", format="mp4")
    first = frame(0)
    video = container.add_stream("libx264", rate=rate)
    video.height, video.width = first.shape[:2]
    video.pix_fmt = "yuv420p"
    video.codec_context.time_base = Fraction(1, 1000)
    # Every stream is added before the first packet is muxed (the header is written then).
    stream = container.add_stream("aac", rate=SAMPLE_RATE) if audio else None
    if stream is not None:
        stream.layout = "mono"
    for i in range(n):
        vf = av.VideoFrame.from_ndarray(frame(i), format="rgb24")
        vf.pts = round(1000 * (times[i] if times else i / rate))
        vf.time_base = Fraction(1, 1000)
        container.mux(video.encode(vf))
    container.mux(video.encode(None))
    if stream is not None:
        seconds = (times[-1] if times else n / rate) + 0.1
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        tone = (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
        af = av.AudioFrame.from_ndarray(tone.reshape(1, -1), format="flt", layout="mono")
        af.sample_rate, af.pts, af.time_base = SAMPLE_RATE, 0, Fraction(1, SAMPLE_RATE)
        container.mux(stream.encode(af))
        container.mux(stream.encode(None))
    container.close()
    return path


@asynccontextmanager
async def chromium(executable: Path, args: list[str]) -> AsyncIterator[Any]:
    """Debian's chromium driven by playwright (no browser download), closed after the block."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(executable), args=args)
        try:
            yield browser
        finally:
            await browser.close()
