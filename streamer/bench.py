"""``avatarcast bench``: how fast the generator and the whole pipeline run on this machine.

Every figure is a median over repeated runs in this one process, and the Wav2Lip-sized
baselines are timed in the same run, on the same backend, with the same session settings,
so our speed is read as a ratio rather than a lucky number. Progress goes to stderr; the
result is one JSON object (the shape is fixed by INTERFACE.md).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.audio import N_MELS, SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from streamer.capacity import measure_generation
from streamer.config import BACKENDS
from streamer.engine.base import runs_on_cpu

Progress = Callable[[str], None]
BATCHES = (1, 4, 16)
GPU_BATCH = 64  # timed on a GPU only
CPU_SESSION_LIMIT, GPU_SESSION_LIMIT = 64, 2048  # where the generation ramp stops doubling
# Figures measured through the live server (streamer.livebench); null when not measured.
SERVER_FIGURES = (
    "realtime_sessions",
    "speech_to_mouth_ms_p95",
    "interrupt_to_idle_ms",
    "frame_interval_ms_p95",
)


@dataclass(frozen=True)
class BenchPlan:
    """How much to measure: ``quick`` fits the whole run in well under a minute."""

    repeats: int
    warmup: int
    pipeline_seconds: float
    pipeline_repeats: int
    baseline_repeats: int
    baseline_batches: tuple[int, ...]
    generation_seconds: float = 3.0  # per step of the generation-only session ramp
    threads: int = 2

    @classmethod
    def for_mode(cls, quick: bool) -> BenchPlan:
        if quick:
            return cls(
                repeats=5,
                warmup=1,
                pipeline_seconds=2.0,
                pipeline_repeats=3,
                baseline_repeats=3,
                baseline_batches=(1,),
                generation_seconds=1.5,
            )
        return cls(
            repeats=15,
            warmup=2,
            pipeline_seconds=8.0,
            pipeline_repeats=5,
            baseline_repeats=7,
            baseline_batches=(1, 4),
        )


def _stderr(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "gpu": _gpu_name(),
        "python": platform.python_version(),
    }


def _gpu_name() -> str | None:
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out else None


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def median_ms(run: Callable[[], object], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def generator_inputs(
    batch: int, crop: int, mel_frames: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    reference = rng.random((batch, 3, crop, crop), dtype=np.float32)
    masked = rng.random((batch, 3, crop, crop), dtype=np.float32)
    mel = (rng.standard_normal((batch, mel_frames, N_MELS)) - 2.0).astype(np.float32)
    return reference, masked, mel


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """A deterministic voiced signal with syllable-rate loudness changes and pauses.

    The pipeline's cost does not depend on what is said, so bench needs no TTS.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    pitch = 120.0 + 20.0 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voiced = sum(np.sin(h * phase) / h for h in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t), 0.0, None)
    envelope = syllables * (np.sin(2 * np.pi * 0.3 * t) > -0.6)  # with pauses
    noise = 0.02 * rng.standard_normal(n)
    x = voiced * envelope + noise
    return (0.8 * x / np.max(np.abs(x))).astype(np.float32)


def _chunks(samples: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(samples), size):
        yield samples[start : start + size]


