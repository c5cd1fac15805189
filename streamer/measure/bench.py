"""``avatarcast bench``: how fast the generator and the whole pipeline run on this machine.

Every figure is a median over repeated runs in this one process, and the Wav2Lip-sized
baselines are timed in the same run, on the same backend, with the same session settings,
so our speed is read as a ratio rather than a lucky number. Progress goes to stderr; the
result is one JSON object (the shape is fixed by INTERFACE.md).

This module assembles that object and holds the CLI; the timed runs are in
:mod:`~streamer.measure.timing`, the baselines in :mod:`~streamer.measure.baseline_timing`,
the machine's description in :mod:`~streamer.measure.machine`, the generation ramp in
:mod:`~streamer.measure.capacity` and the figures through the server in
:mod:`~streamer.measure.livebench`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from streamer.config import BACKENDS, Settings
from streamer.engine.base import backend_key, runs_on_cpu
from streamer.measure.baseline_timing import time_baselines
from streamer.measure.capacity import measure_generation
from streamer.measure.machine import machine_info, peak_rss_mb
from streamer.measure.timing import (
    BenchPlan,
    Progress,
    time_encoders,
    time_generator,
    time_pipeline,
)

CPU_SESSION_LIMIT, GPU_SESSION_LIMIT = 64, 2048  # where the generation ramp stops doubling
# Figures measured through the live server (streamer.measure.livebench); null when not measured.
SERVER_FIGURES = (
    "realtime_sessions",
    "speech_to_mouth_ms_p95",
    "interrupt_to_idle_ms",
    "frame_interval_ms_p95",
)


def _stderr(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def bench_backend(avatar: Any, backend: Any, plan: BenchPlan, progress: Progress) -> dict[str, Any]:
    """One backend's offline figures: generator, pipeline, encoders, generation ramp, memory
    and the baselines; the server figures are left null for the live part to fill."""
    label = backend_key(backend)
    progress(f"{label}: generator")
    generator = time_generator(avatar, backend, plan, progress)
    pipeline = time_pipeline(avatar, backend, plan, progress)
    if pipeline is not None:
        progress(f"{label}: pipeline {pipeline:.2f} ms/frame")
    encode = time_encoders(avatar, plan)
    progress(f"{label}: live encode ms/frame {encode} (once per session, any viewers)")
    # Taken before the baselines load, which would otherwise dominate the peak.
    rss = peak_rss_mb()
    result: dict[str, Any] = {
        "generator_ms_per_frame": generator,
        "pipeline_ms_per_frame": None if pipeline is None else round(pipeline, 2),
        "encode_ms_per_frame": encode,
    }
    result.update(
        measure_generation(
            avatar,
            backend,
            plan.generation_seconds,
            CPU_SESSION_LIMIT if runs_on_cpu(backend) else GPU_SESSION_LIMIT,
            lambda message: progress(f"{label}: {message}"),
        )
    )
    result.update({key: None for key in SERVER_FIGURES})
    result["peak_rss_mb"] = round(rss, 1)
    result["baselines"] = time_baselines(label, plan, progress)
    return result


def run_bench(
    quick: bool = False,
    backends: Sequence[str] | None = None,
    sessions: int | None = None,
    avatar_name: str = "default",
    progress: Progress = _stderr,
    live: bool = False,
) -> dict[str, Any]:
    """Measure each requested backend (default: ``auto``) and return the INTERFACE.md object.

    With ``live`` the server figures are measured through the real server
    (:mod:`streamer.measure.livebench`): ``sessions`` tests exactly that many concurrent sessions
    instead of the ramp. (The soak is ``--soak``: :mod:`streamer.measure.soak`.)
    Without it they are null.
    """
    from models.avatar import load_avatar
    from streamer.engine.factory import make_backend

    plan = BenchPlan.for_mode(quick)
    avatar = load_avatar(avatar_name, Settings.from_env().home)
    results: dict[str, Any] = {}
    for name in backends or ("auto",):
        backend = make_backend(name, avatar, threads=plan.threads)
        key = backend_key(backend)
        if key in results:
            continue  # "auto" and "onnx" are the same backend here
        results[key] = bench_backend(avatar, backend, plan, progress)
        if live:
            from streamer.measure.livebench import run_live

            del backend  # the server loads its own
            progress(f"{name}: live figures through the server")
            figures = run_live(
                avatar.name,
                name,
                quick=quick,
                threads=plan.threads,
                sessions=sessions,
                progress=progress,
            )
            results[key].update(figures)
    from streamer.measure.components import component_figures

    progress("components: TTS voices and the teacher")
    return {
        "machine": machine_info(),
        "avatar": avatar.name,
        "backends": results,
        "components": component_figures(),
    }


def format_text(result: dict[str, Any]) -> str:
    """A short human-readable summary of ``run_bench``'s result."""
    m = result["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, gpu {m['gpu']}, python {m['python']}"]
    lines.append(f"avatar: {result['avatar']}")
    parts = result.get("components") or {}
    for voice, ratio in parts.get("tts_seconds_per_speech_second", {}).items():
        lines.append(f"TTS {voice}: {ratio} s per second of speech")
    if "teacher_ms_per_frame" in parts:
        lines.append(f"teacher: {parts['teacher_ms_per_frame']} ms per frame")
    for name, figures in result["backends"].items():
        gen = ", ".join(f"b{b} {v} ms" for b, v in figures["generator_ms_per_frame"].items())
        lines.append(f"{name}: generator per frame {gen}")
        lines.append(f"  pipeline per frame: {figures['pipeline_ms_per_frame']} ms")
        lines.append(f"  peak RSS: {figures['peak_rss_mb']} MB")
        live = {k: v for k, v in figures.items() if k in LIVE_TEXT and v is not None}
        for key, value in live.items():
            lines.append(f"  {key}: {value}")
        ours = figures["generator_ms_per_frame"]["1"]
        for base, data in figures["baselines"].items():
            theirs = data["generator_ms_per_frame"].get("1")
            ratio = f" ({theirs / ours:.1f}x ours)" if theirs and ours else ""
            lines.append(
                f"  baseline {base}: {data['params_m']} M params, {theirs} ms/frame at b1{ratio}"
            )
    return "\n".join(lines)


