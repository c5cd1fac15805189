"""The live figures of ``avatarcast bench``, measured through the real server.

The real app (``create_app`` on uvicorn, a free loopback port) runs in this process with the
real avatar and backend. Clients are real too: speech goes in through the WebSocket PCM stream
at real-time pace and through ``POST speak``; viewers are aiortc peers that POST WHEP offers
and decode what arrives over UDP. The one-session measures keep their clients in this
process (they hook the viewers' RTCP); the session ramp runs its speakers and its viewers in
two processes of their own, as other machines' clients would be. All share the machine's
cores with the server, so every figure is taken under that extra load.

What is measured, and where:

- ``frame_interval_ms_p95``: one speaking session, two WHEP viewers; intervals between
  decoded video frames at both receivers (``frame_interval_ms_p95_server``: at publication).
- ``speech_to_mouth_ms_p95``: the session's own measure (a frame's audio entering the session
  -> that frame published); ``speech_to_mouth_onset_ms_p95``: a voice onset entering the
  session -> the first published frame whose mouth opened for it (generator lag included).
- ``interrupt_to_idle_ms``: the interrupt call -> the first published frame that is silent
  and idle for good; ``interrupt_to_idle_ms_receiver``: the interrupt call -> the first
  silent audio at an aiortc receiver.
- ``time_to_first_frame_ms``: the WHEP POST -> the first decoded video frame.
- ``av_offset_ms``: at a receiver, mouth onsets minus voice onsets on the sender's clock that
  the RTCP sender reports give each stream (what a browser's lip sync uses), minus the same
  measure on the published AV frames. Positive: the receiver's mouth is late.
- ``realtime_sessions``: 1, 2, 3, ... sessions, each streaming speech with one viewer, until
  a step fails (frame interval p95 > 45 ms at a receiver, speech-to-mouth p95 > 150 ms, or
  more than 5% of frames dropped, i.e. published with a repeated picture).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import statistics
import time
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.audio import SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME

Progress = Callable[[str], None]
FRAME_LIMIT_MS = 45.0
LATENCY_LIMIT_MS = 150.0
DROPPED_LIMIT = 0.05
SILENT_RMS = 60.0  # s16 units: digital silence through Opus decodes to ~0
CHUNK = SAMPLE_RATE // 50  # 20 ms of PCM per WebSocket message
BURST_PERIOD_S = 1.2
BURST_ON_S = 0.5


@dataclass(frozen=True)
class LivePlan:
    main_s: float  # one session, two viewers, bursts of speech
    settle_s: float
    interrupts: int
    ttff_tries: int
    ramp_s: float
    ramp_max: int

    @classmethod
    def for_mode(cls, quick: bool) -> LivePlan:
        if quick:
            return cls(main_s=5.0, settle_s=1.0, interrupts=3, ttff_tries=2, ramp_s=3.0, ramp_max=3)
        return cls(main_s=20.0, settle_s=2.0, interrupts=8, ttff_tries=5, ramp_s=8.0, ramp_max=8)


# --- test signals --------------------------------------------------------------------------


def voiced(n: int, start: int = 0) -> np.ndarray:
    """A steady voiced sound (harmonics of ~120 Hz), float32 in [-0.6, 0.6]."""
    t = (start + np.arange(n)) / SAMPLE_RATE
    # The phase of a pitch 120 + 15 sin(2 pi 0.7 t) Hz, in closed form so that chunks join.
    phase = 2 * np.pi * (120.0 * t - 15.0 / (2 * np.pi * 0.7) * np.cos(2 * np.pi * 0.7 * t))
    x = np.zeros(n)
    for h in range(1, 10):
        x += np.sin(h * phase) / h
    return (0.6 * x / 2.9).astype(np.float32)


def bursts(n: int, start: int = 0) -> np.ndarray:
    """Speech bursts with clear onsets: ``BURST_ON_S`` of voice every ``BURST_PERIOD_S``."""
    t = (start + np.arange(n)) / SAMPLE_RATE
    on = (t % BURST_PERIOD_S) < BURST_ON_S
    syllables = 0.55 + 0.45 * np.abs(np.sin(2 * np.pi * 3.0 * t))
    return (voiced(n, start) * syllables * on).astype(np.float32)


def wav_bytes(samples: np.ndarray) -> bytes:
    pcm = np.clip(np.rint(samples * 32767.0), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    return buffer.getvalue()


# --- measures on frames --------------------------------------------------------------------


@dataclass(frozen=True)
class MouthRegion:
    """The lower-middle part of the avatar's mouth box, where the lips open."""

    rows: slice
    cols: slice

    @classmethod
    def of(cls, avatar: Any) -> MouthRegion:
        x0, y0, x1, y1 = (int(v) for v in avatar.boxes[0])
        w, h = x1 - x0, y1 - y0
        return cls(
            slice(y0 + int(0.45 * h), y0 + int(0.85 * h)),
            slice(x0 + int(0.25 * w), x0 + int(0.75 * w)),
        )

    def openness(self, rgb: np.ndarray) -> float:
        """Grey-level spread in the mouth region: open lips show dark and bright together."""
        grey = rgb[self.rows, self.cols].astype(np.float32).mean(axis=2)
        return float(grey.std())


