"""WebRTC viewers through WHEP, with a real aiortc client over real UDP on this machine.

The session is a small fake publisher on a FrameBus (the media contract every output reads):
25 fps frames paced by timestamps whose "mouth" brightens exactly on the frames whose audio
is a tone burst. At the receiver we check the frame rate, that audio arrives, that the mouth
changes when the audio energy rises, and estimate the A/V offset from the RTP timelines.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Literal

import httpx
import numpy as np
import pytest
import uvicorn
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from fastapi import FastAPI

from models.audio import SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from streamer.api import pages, whep
from streamer.outputs.webrtc import (
    AVVideoTrack,
    EncodedVideoTrack,
    PeerRegistry,
    add_loopback_candidates,
)
from streamer.pipeline.encode import EncodedStream, EncodeStage
from streamer.pipeline.frames import FRAME_SECONDS, AVFrame, FrameBus

SIZE = 192
MOUTH = (slice(120, 160), slice(60, 132))  # rows, cols of the fake mouth
BURST_PERIOD = 40  # frames: 1.6 s
BURST_LENGTH = 15  # frames of tone per period


def speaking(index: int) -> bool:
    return index % BURST_PERIOD >= BURST_PERIOD - BURST_LENGTH


@dataclass(eq=False)
class FakeSession:
    """Publishes AV frames at 25 fps from one clock: a face whose mouth opens with the tone."""

    id: str = field(default_factory=lambda: secrets.token_hex(4))
    view_token: str = field(default_factory=lambda: secrets.token_urlsafe(12))
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

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        k = 0
        while True:
            await asyncio.sleep(max(0.0, t0 + k * FRAME_SECONDS - loop.time()))
            on = speaking(k)
            self.bus.publish(
                AVFrame(
                    index=k,
                    video=self._open if on else self._closed,
                    audio=self._tone if on else self._silence,
                    published_at=loop.time(),
                )
            )
            self.ready = True
            self.frames = k = k + 1

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._encode.aclose()
        self.bus.close()


def fake_app(sessions: dict[str, FakeSession], api_key: str | None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.webrtc = PeerRegistry()
        yield
        await app.state.webrtc.aclose()

    app = FastAPI(lifespan=lifespan)
    app.state.sessions = sessions
    app.state.settings = SimpleNamespace(api_key=api_key)
    app.include_router(whep.router)
    app.include_router(pages.router)
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def live() -> AsyncIterator[tuple[str, FakeSession, PeerRegistry]]:
    session = FakeSession()
    app = fake_app({session.id: session}, api_key="k3y")
    async with serving(app) as base:
        session.start()
        for _ in range(100):
            if session.ready:
                break
            await asyncio.sleep(0.01)
        yield base, session, app.state.webrtc
        await session.aclose()


async def whep_offer(video_codec: str | None = None) -> RTCPeerConnection:
    """A recvonly offer; ``video_codec`` ("H264", "VP8") limits its video to that codec."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = pc.addTransceiver("video", direction="recvonly")
    if video_codec is not None:
        video.setCodecPreferences(
            [
                c
                for c in RTCRtpReceiver.getCapabilities("video").codecs
                if c.mimeType in (f"video/{video_codec}", "video/rtx")
            ]
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
    base: str, session: FakeSession, seconds: float, video_codec: str | None = None
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


async def test_whep_viewer_gets_lipsynced_av(live: tuple[str, FakeSession, PeerRegistry]) -> None:
    base, session, _ = live
    got, ttff = await play(base, session, seconds=4.5)

    arrivals = np.array([t for t, _, _ in got.video])
    steady = arrivals[arrivals > arrivals[0] + 0.5]
    fps = (len(steady) - 1) / (steady[-1] - steady[0])
    assert 21.0 <= fps <= 27.5, f"{fps:.1f} fps at the receiver"
    assert got.audio_samples >= 0.8 * 4.5 * 48_000, "audio did not keep flowing"
    assert ttff < 1.0, f"first frame after {ttff * 1000:.0f} ms"

    # The mouth changes when (and only when) the audio energy rises.
    mouth = np.array([m for _, _, m in got.video])
    assert mouth.max() - mouth.min() > 100, "the mouth region never changed"
    offset = av_offset_ms(got)
    assert abs(offset) <= 45, f"A/V offset {offset:.0f} ms"
    print(f"\nreceiver: {fps:.1f} fps, ttff {ttff * 1000:.0f} ms, A/V offset {offset:+.0f} ms")


async def test_two_viewers_and_viewer_count(live: tuple[str, FakeSession, PeerRegistry]) -> None:
    base, session, registry = live
    (a, _), (b, _) = await asyncio.gather(
        play(base, session, seconds=2.0), play(base, session, seconds=2.0)
    )
    assert len(a.video) > 30 and len(b.video) > 30
    await asyncio.sleep(0.1)
    assert session.viewers == 0 and len(registry) == 0 and session.bus.subscribers == 0


async def test_viewers_of_a_session_share_one_encoder(
    live: tuple[str, FakeSession, PeerRegistry],
) -> None:
    base, session, registry = live
    plays = asyncio.gather(play(base, session, 3.0), play(base, session, 3.0))
    await asyncio.sleep(1.5)
    (encoder,) = registry.encoders()
    assert encoder.viewers == 2 and encoder.codec == "vp8"
    frames, published = encoder.frames, session.frames
    await asyncio.sleep(1.0)
    # Each published frame was encoded once, not once per viewer.
    assert abs((encoder.frames - frames) - (session.frames - published)) <= 2
    # A receiver's key frame request (RTCP PLI) reaches the shared encoder.
    peer = registry.of_session(session.id)[0]
    (sender,) = [t.sender for t in peer.pc.getTransceivers() if t.kind == "video"]
    encoder._keyframe_wanted = False
    sender._send_keyframe()
    assert encoder._keyframe_wanted
    (a, _), (b, _) = await plays
    assert len(a.video) > 50 and len(b.video) > 50
    assert registry.encoders() == []  # the last viewer gone, the encoder is closed


async def test_h264_session_and_a_viewer_without_vp8(
    live: tuple[str, FakeSession, PeerRegistry],
) -> None:
    """A session asking for H.264 encodes it once; a client that offers only H.264 to a VP8
    session still plays (its video encoded for it alone, its audio shared)."""
    base, session, registry = live
    session.video_codec = "h264"
    task = asyncio.ensure_future(play(base, session, 2.0, video_codec="H264"))
    await asyncio.sleep(1.0)
    assert [e.codec for e in registry.encoders()] == ["h264"]
    (peer,) = registry.of_session(session.id)
    assert isinstance(peer.video, EncodedVideoTrack)
    got, _ = await task
    mouth = np.array([m for _, _, m in got.video])
    assert len(mouth) > 30 and mouth.max() - mouth.min() > 100

    session.video_codec = "vp8"
    task = asyncio.ensure_future(play(base, session, 2.0, video_codec="H264"))
    await asyncio.sleep(1.0)
    (peer,) = registry.of_session(session.id)
    assert isinstance(peer.video, AVVideoTrack) and peer.encoded is not None
    got, _ = await task
    mouth = np.array([m for _, _, m in got.video])
    assert len(mouth) > 30 and mouth.max() - mouth.min() > 100
    assert max(r for _, _, r in got.audio) > 1000


async def test_whep_http_contract(live: tuple[str, FakeSession, PeerRegistry]) -> None:
    base, session, registry = live
    token = {"Authorization": f"Bearer {session.view_token}"}
    sdp = {"Content-Type": "application/sdp"}
    url = f"/v1/sessions/{session.id}/whep"
    pc = await whep_offer()
    offer = pc.localDescription.sdp
    async with httpx.AsyncClient(base_url=base) as http:
        res = await http.options(url)
        assert res.status_code == 204
        assert res.headers["access-control-allow-origin"] == "*"
        assert "Location" in res.headers["access-control-expose-headers"]
        assert "ETag" in res.headers["access-control-expose-headers"]
        assert res.headers["accept-post"] == "application/sdp"

        res = await http.post(url, content=offer, headers=sdp)
        assert res.status_code == 401 and res.json()["error"]["code"] == "unauthorized"
        res = await http.post(url, content=offer, headers={**sdp, "Authorization": "Bearer no"})
        assert res.status_code == 401
        res = await http.post(url, content=offer, headers={"Content-Type": "text/plain", **token})
        assert res.status_code == 415
        res = await http.post(url, content="v=0\r\nnonsense", headers={**sdp, **token})
        assert res.status_code == 400 and res.json()["error"]["code"] == "bad_sdp"
        res = await http.post("/v1/sessions/nope/whep", content=offer, headers={**sdp, **token})
        assert res.status_code == 404

        session.ready = False  # as before the first frame: 409 with Retry-After
        res = await http.post(url, content=offer, headers={**sdp, **token})
        session.ready = True
        assert res.status_code == 409 and int(res.headers["retry-after"]) >= 1

        res = await http.post(f"{url}?token={session.view_token}", content=offer, headers=sdp)
        assert res.status_code == 201
        location, etag = res.headers["location"], res.headers["etag"]
        assert res.headers["accept-patch"] == "application/trickle-ice-sdpfrag"
        frag = (
            "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\nm=video 9 UDP/TLS/RTP/SAVPF 0"
            "\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n"
            "a=end-of-candidates\r\n"
        )
        patch = {"Content-Type": "application/trickle-ice-sdpfrag", **token}
        res = await http.patch(location, content=frag, headers={**patch, "If-Match": etag})
        assert res.status_code == 204
        res = await http.patch(location, content=frag, headers={**patch, "If-Match": '"x"'})
        assert res.status_code == 412
        res = await http.patch(location, content=frag, headers={**token, **sdp})
        assert res.status_code == 415
        res = await http.options(location)
        assert res.status_code == 204 and "PATCH" in res.headers["access-control-allow-methods"]
        assert len(registry) == 1
        res = await http.delete(location, headers=token)
        assert res.status_code == 200 and len(registry) == 0
        res = await http.delete(location, headers=token)
        assert res.status_code == 404
    await pc.close()


async def test_vanished_viewer_is_cleaned_up(live: tuple[str, FakeSession, PeerRegistry]) -> None:
    """A client that disappears without DELETE: ICE fails and the server closes the peer."""
    base, session, registry = live
    pc = await whep_offer()
    await add_loopback_candidates(pc)
    async with httpx.AsyncClient(base_url=base) as http:
        res = await http.post(
            f"/v1/sessions/{session.id}/whep?token={session.view_token}",
            content=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp"},
        )
    assert res.status_code == 201
    await pc.setRemoteDescription(RTCSessionDescription(res.text, "answer"))
    for _ in range(100):
        if session.viewers == 1:
            break
        await asyncio.sleep(0.05)
    assert session.viewers == 1 and session.bus.subscribers == 1
    await pc.close()  # gone, no DELETE; aioice consent checks notice within ~30 s at worst
    peer = registry.of_session(session.id)[0]
    await peer.pc.close()  # what an ICE failure does, without waiting for the consent timeout
    for _ in range(50):
        if len(registry) == 0 and session.viewers == 0:
            break
        await asyncio.sleep(0.05)
    assert len(registry) == 0 and session.viewers == 0 and session.bus.subscribers == 0
    # The session kept publishing throughout.
    before = session.frames
    await asyncio.sleep(0.2)
    assert session.frames > before


class EnergyBackend:
    """Numpy stand-in generator: the mouth crop brightens with the mel energy (no model)."""

    name = "fake"

    def infer(self, reference: np.ndarray, masked: np.ndarray, mel: np.ndarray) -> np.ndarray:
        energy = np.clip((mel.mean(axis=(1, 2)) + 5.0) / 5.0, 0, 1)[:, None, None, None]
        return np.clip(reference * 0.3 + energy * 0.7, 0, 1).astype(np.float32)


async def test_real_app_session_through_whep(tmp_path: object) -> None:
    """live-core's app and Session: WHEP plays it, audio of an uploaded utterance arrives."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_avatar import make_stand_in_avatar

    from models.avatar import read_avatar
    from streamer.app import create_app
    from streamer.config import Settings

    avatar = read_avatar(make_stand_in_avatar(Path(str(tmp_path)) / "standin"))
    app = create_app(Settings(), loader=lambda name: (avatar, EnergyBackend()))
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        res = await http.post("/v1/sessions", json={"avatar": "standin"})
        assert res.status_code == 201, res.text
        info = res.json()
        session = app.state.avatarcast.registry.get(info["id"])
        await asyncio.wait_for(session.wait_ready(), 10)
        t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
        tone = (np.sin(2 * np.pi * 220 * t) * 0.5).astype(np.float32)
        session.speak_audio(tone)
        playing = asyncio.ensure_future(play(base, session, seconds=2.5))
        await asyncio.sleep(1.5)
        metrics = (await http.get("/metrics")).text
        assert "avatarcast_encoders 1.0" in metrics  # one viewer: its session is encoded once
        (line,) = [x for x in metrics.splitlines() if x.startswith("avatarcast_video_encode_ms ")]
        assert float(line.split()[1]) > 0
        got, ttff = await playing
        arrivals = np.array([a for a, _, _ in got.video])
        steady = arrivals[arrivals > arrivals[0] + 0.5]
        fps = (len(steady) - 1) / (steady[-1] - steady[0])
        print(f"\nreal app: {fps:.1f} fps, ttff {ttff * 1000:.0f} ms")
        assert fps > 18 and got.audio_samples > 0.7 * 2.5 * 48_000
        assert max(r for _, _, r in got.audio) > 1000  # the tone came through
        await app.state.webrtc.aclose()
