"""The audience of the viewer bench: many WHEP viewers of one session, in a process of their own.

``python -m streamer.measure.audience REQUEST`` connects ``count`` aiortc viewers to one
session (a few at a time), prints ``ready <time>`` once each has had a video frame, and then
records, until a ``stop`` line arrives on stdin, what every viewer receives: when each video
frame has wholly arrived (its last RTP packet, the marker bit) and each audio packet's
arrival, sequence number and RTP timestamp. It then prints one JSON report with the
process's own CPU time and its event loop's lag, so that the receivers' cost and lateness are
told apart from the server's.

Each video frame's arrival is stamped twice: when this process's event loop handles its last
packet (what it has always been), and when the packet reached the viewer's socket (the
kernel's receive time, ``SIOCGSTAMP``, read as aioice takes the datagram; RTP headers travel
in the clear under SRTP, so the packet is known by SSRC and sequence number before it is
decrypted). The receivers share the server's cores, so their loop stamps carry their own
lateness (hundreds of Python receivers in a few processes); a player on its own machine
sees what the socket stamps show.

Each viewer is a real aiortc peer: ICE, DTLS, SRTP and RTCP as a player does them. By default
the packets stop there (:func:`~streamer.measure.viewer.tap_rtp`): decoding is the work of
the viewer's own machine, and hundreds of VP8 decoders would take the very cores the server
is measured on. Once a viewer has had its first frame, its RTP packets are recorded at the
socket and not even decrypted (:class:`SocketClock`): 25 receivers then take 18-20 % of a
core instead of 44 %. With ``decode`` every viewer also decodes, as a player would.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
from aioice.ice import StunProtocol

from streamer.measure.viewer import Viewer, tap_rtp

CONNECTING_AT_ONCE = 4
LAG_PROBE_S = 0.005
SIOCGSTAMP = 0x8906  # Linux: the receive time of the last datagram read from a socket


class SocketClock:
    """Kernel receive times of RTP packets on this process's ICE sockets, by (SSRC, seq).

    Once a viewer has had its first packets through aiortc (ICE, DTLS and SRTP work), its
    streams can be *routed*: their packets are then recorded straight from the socket and go
    no further, with no SRTP decryption and no aiortc packet handling, which otherwise cost
    the receivers more CPU than the server spends sending to them (25 receivers in one
    process took 44 % of a core). STUN, DTLS and RTCP still reach aiortc, so the viewer stays
    connected and reports as a player does."""

    def __init__(self) -> None:
        self.stamps: dict[tuple[int, int], float] = {}
        self.routes: dict[int, Callable[[bytes, float | None], None]] = {}  # by SSRC
        self.working = True
        self._to_monotonic = time.time() - time.monotonic()  # SIOCGSTAMP is wall-clock

    def install(self) -> None:
        """Stamp every datagram aioice receives (this process only: a measuring client)."""
        received = StunProtocol.datagram_received
        clock = self

        def stamped(protocol: StunProtocol, data: bytes, addr: tuple[str, int]) -> None:
            # RTP (version 2, payload types 96-127 with or without the marker), not RTCP.
            if len(data) >= 12 and data[0] >> 6 == 2 and data[1] & 0x7F >= 96:
                route = clock.routes.get(struct.unpack_from("!I", data, 8)[0])
                if route is not None:
                    route(data, clock.read(protocol))
                    return
                if clock.working:
                    clock.stamp(protocol, data)
            received(protocol, data, addr)

        StunProtocol.datagram_received = stamped  # type: ignore[method-assign,assignment]

    def read(self, protocol: Any) -> float | None:
        """The kernel's receive time of the datagram just read (on the monotonic clock)."""
        if not self.working:
            return None
        try:
            sock = protocol.transport.get_extra_info("socket")
            raw = fcntl.ioctl(sock.fileno(), SIOCGSTAMP, bytes(16))
        except (AttributeError, OSError):
            self.working = False  # not Linux, or no socket: only loop stamps then
            return None
        seconds, micros = struct.unpack("qq", raw)
        return seconds + micros / 1e6 - self._to_monotonic

    def stamp(self, protocol: Any, data: bytes) -> None:
        at = self.read(protocol)
        if at is not None:
            seq, ssrc = struct.unpack_from("!H", data, 2)[0], struct.unpack_from("!I", data, 8)[0]
            self.stamps[(ssrc, seq)] = at

    def pop(self, packet: Any) -> float | None:
        return self.stamps.pop((packet.ssrc, packet.sequence_number), None)


