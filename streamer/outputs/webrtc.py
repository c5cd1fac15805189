"""WebRTC viewers: aiortc tracks that only forward a session's AV frames, and their registry.

The tracks never clock anything. The session publishes frame ``k`` at its due time; the
video track hands aiortc the newest unread frame, the audio track every frame's 40 ms in
order, both stamped from the frame index (video ``pts = n * 3600`` at 1/90000, audio
``pts = n * 640`` at 1/16000) counted from one shared first index, so both RTP streams start
on the same frame and the receiver's RTCP-based lip sync lines them up. Because frames are
sent when they are published, each RTCP sender report maps both streams to the same wall
clock. A slow viewer loses video frames (the subscription's short video queue), never audio.

Encoding happens once per session (:mod:`streamer.pipeline.encode`): when a viewer's offer
has the session's video codec and Opus, its tracks forward the session encoder's packets and
aiortc only packetises them. An offer without them (a client that cannot take VP8, say) gets
tracks that forward raw frames for aiortc to encode for that viewer alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.sdp import candidate_from_sdp

from models.audio import SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from streamer.pipeline.encode import EncodedFrame, EncodedStream, VideoCodec
from streamer.pipeline.frames import AVFrame, FrameBus, Subscription

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
VIDEO_TICKS_PER_FRAME = VIDEO_CLOCK // 25  # 3600
AUDIO_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
LOOPBACK = "127.0.0.1"


class Viewable(Protocol):
    """What the WebRTC outputs need from a session."""

    id: str
    bus: FrameBus[AVFrame]

    @property
    def video_codec(self) -> VideoCodec: ...

    def viewer_added(self) -> None: ...

    def viewer_removed(self) -> None: ...

    def encoded(self, codec: VideoCodec | None = None) -> EncodedStream: ...


class _SharedStart:
    """The frame index both tracks of one viewer count their pts from."""

    def __init__(self) -> None:
        self.base: int | None = None

    def offset(self, index: int) -> int | None:
        """Frames since the first one either track forwarded; ``None`` for earlier frames."""
        if self.base is None:
            self.base = index
        return index - self.base if index >= self.base else None


class AVVideoTrack(MediaStreamTrack):
    """The session's video, newest frame first: a viewer that falls behind skips frames."""

    kind = "video"

    def __init__(self, subscription: Subscription[AVFrame], start: _SharedStart) -> None:
        super().__init__()
        self._subscription = subscription
        self._start = start

    async def recv(self) -> av.VideoFrame:
        while True:
            frame = await _next(self._subscription.next_video, self)
            n = self._start.offset(frame.index)
            if n is not None:
                break
        out = av.VideoFrame.from_ndarray(frame.video, format="rgb24")
        out.pts = n * VIDEO_TICKS_PER_FRAME
        out.time_base = VIDEO_TIME_BASE
        return out


class AVAudioTrack(MediaStreamTrack):
    """The session's audio, every frame's 40 ms in order (silence when nobody speaks).

    Each AV frame goes out as two 20 ms audio frames: aiortc's Opus encoder stamps every
    packet it makes from one input frame with that frame's timestamp, so an input longer than
    one 20 ms Opus packet would give two packets the same RTP timestamp.
    """

    kind = "audio"

    def __init__(self, subscription: Subscription[AVFrame], start: _SharedStart) -> None:
        super().__init__()
        self._subscription = subscription
        self._start = start
        self._pending: av.AudioFrame | None = None

    async def recv(self) -> av.AudioFrame:
        if self._pending is not None:
            out, self._pending = self._pending, None
            return out
        while True:
            frame = await _next(self._subscription.next_audio, self)
            n = self._start.offset(frame.index)
            if n is not None:
                break
        first, second = (
            _audio_frame(half, n * SAMPLES_PER_VIDEO_FRAME + i * HALF)
            for i, half in enumerate((frame.audio[:HALF], frame.audio[HALF:]))
        )
        self._pending = second
        return first


