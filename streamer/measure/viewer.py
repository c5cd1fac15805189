"""A WHEP viewer for the live bench: an aiortc peer that decodes what arrives and measures it.

Each stream's frames are kept as (arrival, pts, value): the mouth openness of a video frame or
the loudness of an audio frame. With the RTCP sender reports of each stream (which map its RTP
timestamps onto the sender's NTP clock, what a browser's lip sync uses) the viewer puts mouth
and voice on one clock and measures the A/V offset a real receiver sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from streamer.measure.avsync import (
    MouthRegion,
    Published,
    Series,
    activity,
    av_offset_by_alignment,
    median,
    onsets,
    paired_lag_ms,
    rms,
    thumbnail,
)

if TYPE_CHECKING:
    import httpx
    from aiortc import MediaStreamTrack, RTCRtpReceiver

PtsOrigin = Callable[[], "int | None"]


def hook_receiver(
    receiver: RTCRtpReceiver,
    on_sender_report: Callable[[float, int], None],
    on_frame_end: Callable[[], None] | None = None,
) -> PtsOrigin:
    """Watch one aiortc receiver's RTCP sender reports and RTP marker bits; return a reader of
    the RTP timestamp its frames' pts count from.

    aiortc has no public API for any of the three, and the A/V offset at a receiver needs them
    all, so this is the one place the bench reaches into aiortc's internals (the names of
    aiortc 1.x's ``RTCRtpReceiver``): it wraps the handlers the DTLS transport calls for each
    packet and reads the receiver's timestamp mapper. ``on_sender_report(ntp_seconds,
    rtp_timestamp)`` runs for every sender report, ``on_frame_end()`` for every packet with the
    marker bit (a frame's last packet). The reader returns None until a frame has arrived.
    """
    from aiortc.rtp import RtcpSrPacket

    handle_rtcp = receiver._handle_rtcp_packet

    async def hooked_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            info = packet.sender_info
            on_sender_report(info.ntp_timestamp / 2**32, info.rtp_timestamp)
        await handle_rtcp(packet)

    receiver._handle_rtcp_packet = hooked_rtcp  # type: ignore[method-assign]
    if on_frame_end is not None:
        end = on_frame_end

        def on_packet(packet: Any) -> None:
            if packet.marker:
                end()

        tap_rtp(receiver, on_packet)

    def pts_origin() -> int | None:
        mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)
        origin = getattr(mapper, "_origin", None)
        return origin % (1 << 32) if isinstance(origin, int) else None

    return pts_origin


def tap_rtp(
    receiver: RTCRtpReceiver, on_packet: Callable[[Any], None], forward: bool = True
) -> None:
    """Call ``on_packet(packet)`` for every RTP packet (an ``aiortc.rtp.RtpPacket``: marker,
    sequence number, timestamp) that reaches one aiortc receiver, through the same private
    handler :func:`hook_receiver` wraps. With ``forward`` False the packet goes no further:
    no jitter buffer and no decoder, so a bench can hold hundreds of receivers whose own
    decoding would otherwise take the cores the server is measured on."""
    handle_rtp = receiver._handle_rtp_packet

    async def tapped(packet: Any, arrival_time_ms: int) -> None:
        on_packet(packet)
        if forward:
            await handle_rtp(packet, arrival_time_ms)

    receiver._handle_rtp_packet = tapped  # type: ignore[method-assign]


def _pts(pts: int | None) -> int:
    if pts is None:  # aiortc stamps every frame it decodes
        raise RuntimeError("a received frame has no pts")
    return int(pts)


def _unknown_origin() -> int | None:
    return None


def _rel(ts: int, ref: int) -> int:
    """RTP timestamp ``ts`` relative to ``ref``, across the 32-bit wrap."""
    return ((ts - ref + (1 << 31)) % (1 << 32)) - (1 << 31)


@dataclass
class Track:
    """What one received stream (video or audio) brought: its frames and sender reports."""

    clock: int
    frames: list[tuple[float, int, float]] = field(default_factory=list)  # arrival, pts, value
    reports: list[tuple[float, float, int]] = field(default_factory=list)  # arrival, ntp s, rtp
    # Arrival of each frame's last RTP packet (the marker bit): when the frame has wholly
    # arrived, as a browser's jitter buffer sees it. aiortc's own jitter buffer releases a
    # frame only when the next frame's first packet comes, which adds the sender's encode time
    # of the next frame to every interval: the decoded-frame intervals are kept separately.
    complete: list[float] = field(default_factory=list)
    pts_origin: PtsOrigin = _unknown_origin  # from hook_receiver once the stream is hooked

    def sender_times(self, lo: float = -np.inf, hi: float = np.inf) -> np.ndarray | None:
        """Each frame's time on the sender's clock, from the RTCP sender reports (NTP time of
        an RTP timestamp) received in [lo, hi), or all of them when none was."""
        origin = self.pts_origin()
        usable = [r for r in self.reports if lo <= r[0] < hi] or self.reports
        if origin is None or not usable or not self.frames:
            return None
        base = statistics.median(ntp - _rel(rtp, origin) / self.clock for _, ntp, rtp in usable)
        return np.asarray([base + pts / self.clock for _, pts, _ in self.frames])


class Viewer:
    """An aiortc WHEP client that decodes what arrives and keeps measures of it."""

    def __init__(self, region: MouthRegion | None) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection

        self.region = region  # None: frames are decoded, as a player would, but not measured
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.video = Track(90_000)
        self.audio = Track(48_000)
        self.posted_at: float | None = None
        self.first_frame: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._tasks: set[asyncio.Task[None]] = set()
        self.location: str | None = None
        self.thumbs: list[np.ndarray] = []  # per measured video frame (avsync.thumbnail)

    async def connect(self, http: httpx.AsyncClient, session_id: str, token: str) -> None:
        from aiortc import RTCSessionDescription

        pc = self.pc
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            task = asyncio.ensure_future(self._read(track))
            self._tasks.add(task)

        await pc.setLocalDescription(await pc.createOffer())
        self.posted_at = asyncio.get_running_loop().time()
        res = await http.post(
            f"/v1/sessions/{session_id}/whep",
            content=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
        )
        if res.status_code != 201:
            raise RuntimeError(f"WHEP POST answered {res.status_code}: {res.text}")
        self.location = res.headers["location"]
        await pc.setRemoteDescription(RTCSessionDescription(res.text, "answer"))
        for receiver in pc.getReceivers():
            self._watch(receiver)

    def _watch(self, receiver: RTCRtpReceiver) -> None:
        """Record the RTCP sender reports (NTP time <-> RTP timestamp) of one stream and, for
        the video, when each frame has wholly arrived."""
        track = self.video if receiver.track.kind == "video" else self.audio
        loop = asyncio.get_running_loop()

        def on_sender_report(ntp_s: float, rtp: int) -> None:
            track.reports.append((loop.time(), ntp_s, rtp))

        def on_frame_end() -> None:
            track.complete.append(loop.time())

        video = track is self.video
        track.pts_origin = hook_receiver(
            receiver, on_sender_report, on_frame_end if video else None
        )

    async def _read(self, track: MediaStreamTrack) -> None:
        """Decode every frame of one stream as it arrives and keep its measure."""
        from aiortc.mediastreams import MediaStreamError
        from av import AudioFrame, VideoFrame

        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = loop.time()
            if isinstance(frame, VideoFrame):
                if not self.first_frame.done():
                    self.first_frame.set_result(now)
                value = 0.0
                if self.region is not None:
                    rgb = frame.to_ndarray(format="rgb24")
                    value = self.region.openness(rgb)
                    self.thumbs.append(thumbnail(rgb))
                self.video.frames.append((now, _pts(frame.pts), value))
            elif isinstance(frame, AudioFrame):
                self.audio.frames.append((now, _pts(frame.pts), rms(frame.to_ndarray())))

    def intervals_ms(self, lo: float, hi: float = np.inf) -> list[float]:
        """Intervals between frames wholly arrived (decoded ones where no marker was seen)."""
        arrivals = np.asarray([t for t in self.video.complete if lo <= t < hi])
        if len(arrivals) < 2:
            return self.decoded_intervals_ms(lo, hi)
        return list(np.diff(arrivals) * 1000.0)

    def decoded_intervals_ms(self, lo: float, hi: float = np.inf) -> list[float]:
        arrivals = np.asarray([t for t, _, _ in self.video.frames if lo <= t < hi])
        return list(np.diff(arrivals) * 1000.0) if len(arrivals) > 1 else []

    def av_lag_ms(self, lo: float, hi: float) -> float | None:
        """Mouth onsets minus voice onsets on the sender's clock, frames arriving in [lo, hi)."""
        v_at, a_at = self.video.sender_times(lo, hi), self.audio.sender_times(lo, hi)
        if v_at is None or a_at is None:
            return None
        v_arr = np.asarray([t for t, _, _ in self.video.frames])
        a_arr = np.asarray([t for t, _, _ in self.audio.frames])
        vk = (v_arr >= lo) & (v_arr < hi)
        ak = (a_arr >= lo) & (a_arr < hi)
        mouth = np.asarray([m for _, _, m in self.video.frames])[vk]
        voice = np.asarray([r for _, _, r in self.audio.frames])[ak]
        order_v, order_a = np.argsort(v_at[vk]), np.argsort(a_at[ak])
        return median(
            paired_lag_ms(
                onsets(a_at[ak][order_a], voice[order_a]),
                onsets(v_at[vk][order_v], activity(mouth[order_v])),
            )
        )

    def series(self, lo: float, hi: float) -> tuple[Series, Series] | None:
        """((sender times, picture thumbnails), (sender times, voice level)) of the frames that
        arrived in [lo, hi): where the sender reports put each stream, as a player's lip sync
        does. None before both streams have a sender report."""
        if len(self.thumbs) != len(self.video.frames):  # pictures decoded but not measured
            return None
        out = []
        for track in (self.video, self.audio):
            at = track.sender_times(lo, hi)
            if at is None:
                return None
            arrived = np.asarray([t for t, _, _ in track.frames])
            keep = (arrived >= lo) & (arrived < hi)
            values = (
                np.asarray(self.thumbs, np.float32).reshape(len(arrived), -1)
                if track is self.video
                else np.asarray([x for _, _, x in track.frames])
            )
            out.append((at[keep], values[keep]))
        return out[0], out[1]

    def av_against(self, published: Published, lo: float, hi: float) -> dict[str, float | None]:
        """This receiver's A/V over the frames arriving in [lo, hi), against the frames the
        session published: the alignment's figures (``offset``, the shifts, the
        correlations), and the older onset estimate (``onsets``, the difference of
        ``receiver_lag`` and ``published_lag``)."""
        got = self.series(lo, hi)
        # Published a second either side, so that a shifted window finds its frames.
        out = (
            av_offset_by_alignment(published.series(lo - 1.0, hi + 1.0), got)
            if got is not None
            else {}
        )
        recv, pub = self.av_lag_ms(lo, hi), published.av_lag_ms(lo, hi)
        out["onsets"] = None if recv is None or pub is None else recv - pub
        out["receiver_lag"], out["published_lag"] = recv, pub
        return out

    async def aclose(self, http: httpx.AsyncClient | None = None, token: str = "") -> None:
        if http is not None and self.location is not None:
            with contextlib.suppress(Exception):
                await http.delete(self.location, headers={"Authorization": f"Bearer {token}"})
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
