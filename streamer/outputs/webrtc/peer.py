"""One peer connection of a session (a WHEP viewer or the host's microphone) and what it owns."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Literal, Protocol

from aiortc import MediaStreamTrack, RTCPeerConnection

from streamer.outputs.webrtc.tracks import EncodedStream
from streamer.pipeline.codecs import EncodedFrame, VideoCodec
from streamer.pipeline.frames import AVFrame, FrameBus, Subscription

log = logging.getLogger(__name__)

PeerKind = Literal["whep", "mic"]


class Viewable(Protocol):
    """What the WebRTC outputs need from a session."""

    id: str
    bus: FrameBus[AVFrame]

    @property
    def video_codec(self) -> VideoCodec: ...

    def viewer_added(self) -> None: ...

    def viewer_removed(self) -> None: ...

    def encoded(self, codec: VideoCodec | None = None) -> EncodedStream: ...


@dataclass(frozen=True)
class PeerInfo:
    resource_id: str
    session_id: str
    kind: PeerKind  # "whep" (a viewer) or "mic" (the host's microphone uplink)
    etag: str


class Peer:
    """One peer connection of a session, with its subscriptions and tasks; closes them all."""

    def __init__(self, info: PeerInfo, pc: RTCPeerConnection, session: Viewable) -> None:
        self.info = info
        self.pc = pc
        self.session = session
        self.subscription: Subscription[AVFrame] | None = None  # raw frames, if a track wants
        # The shared encoder, and this viewer's queue of it (None: its legs of the fan-out).
        self.encoded: tuple[EncodedStream, Subscription[EncodedFrame] | None] | None = None
        self.tracks: list[MediaStreamTrack] = []  # stopped on close, sent or not
        self.video: MediaStreamTrack | None = None  # (tests look at which kind it is)
        self.connected_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._counted = False
        self._closed = False

    def own(self, coro: Awaitable[None], name: str) -> None:
        """Run ``coro`` until it ends or this peer closes; a failure is logged with the ids."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(f"{name}:{self.info.session_id}:{self.info.resource_id}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "session %s peer %s: task %s failed",
                self.info.session_id,
                self.info.resource_id,
                task.get_name(),
                exc_info=task.exception(),
            )

    def count_viewer(self) -> None:
        """A viewer counts once it is connected, and once only."""
        if not self._counted and self.info.kind == "whep":
            self._counted = True
            self.session.viewer_added()

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.subscription is not None:
            self.session.bus.unsubscribe(self.subscription)
        if self.encoded is not None:
            encoder, sub = self.encoded
            if sub is not None:
                encoder.unsubscribe(sub)
        for track in self.tracks:
            track.stop()  # a fan-out leg leaves its fan-out even if it never sent
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self.pc.close()
        except Exception:  # aiortc cannot close a pc an offer was half applied to (fuzzing)
            log.warning("peer %s: its connection did not close cleanly", self.info.resource_id)
        if self._counted:
            self.session.viewer_removed()