HALF = SAMPLES_PER_VIDEO_FRAME // 2  # 20 ms


def _audio_frame(samples: np.ndarray, pts: int) -> av.AudioFrame:
    out = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    out.sample_rate = SAMPLE_RATE
    out.pts = pts
    out.time_base = AUDIO_TIME_BASE
    return out


class EncodedVideoTrack(MediaStreamTrack):
    """The session encoder's pictures for one viewer, from a key frame on.

    A picture this viewer's queue had to drop breaks its decoding chain: it then skips
    pictures until the next key frame, which it asks the encoder for.
    """

    kind = "video"

    def __init__(
        self,
        subscription: Subscription[EncodedFrame],
        start: _SharedStart,
        encoder: EncodedStream,
    ) -> None:
        super().__init__()
        self._subscription = subscription
        self._start = start
        self._encoder = encoder
        self._need_keyframe = True  # for a key frame
        self._drops: int | None = None

    async def recv(self) -> av.Packet:
        stats = self._subscription.stats
        if self._drops is None:
            # Sending starts once the connection is up, by which time the key frame made when
            # this viewer subscribed has usually left its short queue: ask for a fresh one.
            self._drops = stats.video_dropped
            self._encoder.request_keyframe()
        while True:
            item = await _next(self._subscription.next_video, self)
            if stats.video_dropped != self._drops:
                self._drops = stats.video_dropped
                self._need_keyframe = True
                self._encoder.request_keyframe()
            if item.video is None or (self._need_keyframe and not item.keyframe):
                continue
            n = self._start.offset(item.index)
            if n is None:
                continue
            self._need_keyframe = False
            packet = av.Packet(item.video)
            packet.pts = n * VIDEO_TICKS_PER_FRAME
            packet.time_base = VIDEO_TIME_BASE
            return packet


class EncodedAudioTrack(MediaStreamTrack):
    """The session encoder's Opus packets for one viewer: every frame's, in order."""

    kind = "audio"

    def __init__(self, subscription: Subscription[EncodedFrame], start: _SharedStart) -> None:
        super().__init__()
        self._subscription = subscription
        self._start = start
        self._pending: list[av.Packet] = []

    async def recv(self) -> av.Packet:
        while not self._pending:
            item = await _next(self._subscription.next_audio, self)
            n = self._start.offset(item.index)
            if n is None:
                continue
            for i, data in enumerate(item.audio):
                packet = av.Packet(data)
                packet.pts = n * SAMPLES_PER_VIDEO_FRAME + item.audio_offset + i * HALF
                packet.time_base = AUDIO_TIME_BASE
                self._pending.append(packet)
        return self._pending.pop(0)


Item = TypeVar("Item", AVFrame, EncodedFrame)


async def _next(read: Callable[[], Awaitable[Item]], track: MediaStreamTrack) -> Item:
    if track.readyState != "live":
        raise MediaStreamError
    try:
        return await read()
    except ConnectionError:  # the subscription was closed: the viewer is going away
        track.stop()
        raise MediaStreamError from None


@dataclass(frozen=True)
class PeerInfo:
    resource_id: str
    session_id: str
    kind: str  # "whep" (a viewer) or "mic" (the host's microphone uplink)
    etag: str


class Peer:
    """One peer connection of a session, with everything it owns."""

    def __init__(self, info: PeerInfo, pc: RTCPeerConnection, session: Viewable) -> None:
        self.info = info
        self.pc = pc
        self.session = session
        self.subscription: Subscription[AVFrame] | None = None  # raw frames, if a track wants
        self.encoded: tuple[EncodedStream, Subscription[EncodedFrame]] | None = None
        self.video: AVVideoTrack | EncodedVideoTrack | None = None
        self.connected_at: float | None = None
        self.created_at = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()
        self._counted = False
        self._closed = False

    def own(self, coro: Awaitable[None], name: str) -> None:
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
            encoder.unsubscribe(sub)
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.pc.close()
        if self._counted:
            self.session.viewer_removed()


