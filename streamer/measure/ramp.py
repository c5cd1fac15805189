"""The session ramp of the live bench: 1, 2, 3, ... speaking sessions until one step fails.

A step holds when, over its measured window, the frame interval p95 at every receiver stays
within ``FRAME_LIMIT_MS``, every session's speech-to-mouth p95 within ``LATENCY_LIMIT_MS``,
and at most ``DROPPED_LIMIT`` of the frames were published with a repeated picture.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamer.measure.avsync import FrameTap, p95, rounded
from streamer.measure.clients import ClientProcess
from streamer.measure.liveplan import LivePlan, Progress
from streamer.measure.liveserver import Live, MeasuredSession, sleep_until

FRAME_LIMIT_MS = 45.0
LATENCY_LIMIT_MS = 150.0
DROPPED_LIMIT = 0.05


@dataclass
class Step:
    """One step of the ramp, as ``realtime_ramp`` reports it (the field names are its keys)."""

    sessions: int
    frame_interval_ms_p95: float | None
    speech_to_mouth_ms_p95: float | None
    frames_dropped_ratio: float
    held: bool


def _counts(sessions: list[MeasuredSession]) -> tuple[int, int]:
    """Frames published and frames dropped so far, over all ``sessions``."""
    return sum(s.stats.frames for s in sessions), sum(s.stats.dropped for s in sessions)


def judge(
    n: int,
    frame_p95: list[float | None],
    latency_p95: list[float | None],
    frames: int,
    dropped: int,
) -> Step:
    """The step of ``n`` sessions from its worst receiver and its worst session."""
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
    return Step(n, rounded(worst_frame, 2), rounded(worst_latency, 2), round(ratio, 4), held)


async def measure_step(live: Live, n: int, plan: LivePlan) -> Step:
    """``n`` sessions, each streaming speech over its WebSocket with one WHEP viewer.

    The speakers and the viewers run in processes of their own (:mod:`streamer.measure.clients`)
    on the same cores, as other machines' clients would reach a server.
    """
    made: list[tuple[str, str, MeasuredSession]] = []
    taps: list[FrameTap] = []
    processes: list[ClientProcess] = []
    try:
        for _ in range(n):
            made.append(await live.create())
        sessions = [session for _, _, session in made]
        taps = [FrameTap(session.bus, live.region) for session in sessions]
        pairs = [[sid, token] for sid, token, _ in made]
        seconds = plan.settle_s + plan.ramp_s + 1.0
        speakers = await ClientProcess.start(live.base, "speakers", pairs, seconds + 1.0)
        processes.append(speakers)
        viewers = await ClientProcess.start(live.base, "viewers", pairs, seconds)
        processes.append(viewers)
        lo = viewers.ready_at + plan.settle_s
        await sleep_until(lo)
        before = _counts(sessions)
        await sleep_until(lo + plan.ramp_s)
        hi = asyncio.get_running_loop().time()
        after = _counts(sessions)
        seen = await viewers.report()
        spoke = await speakers.report()
        if spoke["failed"]:
            raise RuntimeError(f"a WebSocket speaker failed: {spoke['failed'][0]}")
        frame_p95 = [
            p95(list(np.diff([t for t in arrivals if lo <= t < hi]) * 1000.0))
            for arrivals in seen["arrivals"]
        ]
        latency_p95 = [p95(t.data.latencies_ms(lo)) for t in taps]
        return judge(n, frame_p95, latency_p95, after[0] - before[0], after[1] - before[1])
    finally:
        for process in reversed(processes):  # the viewers first
            await process.aclose()
        for tap in taps:
            await tap.aclose()
        for sid, _, _ in made:
            await live.http.delete(f"/v1/sessions/{sid}")


async def measure_ramp(
    live: Live, plan: LivePlan, sessions: int | None, progress: Progress
) -> dict[str, Any]:
    """Steps of 1, 2, ... sessions up to ``plan.ramp_max`` (or exactly ``sessions``), until
    one does not hold."""
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
