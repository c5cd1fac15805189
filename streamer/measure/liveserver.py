"""The real server for the live bench, and the clients a one-session measure keeps in process.

:func:`live_server` runs the real app (``create_app`` on uvicorn, a free loopback port) in
this process with the real avatar and backend; :class:`Live` creates sessions on it and
connects WHEP viewers; a :class:`Speaker` streams speech into a session's WebSocket at
real-time pace, as a voice agent would.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from models.audio import SAMPLE_RATE
from streamer.measure.avsync import MouthRegion
from streamer.measure.signals import pcm16
from streamer.measure.viewer import Viewer
from streamer.pipeline.frames import AVFrame, FrameBus

if TYPE_CHECKING:
    import httpx

CHUNK = SAMPLE_RATE // 50  # 20 ms of PCM per WebSocket message


class FrameCounts(Protocol):
    """A session's running frame counts: the ramp's dropped ratio is read from them."""

    @property
    def frames(self) -> int: ...

    @property
    def dropped(self) -> int: ...  # frames published with a repeated picture


class MeasuredSession(Protocol):
    """What the bench reads of a session, all public API: typed as a protocol so that the
    measures depend on these three members, not on how the session is built."""

    @property
    def bus(self) -> FrameBus[AVFrame]: ...

    @property
    def stats(self) -> FrameCounts: ...

    async def wait_ready(self) -> None: ...


async def sleep_until(t: float) -> None:
    """Sleep until ``t`` on the loop's clock (``time.monotonic()``, shared by processes)."""
    await asyncio.sleep(max(0.0, t - asyncio.get_running_loop().time()))


FIRST_FRAME_S = 15.0  # a viewer on loopback gets its first picture in 0.15-0.5 s


def free_port() -> int:
    """A loopback port free now, so that a bench never collides with a running server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Live:
    """The running server as the measures use it: its address, app, an HTTP client and the
    avatar's mouth region."""

    base: str
    app: Any  # the Starlette app; its typed state is read at app.state.avatarcast
    http: httpx.AsyncClient
    region: MouthRegion

    def session(self, session_id: str) -> MeasuredSession:
        session = self.app.state.avatarcast.registry.get(session_id)
        if session is None:
            raise RuntimeError(f"session {session_id} is not in the server's registry")
        return session

    async def create(self) -> tuple[str, str, MeasuredSession]:
        res = await self.http.post("/v1/sessions", json={})
        if res.status_code != 201:
            raise RuntimeError(f"creating a session answered {res.status_code}: {res.text}")
        info = res.json()
        session = self.session(info["id"])
        await asyncio.wait_for(session.wait_ready(), 30)
        return info["id"], info["view_token"], session

    async def viewer(self, session_id: str, token: str) -> Viewer:
        viewer = Viewer(self.region)
        try:
            await viewer.connect(self.http, session_id, token)
            try:
                await asyncio.wait_for(asyncio.shield(viewer.first_frame), FIRST_FRAME_S)
            except TimeoutError:
                raise RuntimeError(self._no_frame(viewer, session_id)) from None
        except BaseException:
            await viewer.aclose()
            raise
        return viewer

    def _no_frame(self, viewer: Viewer, session_id: str) -> str:
        """What both ends knew of a viewer that got no picture in time."""
        pc = viewer.pc
        rid = (viewer.location or "").rstrip("/").rsplit("/", 1)[-1]
        peers = self.app.state.avatarcast.webrtc
        peer = peers.get(rid)
        server = (
            f"open, connection {peer.pc.connectionState}"
            if peer is not None
            else f"ended ({peers.ended(rid, session_id, 'whep') or 'no reason kept'})"
        )
        return (
            f"a WHEP viewer got no video frame within {FIRST_FRAME_S:.0f} s: at the viewer "
            f"connection {pc.connectionState}, ICE {pc.iceConnectionState}, "
            f"{len(viewer.audio.frames)} audio frames; at the server the resource is {server}"
        )


@contextlib.asynccontextmanager
async def live_server(
    avatar_name: str,
    backend: str,
    threads: int,
    recordings: Path | None = None,
    viewers: int | None = None,
) -> AsyncIterator[Live]:
    """The real app on uvicorn on a free loopback port, with an HTTP client for it;
    ``recordings``: where its ``record`` outputs write (default: the server's own folder);
    ``viewers``: a session's most WHEP viewers, where more than the default are measured."""
    import httpx
    import uvicorn

    from models.avatar import load_avatar
    from streamer.app import UVICORN_OPTIONS, create_app
    from streamer.config import Limits, Settings

    limits = Limits()
    if viewers is not None and viewers > limits.max_viewers_per_session:
        limits = dataclasses.replace(limits, max_viewers_per_session=viewers)
    settings = Settings(
        avatar=avatar_name,
        backend=backend,
        threads=threads,
        port=free_port(),
        recordings=recordings,
        limits=limits,
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=settings.port, log_level="warning", **UVICORN_OPTIONS
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        deadline = time.monotonic() + 120
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the server stopped before it started")
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start within 120 s")
            await asyncio.sleep(0.05)
        base = f"http://127.0.0.1:{settings.port}"
        region = MouthRegion.of(load_avatar(avatar_name, settings.home))
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            yield Live(base, app, http, region)
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)


class Speaker:
    """Speech into a session through its WebSocket: 20 ms PCM messages at real-time pace."""

    def __init__(self, base: str, session_id: str, signal: Callable[[int, int], np.ndarray]):
        self._url = base.replace("http", "ws", 1) + f"/v1/sessions/{session_id}/ws"
        self._signal = signal
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        from websockets.asyncio.client import connect

        loop = asyncio.get_running_loop()
        async with connect(f"{self._url}?sample_rate={SAMPLE_RATE}", max_queue=None) as ws:
            drain = loop.create_task(self._drain(ws))
            try:
                start, sent = loop.time(), 0
                while True:
                    await ws.send(pcm16(self._signal(CHUNK, sent)))
                    sent += CHUNK
                    await asyncio.sleep(max(0.0, start + sent / SAMPLE_RATE - loop.time()))
            finally:
                drain.cancel()
                await asyncio.gather(drain, return_exceptions=True)

    @staticmethod
    async def _drain(ws: Any) -> None:
        async for _ in ws:
            pass

    @property
    def failed(self) -> BaseException | None:
        if self._task.done() and not self._task.cancelled():
            return self._task.exception()
        return None

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
