"""``avatarcast bench --viewers N[,N...]``: how many WebRTC viewers one speaking session holds.

The real server (:func:`~streamer.measure.liveserver.live_server`, the real avatar and
backend) runs in this process with one session, which a speaker in a process of its own keeps
speaking (a steady voice over the WebSocket, at real-time pace). For each N in turn, N WHEP
viewers connect from audience processes (:mod:`streamer.measure.audience`, ``per_process``
viewers each), so that their CPU is theirs and not the server's. Over a window, with all N
connected:

- ``frame_interval_ms_p95``: intervals between video frames wholly arrived (each frame's last
  RTP packet, stamped by the receiver's event loop), all receivers pooled; ``_worst``: the
  worst receiver's own p95. ``frame_interval_ms_p95_socket`` (and ``_worst``): the same
  frames by their last packet's arrival at the receiver's socket (the kernel's time, see
  :mod:`streamer.measure.audience`): the receivers share this machine's cores with the
  server, so their loop stamps also carry their own lateness, which a player on its own
  machine would not add.
- ``frames_received_ratio``: video frames arrived over the 25 fps expected, all receivers.
- ``audio_received_ratio``: audio packets arrived over the one per 20 ms expected;
  ``audio_packets_lost_ratio``: lost on the way (gaps in the RTP sequence numbers);
  ``audio_gap_ms_max``: the longest wait between two audio packets at any receiver (a jitter
  buffer hides up to its depth; a gap much over 20 ms is the sender stalling).
- ``server_cpu_percent``: this process's CPU (every thread: inference, compositing, encoding,
  the event loop) over the window, in percent of one core; ``loop_cpu_percent``: the event
  loop's thread alone, where each viewer's packetising, SRTP and sending run;
  ``receivers_cpu_percent``: the audience processes'; ``machine_busy_percent``: the whole
  machine (all cores = 100), from /proc/stat.
- ``shared_encoders``: the encoders viewers read from (1: every viewer shares the session's).
- ``server_loop_lag_ms_max_connecting``: the server's event loop at its latest while the
  step's viewers connected (the first step has the process's first WHEP POST);
  ``server_loop_lag_ms_p99``: over the window.

A step holds when all N connected, the pooled p95 at the sockets (at the receivers' loops where
the platform gives no socket times) is within ``FRAME_LIMIT_MS`` and at least
``RECEIVED_LIMIT`` of the frames arrived. Steps run in the order given and stop at the first
that does not hold; ``viewers_held`` is the largest that held, ``viewers_held_by_loop_stamps``
the largest that held by the loop stamps.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamer.measure.avsync import p95, rounded
from streamer.measure.clients import ClientProcess
from streamer.measure.liveplan import Progress
from streamer.measure.liveserver import Live, live_server, sleep_until
from streamer.pipeline.frames import FPS

FRAME_LIMIT_MS = 45.0
RECEIVED_LIMIT = 0.95
AUDIO_PACKET_S = 0.02  # the session sends one Opus packet per 20 ms


@dataclass(frozen=True)
class AudiencePlan:
    """How long each step settles and is measured, and how the viewers are spread."""

    settle_s: float = 2.0
    window_s: float = 10.0
    per_process: int = 25
    decode: bool = False

    @classmethod
    def for_mode(cls, quick: bool, per_process: int = 25, decode: bool = False) -> AudiencePlan:
        if quick:
            return cls(1.0, 4.0, per_process, decode)
        return cls(2.0, 10.0, per_process, decode)


class CpuMeter:
    """CPU time of this process, of the calling (event loop) thread and of the machine."""

    def __init__(self) -> None:
        self._at = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float, float, float]:
        with open("/proc/stat") as stat:  # the first line: every core's time, by kind
            fields = [float(x) for x in stat.readline().split()[1:]]
        machine_total = sum(fields)
        machine_busy = machine_total - fields[3] - (fields[4] if len(fields) > 4 else 0.0)
        now = time.monotonic()
        return now, time.process_time(), time.thread_time(), machine_busy, machine_total

    def percents(self) -> dict[str, float]:
        """Since this meter was made: process and loop thread in % of one core, the machine
        in % of all its cores."""
        then, now = self._at, self._read()
        wall = max(now[0] - then[0], 1e-9)
        total = max(now[4] - then[4], 1e-9)
        return {
            "server_cpu_percent": round(100.0 * (now[1] - then[1]) / wall, 1),
            "loop_cpu_percent": round(100.0 * (now[2] - then[2]) / wall, 1),
            "machine_busy_percent": round(100.0 * (now[3] - then[3]) / total, 1),
        }


class LoopLag:
    """The server's event-loop lag: how late a 5 ms sleep wakes, sampled all along.

    A step reports the worst while its viewers connect (a WHEP POST that holds the loop shows
    here) and the p99 over its window."""

    PERIOD_S = 0.005

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # when, lag in ms
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(self.PERIOD_S)
            now = loop.time()
            self.samples.append((now, (now - asked - self.PERIOD_S) * 1000.0))

    def between(self, lo: float, hi: float) -> list[float]:
        return [lag for t, lag in self.samples if lo <= t < hi]

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def _audio_figures(packets: list[list[Any]], lo: float, hi: float) -> dict[str, Any]:
    """Audio at all receivers: packets arrived over the one per 20 ms the window holds, the
    share lost on the way (gaps in the sequence numbers) and the longest wait between two."""
    sent = received = arrived = 0
    gaps: list[float] = []
    for viewer in packets:
        got = [(t, seq) for t, seq, _ in viewer if lo <= t < hi]
        arrived += len(got)
        if len(got) < 2:
            continue
        seqs = np.unwrap(np.asarray([s for _, s in got], float), period=1 << 16)
        sent += int(seqs.max() - seqs.min()) + 1
        received += len(set(seqs.tolist()))
        gaps.append(float(np.diff([t for t, _ in got]).max()) * 1000.0)
    expected = len(packets) * (hi - lo) / AUDIO_PACKET_S
    return {
        "audio_received_ratio": round(arrived / expected, 4) if expected else None,
        "audio_packets_lost_ratio": round(max(0.0, 1.0 - received / sent), 4) if sent else None,
        "audio_gap_ms_max": rounded(max(gaps, default=None), 1),
    }


def _intervals(videos: list[list[float]], lo: float, hi: float) -> tuple[Any, Any, int]:
    """Pooled p95 and worst receiver's p95 of the frame intervals, and the frames counted."""
    arrivals = [np.asarray([t for t in v if lo <= t < hi]) for v in videos]
    intervals = [np.diff(a) * 1000.0 for a in arrivals if len(a) > 1]
    pooled = np.concatenate(intervals) if intervals else np.zeros(0)
    worst = max((float(np.percentile(i, 95)) for i in intervals), default=None)
    return rounded(p95(list(pooled)), 2), rounded(worst, 2), sum(len(a) for a in arrivals)