LIVE_TEXT = (
    "frame_interval_ms_p95",
    "frame_interval_ms_p95_server",
    "frame_interval_ms_p95_decoded",
    "speech_to_mouth_ms_p95",
    "speech_to_mouth_onset_ms_p95",
    "interrupt_to_idle_ms",
    "interrupt_to_idle_ms_receiver",
    "time_to_first_frame_ms",
    "av_offset_ms",
    "realtime_sessions",
)


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 5:
        raise argparse.ArgumentTypeError(f"{text}: a soak lasts at least 5 seconds")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of sessions")
    return value


def _counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text}: give viewer counts like 10,25,50")
    return counts


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="avatarcast bench", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, under a minute")
    parser.add_argument(
        "--backend",
        action="append",
        choices=BACKENDS,
        help="backend to measure (repeatable; default auto), e.g. onnx-int8 for the reduced model",
    )
    parser.add_argument(
        "--sessions",
        type=_positive,
        default=None,
        help="concurrent sessions to try (server figures)",
    )
    parser.add_argument(
        "--soak",
        type=_seconds,
        nargs="?",
        const=1800.0,
        default=None,
        metavar="SECONDS",
        help="only this: several sessions speaking, interrupted, watched by viewers that come "
        "and go, with outputs added and removed, for SECONDS (default 1800): memory, file "
        "descriptors, tasks, A/V and failures over time (see streamer/measure/soak.py)",
    )
    parser.add_argument(
        "--soak-sessions",
        type=_positive,
        default=3,
        metavar="N",
        help="sessions in the soak (default 3)",
    )
    parser.add_argument(
        "--no-live", action="store_true", help="skip the figures measured through the server"
    )
    parser.add_argument(
        "--viewers",
        type=_counts,
        default=None,
        metavar="N[,N...]",
        help="only this: N WebRTC viewers of one speaking session, each N in turn (see "
        "streamer/measure/viewers.py)",
    )
    parser.add_argument(
        "--viewers-per-process",
        type=_positive,
        default=25,
        metavar="K",
        help="viewers per audience process (default 25)",
    )
    parser.add_argument(
        "--viewers-decode", action="store_true", help="the viewers also decode, as players do"
    )
    parser.add_argument(
        "--rtmp-soak",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="only this: one session speaking over RTMP into a local nginx-rtmp that long, "
        "played back, nginx restarted half-way (see streamer/measure/rtmpsoak.py)",
    )
    parser.add_argument("--avatar", default="default")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.viewers is not None:
        return _print(_viewers(args), args.json)
    if args.rtmp_soak is not None:
        return _print(_rtmp_soak(args), args.json)
    if args.soak is not None:
        return _print(_soak(args), args.json)
    result = run_bench(args.quick, args.backend, args.sessions, args.avatar, live=not args.no_live)
    print(json.dumps(result) if args.json else format_text(result))
    return 0


def _viewers(args: argparse.Namespace) -> dict[str, Any]:
    """``--viewers``: the audience figures alone, with the machine they were taken on."""
    from streamer.measure.viewers import AudiencePlan, run_viewers

    backend = (args.backend or ["auto"])[0]
    plan = AudiencePlan.for_mode(args.quick, args.viewers_per_process, args.viewers_decode)
    figures = run_viewers(args.avatar, backend, args.viewers, plan, progress=_stderr)
    return {"machine": machine_info(), "avatar": args.avatar, "backend": backend, **figures}


def _rtmp_soak(args: argparse.Namespace) -> dict[str, Any]:
    from streamer.measure.rtmpsoak import run_rtmp_soak

    backend = (args.backend or ["auto"])[0]
    figures = run_rtmp_soak(args.avatar, backend, args.rtmp_soak, progress=_stderr)
    return {"machine": machine_info(), "avatar": args.avatar, "backend": backend, **figures}


def _soak(args: argparse.Namespace) -> dict[str, Any]:
    from streamer.measure.soak import SoakPlan, run_soak

    backend = (args.backend or ["auto"])[0]
    plan = SoakPlan.for_seconds(args.soak, args.soak_sessions)
    figures = run_soak(args.avatar, backend, plan, progress=_stderr)
    return {"machine": machine_info(), "avatar": args.avatar, "backend": backend, **figures}


def _print(result: dict[str, Any], as_json: bool) -> int:
    print(json.dumps(result) if as_json else json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