def rms(samples: np.ndarray) -> float:
    x = samples.astype(np.float32)
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0


def onsets(times: np.ndarray, values: np.ndarray) -> list[float]:
    """Times where a signal rises through the middle of its low and high levels."""
    if len(values) < 4:
        return []
    low, high = np.percentile(values, 10), np.percentile(values, 90)
    if high - low <= 1e-6:
        return []
    mid = (low + high) / 2
    above = values > mid
    out = []
    for i in range(1, len(above)):
        if above[i] and not above[i - 1]:  # interpolated between the two samples
            share = (mid - values[i - 1]) / (values[i] - values[i - 1])
            out.append(float(times[i - 1] + share * (times[i] - times[i - 1])))
    return out


def activity(values: np.ndarray) -> np.ndarray:
    """Distance from the resting level (the median: the test speech is mostly pauses), so a
    mouth that opens shows as a rise whichever way the region's measure moves."""
    return np.abs(values - np.median(values)) if len(values) else values


def paired_lag_ms(voice: list[float], mouth: list[float], window_s: float = 0.4) -> list[float]:
    """For each voice onset, the nearest mouth onset within ``window_s``: mouth minus voice."""
    lags = []
    for a in voice:
        near = [v - a for v in mouth if -window_s / 2 <= v - a <= window_s]
        if near:
            lags.append(min(near, key=abs) * 1000.0)
    return lags


def p95(values: list[float]) -> float | None:
    return float(np.percentile(np.asarray(values), 95)) if values else None


