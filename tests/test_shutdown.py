"""SIGTERM drains gracefully: a real ``avatarcast serve`` process, a session recording and a
WebSocket client. The client is told (``session_closed`` with the reason ``shutdown``), the
recording is finalised, and the process exits; the file then plays to its end."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import BinaryIO

import av
import httpx
import numpy as np
from websockets.asyncio.client import connect

from models.avatar import Avatar
from streamer.engine.base import Backend
from tests.conftest import tone

ROOT = Path(__file__).resolve().parents[1]


def log_file(path: Path) -> BinaryIO:
    """Where the server's log goes (read it when the test fails)."""
    return path.open("wb")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_healthy(http: httpx.AsyncClient, proc: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(90):
        while True:
            assert proc.returncode is None, "the server exited while starting"
            try:
                if (await http.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)


async def recording_live(http: httpx.AsyncClient, sid: str) -> None:
    """Until the server says the session's recording is live (polling its API)."""
    async with asyncio.timeout(30):
        while True:
            outputs = (await http.get(f"/v1/sessions/{sid}/outputs")).json()["outputs"]
            if outputs[0]["state"] == "live":
                return
            await asyncio.sleep(0.1)


async def test_sigterm_tells_sessions_and_finalises_recordings(
    standin: tuple[Avatar, Backend], tmp_path: Path
) -> None:
    avatar, _ = standin
    home = tmp_path / "home"
    shutil.copytree(avatar.path, home / "avatars" / avatar.name)
    port = free_port()
    env = {**os.environ, "AVATARCAST_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("AVATARCAST_API_KEY", None)
    with log_file(tmp_path / "serve.log") as log:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "streamer.cli", "serve", "--port", str(port)),
            *("--avatar", avatar.name, "--backend", "onnx"),
            env=env,
            stdout=log,
            stderr=log,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            await wait_healthy(http, proc)
            sid = (await http.post("/v1/sessions", json={})).json()["id"]
            record = {"type": "record", "name": "drained.mp4"}
            res = await http.post(f"/v1/sessions/{sid}/outputs", json=record)
            assert res.status_code == 201, res.text
            ws_url = f"ws://127.0.0.1:{port}/v1/sessions/{sid}/ws?sample_rate=16000"
            async with connect(ws_url) as ws:
                # Speech once the recording runs: on a busy machine it can take longer to go
                # live than the second of speech takes to play.
                await recording_live(http, sid)
                await ws.send((tone(1.0) * 32767).astype("<i2").tobytes())
                await ws.send(json.dumps({"type": "audio_end"}))
                await asyncio.sleep(2.5)  # a second of speech, then idle: past a 2 s GOP
                proc.send_signal(signal.SIGTERM)
                events = []
                async with asyncio.timeout(20):
                    async for message in ws:
                        events.append(json.loads(message))
        closed = [e for e in events if e["type"] == "session_closed"]
        assert closed and closed[0]["reason"] == "shutdown", events
        # Drained, it exits as uvicorn does: by the signal it was sent, for its supervisor.
        assert await asyncio.wait_for(proc.wait(), 30) in (0, -signal.SIGTERM)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    recording = home / "recordings" / "drained.mp4"
    with av.open(str(recording)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        pictures = sum(1 for _ in container.decode(video))
    with av.open(str(recording)) as container:
        sound = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert pictures >= 50, f"{pictures} pictures recorded"  # 2 s at least, all decodable
    assert len(sound) >= 2 * audio.rate and np.abs(sound).max() > 0.1  # the speech is there
    assert video.codec_context.name == "h264"