class SdpError(ValueError):
    """An offer or a trickle fragment that is not usable SDP."""


class PeerRegistry:
    """Every peer connection of every session: created from offers, closed on ICE failure."""

    def __init__(self, *, loopback_candidates: bool = True, connect_timeout: float = 20.0) -> None:
        self._loopback = loopback_candidates
        self._connect_timeout = connect_timeout
        self._peers: dict[str, Peer] = {}
        self._encoders: dict[tuple[str, str], EncodedStream] = {}
        self._closing: set[asyncio.Task[bool]] = set()
        self._closed = False

    def get(self, resource_id: str) -> Peer | None:
        return self._peers.get(resource_id)

    def of_session(self, session_id: str) -> list[Peer]:
        return [p for p in self._peers.values() if p.info.session_id == session_id]

    def __len__(self) -> int:
        return len(self._peers)

    async def _new_peer(self, session: Viewable, kind: str, offer_sdp: str) -> Peer:
        if self._closed:
            raise RuntimeError("the WebRTC registry is closed")
        _check_offer(offer_sdp)
        # No STUN/TURN: aiortc's default (a public STUN server) would be a network call at run
        # time and stall gathering for seconds where there is no network.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        resource_id = secrets.token_urlsafe(12)
        peer = Peer(PeerInfo(resource_id, session.id, kind, secrets.token_hex(8)), pc, session)
        self._peers[resource_id] = peer

        @pc.on("connectionstatechange")
        def _state() -> None:
            state = pc.connectionState
            log.info("session %s %s %s: %s", session.id, kind, resource_id, state)
            if state == "connected" and peer.connected_at is None:
                peer.connected_at = time.monotonic()
                peer.count_viewer()
            elif state in ("failed", "closed"):
                self._close_soon(resource_id)

        return peer

    async def _answer(self, peer: Peer, offer_sdp: str) -> str:
        try:
            await peer.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            answer = await peer.pc.createAnswer()
        except (ValueError, KeyError, IndexError) as exc:
            raise SdpError(f"the offer could not be used: {exc}") from exc
        if self._loopback:
            await add_loopback_candidates(peer.pc)
        await peer.pc.setLocalDescription(answer)
        peer.own(self._watch_connect(peer), "connect-timeout")
        return peer.pc.localDescription.sdp

    async def add_viewer(self, session: Viewable, offer_sdp: str) -> tuple[Peer, str]:
        """A recvonly offer -> a viewer forwarding the session's AV frames; returns the answer."""
        peer = await self._new_peer(session, "whep", offer_sdp)
        try:
            kinds = _kinds(offer_sdp)
            if not kinds & {"audio", "video"}:
                raise SdpError("the offer has no audio or video section")
            start = _SharedStart()
            tracks: dict[str, MediaStreamTrack] = {}
            shared = {
                kind
                for kind, name in (("video", session.video_codec), ("audio", "opus"))
                if name in _codec_names(offer_sdp, kind)
            }
            if shared:
                encoder = self._encoder(session)
                sub = encoder.subscribe()
                peer.encoded = (encoder, sub)
                if "video" in shared:
                    tracks["video"] = EncodedVideoTrack(sub, start, encoder)
                if "audio" in shared:
                    tracks["audio"] = EncodedAudioTrack(sub, start)
            if (kinds & {"audio", "video"}) - shared:
                raw = session.bus.subscribe()
                peer.subscription = raw
                tracks.setdefault("video", AVVideoTrack(raw, start))
                tracks.setdefault("audio", AVAudioTrack(raw, start))
            video = tracks.get("video")
            if isinstance(video, AVVideoTrack | EncodedVideoTrack):
                peer.video = video
            # Transceivers made before the offer is applied take its sections, and their codec
            # preferences decide what the answer picks: the shared encoder's codec.
            for kind in ("video", "audio"):
                if kind not in kinds:
                    continue
                transceiver = peer.pc.addTransceiver(tracks[kind], direction="sendonly")
                if kind in shared:
                    name = session.video_codec if kind == "video" else "opus"
                    transceiver.setCodecPreferences(_capabilities(kind, name))
                if kind == "video" and peer.encoded is not None and kind in shared:
                    _keyframes_from(transceiver.sender, peer.encoded[0])
            await peer.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            answer = await peer.pc.createAnswer()
            if self._loopback:
                await add_loopback_candidates(peer.pc)
            await peer.pc.setLocalDescription(answer)
            peer.own(self._watch_connect(peer), "connect-timeout")
            return peer, peer.pc.localDescription.sdp
        except SdpError:
            await self.remove(peer.info.resource_id)
            raise
        except (ValueError, KeyError, IndexError) as exc:
            await self.remove(peer.info.resource_id)
            raise SdpError(f"the offer could not be used: {exc}") from exc

    def _encoder(self, session: Viewable) -> EncodedStream:
        key = (session.id, session.video_codec)
        encoder = self._encoders.get(key)
        if encoder is None:
            encoder = session.encoded(session.video_codec)
            self._encoders[key] = encoder
        return encoder

    async def _release_encoders(self, session_id: str) -> None:
        """Forget the encoders of a session that no viewer reads any more (the session owns
        and closes them; with no subscriber they stop encoding)."""
        for key, encoder in list(self._encoders.items()):
            if key[0] == session_id and encoder.viewers == 0:
                del self._encoders[key]

    def encoders(self) -> list[EncodedStream]:
        return list(self._encoders.values())

    async def add_uplink(
        self, session: Viewable, offer_sdp: str, on_track: Callable[[Peer, MediaStreamTrack], None]
    ) -> tuple[Peer, str]:
        """An offer that sends audio -> a peer whose incoming audio goes to ``on_track``."""
        peer = await self._new_peer(session, "mic", offer_sdp)
        if "audio" not in _kinds(offer_sdp):
            await self.remove(peer.info.resource_id)
            raise SdpError("the offer has no audio section to receive the microphone from")

        @peer.pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                on_track(peer, track)

        try:
            return peer, await self._answer(peer, offer_sdp)
        except Exception:
            await self.remove(peer.info.resource_id)
            raise

    async def trickle(self, peer: Peer, fragment: str) -> None:
        """Add the remote candidates of an ``application/trickle-ice-sdpfrag`` body."""
        mid: str | None = None
        mline = -1
        for raw in fragment.splitlines():
            line = raw.strip()
            if line.startswith("m="):
                mline += 1
                mid = None
            elif line.startswith("a=mid:"):
                mid = line[len("a=mid:") :]
            elif line.startswith("a=candidate:"):
                try:
                    candidate = candidate_from_sdp(line[len("a=") :])
                except (ValueError, IndexError) as exc:
                    raise SdpError(f"bad candidate line {line!r}") from exc
                candidate.sdpMid = mid
                candidate.sdpMLineIndex = max(mline, 0)
                await peer.pc.addIceCandidate(candidate)
            elif line == "a=end-of-candidates":
                await peer.pc.addIceCandidate(None)

    async def remove(self, resource_id: str) -> bool:
        peer = self._peers.pop(resource_id, None)
        if peer is None:
            return False
        await peer.aclose()
        await self._release_encoders(peer.info.session_id)
        return True

    async def remove_session(self, session_id: str) -> None:
        for peer in self.of_session(session_id):
            await self.remove(peer.info.resource_id)

    def _close_soon(self, resource_id: str) -> None:
        if resource_id not in self._peers:
            return
        task = asyncio.ensure_future(self.remove(resource_id))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _watch_connect(self, peer: Peer) -> None:
        """A client that posts an offer and never connects is closed after a while."""
        await asyncio.sleep(self._connect_timeout)
        if peer.connected_at is None:
            log.info(
                "session %s peer %s never connected", peer.info.session_id, peer.info.resource_id
            )
            self._close_soon(peer.info.resource_id)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for resource_id in list(self._peers):
            await self.remove(resource_id)
        await asyncio.gather(*self._closing, return_exceptions=True)