def median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Published:
    """What one session published, reduced to measures (no pictures kept)."""

    region: MouthRegion
    times: list[float] = field(default_factory=list)
    mouth: list[float] = field(default_factory=list)
    audio_rms: list[tuple[float, float]] = field(default_factory=list)  # two 20 ms halves
    silent: list[bool] = field(default_factory=list)
    audio_in: list[float | None] = field(default_factory=list)

    def add(self, frame: Any) -> None:
        self.times.append(float(frame.published_at))
        self.mouth.append(self.region.openness(frame.video))
        half = SAMPLES_PER_VIDEO_FRAME // 2
        self.audio_rms.append((rms(frame.audio[:half]), rms(frame.audio[half:])))
        self.silent.append(not frame.audio.any() and frame.utterance_id is None)
        self.audio_in.append(frame.audio_in_at)

    def since(self, t: float) -> int:
        return int(np.searchsorted(np.asarray(self.times), t))

    def av_lag_ms(self, lo: float, hi: float) -> float | None:
        """Mouth onsets minus voice onsets on the publication clock, within [lo, hi)."""
        times = np.asarray(self.times)
        keep = (times >= lo) & (times < hi)
        if keep.sum() < 10:
            return None
        v_times = times[keep]
        mouth = np.asarray(self.mouth)[keep]
        halves = np.asarray(self.audio_rms)[keep]
        a_times = np.stack([v_times, v_times + 0.02], axis=1).reshape(-1)
        return median(
            paired_lag_ms(onsets(a_times, halves.reshape(-1)), onsets(v_times, activity(mouth)))
        )

    def onset_latency_ms(self, lo: float) -> list[float]:
        """Voice onset entering the session -> its mouth onset published."""
        start = self.since(lo)
        times = np.asarray(self.times[start:])
        if len(times) < 10:
            return []
        voice = np.asarray([a + b for a, b in self.audio_rms[start:]])
        mouth = np.asarray(self.mouth[start:])
        arrivals = self.audio_in[start:]
        out = []
        mouth_on = onsets(times, activity(mouth))
        for i, t in enumerate(times):
            if i == 0 or not (voice[i] > 0 and voice[i - 1] == 0):
                continue
            entered = arrivals[i]
            later = [m for m in mouth_on if t - 0.2 <= m <= t + 0.4]
            if entered is not None and later:
                out.append((later[0] - entered) * 1000.0)
        return out


class FrameTap:
    """A subscription to a session's frame bus that records measures of every frame."""

    def __init__(self, session: Any, region: MouthRegion) -> None:
        self.data = Published(region)
        # Every frame's video is kept until read; audio is read from the same frame.
        self._sub = session.bus.subscribe(video_depth=10_000, audio_depth=1)
        self._bus = session.bus
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                frame = await self._sub.next_video()
            except ConnectionError:
                return
            self.data.add(frame)

    async def aclose(self) -> None:
        self._bus.unsubscribe(self._sub)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


# --- a WHEP viewer ---------------------------------------------------------------------------


def _rel(ts: int, ref: int) -> int:
    """RTP timestamp ``ts`` relative to ``ref``, across the 32-bit wrap."""
    return ((ts - ref + (1 << 31)) % (1 << 32)) - (1 << 31)


