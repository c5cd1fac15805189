"""Every WebRTC peer of every session: made from offers, answered one way, closed on failure.

A viewer's offer gets tracks that forward the session's shared encoder's packets for the kinds
whose codec it takes (the session's video codec, Opus), and tracks that forward raw frames for
aiortc to encode for it alone otherwise (a client that cannot take VP8, say). The microphone
uplink's offer gets a peer whose incoming audio goes to a callback. Both are answered by
:meth:`PeerRegistry._open`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from streamer.outputs.webrtc import fanout
from streamer.outputs.webrtc.compat import add_loopback_candidates, route_keyframe_requests
from streamer.outputs.webrtc.peer import Peer, PeerInfo, PeerKind, Viewable
from streamer.outputs.webrtc.sdp import (
    MEDIA,
    UNUSABLE,
    Offer,
    SdpError,
    codec_preferences,
    parse_offer,
    trickle_candidates,
)
from streamer.outputs.webrtc.tracks import (
    AVAudioTrack,
    AVVideoTrack,
    EncodedAudioTrack,
    EncodedStream,
    EncodedVideoTrack,
    SharedStart,
)

log = logging.getLogger(__name__)

Prepare = Callable[[Peer, Offer], None]
ENDED_KEPT = 1024  # how many ended resources still say why they ended (a PATCH after a failure)


class PeerRegistry:
    """Every peer connection of every session: created from offers, closed on ICE failure."""

    def __init__(self, *, loopback_candidates: bool = True, connect_timeout: float = 20.0) -> None:
        self._loopback = loopback_candidates
        self._connect_timeout = connect_timeout
        self._peers: dict[str, Peer] = {}
        self._ended: OrderedDict[str, tuple[str, str, str]] = OrderedDict()
        self._closing: set[asyncio.Task[bool]] = set()
        self._closed = False

    def get(self, resource_id: str) -> Peer | None:
        return self._peers.get(resource_id)

    def ended(self, resource_id: str, session_id: str, kind: PeerKind) -> str | None:
        """Why a ``kind`` resource of ``session_id`` that no longer exists ended, while that is
        recent: a client that trickles to a peer whose connection failed at once learns why."""
        session, of_kind, why = self._ended.get(resource_id, ("", "", ""))
        return why if (session, of_kind) == (session_id, kind) else None

    def of_session(self, session_id: str) -> list[Peer]:
        return [p for p in self._peers.values() if p.info.session_id == session_id]

    def __len__(self) -> int:
        return len(self._peers)

    def encoders(self) -> list[EncodedStream]:
        """The shared encoders that viewers read now (one per session and codec)."""
        streams = {id(p.encoded[0]): p.encoded[0] for p in self._peers.values() if p.encoded}
        return list(streams.values())

    def _encoded(self, session: Viewable) -> EncodedStream:
        """The session's shared encoder (the session owns it and stops it when no viewer
        reads it): the one place the registry gets it."""
        return session.encoded(session.video_codec)

    async def add_viewer(self, session: Viewable, offer_sdp: str) -> tuple[Peer, str]:
        """A recvonly offer -> a viewer forwarding the session's AV frames; returns the answer."""
        offer = parse_offer(offer_sdp)
        if not offer.kinds & MEDIA:
            raise SdpError("the offer has no audio or video section")
        return await self._open(session, "whep", offer, self._send_session)

    async def add_uplink(
        self, session: Viewable, offer_sdp: str, on_track: Callable[[Peer, MediaStreamTrack], None]
    ) -> tuple[Peer, str]:
        """An offer that sends audio -> a peer whose incoming audio goes to ``on_track``."""
        offer = parse_offer(offer_sdp)
        if "audio" not in offer.kinds:
            raise SdpError("the offer has no audio section to receive the microphone from")

        def receive(peer: Peer, _: Offer) -> None:
            @peer.pc.on("track")
            def _track(track: MediaStreamTrack) -> None:
                if track.kind == "audio":
                    on_track(peer, track)

        return await self._open(session, "mic", offer, receive)

    async def _open(
        self, session: Viewable, kind: PeerKind, offer: Offer, prepare: Prepare
    ) -> tuple[Peer, str]:
        """The one answer path: a peer, prepared for the offer, then the offer applied and
        answered. A peer that cannot be answered is removed before the error goes on."""
        peer = self._new_peer(session, kind)
        try:
            prepare(peer, offer)
            await peer.pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
            answer = await peer.pc.createAnswer()
            if self._loopback:
                await add_loopback_candidates(peer.pc)
            await peer.pc.setLocalDescription(answer)
        except Exception as exc:
            await self.remove(peer.info.resource_id, "its offer could not be answered")
            if isinstance(exc, UNUSABLE) and not isinstance(exc, SdpError):
                raise SdpError(f"the offer could not be used: {exc}") from exc
            raise
        peer.own(self._watch_connect(peer), "connect-timeout")
        return peer, peer.pc.localDescription.sdp

    def _new_peer(self, session: Viewable, kind: PeerKind) -> Peer:
        if self._closed:
            raise RuntimeError("the WebRTC registry is closed")
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
            elif state == "failed":
                self._close_soon(
                    resource_id, "its connection failed (no ICE candidate pair worked)"
                )
            elif state == "closed":
                self._close_soon(resource_id, "its connection closed")

        return peer

    def _send_session(self, peer: Peer, offer: Offer) -> None:
        """Give a viewer's peer its tracks: shared packets where the offer takes the codec."""
        session = peer.session
        kinds = offer.kinds & MEDIA
        shared = offer.shared(session.video_codec)
        start = SharedStart(video="video" in kinds)
        tracks: dict[str, MediaStreamTrack] = {}
        if shared and fanout.supported():
            encoder = self._encoded(session)
            peer.encoded = (encoder, None)
            fan = fanout.fanout_of(encoder)
            for kind in shared:
                leg = fanout.Leg(kind, start, encoder)
                fan.add(leg)
                tracks[kind] = fanout.LegTrack(kind, leg, fan)
        elif shared:
            encoder = self._encoded(session)
            sub = encoder.subscribe()
            peer.encoded = (encoder, sub)
            if "video" in shared:
                tracks["video"] = EncodedVideoTrack(sub, start, encoder)
            if "audio" in shared:
                tracks["audio"] = EncodedAudioTrack(sub, start)
        if kinds - shared:
            raw = session.bus.subscribe()
            peer.subscription = raw
            tracks.setdefault("video", AVVideoTrack(raw, start))
            tracks.setdefault("audio", AVAudioTrack(raw, start))
        video = tracks.get("video")
        if isinstance(video, AVVideoTrack | EncodedVideoTrack | fanout.LegTrack):
            peer.video = video
        # Transceivers made before the offer is applied take its sections, and their codec
        # preferences decide what the answer picks: the shared encoder's codec.
        for kind in ("video", "audio"):
            if kind in kinds:
                self._add_track(peer, tracks[kind], kind in shared)

    @staticmethod
    def _add_track(peer: Peer, track: MediaStreamTrack, shared: bool) -> None:
        transceiver = peer.pc.addTransceiver(track, direction="sendonly")
        peer.tracks.append(track)
        if not shared:
            return
        name = peer.session.video_codec if track.kind == "video" else "opus"
        transceiver.setCodecPreferences(codec_preferences(track.kind, name))
        if isinstance(track, fanout.LegTrack):
            track.leg.bind(transceiver.sender)
        if track.kind == "video" and peer.encoded is not None:
            route_keyframe_requests(transceiver.sender, peer.encoded[0])

    async def trickle(self, peer: Peer, fragment: str) -> None:
        """Add the remote candidates of an ``application/trickle-ice-sdpfrag`` body."""
        for candidate in trickle_candidates(fragment):
            await peer.pc.addIceCandidate(candidate)

    async def remove(self, resource_id: str, why: str = "it was deleted") -> bool:
        peer = self._peers.pop(resource_id, None)
        if peer is None:
            return False
        self._ended[resource_id] = (peer.info.session_id, peer.info.kind, why)
        while len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)
        await peer.aclose()
        return True

    async def remove_session(self, session_id: str) -> None:
        for peer in self.of_session(session_id):
            await self.remove(peer.info.resource_id, "its session ended")

    def _close_soon(self, resource_id: str, why: str) -> None:
        if resource_id not in self._peers:
            return
        task = asyncio.ensure_future(self.remove(resource_id, why))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _watch_connect(self, peer: Peer) -> None:
        """A client that posts an offer and never connects is closed after a while."""
        await asyncio.sleep(self._connect_timeout)
        if peer.connected_at is None:
            log.info(
                "session %s peer %s never connected", peer.info.session_id, peer.info.resource_id
            )
            self._close_soon(
                peer.info.resource_id, f"it did not connect within {self._connect_timeout:g} s"
            )

    async def aclose(self) -> None:
        """Close every peer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for resource_id in list(self._peers):
            await self.remove(resource_id)
        await asyncio.gather(*self._closing, return_exceptions=True)
