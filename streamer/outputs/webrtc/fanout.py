"""One session's shared packets sent to every viewer in one pass, as the encoder publishes them.

aiortc sends each viewer's media from a task of its own: for every packet a track is awaited,
the packet packed, an RTP header built and the bytes passed down five coroutine levels (DTLS,
ICE, aioice's pair, its protocol) to ``sendto``. With a shared encoder that chain is the whole
per-viewer cost, about 1.8 % of a core per viewer on this project's 2-core machine (three
task wake-ups and eight packets a frame), of which the work that has to be done per viewer
(an RTP header, SRTP, ``sendto``) is a fifth.

Here, one :class:`Fanout` per shared encoder is a subscriber of its packet bus. When the bus
publishes a picture or an audio packet, the fan-out packs it once (VP8/H.264 payloads, the
same for everyone) and, for each viewer's :class:`Leg`, builds the RTP packets with that
viewer's SSRC, sequence numbers and timestamp origin, protects them with the viewer's SRTP
session and hands them to its ICE pair's socket: no task, no queue, no await. A viewer that
joins starts at the live edge by construction (there is nothing queued), on a key frame.

aiortc keeps everything else: negotiation, DTLS, RTCP (sender reports, from the counters each
leg updates as aiortc's own sending would; NACK retransmissions, from the history each leg
fills; key frame requests, routed to the shared encoder). Its RTP task reads a
:class:`LegTrack` that never yields a frame and ends when the viewer goes. Reaching into
aiortc's sender is guarded: :func:`supported` checks the fields once, and without them the
viewers get the tracks that go through aiortc (``tests/test_webrtc_compat.py`` fails first).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import random
import types
from typing import Any

import av
from aioice.ice import StunProtocol
from aiortc import MediaStreamTrack, RTCRtpSender
from aiortc import clock as ntp_clock
from aiortc.codecs import get_encoder
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpSendParameters
from aiortc.rtcrtpsender import RTP_HISTORY_SIZE
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from models.audio import SAMPLES_PER_VIDEO_FRAME
from streamer.outputs.webrtc.tracks import (
    HALF,
    OPUS_TICKS_PER_SAMPLE,
    VIDEO_START_WAIT_S,
    VIDEO_TICKS_PER_FRAME,
    EncodedStream,
    SharedStart,
)
from streamer.pipeline.codecs import EncodedFrame
from streamer.pipeline.frames import Subscription

log = logging.getLogger(__name__)

# aiortc's sender reads these in its RTCP sender reports and NACK handling; a leg keeps them.
_SENDER = "_RTCRtpSender__"
_COUNTERS = ("ntp_timestamp", "rtp_timestamp", "octet_count", "packet_count")
_HISTORY = "rtp_history"
_PACK_TIME_BASE = fractions.Fraction(1, 90_000)

_supported: bool | None = None


def supported() -> bool:
    """Whether aiortc's sender still has the fields a leg keeps (checked once)."""
    global _supported
    if _supported is None:
        probe = RTCRtpSender("audio", types.SimpleNamespace(state="new"))  # type: ignore[arg-type]
        fields = [_SENDER + name for name in (*_COUNTERS, _HISTORY)]
        _supported = all(hasattr(probe, f) for f in fields) and isinstance(
            getattr(probe, _SENDER + _HISTORY), dict
        )
        if not _supported:
            log.warning("aiortc changed: viewers' packets go through aiortc's own sending")
    return _supported