def time_pipeline(avatar: Any, backend: Any, plan: BenchPlan, progress: Progress) -> float | None:
    """ms per frame for audio -> mel -> generator -> compositor -> the live video encoder
    (VP8, as a session's viewers get it, encoded once for all of them), all runtime code."""
    from streamer.outputs.encoding import VideoEncoder
    from streamer.render import generate_frames

    samples = speech_like(plan.pipeline_seconds)
    n_frames = -(-len(samples) // SAMPLES_PER_VIDEO_FRAME)

    def one_run() -> None:
        encoder = VideoEncoder("vp8")
        count = 0
        for frame in generate_frames(avatar, backend, _chunks(samples, 4000)):
            encoder.encode(np.asarray(frame), keyframe=count == 0)
            count += 1
        if count != n_frames:
            raise RuntimeError(f"pipeline made {count} frames for {n_frames} expected")

    total_ms = median_ms(one_run, plan.pipeline_repeats, warmup=1)
    return total_ms / n_frames


def time_encoders(avatar: Any, plan: BenchPlan) -> dict[str, float]:
    """ms per frame of the live encoders (VP8, H.264) on the avatar's composited frames."""
    from streamer.outputs.encoding import VideoEncoder
    from streamer.pipeline.compositor import Compositor

    compositor = Compositor(avatar)
    rng = np.random.default_rng(0)
    size = avatar.crop_size
    mouths = [rng.random((3, size, size), dtype=np.float32) * 0.2 + 0.4 for _ in range(8)]
    frames = [compositor.compose(k, mouths[k % len(mouths)]) for k in range(50)]
    out: dict[str, float] = {}
    for codec in ("vp8", "h264"):
        encoder = VideoEncoder(codec)
        encoder.encode(frames[0], keyframe=True)
        pictures = itertools.cycle(frames)
        out[codec] = round(
            median_ms(
                functools.partial(_encode_next, encoder, pictures), plan.repeats * 4, plan.warmup
            ),
            3,
        )
    return out


def _encode_next(encoder: Any, pictures: Iterator[np.ndarray]) -> object:
    return encoder.encode(next(pictures), keyframe=False)


def _providers_for(backend_name: str) -> list[str]:
    if backend_name == "tensorrt":
        return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    if backend_name.endswith("cuda"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def ort_session(path: str, threads: int, providers: Sequence[str]) -> Any:
    """An ONNX Runtime session with exactly the settings of the runtime's OnnxBackend."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=list(providers))


def time_baselines(backend_name: str, plan: BenchPlan, progress: Progress) -> dict[str, Any]:
    """The Wav2Lip-sized generators on the same kind of backend, same threads."""
    try:
        from models import baselines
    except ImportError:  # pragma: no cover - the module ships with the package
        return {}
    out: dict[str, Any] = {}
    for name in baselines.SPECS:
        try:
            exported = baselines.export_onnx(name)
        except ImportError:
            progress(f"{name}: torch is not installed (pip install avatarcast[train]), skipped")
            out[name] = {"params_m": None, "generator_ms_per_frame": {"1": None}}
            continue
        progress(f"{name}: {exported.params / 1e6:.1f} M parameters")
        figures: dict[str, float] = {}
        if backend_name.startswith("torch"):
            run_for = _torch_runner(name, plan.threads, backend_name)
        else:
            session = ort_session(str(exported.path), plan.threads, _providers_for(backend_name))
            run_for = _ort_runner(session, name)
        for batch in plan.baseline_batches:
            run = run_for(batch)
            ms = median_ms(run, plan.baseline_repeats, plan.warmup) / batch
            figures[str(batch)] = round(ms, 2)
            progress(f"{name}: batch {batch}: {ms:.1f} ms/frame")
        out[name] = {"params_m": round(exported.params / 1e6, 1), "generator_ms_per_frame": figures}
    return out


def _ort_runner(session: Any, name: str) -> Callable[[int], Callable[[], object]]:
    from models import baselines

    def for_batch(batch: int) -> Callable[[], object]:
        feeds = baselines.example_inputs(name, batch)
        return lambda: session.run(None, feeds)

    return for_batch


def _torch_runner(
    name: str, threads: int, backend_name: str
) -> Callable[[int], Callable[[], object]]:
    import torch

    from models import baselines

    device = "cuda" if backend_name.endswith("cuda") else "cpu"
    if device == "cpu":
        torch.set_num_threads(threads)
    module = baselines.build(name).to(device)

    def for_batch(batch: int) -> Callable[[], object]:
        inputs = baselines.example_inputs(name, batch).values()
        feeds = [torch.from_numpy(v).to(device) for v in inputs]

        def run() -> object:
            with torch.no_grad():
                out = module(*feeds)
            if device == "cuda":
                torch.cuda.synchronize()
            return out

        return run

    return for_batch


def bench_backend(avatar: Any, backend: Any, plan: BenchPlan, progress: Progress) -> dict[str, Any]:
    crop = avatar.crop_size
    mel_frames = avatar.window.length
    progress(f"{backend.name}: generator")
    generator: dict[str, float] = {}
    gpu = not runs_on_cpu(backend)
    for batch in BATCHES + ((GPU_BATCH,) if gpu else ()):
        inputs = generator_inputs(batch, crop, mel_frames)

        def run(inputs: tuple[np.ndarray, np.ndarray, np.ndarray] = inputs) -> object:
            return backend.infer(*inputs)

        ms = median_ms(run, plan.repeats, plan.warmup) / batch
        generator[str(batch)] = round(ms, 3)
        progress(f"{backend.name}: batch {batch}: {ms:.2f} ms/frame")
    pipeline = time_pipeline(avatar, backend, plan, progress)
    if pipeline is not None:
        progress(f"{backend.name}: pipeline {pipeline:.2f} ms/frame")
    encode = time_encoders(avatar, plan)
    progress(f"{backend.name}: live encode ms/frame {encode} (once per session, any viewers)")
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
            GPU_SESSION_LIMIT if gpu else CPU_SESSION_LIMIT,
            lambda message: progress(f"{backend.name}: {message}"),
        )
    )
    result.update({key: None for key in SERVER_FIGURES})
    result["peak_rss_mb"] = round(rss, 1)
    result["baselines"] = time_baselines(backend.name, plan, progress)
    return result


def run_bench(
    quick: bool = False,
    backends: Sequence[str] | None = None,
    sessions: int | None = None,
    avatar_name: str = "default",
    progress: Progress = _stderr,
    live: bool = False,
    soak_s: float | None = None,
) -> dict[str, Any]:
    """Measure each requested backend (default: ``auto``) and return the INTERFACE.md object.

    With ``live`` the server figures are measured through the real server
    (:mod:`streamer.livebench`): ``sessions`` tests exactly that many concurrent sessions
    instead of the ramp, and ``soak_s`` runs one long session for the A/V drift instead.
    Without it they are null.
    """
    from models.avatar import load_avatar
    from streamer.config import Settings
    from streamer.engine.factory import make_backend

    plan = BenchPlan.for_mode(quick)
    avatar = load_avatar(avatar_name, Settings.from_env().home)
    results: dict[str, Any] = {}
    for name in backends or ("auto",):
        backend = make_backend(name, avatar, threads=plan.threads)
        if backend.name in results:
            continue  # "auto" and "onnx" are the same backend here
        key = backend.name
        results[key] = bench_backend(avatar, backend, plan, progress)
        if live:
            from streamer.livebench import run_live

            del backend  # the server loads its own
            progress(f"{name}: live figures through the server")
            figures = run_live(
                avatar.name,
                name,
                quick=quick,
                threads=plan.threads,
                sessions=sessions,
                soak_s=soak_s,
                progress=progress,
            )
            results[key].update(figures)
    return {"machine": machine_info(), "avatar": avatar.name, "backends": results}


def format_text(result: dict[str, Any]) -> str:
    """A short human-readable summary of ``run_bench``'s result."""
    m = result["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, gpu {m['gpu']}, python {m['python']}"]
    lines.append(f"avatar: {result['avatar']}")
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
    "soak",
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
        default=None,
        metavar="SECONDS",
        help="one session and viewer speaking that long: A/V offset at the start and the end",
    )
    parser.add_argument(
        "--no-live", action="store_true", help="skip the figures measured through the server"
    )
    parser.add_argument("--avatar", default="default")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run_bench(
        args.quick,
        args.backend,
        args.sessions,
        args.avatar,
        live=not args.no_live,
        soak_s=args.soak,
    )
    print(json.dumps(result) if args.json else format_text(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
