"""The host's microphone as a WebRTC uplink, end to end through the real app.

An aiortc client sends a tone (Opus, 48 kHz, real-time pace) to ``POST /v1/sessions/{id}/mic``:
the session goes speaking, its published AV frames carry the tone resampled to 16 kHz, a WHEP
viewer receives it, and closing the uplink ends the utterance (``playback_finished``).
"""

from __future__ import annotations

import asyncio
import fractions
import time
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from models.audio import SAMPLE_RATE
from models.avatar import read_avatar
from streamer.app import create_app
from streamer.config import Settings
from streamer.pipeline.frames import AVFrame
from streamer.session import SessionEvent
from tests.conftest import make_stand_in_avatar, serving
from tests.webrtc_fakes import EnergyBackend, play

KEY = "k3y"
TONE_HZ = 440.0
TONE_AMP = 0.3


class ToneTrack(MediaStreamTrack):
    """A microphone that hears a steady tone: 20 ms frames of 48 kHz mono, paced in real time."""

    kind = "audio"

    def __init__(self, freq: float = TONE_HZ, rate: int = 48_000) -> None:
        super().__init__()
        self.freq, self.rate = freq, rate
        self.samples = rate // 50
        self.sent = 0
        self.started: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.started is None:
            self.started = time.monotonic()
        wait = self.started + self.sent / self.rate - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (self.sent + np.arange(self.samples)) / self.rate
        pcm = (TONE_AMP * np.sin(2 * np.pi * self.freq * t) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self.sent
        frame.time_base = fractions.Fraction(1, self.rate)
        self.sent += self.samples
        return frame


def dominant_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[int(np.argmax(spectrum))])


async def next_event(queue: asyncio.Queue[SessionEvent], kind: str) -> dict[str, Any]:
    """The next event of ``kind``, as the JSON the WebSocket sends."""
    async with asyncio.timeout(10):
        while True:
            event = (await queue.get()).to_json()
            if event["type"] == kind:
                return event


async def test_microphone_uplink_speaks_through_the_session(tmp_path: Path) -> None:
    avatar = read_avatar(make_stand_in_avatar(tmp_path / "standin"))
    app = create_app(Settings(api_key=KEY), loader=lambda name: (avatar, EnergyBackend()))
    auth = {"Authorization": f"Bearer {KEY}"}
    async with serving(app) as base, httpx.AsyncClient(base_url=base, headers=auth) as http:
        res = await http.post("/v1/sessions", json={"avatar": "standin"})
        assert res.status_code == 201, res.text
        session = app.state.avatarcast.registry.get(res.json()["id"])
        await asyncio.wait_for(session.wait_ready(), 10)
        events = session.subscribe_events()
        sub = session.bus.subscribe(video_depth=1, audio_depth=1000)
        viewer = asyncio.create_task(play(base, session, seconds=3.5))

        # The host's microphone: an aiortc peer that only sends audio.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver(ToneTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        res = await http.post(
            f"/v1/sessions/{session.id}/mic",
            content=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp"},
        )
        assert res.status_code == 201, res.text
        assert res.headers["location"].startswith(f"/v1/sessions/{session.id}/mic/")
        await pc.setRemoteDescription(RTCSessionDescription(res.text, "answer"))
        try:
            started = await next_event(events, "speaking_started")
            uid = started["utterance_id"]
            assert session.state == "speaking"
            await asyncio.sleep(1.5)
            # Microphone off: the live utterance ends once what was heard has played.
            res = await http.delete(res.headers["location"])
            assert res.status_code == 200
            finished = await next_event(events, "playback_finished")
        finally:
            await pc.close()
        got, _ = await viewer
        frames: list[AVFrame] = []
        while sub.depth[1]:
            frames.append(await sub.next_audio())
        session.bus.unsubscribe(sub)
        await app.state.avatarcast.webrtc.aclose()

    assert finished["utterance_id"] == uid and finished["interrupted"] is False
    assert 1.0 < finished["position_s"] < 4.0
    assert session.state == "idle"
    # The published AV frames carry the microphone's tone, resampled to 16 kHz.
    mic = [f for f in frames if f.utterance_id == uid]
    lag = [(f.published_at - f.audio_in_at) * 1000 for f in mic if f.audio_in_at is not None]
    print(
        f"\nmicrophone uplink: voice in -> frame out {np.median(lag):.0f} ms median, "
        f"{np.percentile(lag, 95):.0f} ms p95"
    )
    spoken = np.concatenate([f.audio for f in mic])
    assert len(spoken) >= SAMPLE_RATE, f"{len(spoken)} samples of the microphone published"
    pcm = spoken.astype(np.float32) / 32767.0
    steady = pcm[len(pcm) // 4 : 3 * len(pcm) // 4]
    assert abs(dominant_hz(steady, SAMPLE_RATE) - TONE_HZ) < 5.0
    rms = float(np.sqrt(np.mean(steady**2)))
    assert 0.5 * TONE_AMP / np.sqrt(2) < rms < 1.5 * TONE_AMP / np.sqrt(2), rms
    # ... and so does what a WHEP viewer receives (48 kHz Opus at the viewer).
    assert max(r for _, _, r in got.audio) > 0.3 * TONE_AMP * 32767 / np.sqrt(2)