def _kinds(sdp: str) -> set[str]:
    return {line[2:].split(" ", 1)[0] for line in sdp.splitlines() if line.startswith("m=")}


def _codec_names(sdp: str, kind: str) -> set[str]:
    """The codecs (lower-case names) the offer's first ``kind`` section lists."""
    names: set[str] = set()
    section: str | None = None
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            if section == kind:
                break
            section = line[2:].split(" ", 1)[0]
        elif section == kind and line.startswith("a=rtpmap:"):
            parts = line.split(" ", 1)
            if len(parts) == 2:
                names.add(parts[1].split("/", 1)[0].lower())
    return names


def _capabilities(kind: str, name: str) -> list[RTCRtpCodecCapability]:
    """aiortc's codecs named ``name`` (every H.264 profile it has), with RTX for video."""
    codecs = RTCRtpSender.getCapabilities(kind).codecs
    wanted = [c for c in codecs if c.mimeType.lower() == f"{kind}/{name}"]
    return wanted + [c for c in codecs if c.mimeType.lower() == f"{kind}/rtx"]


def _keyframes_from(sender: RTCRtpSender, encoder: EncodedStream) -> None:
    """Send this viewer's key frame requests (RTCP PLI/FIR) to the shared encoder.

    aiortc answers PLI/FIR by calling its sender's ``_send_keyframe``, which only flags its
    own encoder; a sender that packs shared packets has none. Guarded like the loopback
    candidates: if aiortc changes shape, viewers still get key frames when they join.
    """
    if callable(getattr(sender, "_send_keyframe", None)):
        sender._send_keyframe = encoder.request_keyframe  # type: ignore[method-assign]
    else:
        log.warning("aiortc changed: RTCP key frame requests do not reach the shared encoder")