SOCKETS = SocketClock()


class Receiver(Viewer):
    """A WHEP viewer that records packets: video frame arrivals, audio packets."""

    def __init__(self, decode: bool) -> None:
        super().__init__(None)
        self.decode = decode
        self.frames: list[float] = []  # arrival of each video frame's last packet
        self.frames_socket: list[float] = []  # the same packets' arrival at the socket
        self.audio_packets: list[tuple[float, int, int]] = []  # arrival, sequence, timestamp

    def _watch(self, receiver: Any) -> None:
        loop = asyncio.get_running_loop()
        if receiver.track.kind == "video":

            def video(marker: bool, at_socket: float | None) -> None:
                if marker:
                    now = loop.time()
                    self.frames.append(now)
                    if at_socket is not None:
                        self.frames_socket.append(at_socket)
                    if not self.first_frame.done():
                        self.first_frame.set_result(now)

            def on_video(packet: Any) -> None:
                video(packet.marker, SOCKETS.pop(packet))
                if self.first_frame.done() and not self.decode:
                    SOCKETS.routes[packet.ssrc] = lambda data, at: video(data[1] >= 0x80, at)

            tap_rtp(receiver, on_video, self.decode)
        else:

            def audio(data: bytes, _at: float | None) -> None:
                seq, stamp = struct.unpack_from("!HI", data, 2)
                self.audio_packets.append((loop.time(), seq, stamp))

            def on_audio(packet: Any) -> None:
                SOCKETS.pop(packet)
                self.audio_packets.append((loop.time(), packet.sequence_number, packet.timestamp))
                if self.first_frame.done() and not self.decode:
                    SOCKETS.routes[packet.ssrc] = audio

            tap_rtp(receiver, on_audio, self.decode)


async def _connect(
    http: httpx.AsyncClient, sid: str, token: str, decode: bool, gate: asyncio.Semaphore
) -> Receiver | None:
    """One viewer with a first frame, or None when it could not connect."""
    async with gate:
        receiver = Receiver(decode)
        try:
            await receiver.connect(http, sid, token)
            await asyncio.wait_for(asyncio.shield(receiver.first_frame), 20)
        except Exception as exc:
            print(f"audience: a viewer did not connect: {exc!r}", file=sys.stderr, flush=True)
            await receiver.aclose(http, token)
            return None
        return receiver


async def _probe_lag(lags: list[float]) -> None:
    """This process's event-loop lag: a late receiver loop stamps arrivals late."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(LAG_PROBE_S)
        lags.append((loop.time() - asked - LAG_PROBE_S) * 1000.0)


async def audience(base: str, sid: str, token: str, count: int, decode: bool) -> dict[str, Any]:
    """Connect ``count`` viewers, say ``ready``, record until told to stop; the report."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        made = await asyncio.gather(
            *(_connect(http, sid, token, decode, gate) for _ in range(count))
        )
        viewers = [v for v in made if v is not None]
        lags: list[float] = []
        probe = loop.create_task(_probe_lag(lags))
        try:
            cpu, ready = time.process_time(), loop.time()
            print(f"ready {ready}", flush=True)
            await asyncio.to_thread(sys.stdin.readline)  # the bench's "stop"
            cpu, elapsed = time.process_time() - cpu, loop.time() - ready
            return {
                "connected": len(viewers),
                "video": [v.frames for v in viewers],
                "video_socket": [v.frames_socket for v in viewers],
                "audio": [v.audio_packets for v in viewers],
                "cpu_percent": round(100.0 * cpu / max(elapsed, 1e-9), 1),
                "loop_lag_ms_p95": round(float(np.percentile(lags, 95)), 1) if lags else None,
                "loop_lag_ms_max": round(max(lags), 1) if lags else None,
            }
        finally:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
            for viewer in viewers:
                await viewer.aclose(http, token)


def audience_main(argv: list[str]) -> int:
    import logging
    import warnings

    logging.getLogger("aiortc").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    request = json.loads(argv[0])
    SOCKETS.install()
    report = asyncio.run(
        audience(
            request["base"],
            request["session"],
            request["token"],
            request["count"],
            request["decode"],
        )
    )
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":  # an audience process of the viewer bench
    raise SystemExit(audience_main(sys.argv[1:]))
