"""A real WHIP endpoint for the tests: FastAPI answers offers with aiortc and records what
arrives (decoded pictures, decoded audio), every request, and every DELETE.

``behaviour`` makes it misbehave the ways the output must survive: a status code instead of
an answer, an answer that is not SDP, a 307 to the real endpoint. ``video_codec`` makes its
answer pick one codec, as an SFU that takes only H.264 would.

Run as a module (``python -m tests.whip_endpoint PORT``) it serves the same endpoint in its own
process, so that a measurement of the publisher's CPU time leaves the receiving side out
(docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from dataclasses import dataclass, field

import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from fastapi import FastAPI, Request, Response

from streamer.outputs.webrtc.compat import add_loopback_candidates
from streamer.outputs.webrtc.sdp import codec_preferences


@dataclass
class Received:
    """What one publisher sent: picture sizes and pts (1/90000), audio peaks per frame."""

    sizes: set[tuple[int, int]] = field(default_factory=set)
    video_pts: list[int] = field(default_factory=list)
    audio_peaks: list[int] = field(default_factory=list)  # per 20 ms frame, s16
    audio_samples: int = 0

    @property
    def fps(self) -> float:
        """Pictures per second of stream time (their own timestamps, not the wall's)."""
        span = (self.video_pts[-1] - self.video_pts[0]) / 90_000
        return (len(self.video_pts) - 1) / span if span > 0 else 0.0


@dataclass
class Endpoint:
    """The endpoint's state, read by the tests."""

    token: str | None = None
    behaviour: str = "answer"  # "answer", "broken", "huge", "redirect", or a status code
    video_codec: str | None = None  # the codec its answer picks (None: the offer's first)
    posts: list[dict[str, str]] = field(default_factory=list)  # headers of each POST
    paths: list[str] = field(default_factory=list)  # and its path
    deletes: list[str] = field(default_factory=list)
    received: dict[str, Received] = field(default_factory=dict)
    peers: dict[str, RTCPeerConnection] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def only(self) -> Received:
        assert len(self.received) == 1, f"{len(self.received)} publishers"
        return next(iter(self.received.values()))

    async def kick(self) -> None:
        """Hang up on every publisher, as an SFU that restarts does."""
        while self.peers:
            _, pc = self.peers.popitem()
            await pc.close()

    async def aclose(self) -> None:
        await self.kick()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def whip_app(endpoint: Endpoint) -> FastAPI:
    app = FastAPI()

    @app.post("/whip/{name}")
    async def publish(name: str, request: Request) -> Response:
        endpoint.posts.append(dict(request.headers))
        endpoint.paths.append(request.url.path)
        if endpoint.token is not None and (
            request.headers.get("authorization") != f"Bearer {endpoint.token}"
        ):
            return Response(status_code=401)
        if endpoint.behaviour == "redirect" and name != "real":
            return Response(status_code=307, headers={"Location": "real"})
        if endpoint.behaviour.isdigit():
            return Response(status_code=int(endpoint.behaviour))
        if endpoint.behaviour == "huge":  # 1 MB of "SDP"
            return Response("v=0\r\n" + "a=x\r\n" * 200_000, 201, media_type="application/sdp")
        if endpoint.behaviour == "broken":
            return Response("v=0\r\nthis is not an answer\r\n", 201, media_type="application/sdp")
        offer = (await request.body()).decode()
        resource, answer = await _answer(endpoint, offer)
        return Response(
            answer, 201, media_type="application/sdp", headers={"Location": f"../res/{resource}"}
        )

    @app.delete("/res/{resource}")
    async def delete(resource: str) -> Response:
        endpoint.deletes.append(resource)
        pc = endpoint.peers.pop(resource, None)
        if pc is None:  # gone already (kicked)
            return Response(status_code=404)
        await pc.close()
        return Response(status_code=200)

    return app


async def _answer(endpoint: Endpoint, offer: str) -> tuple[str, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    resource = secrets.token_hex(6)
    received = endpoint.received[resource] = Received()
    endpoint.peers[resource] = pc

    @pc.on("track")
    def _track(track: MediaStreamTrack) -> None:
        task = asyncio.ensure_future(_record(track, received))
        endpoint.tasks.add(task)
        task.add_done_callback(endpoint.tasks.discard)

    if endpoint.video_codec is not None:  # preferences the offer's video section will take
        video = pc.addTransceiver("video", direction="recvonly")
        video.setCodecPreferences(codec_preferences("video", endpoint.video_codec))
    await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    answer = await pc.createAnswer()
    await add_loopback_candidates(pc)
    await pc.setLocalDescription(answer)
    return resource, pc.localDescription.sdp


async def _record(track: MediaStreamTrack, received: Received) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            frame = await track.recv()
            if track.kind == "video":
                received.sizes.add((frame.width, frame.height))  # type: ignore[union-attr]
                received.video_pts.append(int(frame.pts or 0))
            else:
                samples = frame.to_ndarray()  # type: ignore[union-attr]
                received.audio_samples += samples.shape[-1]
                received.audio_peaks.append(int(np.abs(samples.astype(np.int32)).max()))


def main() -> None:
    import uvicorn

    uvicorn.run(whip_app(Endpoint()), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")


if __name__ == "__main__":
    main()