def step_figures(n: int, reports: list[dict[str, Any]], lo: float, hi: float) -> dict[str, Any]:
    """The receivers' figures of one step from its audience processes' reports."""
    pooled, worst, frames = _intervals([v for r in reports for v in r["video"]], lo, hi)
    at_socket = [v for r in reports for v in r.get("video_socket", [])]
    socket_pooled, socket_worst, socket_frames = _intervals(at_socket, lo, hi)
    expected = n * (hi - lo) * FPS
    lags = [r["loop_lag_ms_p95"] for r in reports if r["loop_lag_ms_p95"] is not None]
    return {
        "viewers": n,
        "connected": sum(r["connected"] for r in reports),
        "frame_interval_ms_p95": pooled,
        "frame_interval_ms_p95_worst": worst,
        # The same frames by their last packet's arrival at the viewer's socket (the kernel's
        # time): the server's pacing without the co-located receivers' own lateness.
        "frame_interval_ms_p95_socket": socket_pooled if socket_frames >= 0.9 * frames else None,
        "frame_interval_ms_p95_socket_worst": socket_worst if socket_frames else None,
        "frames_received_ratio": round(frames / expected, 4),
        **_audio_figures([a for r in reports for a in r["audio"]], lo, hi),
        "receivers_cpu_percent": round(sum(r["cpu_percent"] for r in reports), 1),
        "receivers_loop_lag_ms_p95": max(lags, default=None),
    }


def held(step: dict[str, Any], stamps: str = "socket") -> bool:
    """Judged on the socket stamps where the platform gives them (``stamps="loop"``: on the
    receivers' event-loop stamps)."""
    p95_ms = step["frame_interval_ms_p95"]
    if stamps == "socket" and step.get("frame_interval_ms_p95_socket") is not None:
        p95_ms = step["frame_interval_ms_p95_socket"]
    return bool(
        step["connected"] == step["viewers"]
        and p95_ms is not None
        and p95_ms <= FRAME_LIMIT_MS
        and step["frames_received_ratio"] >= RECEIVED_LIMIT
    )


