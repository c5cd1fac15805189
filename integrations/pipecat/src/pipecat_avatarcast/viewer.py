"""A WHEP viewer of one avatarcast session, with aiortc: the avatar's video and audio in.

The offer is recvonly (one video, one audio) with every ICE candidate in it, so the exchange is
one ``POST`` and the resource's ``DELETE``. A session answers ``409 session_not_ready`` until
it has published its first frame; the viewer retries, as the server's ``Retry-After`` asks,
until its deadline. Each decoded frame goes, in its track's order, to an async callback with
the track's kind; pacing is the caller's (see :mod:`pipecat_avatarcast.playout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urljoin

import av
import httpx
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from loguru import logger

from pipecat_avatarcast.api import AvatarcastError, describe_failure

FrameSink = Callable[[str, av.VideoFrame | av.AudioFrame], Awaitable[None]]
NOT_READY = 409
RETRY_S = 0.1


class WhepViewer:
    """One WHEP resource: ``start()`` plays, ``aclose()`` (idempotent) stops and deletes it."""

    def __init__(self, whep_url: str, token: str, http: httpx.AsyncClient, sink: FrameSink):
        self.whep_url = whep_url
        self._headers = {"Authorization": f"Bearer {token}"}
        self._http = http
        self._sink = sink
        self._pc: RTCPeerConnection | None = None
        self._resource: str | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._closed = False

    async def start(self, timeout_s: float) -> None:
        """Offer, post until the session is ready, and answer; frames flow to the sink."""
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._pc = pc
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            name = f"avatarcast-whep-{track.kind}"
            self._readers.append(asyncio.create_task(self._read(track), name=name))

        await pc.setLocalDescription(await pc.createOffer())
        answer = await self._post(pc.localDescription.sdp, time.monotonic() + timeout_s)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    async def _post(self, offer: str, deadline: float) -> str:
        headers = {**self._headers, "Content-Type": "application/sdp"}
        while True:
            try:
                response = await self._http.post(self.whep_url, content=offer, headers=headers)
            except httpx.HTTPError as exc:
                raise AvatarcastError(f"cannot reach WHEP at {self.whep_url}: {exc!r}") from exc
            if response.status_code == 201:
                self._resource = urljoin(self.whep_url, response.headers.get("location", ""))
                return response.text
            if response.status_code != NOT_READY or time.monotonic() + RETRY_S > deadline:
                raise AvatarcastError(describe_failure(response, "playing the avatar over WHEP"))
            # Sooner than the server's Retry-After: its first frame is a frame or two away.
            await asyncio.sleep(RETRY_S)

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.VideoFrame | av.AudioFrame):
                continue
            try:
                await self._sink(track.kind, frame)
            except Exception:  # one bad frame must not end the track for good
                logger.exception(f"avatarcast: a {track.kind} frame from WHEP failed")

    async def aclose(self) -> None:
        """Delete the WHEP resource and close the peer connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        resource, self._resource = self._resource, None
        if resource:
            try:
                response = await self._http.delete(resource, headers=self._headers)
                if response.status_code not in (200, 204, 404):
                    logger.warning(describe_failure(response, "deleting the WHEP resource"))
            except httpx.HTTPError as exc:
                logger.warning(f"avatarcast: deleting the WHEP resource {resource}: {exc!r}")
        for task in self._readers:
            task.cancel()
        for task in self._readers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._readers.clear()
        if self._pc is not None:
            await self._pc.close()
            self._pc = None
