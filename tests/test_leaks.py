"""What a server that runs for days must not keep: once a viewer, an output or a session is
closed, nothing of it stays alive. Checked with weak references after a garbage collection,
not with the resident size (which the allocator moves: docs/benchmarks.md, "Soak")."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from models.avatar import read_avatar
from streamer.allocator import malloc_figures
from streamer.app import create_app
from streamer.config import Settings
from streamer.measure.audience import Receiver
from tests.conftest import make_stand_in_avatar, serving
from tests.webrtc_fakes import EnergyBackend


async def _alive(refs: dict[str, weakref.ref[object]], seconds: float = 15.0) -> list[str]:
    """The names of the objects still alive after ``seconds`` of garbage collections: a
    recording is finished (flushed, signed) after its DELETE has answered."""
    deadline = time.monotonic() + seconds
    while True:
        gc.collect()
        alive = [name for name, ref in refs.items() if ref() is not None]
        if not alive or time.monotonic() > deadline:
            return alive
        await asyncio.sleep(0.2)


async def wait_for_json(
    http: httpx.AsyncClient, url: str, holds: Callable[[Any], bool], seconds: float = 10.0
) -> None:
    deadline = time.monotonic() + seconds
    while not holds((await http.get(url)).json()):
        assert time.monotonic() < deadline, f"{url} did not come to hold in {seconds} s"
        await asyncio.sleep(0.1)


async def test_closed_viewers_outputs_and_sessions_leave_nothing_alive(tmp_path: Path) -> None:
    avatar = read_avatar(make_stand_in_avatar(tmp_path / "standin"))
    app = create_app(
        Settings(recordings=tmp_path / "recordings"), loader=lambda _: (avatar, EnergyBackend())
    )
    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=20) as http:
        state = app.state.avatarcast
        res = await http.post("/v1/sessions", json={"avatar": "standin"})
        assert res.status_code == 201, res.text
        sid, token = res.json()["id"], res.json()["view_token"]
        session = state.registry.get(sid)
        await asyncio.wait_for(session.wait_ready(), 10)

        viewer = Receiver(decode=False)
        await viewer.connect(http, sid, token)
        await asyncio.wait_for(asyncio.shield(viewer.first_frame), 15)
        (peer,) = state.webrtc.of_session(sid)
        encoder = weakref.ref(session.encoders()[0])  # kept by the session until it closes
        res = await http.post(
            f"/v1/sessions/{sid}/outputs", json={"type": "record", "name": "leak.mp4"}
        )
        assert res.status_code == 201, res.text
        oid = res.json()["id"]
        refs: dict[str, weakref.ref[object]] = {
            "the viewer's peer": weakref.ref(peer),
            "its RTCPeerConnection": weakref.ref(peer.pc),
            "the recording": weakref.ref(session.outputs.get(oid)),
        }
        outputs = f"/v1/sessions/{sid}/outputs"
        await wait_for_json(http, outputs, lambda o: o["outputs"][0]["state"] == "live")
        assert (await http.post(f"/v1/sessions/{sid}/view_tokens")).status_code == 201
        assert sid in state.access.views
        await viewer.aclose(http, token)  # WHEP DELETE
        assert (await http.delete(f"/v1/sessions/{sid}/outputs/{oid}")).status_code == 204
        del peer
        assert await _alive(refs) == []

        refs["the session"] = weakref.ref(session)
        refs["its encoder"] = encoder
        del session
        assert (await http.delete(f"/v1/sessions/{sid}")).status_code == 204
        assert await _alive(refs) == []
        assert sid not in state.access.views  # its view tokens went with it


def _capped(env: dict[str, str]) -> str:
    """What :func:`limit_arenas` answers in a fresh process (it changes the process's malloc)."""
    code = "from streamer.allocator import limit_arenas; print(limit_arenas())"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_the_malloc_arena_cap_and_figures() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    figures = malloc_figures()
    if figures is None:  # not glibc: nothing to cap or read
        assert _capped(env) == "False"
        return
    assert figures["heap_used_mb"] > 0 and figures["heap_free_mb"] >= 0
    assert _capped(env) == "True"
    assert _capped({**env, "MALLOC_ARENA_MAX": "4"}) == "False"  # glibc's own setting wins


def test_a_large_batch_gives_its_memory_back() -> None:
    """ONNX Runtime's CPU arena kept the high-water mark of its largest batch for good (a batch
    of 16 held 66 MB after it returned); with plain malloc that memory is free for reuse."""
    from models.avatar import default_avatar_dir
    from streamer.engine.onnx import OnnxBackend

    if malloc_figures() is None:  # not glibc: nothing to read
        return
    avatar = read_avatar(default_avatar_dir())
    backend = OnnxBackend(avatar.model_path, threads=2)
    crop = avatar.crop_size
    frames = avatar.window.past + avatar.window.future + 1

    def run(batch: int) -> float:
        image = np.zeros((batch, 3, crop, crop), np.float32)
        backend.infer(image, image, np.zeros((batch, frames, 80), np.float32))
        figures = malloc_figures()
        assert figures is not None
        return figures["heap_used_mb"]

    before = max(run(1) for _ in range(3))
    assert run(16) > before  # the batch's working memory was taken from malloc
    assert run(1) - before < 20.0
