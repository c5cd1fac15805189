"""What the WebRTC tests share: a fake publishing session, an app around it, a WHEP player.

The session is a small fake publisher on a FrameBus (the media contract every output reads):
25 fps frames paced by timestamps whose "mouth" brightens exactly on the frames whose audio
is a tone burst. Like the real session, it owns the production encode stage and commits
each picture to its running encoders ahead of publication, so viewers get the production
encode path. The
player checks the WHEP answer and records what arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from fastapi import FastAPI

from models.audio import SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from models.avatar import Avatar, AvatarError
from streamer.api import pages, whep
from streamer.api.errors import install_error_handlers
from streamer.api.state import AppState
from streamer.config import Settings
from streamer.engine.base import Backend
from streamer.engine.pool import EnginePool
from streamer.metrics import Metrics
from streamer.outputs.webrtc import PeerRegistry
from streamer.pipeline.encode import EncodedStream, EncodeStage
from streamer.pipeline.frames import FRAME_SECONDS, AVFrame, FrameBus
from streamer.session import Session, SessionOptions, SessionRegistry

SIZE = 192
MOUTH = (slice(120, 160), slice(60, 132))  # rows, cols of the fake mouth
BURST_PERIOD = 40  # frames: 1.6 s
BURST_LENGTH = 15  # frames of tone per period
COMMIT_AHEAD_S = 0.02  # pictures go to the encoder this long before their frame is due


def speaking(index: int) -> bool:
    return index % BURST_PERIOD >= BURST_PERIOD - BURST_LENGTH


@dataclass(eq=False)
class FakeSession:
    """Publishes AV frames at 25 fps from one clock: a face whose mouth opens with the tone."""

    id: str = field(default_factory=lambda: secrets.token_hex(4))
    view_token: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    created: float = field(default_factory=time.time)  # the view token's lifetime runs from it
    options: SessionOptions = field(default_factory=SessionOptions)  # who created it (key_id)
    bus: FrameBus[AVFrame] = field(default_factory=FrameBus)
    video_codec: Literal["vp8", "h264"] = "vp8"
    viewers: int = 0
    ready: bool = False
    frames: int = 0

    def __post_init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        face = np.full((SIZE, SIZE, 3), (70, 90, 120), np.uint8)
        face[30:170, 40:152] = (200, 160, 130)
        self._closed = face.copy()
        self._closed[MOUTH] = (60, 20, 20)
        self._open = face.copy()
        self._open[MOUTH] = (245, 245, 245)
        t = np.arange(SAMPLES_PER_VIDEO_FRAME) / SAMPLE_RATE
        self._tone = (np.sin(2 * np.pi * 300 * t) * 12000).astype(np.int16)
        self._silence = np.zeros(SAMPLES_PER_VIDEO_FRAME, np.int16)
        self._encode = EncodeStage(self.id, self.bus, lambda: self.video_codec)

    def encoded(self, codec: Literal["vp8", "h264"] | None = None) -> EncodedStream:
        """The production encode-once stage, as a session owns it."""
        return self._encode.encoded(codec)

    def viewer_added(self) -> None:
        self.viewers += 1

    def viewer_removed(self) -> None:
        self.viewers -= 1

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        k = 0
        while True:
            due = t0 + k * FRAME_SECONDS
            on = speaking(k)
            video = self._open if on else self._closed
            await asyncio.sleep(max(0.0, due - COMMIT_AHEAD_S - loop.time()))
            for stream in self._encode.running():
                stream.commit(k, video)
            await asyncio.sleep(max(0.0, due - loop.time()))
            self.bus.publish(
                AVFrame(
                    index=k,
                    video=video,
                    audio=self._tone if on else self._silence,
                    published_at=loop.time(),
                )
            )
            self.ready = True
            self.frames = k = k + 1

    async def aclose(self, reason: str = "deleted") -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._encode.aclose()
        self.bus.close()


def _no_avatars(name: str) -> tuple[Avatar, Backend]:
    raise AvatarError(f"no avatar named {name!r}: this app only has fake sessions")


def fake_app(sessions: dict[str, FakeSession], api_key: str | None) -> FastAPI:
    """The WHEP and page routes over the app's typed state, whose session registry holds
    ``sessions`` (started with the app, closed with it)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def existing(name: str, _: SessionOptions, __: Callable[..., None]) -> Session:
            return sessions[name]  # type: ignore[return-value]

        webrtc = PeerRegistry()
        registry = SessionRegistry(existing, on_closed=lambda s: webrtc.remove_session(s.id))
        engines = EnginePool(_no_avatars)
        pools = [ThreadPoolExecutor(1) for _ in range(3)]
        settings = Settings(api_key=api_key)
        app.state.avatarcast = AppState(settings, Metrics(), engines, registry, webrtc, *pools)
        for session_id in sessions:
            await registry.create(session_id)
        try:
            yield
        finally:
            await webrtc.aclose()
            await registry.aclose()
            await engines.aclose()
            for pool in pools:
                pool.shutdown(wait=False)

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(whep.router)
    app.include_router(pages.router)
    return app