class Leg:
    """One viewer's track of a fan-out: its RTP numbering, SRTP session and socket."""

    def __init__(self, kind: str, start: SharedStart, encoder: EncodedStream) -> None:
        self.kind = kind
        self._start = start
        self._encoder = encoder
        self._sender: RTCRtpSender | None = None
        self._payload_type = 0
        self._mid: str | None = None
        self._extensions = HeaderExtensionsMap()
        self._sequence = random.randint(0, 0xFFFF)
        self._origin = random.randint(0, 0xFFFFFFFF)
        self._live_at: float | None = None
        self._need_keyframe = kind == "video"
        self.codec: Any = None  # the negotiated codec (what the fan-out packs for)
        self.ended = asyncio.Event()

    def bind(self, sender: RTCRtpSender) -> None:
        """Learn the negotiated payload type, MID and header extensions from ``sender.send``."""
        self._sender = sender
        send = sender.send

        async def send_and_learn(parameters: RTCRtpSendParameters) -> None:
            self.codec = parameters.codecs[0]
            self._payload_type = self.codec.payloadType
            self._mid = parameters.muxId
            self._extensions.configure(parameters)
            await send(parameters)
            # aiortc calls this once DTLS is up: sending starts now, on a key frame asked
            # for now (none was made at the join, when nobody could have received it).
            self._live_at = asyncio.get_running_loop().time()
            if self.kind == "video":
                self._encoder.request_keyframe()

        sender.send = send_and_learn  # type: ignore[method-assign]

    def _socket(self) -> tuple[Any, Any] | None:
        """The SRTP session and ICE pair to send on, once DTLS is up; None before."""
        sender = self._sender
        if sender is None or self.codec is None:
            return None
        dtls = sender.transport
        if dtls.state != "connected":
            if dtls.state in ("closed", "failed"):
                self.ended.set()
            return None
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None or self._live_at is None:
            return None
        return dtls._tx_srtp, pair

    def video(self, item: EncodedFrame, payloads: list[bytes], ntp: int) -> None:
        way = self._socket()
        if way is None or (self._need_keyframe and not item.keyframe):
            return
        n = self._start.offset(item.index)
        if n is None:
            return
        self._need_keyframe = False
        self._send(way, payloads, self._origin + n * VIDEO_TICKS_PER_FRAME, ntp)

    def audio(self, item: EncodedFrame, ntp: int) -> None:
        way = self._socket()
        if way is None or self._live_at is None:
            return
        if self._start.waiting_for_video(self._live_at + VIDEO_START_WAIT_S):
            return  # the viewer's video starts first, on a key frame: the audio starts with it
        n = self._start.offset(item.index)
        if n is None:
            return
        for i, data in enumerate(item.audio):
            at = n * SAMPLES_PER_VIDEO_FRAME + item.audio_offset + i * HALF
            self._send(way, [data], self._origin + at * OPUS_TICKS_PER_SAMPLE, ntp)

    def _send(self, way: tuple[Any, Any], payloads: list[bytes], ticks: int, ntp: int) -> None:
        srtp, pair = way
        sender = self._sender
        history: dict[int, RtpPacket] = getattr(sender, _SENDER + _HISTORY)
        timestamp = ticks & 0xFFFFFFFF
        last = len(payloads) - 1
        octets = 0
        for i, payload in enumerate(payloads):
            packet = RtpPacket(self._payload_type, 1 if i == last else 0, self._sequence, timestamp)
            packet.ssrc = sender._ssrc  # type: ignore[union-attr]
            packet.payload = payload
            packet.extensions.abs_send_time = (ntp >> 14) & 0x00FFFFFF
            packet.extensions.mid = self._mid
            history[self._sequence % RTP_HISTORY_SIZE] = packet
            _deliver(pair, srtp.protect(packet.serialize(self._extensions)))
            self._sequence = (self._sequence + 1) & 0xFFFF
            octets += len(payload)
        # What aiortc's own sending keeps for its RTCP sender reports.
        name = _SENDER + "octet_count"
        setattr(sender, name, getattr(sender, name) + octets)
        name = _SENDER + "packet_count"
        setattr(sender, name, getattr(sender, name) + len(payloads))
        setattr(sender, _SENDER + "ntp_timestamp", ntp)
        setattr(sender, _SENDER + "rtp_timestamp", timestamp)