@dataclass
class Track:
    clock: int
    frames: list[tuple[float, int, float]] = field(default_factory=list)  # arrival, pts, value
    reports: list[tuple[float, float, int]] = field(default_factory=list)  # arrival, ntp s, rtp
    # Arrival of each frame's last RTP packet (the marker bit): when the frame has wholly
    # arrived, as a browser's jitter buffer sees it. aiortc's own jitter buffer releases a
    # frame only when the next frame's first packet comes, which adds the sender's encode time
    # of the next frame to every interval: the decoded-frame intervals are kept separately.
    complete: list[float] = field(default_factory=list)
    receiver: Any = None

    def origin(self) -> int | None:
        """The RTP timestamp aiortc counts received pts from (its first complete frame's)."""
        mapper = getattr(self.receiver, "_RTCRtpReceiver__timestamp_mapper", None)
        origin = getattr(mapper, "_origin", None)
        return origin % (1 << 32) if isinstance(origin, int) else None

    def sender_times(self, lo: float = -np.inf, hi: float = np.inf) -> np.ndarray | None:
        """Each frame's time on the sender's clock, from the RTCP sender reports (NTP time of
        an RTP timestamp) received in [lo, hi), or all of them when none was."""
        origin = self.origin()
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

    async def connect(self, http: Any, session_id: str, token: str) -> None:
        from aiortc import RTCSessionDescription

        pc = self.pc
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")

        @pc.on("track")
        def on_track(track: Any) -> None:
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
            self._hook_reports(receiver)

    def _hook_reports(self, receiver: Any) -> None:
        """Record the RTCP sender reports (NTP time <-> RTP timestamp) of one stream."""
        from aiortc.rtp import RtcpSrPacket

        track = self.video if receiver.track.kind == "video" else self.audio
        track.receiver = receiver
        handle = receiver._handle_rtcp_packet
        loop = asyncio.get_running_loop()

        async def hooked(packet: Any) -> None:
            if isinstance(packet, RtcpSrPacket):
                info = packet.sender_info
                track.reports.append((loop.time(), info.ntp_timestamp / 2**32, info.rtp_timestamp))
            await handle(packet)

        receiver._handle_rtcp_packet = hooked
        if track is self.video:
            handle_rtp = receiver._handle_rtp_packet

            async def hooked_rtp(packet: Any, arrival_time_ms: int) -> None:
                if packet.marker:
                    track.complete.append(loop.time())
                await handle_rtp(packet, arrival_time_ms)

            receiver._handle_rtp_packet = hooked_rtp

    async def _read(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        loop = asyncio.get_running_loop()
        video = track.kind == "video"
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = loop.time()
            if video:
                if not self.first_frame.done():
                    self.first_frame.set_result(now)
                region = self.region
                value = region.openness(frame.to_ndarray(format="rgb24")) if region else 0.0
                self.video.frames.append((now, int(frame.pts), value))
            else:
                self.audio.frames.append((now, int(frame.pts), rms(frame.to_ndarray())))

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

    async def aclose(self, http: Any | None = None, token: str = "") -> None:
        if http is not None and self.location is not None:
            with contextlib.suppress(Exception):
                await http.delete(self.location, headers={"Authorization": f"Bearer {token}"})
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# --- the server and its clients --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Live:
    base: str
    app: Any
    http: Any
    region: MouthRegion

    def session(self, session_id: str) -> Any:
        return self.app.state.avatarcast.registry.get(session_id)

    async def create(self) -> tuple[str, str, Any]:
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
            await asyncio.wait_for(asyncio.shield(viewer.first_frame), 15)
        except BaseException:
            await viewer.aclose()
            raise
        return viewer


@contextlib.asynccontextmanager
async def live_server(avatar_name: str, backend: str, threads: int) -> AsyncIterator[Live]:
    """The real app on uvicorn on a free loopback port, with an HTTP client for it."""
    import httpx
    import uvicorn

    from models.avatar import load_avatar
    from streamer.app import UVICORN_OPTIONS, create_app
    from streamer.config import Settings

    settings = Settings(avatar=avatar_name, backend=backend, threads=threads, port=free_port())
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
                    x = self._signal(CHUNK, sent)
                    pcm = np.clip(np.rint(x * 32767.0), -32768, 32767).astype("<i2")
                    await ws.send(pcm.tobytes())
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


# --- the phases ------------------------------------------------------------------------------


async def _sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - asyncio.get_running_loop().time()))


