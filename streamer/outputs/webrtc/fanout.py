"""One session's shared packets sent to every viewer in one pass, as the encoder publishes them.

aiortc sends each viewer's media from a task of its own: for every packet a track is awaited,
the packet packed, an RTP header built and the bytes passed down five coroutine levels (DTLS,
ICE, aioice's pair, its protocol) to ``sendto``. With a shared encoder that chain is the whole
per-viewer cost, about 1.8 % of a core per viewer on this project's 2-core machine (three
task wake-ups and eight packets a frame), of which the work that has to be done per viewer
(an RTP header, SRTP, ``sendto``) is a fifth.

Here, one :class:`Fanout` per shared encoder is a subscriber of its packet bus. When the bus
publishes a picture or an audio packet, the fan-out packs it once (VP8/H.264 payloads, the
same for everyone) and serialises each RTP packet once (:class:`Packets`: all but the
sequence number, timestamp and SSRC). For each viewer's :class:`Leg` it then only writes
those three fields, protects the packet with the viewer's SRTP session and hands it to the
viewer's ICE pair's socket: no task, no queue, no await. A viewer that joins starts at the
live edge by construction (there is nothing queued), on a key frame.

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
import struct
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
    KeyframeStart,
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
_HEADER = struct.Struct("!BBHII")  # RTP's fixed header: flags, marker and type, numbering

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
        self.payload_type = 0
        self.mid: str | None = None
        self.extensions = HeaderExtensionsMap()
        self.shape: tuple[Any, ...] = ()  # what its packets' shared bytes depend on
        self._sequence = random.randint(0, 0xFFFF)
        self._origin = random.randint(0, 0xFFFFFFFF)
        self._live_at: float | None = None
        self._keyframe = KeyframeStart(encoder, start)
        self.codec: Any = None  # the negotiated codec (what the fan-out packs for)
        self.ended = asyncio.Event()

    def bind(self, sender: RTCRtpSender) -> None:
        """Learn the negotiated payload type, MID and header extensions from ``sender.send``."""
        self._sender = sender
        send = sender.send

        async def send_and_learn(parameters: RTCRtpSendParameters) -> None:
            self.codec = parameters.codecs[0]
            self.payload_type = self.codec.payloadType
            self.mid = parameters.muxId
            self.extensions.configure(parameters)
            ids = tuple((x.id, x.uri) for x in parameters.headerExtensions)
            self.shape = (self.payload_type, self.mid, ids)
            await send(parameters)
            # aiortc calls this once DTLS is up: sending starts now, on a key frame asked
            # for now (none was made at the join, when nobody could have received it).
            self._live_at = asyncio.get_running_loop().time()
            if self.kind == "video":
                self._keyframe.ask()

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

    def video(self, item: EncodedFrame, packets: Packets) -> None:
        way = self._socket()
        if way is None:
            return
        n = self._keyframe.offset(item)
        if n is None:
            return
        self._send(way, packets, self._origin + n * VIDEO_TICKS_PER_FRAME)

    def audio(self, item: EncodedFrame, pieces: list[Packets]) -> None:
        way = self._socket()
        if way is None or self._live_at is None:
            return
        if self._start.waiting_for_video(self._live_at + VIDEO_START_WAIT_S):
            return  # the viewer's video starts first, on a key frame: the audio starts with it
        n = self._start.offset(item.index)
        if n is None:
            return
        for i, piece in enumerate(pieces):
            at = n * SAMPLES_PER_VIDEO_FRAME + item.audio_offset + i * HALF
            self._send(way, piece, self._origin + at * OPUS_TICKS_PER_SAMPLE)

    def _send(self, way: tuple[Any, Any], packets: Packets, ticks: int) -> None:
        """The shared packets with this viewer's numbering, protected and sent."""
        srtp, pair = way
        sender = self._sender
        ssrc: int = sender._ssrc  # type: ignore[union-attr]
        history: dict[int, Any] = getattr(sender, _SENDER + _HISTORY)
        send = _sending(pair)
        timestamp = ticks & 0xFFFFFFFF
        for first, second, tail in packets.for_leg(self):
            sequence = self._sequence
            data = _HEADER.pack(first, second, sequence, timestamp, ssrc) + tail
            history[sequence % RTP_HISTORY_SIZE] = Kept(sequence, data, self.extensions)
            send(srtp.protect(data))
            self._sequence = (sequence + 1) & 0xFFFF
        # What aiortc's own sending keeps for its RTCP sender reports.
        name = _SENDER + "octet_count"
        setattr(sender, name, getattr(sender, name) + packets.octets)
        name = _SENDER + "packet_count"
        setattr(sender, name, getattr(sender, name) + len(packets.payloads))
        setattr(sender, _SENDER + "ntp_timestamp", packets.ntp)
        setattr(sender, _SENDER + "rtp_timestamp", timestamp)


class Packets:
    """One picture's (or one audio packet's) RTP for every leg: each packet's first two bytes
    and everything after its SSRC are serialised once per header shape (payload type, MID,
    extension ids), so that a leg only adds its sequence number, timestamp and SSRC."""

    def __init__(self, payloads: list[bytes], ntp: int) -> None:
        self.payloads = payloads
        self.ntp = ntp
        self.octets = sum(len(p) for p in payloads)
        self._made: dict[tuple[Any, ...], list[tuple[int, int, bytes]]] = {}

    def for_leg(self, leg: Leg) -> list[tuple[int, int, bytes]]:
        made = self._made.get(leg.shape)
        if made is None:
            made = []
            last = len(self.payloads) - 1
            for i, payload in enumerate(self.payloads):
                packet = RtpPacket(leg.payload_type, 1 if i == last else 0, 0, 0)
                packet.payload = payload
                packet.extensions.abs_send_time = (self.ntp >> 14) & 0x00FFFFFF
                packet.extensions.mid = leg.mid
                data = packet.serialize(leg.extensions)
                made.append((data[0], data[1], data[_HEADER.size :]))
            self._made[leg.shape] = made
        return made


class Kept:
    """A sent packet in aiortc's NACK history: its bytes, parsed only if it is asked for."""

    __slots__ = ("_data", "_extensions", "sequence_number")

    def __init__(self, sequence: int, data: bytes, extensions: HeaderExtensionsMap) -> None:
        self.sequence_number = sequence
        self._data = data
        self._extensions = extensions

    def serialize(self, _: HeaderExtensionsMap | None = None) -> bytes:
        return self._data

    def __getattr__(self, name: str) -> Any:  # wrap_rtx's fields: marker, payload, ...
        return getattr(RtpPacket.parse(self._data, self._extensions), name)


def _sending(pair: Any) -> Any:
    """How to hand protected packets to the ICE pair's socket (a TURN relay's awaits)."""
    protocol = pair.protocol
    if type(protocol).send_data is StunProtocol.send_data:
        transport, address = protocol.transport, pair.remote_addr

        def direct(data: bytes) -> None:
            if transport is not None:
                transport.sendto(data, address)

        return direct
    return lambda data: _deliver(pair, data)


def _deliver(pair: Any, data: bytes) -> None:
    """Send through a TURN relay, whose protocol awaits."""
    task = asyncio.ensure_future(pair.protocol.send_data(data, pair.remote_addr))
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
            packets = Packets(self._pack(legs, frame), ntp)
            for leg in legs:
                self._guarded(leg, leg.video, frame, packets)
        if audio and frame.audio:
            pieces = [Packets([data], ntp) for data in frame.audio]
            for leg in [x for x in self.legs if x.kind == "audio"]:
                self._guarded(leg, leg.audio, frame, pieces)

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