async def measure_step(
    live: Live, sid: str, token: str, n: int, plan: AudiencePlan, lag: LoopLag
) -> dict[str, Any]:
    """N viewers of the speaking session ``sid``, spread over audience processes."""
    sizes = _spread(n, plan.per_process)
    connecting = asyncio.get_running_loop().time()
    request = {"base": live.base, "session": sid, "token": token, "decode": plan.decode}
    processes: list[ClientProcess] = []
    try:
        started = await asyncio.gather(
            *(
                ClientProcess.spawn(
                    "streamer.measure.audience",
                    {**request, "count": size},
                    "an audience",
                    60.0 + 3.0 * size,
                )
                for size in sizes
            ),
            return_exceptions=True,
        )
        processes = [p for p in started if isinstance(p, ClientProcess)]
        failed = [p for p in started if not isinstance(p, ClientProcess)]
        if failed:
            raise RuntimeError(f"{len(failed)} audience process(es) failed: {failed[0]}")
        lo = max(p.ready_at for p in processes) + plan.settle_s
        await sleep_until(lo)
        meter = CpuMeter()
        await sleep_until(lo + plan.window_s)
        hi = asyncio.get_running_loop().time()
        cpu = meter.percents()
        encoders = len(live.app.state.avatarcast.webrtc.encoders())  # before viewers leave
        for process in processes:
            process.stop()
        reports = await asyncio.gather(*(p.report() for p in processes))
        step = step_figures(n, reports, lo, hi)
        step.update(cpu)
        step["processes"] = len(processes)
        step["server_loop_lag_ms_max_connecting"] = rounded(
            max(lag.between(connecting, lo - plan.settle_s), default=None), 1
        )
        step["server_loop_lag_ms_p99"] = rounded(_p99(lag.between(lo, hi)), 1)
        step["shared_encoders"] = encoders
        step["held"] = held(step)
        step["held_by_loop_stamps"] = held(step, "loop")
        return step
    finally:
        for process in processes:
            await process.aclose()


def _dropped(session: Any, frames: int, dropped: int) -> float:
    """The share of the session's pictures since (``frames``, ``dropped``) that repeated the
    previous one because the new one was not ready in time."""
    frames, dropped = session.stats.frames - frames, session.stats.dropped - dropped
    return round(dropped / max(1, frames), 4)


def _p99(values: list[float]) -> float | None:
    return float(np.percentile(values, 99)) if values else None


def _spread(n: int, per_process: int) -> list[int]:
    """``n`` viewers over as few processes of at most ``per_process`` as evenly as can be."""
    count = max(1, math.ceil(n / per_process))
    return [n // count + (1 if i < n % count else 0) for i in range(count)]


async def _baseline(live: Live, plan: AudiencePlan) -> dict[str, Any]:
    """The server's CPU with the session speaking and no viewer (no encoder runs then)."""
    meter = CpuMeter()
    await asyncio.sleep(plan.window_s)
    return {"viewers": 0, **meter.percents()}


async def measure_viewers(
    live: Live, counts: list[int], plan: AudiencePlan, progress: Progress
) -> dict[str, Any]:
    """One speaking session; the steps of ``counts`` viewers until one does not hold."""
    sid, token, session = await live.create()
    speaker = await ClientProcess.start(live.base, "speakers", [[sid, token]], 24 * 3600.0)
    lag = LoopLag()
    try:
        await asyncio.sleep(plan.settle_s)
        frames, dropped = session.stats.frames, session.stats.dropped
        steps = [await _baseline(live, plan)]
        steps[0]["frames_dropped_ratio"] = _dropped(session, frames, dropped)
        progress(f"viewers: none, the session speaking: {steps[0]}")
        for n in counts:
            frames, dropped = session.stats.frames, session.stats.dropped
            step = await measure_step(live, sid, token, n, plan, lag)
            step["frames_dropped_ratio"] = _dropped(session, frames, dropped)
            steps.append(step)
            progress(f"viewers: {n}: " + ("held" if step["held"] else "did not hold") + f" {step}")
            if speaker.process.returncode is not None:
                raise RuntimeError("the speaker's process ended early")
            if not step["held"]:
                break
    finally:
        await lag.aclose()
        await speaker.aclose()
        await live.http.delete(f"/v1/sessions/{sid}")
    ok = [s["viewers"] for s in steps[1:] if s["held"]]
    by_loop = [s["viewers"] for s in steps[1:] if s["held_by_loop_stamps"]]
    return {
        "viewers_held": max(ok, default=0),
        "viewers_held_by_loop_stamps": max(by_loop, default=0),
        "steps": steps,
    }


def run_viewers(
    avatar_name: str,
    backend: str,
    counts: list[int],
    plan: AudiencePlan,
    threads: int = 2,
    progress: Progress = print,
) -> dict[str, Any]:
    """The viewer figures of one backend (``backend`` as ``serve --backend`` takes it)."""
    import logging
    import warnings

    logging.getLogger("aiortc").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", "The `websockets` implementation is deprecated")

    async def run() -> dict[str, Any]:
        load = os.getloadavg()[0]
        async with live_server(avatar_name, backend, threads, viewers=max(counts)) as live:
            figures = await measure_viewers(live, counts, plan, progress)
        figures["settings"] = plan.__dict__
        figures["load_avg_1m"] = {"before": round(load, 2), "after": round(os.getloadavg()[0], 2)}
        return figures

    return asyncio.run(run())