async def measure_main(live: Live, plan: LivePlan, progress: Progress) -> dict[str, Any]:
    """One session speaking bursts through the WebSocket, two WHEP viewers; then interrupts
    and new viewers' first frames."""
    loop = asyncio.get_running_loop()
    sid, token, session = await live.create()
    tap = FrameTap(session, live.region)
    viewers = [await live.viewer(sid, token) for _ in range(2)]
    speaker = Speaker(live.base, sid, lambda n, start: bursts(n, start))
    out: dict[str, Any] = {}
    try:
        lo = loop.time() + plan.settle_s
        await _sleep_until(lo)
        before = (session.stats.frames, session.stats.dropped)
        await _sleep_until(lo + plan.main_s)
        hi = loop.time()
        frames, dropped = (
            a - b
            for a, b in zip((session.stats.frames, session.stats.dropped), before, strict=True)
        )
        if speaker.failed is not None:
            raise RuntimeError(f"the WebSocket speaker failed: {speaker.failed}")
        await speaker.aclose()
        data = tap.data
        start = data.since(lo)
        intervals = [i for v in viewers for i in v.intervals_ms(lo, hi)]
        decoded = [i for v in viewers for i in v.decoded_intervals_ms(lo, hi)]
        published = list(np.diff(np.asarray(data.times[start:])) * 1000.0)
        pub_lag = data.av_lag_ms(lo, hi)
        recv_lags = [v.av_lag_ms(lo, hi) for v in viewers]
        recv = median([x for x in recv_lags if x is not None])
        out.update(
            frame_interval_ms_p95=_round(p95(intervals), 2),
            frame_interval_ms_p95_server=_round(p95(published), 2),
            frame_interval_ms_p95_decoded=_round(p95(decoded), 2),
            speech_to_mouth_ms_p95=_round(p95(_latencies(data, lo))),
            speech_to_mouth_onset_ms_p95=_round(p95(data.onset_latency_ms(lo))),
            av_offset_ms=_round(None if recv is None or pub_lag is None else recv - pub_lag),
            frames_dropped_ratio=_round(dropped / max(1, frames), 4),
        )
        progress(
            f"live: 1 session, 2 viewers, {plan.main_s:.0f} s of speech bursts: frame interval "
            f"p95 {out['frame_interval_ms_p95']} ms at the receivers "
            f"({out['frame_interval_ms_p95_server']} ms published), speech-to-mouth p95 "
            f"{out['speech_to_mouth_ms_p95']} ms (onsets {out['speech_to_mouth_onset_ms_p95']}),"
            f" A/V offset {out['av_offset_ms']} ms (receiver lag {_round(recv)} ms, published "
            f"{_round(pub_lag)} ms)"
        )
        out.update(await measure_interrupts(live, sid, tap, viewers[0], plan, progress))
    finally:
        await speaker.aclose()
        for viewer in viewers:
            await viewer.aclose(live.http, token)
        await tap.aclose()
    out.update(await measure_first_frame(live, sid, token, plan, progress))
    await live.http.delete(f"/v1/sessions/{sid}")
    return out


def _latencies(data: Published, lo: float) -> list[float]:
    return [
        (t - x) * 1000.0
        for x, t in zip(data.audio_in, data.times, strict=True)
        if x is not None and t >= lo
    ]


async def measure_interrupts(
    live: Live, sid: str, tap: FrameTap, viewer: Viewer, plan: LivePlan, progress: Progress
) -> dict[str, Any]:
    """POST speak (a WAV of continuous voice), let it play, POST interrupt; repeated."""
    loop = asyncio.get_running_loop()
    speech = wav_bytes(voiced(4 * SAMPLE_RATE))
    at_server: list[float] = []
    at_receiver: list[float] = []
    for _ in range(plan.interrupts):
        res = await live.http.post(
            f"/v1/sessions/{sid}/speak", content=speech, headers={"Content-Type": "audio/wav"}
        )
        if res.status_code != 202:
            raise RuntimeError(f"POST speak answered {res.status_code}: {res.text}")
        posted = loop.time()
        while True:  # until the speech is being published
            data = tap.data
            i = data.since(posted)
            if any(not s for s in data.silent[i:]):
                break
            if loop.time() - posted > 10:
                raise RuntimeError("the spoken audio never reached the published frames")
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.8)
        called = loop.time()
        res = await live.http.post(f"/v1/sessions/{sid}/interrupt")
        if res.status_code != 200:
            raise RuntimeError(f"POST interrupt answered {res.status_code}: {res.text}")
        await asyncio.sleep(0.6)
        data = tap.data
        start = data.since(called)
        silent = data.silent[start:]
        # The first published frame from which on every frame is silent and idle.
        for j in range(len(silent)):
            if all(silent[j:]):
                at_server.append((data.times[start + j] - called) * 1000.0)
                break
        audio = [(t, r) for t, _, r in viewer.audio.frames if t >= called]
        for j in range(len(audio)):
            if all(r < SILENT_RMS for _, r in audio[j:]):
                at_receiver.append((audio[j][0] - called) * 1000.0)
                break
        await asyncio.sleep(0.2)
    out = {
        "interrupt_to_idle_ms": _round(median(at_server)),
        "interrupt_to_idle_ms_receiver": _round(median(at_receiver)),
    }
    progress(
        f"live: interrupt to silent idle frame: median {out['interrupt_to_idle_ms']} ms "
        f"published, {out['interrupt_to_idle_ms_receiver']} ms to silence at an aiortc receiver "
        f"({len(at_server)}/{plan.interrupts} runs; max {_round(max(at_server, default=None))}"
        f" / {_round(max(at_receiver, default=None))} ms)"
    )
    return out