def _check_offer(sdp: str) -> None:
    lines = [line.strip() for line in sdp.strip().splitlines()]
    if not lines or lines[0] != "v=0" or not any(line.startswith("m=") for line in lines):
        raise SdpError("not an SDP offer (it must start with v=0 and have media sections)")
    if not any(line.startswith("a=ice-ufrag:") for line in lines):
        raise SdpError("the offer has no ICE credentials (a=ice-ufrag)")
    if not any(line.startswith("a=fingerprint:") for line in lines):
        raise SdpError("the offer has no DTLS fingerprint (a=fingerprint)")


async def add_loopback_candidates(pc: RTCPeerConnection) -> None:
    """Offer a 127.0.0.1 host candidate besides the interface addresses.

    aioice leaves the loopback address out of its host candidates, so a browser on the same
    machine (or a machine with only a loopback interface) finds no pair that works. Gather
    first (aiortc's own gather later is then a no-op), then bind one more host socket on
    127.0.0.1 through aioice's per-address gathering and add its candidate to the list the
    answer is written from. This touches aioice's candidate list, so it is guarded: if the
    library changes shape, the answer simply goes out without the loopback candidate.
    """
    seen: set[int] = set()
    for transceiver in pc.getTransceivers():
        gatherer = transceiver.receiver.transport.transport.iceGatherer
        if id(gatherer) in seen:
            continue
        seen.add(id(gatherer))
        await gatherer.gather()
        connection = getattr(gatherer, "_connection", None)
        local = getattr(connection, "_local_candidates", None)
        if connection is None or not isinstance(local, list):
            log.warning("aioice changed: no loopback ICE candidate added")
            continue
        if any(c.host == LOOPBACK for c in local):
            continue
        with contextlib.suppress(OSError):
            local += await connection.get_component_candidates(component=1, addresses=[LOOPBACK])
