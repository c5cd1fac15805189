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
- ``av_offset_ms``: at a receiver, how much later the pictures sit than the voice on the
  sender's clock that the RTCP sender reports give each stream (what a browser's lip sync
  uses), against how the session paired them. Each stream's shift is found by aligning the
  whole measure (a thumbnail per picture, a voice level per 20 ms) received with the same
  measure published (:func:`~streamer.measure.avsync.av_offset_by_alignment`); the offset
  is the video's shift minus the audio's. Positive: the receiver's mouth is late.
  ``av_offset_ms_onsets`` is the older estimate: mouth onsets minus voice onsets at the
  receiver, minus the same on the published frames. Onsets are few and a busy session's
  repeated pictures move them, so that estimate scatters by tens of ms where the alignment
  does not.
- ``realtime_sessions``: 1, 2, 3, ... sessions, each streaming speech with one viewer, until
  a step fails (frame interval p95 > 45 ms at a receiver, speech-to-mouth p95 > 150 ms, or
  more than 5% of frames dropped, i.e. published with a repeated picture).

This module holds the one-session measures and :func:`run_live`; the test speech is in
:mod:`~streamer.measure.signals`, the measures on frames in :mod:`~streamer.measure.avsync`,
the receiving viewer in :mod:`~streamer.measure.viewer`, the server and its speakers in
:mod:`~streamer.measure.liveserver`, the ramp in :mod:`~streamer.measure.ramp` and its client
processes in :mod:`~streamer.measure.clients`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from models.audio import SAMPLE_RATE
from streamer.measure.avsync import FrameTap, Published, median, p95, rounded
from streamer.measure.liveplan import LivePlan, Progress
from streamer.measure.liveserver import Live, MeasuredSession, Speaker, live_server, sleep_until
from streamer.measure.ramp import measure_ramp
from streamer.measure.signals import bursts, voiced, wav_bytes
from streamer.measure.viewer import Viewer

__all__ = ["LivePlan", "measure_live", "run_live"]

SILENT_RMS = 60.0  # s16 units: digital silence through Opus decodes to ~0


def _main_figures(
    data: Published, viewers: list[Viewer], lo: float, hi: float, frames: int, dropped: int
) -> tuple[dict[str, Any], str]:
    """The one-session figures over [lo, hi), and how the progress line tells them."""
    start = data.since(lo)
    intervals = [i for v in viewers for i in v.intervals_ms(lo, hi)]
    decoded = [i for v in viewers for i in v.decoded_intervals_ms(lo, hi)]
    published = list(np.diff(np.asarray(data.times[start:])) * 1000.0)
    avs = [v.av_against(data, lo, hi) for v in viewers]
    offset = median([x for x in (a.get("offset") for a in avs) if x is not None])
    onsets = median([x for x in (a["onsets"] for a in avs) if x is not None])
    recv = median([x for x in (a["receiver_lag"] for a in avs) if x is not None])
    pub_lag = avs[0]["published_lag"] if avs else None
    out = {
        "frame_interval_ms_p95": rounded(p95(intervals), 2),
        "frame_interval_ms_p95_server": rounded(p95(published), 2),
        "frame_interval_ms_p95_decoded": rounded(p95(decoded), 2),
        "speech_to_mouth_ms_p95": rounded(p95(data.latencies_ms(lo))),
        "speech_to_mouth_onset_ms_p95": rounded(p95(data.onset_latency_ms(lo))),
        "av_offset_ms": rounded(offset),
        "av_offset_ms_onsets": rounded(onsets),
        "frames_dropped_ratio": rounded(dropped / max(1, frames), 4),
    }
    told = (
        f"frame interval p95 {out['frame_interval_ms_p95']} ms at the receivers "
        f"({out['frame_interval_ms_p95_server']} ms published), speech-to-mouth p95 "
        f"{out['speech_to_mouth_ms_p95']} ms (onsets {out['speech_to_mouth_onset_ms_p95']}),"
        f" A/V offset {out['av_offset_ms']} ms (by onsets {out['av_offset_ms_onsets']} ms: "
        f"receiver lag {rounded(recv)} ms, published {rounded(pub_lag)} ms)"
    )
    return out, told


def _counts(session: MeasuredSession) -> tuple[int, int]:
    return session.stats.frames, session.stats.dropped


