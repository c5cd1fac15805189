"""What ``avatarcast bench`` times on this machine, and how often: the generator alone, the
whole frame path, and the live encoders.

Every figure is a median over repeated runs after a warm-up, in this one process, on inputs
that are deterministic (random tensors, a synthetic voice): the pipeline's cost does not
depend on what is said or shown.
"""

from __future__ import annotations

import functools
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.audio import N_MELS, SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from streamer.engine.base import backend_key, runs_on_cpu

Progress = Callable[[str], None]
BATCHES = (1, 4, 16)
GPU_BATCH = 64  # timed on a GPU only


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


def median_ms(run: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median ms of ``run`` over ``repeats`` calls; the ``warmup`` calls before are not timed
    (first calls pay for allocation and graph optimisation, which a server pays once)."""
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
    """Generator inputs of the avatar's sizes (reference, masked, mel), seeded: the generator's
    cost depends on their shapes only."""
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


def time_generator(
    avatar: Any, backend: Any, plan: BenchPlan, progress: Progress
) -> dict[str, float]:
    """ms per frame of the generator alone, at each batch size (and a GPU-sized one on a GPU)."""
    crop = avatar.crop_size
    mel_frames = avatar.window.length
    generator: dict[str, float] = {}
    for batch in BATCHES + (() if runs_on_cpu(backend) else (GPU_BATCH,)):
        inputs = generator_inputs(batch, crop, mel_frames)

        def run(inputs: tuple[np.ndarray, np.ndarray, np.ndarray] = inputs) -> object:
            return backend.infer(*inputs)

        ms = median_ms(run, plan.repeats, plan.warmup) / batch
        generator[str(batch)] = round(ms, 3)
        progress(f"{backend_key(backend)}: batch {batch}: {ms:.2f} ms/frame")
    return generator


def _chunks(samples: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(samples), size):
        yield samples[start : start + size]


def time_pipeline(avatar: Any, backend: Any, plan: BenchPlan, progress: Progress) -> float | None:
    """ms per frame for audio -> mel -> generator -> compositor -> the live video encoder
    (VP8, as a session's viewers get it, encoded once for all of them), all runtime code."""
    from streamer.pipeline.codecs import VideoEncoder
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
    from models.compositor import Compositor
    from streamer.pipeline.codecs import VideoEncoder

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