async def measure_first_frame(
    live: Live, sid: str, token: str, plan: LivePlan, progress: Progress
) -> dict[str, Any]:
    times = []
    for _ in range(plan.ttff_tries):
        viewer = await live.viewer(sid, token)
        assert viewer.posted_at is not None
        times.append((viewer.first_frame.result() - viewer.posted_at) * 1000.0)
        await viewer.aclose(live.http, token)
    out = {"time_to_first_frame_ms": _round(median(times))}
    progress(
        f"live: time to first frame after the WHEP POST: median {out['time_to_first_frame_ms']}"
        f" ms over {len(times)} viewers (max {_round(max(times))} ms)"
    )
    return out


@dataclass
class Step:
    sessions: int
    frame_interval_ms_p95: float | None
    speech_to_mouth_ms_p95: float | None
    frames_dropped_ratio: float
    held: bool


async def measure_step(live: Live, n: int, plan: LivePlan) -> Step:
    """``n`` sessions, each streaming speech over its WebSocket with one WHEP viewer.

    The speakers and the viewers run in processes of their own (:func:`clients`) on the same
    cores, as other machines' clients would reach a server: their decoding and packet work
    costs CPU here, but not the server's event loop, and the viewers' work does not make the
    speakers late.
    """
    made: list[tuple[str, str, Any]] = []
    taps: list[FrameTap] = []
    speakers: _Clients | None = None
    viewers: _Clients | None = None
    try:
        for _ in range(n):
            made.append(await live.create())
        taps = [FrameTap(session, live.region) for _, _, session in made]
        pairs = [[sid, token] for sid, token, _ in made]
        seconds = plan.settle_s + plan.ramp_s + 1.0
        speakers = await _Clients.start(live.base, "speakers", pairs, seconds + 1.0)
        viewers = await _Clients.start(live.base, "viewers", pairs, seconds)
        lo = viewers.ready_at + plan.settle_s
        await _sleep_until(lo)
        before = [(s.stats.frames, s.stats.dropped) for _, _, s in made]
        await _sleep_until(lo + plan.ramp_s)
        hi = asyncio.get_running_loop().time()
        after = [(s.stats.frames, s.stats.dropped) for _, _, s in made]
        seen = await viewers.report()
        spoke = await speakers.report()
        if spoke["failed"]:
            raise RuntimeError(f"a WebSocket speaker failed: {spoke['failed'][0]}")
        frame_p95 = [
            p95(list(np.diff([t for t in arrivals if lo <= t < hi]) * 1000.0))
            for arrivals in seen["arrivals"]
        ]
        latency_p95 = [p95(_latencies(t.data, lo)) for t in taps]
        frames = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
        dropped = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
        worst_frame = max((x for x in frame_p95 if x is not None), default=None)
        worst_latency = max((x for x in latency_p95 if x is not None), default=None)
        ratio = dropped / max(1, frames)
        held = (
            worst_frame is not None
            and worst_frame <= FRAME_LIMIT_MS
            and worst_latency is not None
            and worst_latency <= LATENCY_LIMIT_MS
            and ratio <= DROPPED_LIMIT
        )
        return Step(n, _round(worst_frame, 2), _round(worst_latency, 2), round(ratio, 4), held)
    finally:
        for process in (viewers, speakers):
            if process is not None:
                await process.aclose()
        for tap in taps:
            await tap.aclose()
        for sid, _, _ in made:
            await live.http.delete(f"/v1/sessions/{sid}")


