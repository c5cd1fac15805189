"""``avatarcast bench --soak [SECONDS]``: a served app under changing use for a long time.

The real server (:func:`~streamer.measure.liveserver.live_server`: the real avatar and
backend, uvicorn on a loopback port) runs in this process with several sessions. A process of
its own (:mod:`streamer.measure.soakclients`) keeps them busy as users would: turns of speech
by WebSocket PCM and by ``POST speak``, interrupts, a WHEP viewer per session that stays and
more that join and leave every cycle. This process adds a ``record`` output (into a temporary
recordings folder) and, where nginx-rtmp is installed (:mod:`streamer.measure.nginx`), an
``rtmp`` push to one session each cycle and removes them later in the same cycle.

The clients run elsewhere so that what is sampled here is the server's own: once per cycle
(``cycle_s``, a minute by default), at its end, when the churning viewers have left and the
outputs are gone, it reads this process's RSS, open file descriptors, asyncio tasks and
threads (the least of a few readings, so that a request in flight is not counted), and each
session's cadence through ``GET /v1/sessions/{id}``. Reported:

- ``rss_mb``: from the first sample after ``warmup_s`` to the last, and ``growth_percent``
  (target <= 5 %); ``fds``, ``tasks`` and ``threads`` at the start and the end (no growth).
  Each sample also has malloc's ``heap_used_mb`` and ``heap_free_mb``: leak or allocator.
- ``av_offset_ms_end``: at the end, a new WHEP viewer of the first session measures, over
  ``av_window_s``, how much later it places the pictures than the voice, against how the
  session paired them (:meth:`~streamer.measure.viewer.Viewer.av_against`; target +-20 ms),
  with ``av_alignment_end`` (the correlations) and the older ``av_offset_ms_end_onsets``.
- ``cross_session_failures``: everything that went wrong while the sessions shared the server:
  a session gone or publishing under ``MIN_FPS``, a refused call, an ``error`` or
  ``session_closed`` event, a viewer that could not connect, an output that failed or a
  recording left empty (target 0); ``failures`` lists them.
- ``samples``: one per cycle, with the per-session figures.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from streamer.allocator import limit_arenas, malloc_figures
from streamer.measure.avsync import FrameTap, rounded
from streamer.measure.clients import ClientProcess
from streamer.measure.liveplan import Progress
from streamer.measure.liveserver import Live, live_server, sleep_until
from streamer.measure.nginx import NginxRtmp, nginx_rtmp_missing

MIN_FPS = 23.75  # 95 % of 25: a session publishing fewer frames over a cycle has stalled
RSS_LIMIT_PERCENT = 5.0
AV_LIMIT_MS = 20.0


@dataclass(frozen=True)
class SoakPlan:
    """How long and how busy: ``seconds`` of cycles, then the A/V window."""

    seconds: float
    sessions: int = 3
    cycle_s: float = 60.0
    warmup_s: float = 120.0
    churn: int = 2  # viewers per session that join and leave each cycle
    turn_s: float = 4.0
    interrupt_every: int = 3
    av_window_s: float = 30.0
    rtmp: bool = True  # also push over RTMP when nginx-rtmp is installed

    @classmethod
    def for_seconds(cls, seconds: float, sessions: int = 3) -> SoakPlan:
        if seconds < 300:  # a short soak proves the plumbing: shorter cycles
            cycle = max(2.0, seconds / 5)
            return cls(seconds, sessions, cycle, cycle, av_window_s=min(30.0, max(5.0, cycle)))
        return cls(seconds, sessions)


def process_figures() -> dict[str, float]:
    """This process's RSS (MB), open file descriptors, asyncio tasks and threads, and what
    malloc holds (used and freed-but-kept, where malloc is glibc's): RSS that grows while
    ``heap_used_mb`` stays flat is the allocator's, not a leak."""
    with open("/proc/self/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return {
        "rss_mb": round(kb / 1024, 1),
        "fds": len(os.listdir("/proc/self/fd")),
        "tasks": len(asyncio.all_tasks()),
        "threads": threading.active_count(),
        **(malloc_figures() or {}),
    }


async def settled_figures(readings: int = 5) -> dict[str, float]:
    """The least of a few readings 0.1 s apart: a request in flight holds a task and a
    socket for a moment, which is not growth."""
    seen = [process_figures()]
    for _ in range(readings - 1):
        await asyncio.sleep(0.1)
        seen.append(process_figures())
    return {key: min(s[key] for s in seen) for key in seen[0]}


def _empty_recordings(folder: Path) -> list[str]:
    """The finished (and signed) recordings that are empty, deleting them all: a long soak
    must not fill the disk."""
    empty = []
    for path in folder.glob("soak-*.mp4"):
        if path.stat().st_size == 0:
            empty.append(path.name)
        path.unlink()
    return empty


class ErrorLog(logging.Handler):
    """Counts the server's log records of level ERROR and above, keeping the first few."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < 10:
            self.first.append(f"{record.name}: {record.getMessage()[:300]}")


class Soak:
    """The soak on a running server: its sessions, outputs, samples and failures."""

    def __init__(self, live: Live, plan: SoakPlan, nginx: NginxRtmp | None, progress: Progress):
        self.live, self.plan, self.nginx, self.progress = live, plan, nginx, progress
        self.sessions: list[tuple[str, str]] = []
        self.samples: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.outputs = {"added": 0, "removed": 0}
        self._frames: dict[str, tuple[float, int, int]] = {}  # sid: time, frames, dropped

    def fail(self, what: str) -> None:
        self.progress(f"soak: failure: {what}")
        self.failures.append(what)

    async def create(self) -> None:
        for _ in range(self.plan.sessions):
            sid, token, _ = await self.live.create()
            self.sessions.append((sid, token))

    async def add_outputs(self, cycle: int) -> list[tuple[str, str, str]]:
        """A recording on one session and, with nginx, an RTMP push on the next."""
        n = len(self.sessions)
        wanted: list[tuple[str, dict[str, Any]]] = [
            (self.sessions[cycle % n][0], {"type": "record", "name": f"soak-{cycle}.mp4"})
        ]
        if self.nginx is not None:
            url = self.nginx.url(f"soak{cycle}")
            wanted.append((self.sessions[(cycle + 1) % n][0], {"type": "rtmp", "url": url}))
        added = []
        for sid, body in wanted:
            res = await self.live.http.post(f"/v1/sessions/{sid}/outputs", json=body)
            if res.status_code != 201:
                self.fail(f"{sid}: adding {body['type']} answered {res.status_code}: {res.text}")
                continue
            self.outputs["added"] += 1
            added.append((sid, res.json()["id"], body["type"]))
        return added

    async def remove_outputs(self, added: list[tuple[str, str, str]], folder: Path) -> None:
        for sid, oid, kind in added:
            res = await self.live.http.get(f"/v1/sessions/{sid}/outputs")
            states = {o["id"]: o for o in res.json().get("outputs", [])}
            described = states.get(oid)
            if described is None or described["state"] == "failed":
                self.fail(f"{sid}: the {kind} output was gone or failed: {described}")
            res = await self.live.http.delete(f"/v1/sessions/{sid}/outputs/{oid}")
            if res.status_code != 204:
                self.fail(f"{sid}: removing {kind} answered {res.status_code}: {res.text}")
                continue
            self.outputs["removed"] += 1
        for name in await asyncio.to_thread(_empty_recordings, folder):
            self.fail(f"the recording {name} is empty")

    async def session_figures(self, sid: str) -> dict[str, Any] | None:
        res = await self.live.http.get(f"/v1/sessions/{sid}")
        if res.status_code != 200:
            self.fail(f"{sid}: GET answered {res.status_code}: {res.text}")
            return None
        info = res.json()
        now = time.monotonic()
        was = self._frames.get(sid)
        self._frames[sid] = (now, info["frames"], info["frames_dropped"])
        out = {
            "frame_interval_ms_p95": info["frame_interval_ms_p95"],
            "viewers": info["viewers"],
        }
        if was is not None:
            frames = info["frames"] - was[1]
            out["fps"] = round(frames / max(1e-9, now - was[0]), 2)
            out["dropped_ratio"] = round((info["frames_dropped"] - was[2]) / max(1, frames), 4)
            if out["fps"] < MIN_FPS:
                self.fail(f"{sid}: published {out['fps']} fps over a cycle")
        return out

    async def sample(self, t0: float) -> dict[str, Any]:
        t_s = round(time.monotonic() - t0, 1)
        figures = await settled_figures()
        per_session = [await self.session_figures(sid) for sid, _ in self.sessions]
        sample = {"t_s": t_s, **figures, "sessions": per_session}
        self.samples.append(sample)
        return sample

    async def cycles(self, t0: float, folder: Path) -> None:
        """Outputs added at 20 % of each cycle, removed at 60 %; a sample at 90 %."""
        plan = self.plan
        count = max(1, round(plan.seconds / plan.cycle_s))
        for cycle in range(count):
            start = t0 + cycle * plan.cycle_s
            await sleep_until(start + 0.2 * plan.cycle_s)
            added = await self.add_outputs(cycle)
            await sleep_until(start + 0.6 * plan.cycle_s)
            await self.remove_outputs(added, folder)
            await sleep_until(start + 0.9 * plan.cycle_s)
            s = await self.sample(t0)
            fps = [x.get("fps") for x in s["sessions"] if x is not None]
            self.progress(
                f"soak: {s['t_s']:.0f} / {plan.seconds:.0f} s: RSS {s['rss_mb']} MB, "
                f"{s['fds']} fds, {s['tasks']} tasks, {s['threads']} threads, fps {fps}, "
                f"malloc used {s.get('heap_used_mb')} MB, kept free {s.get('heap_free_mb')} MB"
            )

    async def av_offset(self, when: str) -> dict[str, Any]:
        """A/V at a new receiver of the first session over ``av_window_s``: the keys
        ``av_offset_ms_<when>``, its correlations and the onset estimate with its lags."""
        sid, token = self.sessions[0]
        tap = FrameTap(self.live.session(sid).bus, self.live.region)
        try:
            viewer = await self.live.viewer(sid, token)
        except Exception as exc:
            await tap.aclose()
            self.fail(f"{sid}: the A/V viewer did not connect: {exc!r}")
            return {f"av_offset_ms_{when}": None}
        try:
            lo = time.monotonic() + 1.0  # past the new viewer's first second
            await sleep_until(lo + self.plan.av_window_s)
            hi = time.monotonic()
            av = viewer.av_against(tap.data, lo, hi)
        finally:
            await viewer.aclose(self.live.http, token)
            await tap.aclose()
        return {
            f"av_offset_ms_{when}": rounded(av.get("offset")),
            f"av_alignment_{when}": {
                k: rounded(av.get(k), 3) for k in ("video_corr", "audio_corr")
            },
            f"av_offset_ms_{when}_onsets": rounded(av["onsets"]),
            f"av_receiver_lag_ms_{when}": rounded(av["receiver_lag"]),
            f"av_published_lag_ms_{when}": rounded(av["published_lag"]),
        }

    async def close(self) -> None:
        for sid, _ in self.sessions:
            res = await self.live.http.delete(f"/v1/sessions/{sid}")
            if res.status_code != 204:
                self.fail(f"{sid}: DELETE answered {res.status_code} (closed before the end?)")


def _span(samples: list[dict[str, Any]], key: str, first: int) -> dict[str, Any]:
    values = [s[key] for s in samples[first:]]
    return {"start": values[0], "end": values[-1], "max": max(values)}


def _grew(samples: list[dict[str, Any]], key: str) -> bool:
    """Whether ``key`` grew: the least of the last third of the samples above the most of
    the first third. A descriptor or a task in flight at one sample swings a count by one or
    two; growth moves the whole range."""
    values = [s[key] for s in samples]
    third = max(1, len(values) // 3)
    return min(values[-third:]) > max(values[:third])


def summary(
    plan: SoakPlan,
    samples: list[dict[str, Any]],
    failures: list[str],
    client: dict[str, Any],
    av: dict[str, Any],
) -> dict[str, Any]:
    """The soak's JSON object from its samples and failures, the clients' report (their
    counts, ``failure_count`` and ``failures``) and the A/V windows."""
    after = [i for i, s in enumerate(samples) if s["t_s"] >= plan.warmup_s]
    first = after[0] if after else 0
    rss = _span(samples, "rss_mb", first)
    rss["growth_percent"] = round(100.0 * (rss["end"] - rss["start"]) / rss["start"], 2)
    count = len(failures) + client["failure_count"]
    failures = failures + client["failures"]
    offset = av.get("av_offset_ms_end")
    held = {
        "rss": rss["growth_percent"] <= RSS_LIMIT_PERCENT,
        "fds": not _grew(samples[first:], "fds"),
        "tasks": not _grew(samples[first:], "tasks"),
        "av": offset is not None and abs(offset) <= AV_LIMIT_MS,
        "failures": count == 0,
    }
    return {
        "plan": asdict(plan),
        "warmup_sample_t_s": samples[first]["t_s"],
        "rss_mb": rss,
        "fds": _span(samples, "fds", first),
        "tasks": _span(samples, "tasks", first),
        "threads": _span(samples, "threads", first),
        **av,
        "cross_session_failures": count,
        "failures": failures[:50],
        "clients": {k: v for k, v in client.items() if k not in ("failures", "failure_count")},
        "held": held,
        "samples": samples,
    }


async def measure_soak(
    live: Live, plan: SoakPlan, nginx: NginxRtmp | None, folder: Path, progress: Progress
) -> dict[str, Any]:
    """The soak on a running server (and nginx, when given)."""
    soak = Soak(live, plan, nginx, progress)
    errors = ErrorLog()
    watched = [logging.getLogger(), logging.getLogger("uvicorn")]  # uvicorn's do not propagate
    for logger in watched:
        logger.addHandler(errors)
    clients: ClientProcess | None = None
    try:
        await soak.create()
        request = {
            "base": live.base,
            "sessions": [list(s) for s in soak.sessions],
            "plan": {
                "cycle_s": plan.cycle_s,
                "churn": plan.churn,
                "turn_s": plan.turn_s,
                "interrupt_every": plan.interrupt_every,
            },
        }
        clients = await ClientProcess.spawn(
            "streamer.measure.soakclients", request, "the soak clients'", 120.0
        )
        progress(f"soak: {plan.sessions} sessions, clients ready; {plan.seconds:.0f} s of cycles")
        # The first A/V window runs during the warm-up, before the samples that count.
        first = asyncio.get_running_loop().create_task(soak.av_offset("start"))
        try:
            await soak.cycles(clients.ready_at, folder)
        except BaseException:
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            raise
        av = await first
        progress(f"soak: A/V over {plan.av_window_s:.0f} s at a new receiver")
        av.update(await soak.av_offset("end"))
        av["av_window_s"] = plan.av_window_s
        clients.stop()
        report = await clients.report()
        await soak.close()
    finally:
        for logger in watched:
            logger.removeHandler(errors)
        if clients is not None:
            await clients.aclose()
    out = summary(plan, soak.samples, soak.failures, report, av)
    out["outputs"] = soak.outputs
    out["server_errors_logged"] = {"count": errors.count, "first": errors.first}
    return out


def run_soak(
    avatar_name: str, backend: str, plan: SoakPlan, threads: int = 2, progress: Progress = print
) -> dict[str, Any]:
    """The soak's figures, with the machine's load before and after."""
    import warnings

    limit_arenas()  # as `avatarcast serve` runs: the figures are the served app's
    logging.getLogger("aiortc").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", "The `websockets` implementation is deprecated")
    use_rtmp = plan.rtmp and nginx_rtmp_missing() is None
    if plan.rtmp and not use_rtmp:
        progress("soak: no nginx-rtmp here: recordings only")

    async def run(folder: Path) -> dict[str, Any]:
        load = os.getloadavg()[0]
        nginx = NginxRtmp(folder) if use_rtmp else None
        if nginx is not None:
            await asyncio.to_thread(nginx.start)
        recordings = folder / "recordings"
        try:
            async with live_server(avatar_name, backend, threads, recordings=recordings) as live:
                figures = await measure_soak(live, plan, nginx, recordings, progress)
        finally:
            if nginx is not None:
                await asyncio.to_thread(nginx.stop)
        figures["rtmp"] = nginx is not None
        figures["load_avg_1m"] = {"before": round(load, 2), "after": round(os.getloadavg()[0], 2)}
        return figures

    with tempfile.TemporaryDirectory(prefix="avatarcast-soak-") as folder:
        return asyncio.run(run(Path(folder)))