@contextlib.asynccontextmanager
async def served_fake() -> AsyncIterator[tuple[str, FakeSession, PeerRegistry]]:
    """One ready fake session on a served fake app (key ``k3y``): base URL, session, peers."""
    from tests.conftest import serving

    session = FakeSession()
    app = fake_app({session.id: session}, api_key="k3y")
    async with serving(app) as base:
        for _ in range(100):
            if session.ready:
                break
            await asyncio.sleep(0.01)
        yield base, session, app.state.avatarcast.webrtc


async def whep_offer(video_codec: str | None = None) -> RTCPeerConnection:
    """A recvonly offer; ``video_codec`` ("H264", "VP8") limits its video to that codec."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = pc.addTransceiver("video", direction="recvonly")
    if video_codec is not None:
        capabilities = RTCRtpReceiver.getCapabilities("video")
        assert capabilities is not None
        video.setCodecPreferences(
            [c for c in capabilities.codecs if c.mimeType in (f"video/{video_codec}", "video/rtx")]
        )
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc


@dataclass
class Received:
    video: list[tuple[float, int, float]] = field(default_factory=list)  # arrival, pts, mouth
    audio: list[tuple[float, int, float]] = field(default_factory=list)  # arrival, pts, rms
    audio_samples: int = 0


async def play(
    base: str, session: FakeSession | Session, seconds: float, video_codec: str | None = None
) -> tuple[Received, float]:
    """Play the session through WHEP; returns what arrived and the time to first frame."""
    pc = await whep_offer(video_codec)
    got = Received()
    first_frame = asyncio.get_running_loop().create_future()
    tasks: list[asyncio.Task[None]] = []

    async def read_video(track: object) -> None:
        while True:
            try:
                frame = await track.recv()  # type: ignore[attr-defined]
            except MediaStreamError:
                return
            if not first_frame.done():
                first_frame.set_result(time.monotonic())
            rgb = frame.to_ndarray(format="rgb24")
            got.video.append((time.monotonic(), int(frame.pts), float(rgb[MOUTH].mean())))

    async def read_audio(track: object) -> None:
        while True:
            try:
                frame = await track.recv()  # type: ignore[attr-defined]
            except MediaStreamError:
                return
            x = frame.to_ndarray().astype(np.float32)
            got.audio_samples += frame.samples
            rms = float(np.sqrt(np.mean(x**2)))
            got.audio.append((time.monotonic(), int(frame.pts), rms))

    @pc.on("track")
    def on_track(track: object) -> None:
        reader = read_video if track.kind == "video" else read_audio  # type: ignore[attr-defined]
        tasks.append(asyncio.ensure_future(reader(track)))

    posted = time.monotonic()
    async with httpx.AsyncClient(base_url=base) as http:
        res = await http.post(
            f"/v1/sessions/{session.id}/whep",
            content=pc.localDescription.sdp,
            headers={
                "Content-Type": "application/sdp",
                "Authorization": f"Bearer {session.view_token}",
            },
        )
        assert res.status_code == 201, res.text
        assert res.headers["content-type"].startswith("application/sdp")
        assert res.headers["location"].startswith(f"/v1/sessions/{session.id}/whep/")
        assert res.headers["etag"].startswith('"')
        assert "a=candidate:" in res.text and " 127.0.0.1 " in res.text
        await pc.setRemoteDescription(RTCSessionDescription(res.text, "answer"))
        ttff = await asyncio.wait_for(first_frame, 5.0) - posted
        await asyncio.sleep(seconds)
        res = await http.delete(
            res.headers["location"], headers={"Authorization": f"Bearer {session.view_token}"}
        )
        assert res.status_code == 200
    await pc.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return got, ttff


def unwrap(values: list[int]) -> np.ndarray:
    return np.unwrap(np.asarray(values, np.float64), period=2**32)


def onsets(times: np.ndarray, values: np.ndarray) -> list[float]:
    """Times at which a signal crosses half-way between its low and high levels, going up."""
    threshold = (np.percentile(values, 10) + np.percentile(values, 90)) / 2
    high = values > threshold
    return [float(times[i]) for i in range(1, len(high)) if high[i] and not high[i - 1]]


def av_offset_ms(got: Received) -> float:
    """Mouth onset minus voice onset on the streams' RTP timelines, both counted from frame 0.

    Both tracks start on the same frame, so each stream's first timestamp is the same instant.
    Positive: the mouth opens after the voice starts.
    """
    vt = (unwrap([p for _, p, _ in got.video]) - got.video[0][1]) / 90_000
    at = (unwrap([p for _, p, _ in got.audio]) - got.audio[0][1]) / 48_000
    v_on = onsets(vt, np.array([m for _, _, m in got.video]))
    a_on = onsets(at, np.array([r for _, _, r in got.audio]))
    assert v_on and a_on, "no speech onsets seen at the receiver"
    diffs = [min((v - a for v in v_on), key=abs) for a in a_on]
    return float(np.median(diffs)) * 1000


class EnergyBackend:
    """Numpy stand-in generator: the mouth crop brightens with the mel energy (no model)."""

    name, device = "fake", "cpu"

    def infer(self, reference: np.ndarray, masked: np.ndarray, mel: np.ndarray) -> np.ndarray:
        energy = np.clip((mel.mean(axis=(1, 2)) + 5.0) / 5.0, 0, 1)[:, None, None, None]
        return np.clip(reference * 0.3 + energy * 0.7, 0, 1).astype(np.float32)