class _Clients:
    """A process running :func:`clients`: ``python -m streamer.livebench REQUEST``."""

    def __init__(self, process: asyncio.subprocess.Process, ready_at: float) -> None:
        self.process = process
        self.ready_at = ready_at  # time.monotonic(), the clock of every process here

    @classmethod
    async def start(cls, base: str, role: str, sessions: list[list[str]], seconds: float) -> Any:
        import json
        import sys

        request = {"base": base, "role": role, "sessions": sessions, "seconds": seconds}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "streamer.livebench",
            json.dumps(request),
            stdout=asyncio.subprocess.PIPE,
        )
        made = cls(process, 0.0)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        if not line.startswith(b"ready"):
            await made.aclose()
            raise RuntimeError(f"the {role}' process did not start")
        made.ready_at = float(line.split()[1])
        return made

    async def report(self) -> dict[str, Any]:
        import json

        assert self.process.stdout is not None
        return dict(json.loads(await asyncio.wait_for(self.process.stdout.read(), 60)))

    async def aclose(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()


async def clients(
    base: str, role: str, sessions: list[list[str]], seconds: float
) -> dict[str, Any]:
    """The clients of a ramp step, in their own process: a speaker streaming a steady voice
    into each session (``role`` "speakers") or a viewer of each ("viewers"). Prints
    ``ready <time>`` once all are connected (viewers: with a frame), then runs ``seconds``
    more; returns the speakers' failures or each viewer's frame arrivals."""
    import httpx

    loop = asyncio.get_running_loop()
    viewers: list[Viewer] = []
    speakers: list[Speaker] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        try:
            for sid, token in sessions:
                if role == "speakers":
                    speakers.append(Speaker(base, sid, lambda k, start: voiced(k, start)))
                else:
                    viewer = Viewer(None)
                    viewers.append(viewer)
                    await viewer.connect(http, sid, token)
                    await asyncio.wait_for(asyncio.shield(viewer.first_frame), 15)
            ready = loop.time()
            print(f"ready {ready}", flush=True)
            await _sleep_until(ready + seconds)
            return {
                "failed": [repr(s.failed) for s in speakers if s.failed is not None],
                "arrivals": [v.video.complete for v in viewers],
            }
        finally:
            for speaker in speakers:
                await speaker.aclose()
            for viewer, (_, token) in zip(viewers, sessions, strict=False):
                await viewer.aclose(http, token)


def clients_main(argv: list[str]) -> int:
    import json
    import logging
    import warnings

    logging.getLogger("aiortc").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    request = json.loads(argv[0])
    report = asyncio.run(
        clients(request["base"], request["role"], request["sessions"], request["seconds"])
    )
    print(json.dumps(report), flush=True)
    return 0


async def measure_ramp(
    live: Live, plan: LivePlan, sessions: int | None, progress: Progress
) -> dict[str, Any]:
    counts = [sessions] if sessions is not None else list(range(1, plan.ramp_max + 1))
    steps: list[Step] = []
    for n in counts:
        step = await measure_step(live, n, plan)
        steps.append(step)
        progress(
            f"live: {n} session(s) speaking, one viewer each, {plan.ramp_s:.0f} s: frame "
            f"interval p95 {step.frame_interval_ms_p95} ms (worst receiver), speech-to-mouth "
            f"p95 {step.speech_to_mouth_ms_p95} ms, dropped {step.frames_dropped_ratio:.1%}: "
            + ("held" if step.held else "did not hold")
        )
        if not step.held:
            break
    held = [s.sessions for s in steps if s.held]
    capped = sessions is None and len(held) == plan.ramp_max
    if capped:
        progress(f"live: the ramp stopped at its cap of {plan.ramp_max} sessions (a lower bound)")
    return {
        "realtime_sessions": max(held) if held else 0,
        "realtime_sessions_capped": capped,
        "realtime_ramp": [s.__dict__ for s in steps],
    }


async def measure_soak(live: Live, seconds: float, progress: Progress) -> dict[str, Any]:
    """One session, one viewer, speech bursts for ``seconds``: the A/V offset at the start
    and at the end (a window of up to 30 s each)."""
    loop = asyncio.get_running_loop()
    window = min(30.0, max(5.0, seconds / 3))
    sid, token, session = await live.create()
    tap = FrameTap(session, live.region)
    viewer = await live.viewer(sid, token)
    speaker = Speaker(live.base, sid, lambda n, start: bursts(n, start))
    try:
        begin = loop.time() + 1.0
        end = begin + seconds
        while loop.time() < end:
            await asyncio.sleep(min(10.0, max(0.0, end - loop.time())))
            if speaker.failed is not None:
                raise RuntimeError(f"the WebSocket speaker failed: {speaker.failed}")
            progress(f"soak: {loop.time() - begin:.0f} / {seconds:.0f} s")
        offsets = []
        for lo, hi in ((begin, begin + window), (end - window, end)):
            recv, pub = viewer.av_lag_ms(lo, hi), tap.data.av_lag_ms(lo, hi)
            offsets.append(None if recv is None or pub is None else recv - pub)
        intervals = viewer.intervals_ms(begin, end)
        stats = session.stats
        out = {
            "seconds": seconds,
            "window_s": window,
            "av_offset_ms_start": _round(offsets[0]),
            "av_offset_ms_end": _round(offsets[1]),
            "frame_interval_ms_p95": _round(p95(intervals), 2),
            "speech_to_mouth_ms_p95": _round(p95(_latencies(tap.data, begin))),
            "frames_dropped_ratio": round(stats.dropped / max(1, stats.frames), 4),
        }
        progress(f"soak: {out}")
        return out
    finally:
        await speaker.aclose()
        await viewer.aclose(live.http, token)
        await tap.aclose()
        await live.http.delete(f"/v1/sessions/{sid}")


async def measure_live(
    avatar_name: str,
    backend: str,
    threads: int,
    plan: LivePlan,
    sessions: int | None,
    soak_s: float | None,
    progress: Progress,
) -> dict[str, Any]:
    import os

    load = os.getloadavg()[0]
    progress(f"live: load average {load:.2f} on {os.cpu_count()} CPUs before the live part")
    async with live_server(avatar_name, backend, threads) as live:
        if soak_s is not None:
            soak = await measure_soak(live, soak_s, progress)
            figures = {"av_offset_ms": soak["av_offset_ms_end"], "soak": soak}
        else:
            figures = await measure_main(live, plan, progress)
            figures.update(await measure_ramp(live, plan, sessions, progress))
    # The machine's load around the measures (another process on these cores changes them).
    figures["load_avg_1m"] = {"before": round(load, 2), "after": round(os.getloadavg()[0], 2)}
    return figures


def run_live(
    avatar_name: str,
    backend: str,
    *,
    quick: bool,
    threads: int = 2,
    sessions: int | None = None,
    soak_s: float | None = None,
    progress: Progress = print,
    plan: LivePlan | None = None,
) -> dict[str, Any]:
    """The live figures of one backend (``backend`` as ``serve --backend`` takes it).

    A failure is reported through ``progress`` and leaves the figures null: bench still
    prints what it measured before."""
    import logging
    import warnings

    logging.getLogger("aiortc").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", "The `websockets` implementation is deprecated")
    plan = plan or LivePlan.for_mode(quick)
    try:
        return asyncio.run(
            measure_live(avatar_name, backend, threads, plan, sessions, soak_s, progress)
        )
    except Exception as exc:  # reported; the figures stay null
        progress(f"live: not measured: {type(exc).__name__}: {exc}")
        return {}


if __name__ == "__main__":  # the clients' process of a ramp step
    import sys

    raise SystemExit(clients_main(sys.argv[1:]))
