"""The WebSocket on a real uvicorn server, driven by the `websockets` client."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import numpy as np
import pytest
import websockets
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect

from models.avatar import Avatar
from streamer.engine.base import Backend
from streamer.pipeline.frames import AVFrame
from streamer.session import Session
from tests.conftest import make_app, serving, state_of


def pcm(seconds: float, rate: int, freq: float = 300.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t + 0.3) * 32767).astype("<i2").tobytes()


async def next_event(ws: ClientConnection, kind: str, wait_s: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(wait_s):
        while True:
            message = await ws.recv()
            assert isinstance(message, str)
            event = json.loads(message)
            if event["type"] == kind:
                return event


async def stream_realtime(
    ws: ClientConnection, data: bytes, rate: int, chunk_s: float = 0.02, speed: float = 1.0
) -> None:
    loop = asyncio.get_running_loop()
    step = int(rate * chunk_s) * 2
    t0 = loop.time()
    for i, start in enumerate(range(0, len(data), step)):
        await asyncio.sleep(max(0.0, t0 + i * chunk_s / speed - loop.time()))
        await ws.send(data[start : start + step])


async def new_session(url: str, app: FastAPI) -> Session:
    import httpx

    async with httpx.AsyncClient(base_url=url) as client:
        sid = (await client.post("/v1/sessions", json={})).json()["id"]
    session = state_of(app).registry.get(sid)
    assert session is not None
    return session


def ws_url(url: str, session: Session, rate: int) -> str:
    return f"ws{url[4:]}/v1/sessions/{session.id}/ws?sample_rate={rate}"


@pytest.mark.parametrize("rate", [8_000, 16_000, 44_100, 48_000])
async def test_streamed_pcm_is_resampled_and_played(
    standin: tuple[Avatar, Backend], rate: int
) -> None:
    app = make_app(standin)
    async with serving(app) as url:
        session = await new_session(url, app)
        sub = session.bus.subscribe(video_depth=1000, audio_depth=1000)
        async with connect(ws_url(url, session, rate)) as ws:
            await stream_realtime(ws, pcm(0.6, rate), rate, speed=4.0)
            started = await next_event(ws, "speaking_started")
            await ws.send(json.dumps({"type": "audio_end"}))
            done = await next_event(ws, "playback_finished")
        assert done["utterance_id"] == started["utterance_id"] and not done["interrupted"]
        assert done["position_s"] == pytest.approx(0.6, abs=0.01)
        frames: list[AVFrame] = []
        while sub.depth[1]:
            frames.append(await sub.next_audio())
        spoken = np.concatenate([f.audio for f in frames if f.utterance_id is not None])
        # 300 Hz survives resampling: the dominant frequency of what the session played.
        spectrum = np.abs(np.fft.rfft(spoken.astype(np.float32)))
        peak = np.argmax(spectrum) * 16_000 / len(spoken)
        assert peak == pytest.approx(300, abs=10)


async def test_speak_interrupt_and_events_over_ws(standin: tuple[Avatar, Backend]) -> None:
    app = make_app(standin)
    async with serving(app) as url:
        session = await new_session(url, app)
        async with connect(ws_url(url, session, 16_000)) as ws:
            await ws.send(json.dumps({"type": "speak", "text": " ".join(["word"] * 20)}))
            queued = await next_event(ws, "queued")
            started = await next_event(ws, "speaking_started")
            assert started["utterance_id"] == queued["utterance_id"]
            await asyncio.sleep(0.3)
            await ws.send(json.dumps({"type": "interrupt"}))
            interrupted = await next_event(ws, "interrupted")
            finished = await next_event(ws, "playback_finished")
            assert interrupted["utterance_ids"] == [queued["utterance_id"]]
            assert finished["interrupted"] and 0.1 < finished["position_s"] < 1.5
            assert session.state == "idle"
            # Streaming again after an interrupt starts a new utterance.
            await ws.send(pcm(0.3, 16_000))
            await ws.send(json.dumps({"type": "audio_end"}))
            again = await next_event(ws, "playback_finished")
            assert again["utterance_id"] != queued["utterance_id"] and not again["interrupted"]
            for bad in ("not json", json.dumps({"type": "dance"}), json.dumps([1])):
                await ws.send(bad)
                assert (await next_event(ws, "error"))["code"] in (
                    "invalid_json",
                    "unknown_message",
                )
            await ws.send(json.dumps({"type": "speak", "text": ""}))
            assert (await next_event(ws, "error"))["code"] == "empty_text"


@pytest.mark.parametrize(
    ("query", "status"),
    [("sample_rate=7999", 400), ("sample_rate=96000", 400), ("sample_rate=abc", 400)],
)
async def test_bad_sample_rate_is_refused(
    standin: tuple[Avatar, Backend], query: str, status: int
) -> None:
    app = make_app(standin)
    async with serving(app) as url:
        session = await new_session(url, app)
        with pytest.raises(websockets.InvalidStatus) as err:
            async with connect(f"ws{url[4:]}/v1/sessions/{session.id}/ws?{query}"):
                pass
        assert err.value.response.status_code == status
        assert b"bad_sample_rate" in err.value.response.body


async def test_unknown_session_is_404(standin: tuple[Avatar, Backend]) -> None:
    app = make_app(standin)
    async with serving(app) as url:
        with pytest.raises(websockets.InvalidStatus) as err:
            async with connect(f"ws{url[4:]}/v1/sessions/nope/ws"):
                pass
        assert err.value.response.status_code == 404


async def test_flooding_is_bounded_and_harms_nobody(standin: tuple[Avatar, Backend]) -> None:
    app = make_app(standin)
    async with serving(app) as url:
        victim = await new_session(url, app)
        flooded = await new_session(url, app)
        await asyncio.sleep(0.3)
        before = victim.stats.frames
        t0 = asyncio.get_running_loop().time()
        block = pcm(1.0, 48_000)[: 1 << 17]  # 128 KiB messages, 10 MB/s
        error: dict[str, Any] | None = None
        async with connect(ws_url(url, flooded, 48_000), max_queue=None) as ws:
            with contextlib.suppress(websockets.ConnectionClosed):
                await stream_realtime(
                    ws,
                    block * 80,
                    48_000,
                    chunk_s=len(block) / 2 / 48_000,
                    speed=(10e6 / len(block)) * len(block) / 2 / 48_000,
                )
            with contextlib.suppress(websockets.ConnectionClosed):
                error = await next_event(ws, "error", wait_s=5)
            with pytest.raises(websockets.ConnectionClosed):
                async with asyncio.timeout(5):
                    while True:
                        await ws.recv()
            assert ws.close_code == 1008
        assert error is not None and error["code"] == "buffer_full"
        assert flooded.buffered_samples() <= 60 * 16_000
        elapsed = asyncio.get_running_loop().time() - t0
        await asyncio.sleep(0.5)
        elapsed += 0.5
        made = victim.stats.frames - before
        assert made >= 0.8 * elapsed * 25, (made, elapsed)
        assert not victim.closed and not flooded.closed
        intervals = list(victim.stats.intervals_ms)[-made:]
        print(
            f"\nvictim during the flood: {made} frames in {elapsed:.2f} s, interval p95 "
            f"{np.percentile(intervals, 95):.1f} ms"
        )