def _deliver(pair: Any, data: bytes) -> None:
    """Hand a protected packet to the ICE pair's socket (a TURN relay's protocol awaits)."""
    protocol = pair.protocol
    if type(protocol).send_data is StunProtocol.send_data:
        if protocol.transport is not None:
            protocol.transport.sendto(data, pair.remote_addr)
    else:
        task = asyncio.ensure_future(protocol.send_data(data, pair.remote_addr))
        _relayed.add(task)
        task.add_done_callback(_relayed.discard)


_relayed: set[asyncio.Future[None]] = set()  # sends through a TURN relay, until done


class LegTrack(MediaStreamTrack):
    """What aiortc's RTP task reads for a leg: nothing, until the viewer goes."""

    def __init__(self, kind: str, leg: Leg, fanout: Fanout) -> None:
        super().__init__()
        self.kind = kind
        self.leg = leg
        self._fanout = fanout

    async def recv(self) -> Any:
        await self.leg.ended.wait()
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        self.leg.ended.set()
        self._fanout.remove(self.leg)


class Fanout(Subscription[EncodedFrame]):
    """Every direct leg of one shared encoder, sent to as its bus publishes."""

    def __init__(self, encoder: EncodedStream) -> None:
        super().__init__(video_depth=1, audio_depth=1)
        self.encoder = encoder
        self.legs: list[Leg] = []
        self._packer: Any = None

    def add(self, leg: Leg) -> None:
        self.legs.append(leg)

    def remove(self, leg: Leg) -> None:
        if leg in self.legs:
            self.legs.remove(leg)
        if not self.legs:
            self.encoder.unsubscribe(self)
            _fanouts.pop(id(self.encoder), None)

    def offer(self, frame: EncodedFrame, *, video: bool = True, audio: bool = True) -> None:
        """Send ``frame`` to every leg now (the bus's hand-off; never raises)."""
        if self.closed:
            return
        ntp = ntp_clock.current_ntp_time()
        if video and frame.video is not None:
            legs = [x for x in self.legs if x.kind == "video"]
            payloads = self._pack(legs, frame)
            for leg in legs:
                self._guarded(leg, leg.video, frame, payloads, ntp)
        if audio and frame.audio:
            for leg in [x for x in self.legs if x.kind == "audio"]:
                self._guarded(leg, leg.audio, frame, ntp)

    def _pack(self, legs: list[Leg], frame: EncodedFrame) -> list[bytes]:
        """The picture's RTP payloads, made once for every leg (from the negotiated codec)."""
        if self._packer is None:
            codec = next((leg.codec for leg in legs if leg.codec is not None), None)
            if codec is None:
                return []  # nobody has negotiated yet, so nobody sends
            self._packer = get_encoder(codec)
        packet = av.Packet(frame.video)
        packet.pts = 0
        packet.time_base = _PACK_TIME_BASE
        payloads, _ = self._packer.pack(packet)
        return list(payloads)

    def close(self) -> None:
        """The encoder's bus closed (the session ended): every leg's track ends."""
        super().close()
        for leg in self.legs:
            leg.ended.set()

    def _guarded(self, leg: Leg, send: Any, *args: Any) -> None:
        try:
            send(*args)
        except Exception:  # one viewer's failure must not reach the bus or the others
            log.exception("a viewer's %s leg failed; it stops", leg.kind)
            leg.ended.set()
            self.remove(leg)


_fanouts: dict[int, Fanout] = {}


def fanout_of(encoder: EncodedStream) -> Fanout:
    """The encoder's fan-out, subscribed to it while it has legs."""
    fanout = _fanouts.get(id(encoder))
    if fanout is None or fanout.closed:
        fanout = Fanout(encoder)
        # No key frame now: each leg asks for one when its DTLS is up and it can send.
        encoder.attach(fanout, keyframe=False)
        _fanouts[id(encoder)] = fanout
    return fanout