async def measure_main(live: Live, plan: LivePlan, progress: Progress) -> dict[str, Any]:
    """One session speaking bursts through the WebSocket, two WHEP viewers; then interrupts
    and new viewers' first frames."""
    loop = asyncio.get_running_loop()
    sid, token, session = await live.create()
    tap = FrameTap(session.bus, live.region)
    viewers = [await live.viewer(sid, token) for _ in range(2)]
    speaker = Speaker(live.base, sid, bursts)
    try:
        lo = loop.time() + plan.settle_s
        await sleep_until(lo)
        before = _counts(session)
        await sleep_until(lo + plan.main_s)
        hi = loop.time()
        after = _counts(session)
        if speaker.failed is not None:
            raise RuntimeError(f"the WebSocket speaker failed: {speaker.failed}")
        await speaker.aclose()
        frames, dropped = after[0] - before[0], after[1] - before[1]
        out, told = _main_figures(tap.data, viewers, lo, hi, frames, dropped)
        progress(f"live: 1 session, 2 viewers, {plan.main_s:.0f} s of speech bursts: {told}")
        out.update(await measure_interrupts(live, sid, tap, viewers[0], plan, progress))
    finally:
        await speaker.aclose()
        for viewer in viewers:
            await viewer.aclose(live.http, token)
        await tap.aclose()
    out.update(await measure_first_frame(live, sid, token, plan, progress))
    await live.http.delete(f"/v1/sessions/{sid}")
    return out


async def _until_published(tap: FrameTap, posted: float) -> None:
    """Wait until frames published after ``posted`` carry speech."""
    loop = asyncio.get_running_loop()
    while True:
        data = tap.data
        if any(not s for s in data.silent[data.since(posted) :]):
            return
        if loop.time() - posted > 10:
            raise RuntimeError("the spoken audio never reached the published frames")
        await asyncio.sleep(0.02)


def _idle_after(data: Published, called: float) -> float | None:
    """ms from ``called`` to the first published frame from which on every frame is silent
    and idle."""
    start = data.since(called)
    silent = data.silent[start:]
    for j in range(len(silent)):
        if all(silent[j:]):
            return (data.times[start + j] - called) * 1000.0
    return None


def _silent_after(viewer: Viewer, called: float) -> float | None:
    """ms from ``called`` to the first audio frame at ``viewer`` from which on all is silent."""
    audio = [(t, r) for t, _, r in viewer.audio.frames if t >= called]
    for j in range(len(audio)):
        if all(r < SILENT_RMS for _, r in audio[j:]):
            return (audio[j][0] - called) * 1000.0
    return None


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
        await _until_published(tap, loop.time())
        await asyncio.sleep(0.8)
        called = loop.time()
        res = await live.http.post(f"/v1/sessions/{sid}/interrupt")
        if res.status_code != 200:
            raise RuntimeError(f"POST interrupt answered {res.status_code}: {res.text}")
        await asyncio.sleep(0.6)
        at_server += [x for x in [_idle_after(tap.data, called)] if x is not None]
        at_receiver += [x for x in [_silent_after(viewer, called)] if x is not None]
        await asyncio.sleep(0.2)
    out = {
        "interrupt_to_idle_ms": rounded(median(at_server)),
        "interrupt_to_idle_ms_receiver": rounded(median(at_receiver)),
    }
    progress(
        f"live: interrupt to silent idle frame: median {out['interrupt_to_idle_ms']} ms "
        f"published, {out['interrupt_to_idle_ms_receiver']} ms to silence at an aiortc receiver "
        f"({len(at_server)}/{plan.interrupts} runs; max {rounded(max(at_server, default=None))}"
        f" / {rounded(max(at_receiver, default=None))} ms)"
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
    out = {"time_to_first_frame_ms": rounded(median(times))}
    progress(
        f"live: time to first frame after the WHEP POST: median {out['time_to_first_frame_ms']}"
        f" ms over {len(times)} viewers (max {rounded(max(times))} ms)"
    )
    return out


async def measure_live(
    avatar_name: str,
    backend: str,
    threads: int,
    plan: LivePlan,
    sessions: int | None,
    progress: Progress,
) -> dict[str, Any]:
    import os

    load = os.getloadavg()[0]
    progress(f"live: load average {load:.2f} on {os.cpu_count()} CPUs before the live part")
    async with live_server(avatar_name, backend, threads) as live:
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
        return asyncio.run(measure_live(avatar_name, backend, threads, plan, sessions, progress))
    except Exception as exc:  # reported; the figures stay null
        progress(f"live: not measured: {type(exc).__name__}: {exc}")
        return {}
