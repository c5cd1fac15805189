"""A reduced CPU model: the generator quantised to INT8 with ONNX Runtime's tools.

Two ways are offered: ``dynamic`` (weights INT8, activations quantised per call) and
``static`` (weights and activations INT8 as QDQ pairs, the activation ranges calibrated on
real inputs: the avatar's own crops and mel windows of training-split speech from the
teacher, the same distribution the runtime sees). Whether the result is worth shipping is an
empirical question (INT8 convolutions are not always faster than FP32 on a small CPU, and a
lip-sync model loses quality where it hurts first: the mouth), so :func:`quantize` only
writes a file; docs/engine.md records what was measured and what ships.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

Mode = Literal["dynamic", "static"]
CALIBRATION_SEED = 7
CALIBRATION_SENTENCES = 4
CALIBRATION_FRAMES = 96


def calibration_batches(
    avatar: Any, sentences: int = CALIBRATION_SENTENCES, frames: int = CALIBRATION_FRAMES
) -> list[dict[str, np.ndarray]]:
    """Generator inputs (batch 1) from teacher speech of the training split: the reference and
    masked crops the compositor builds for frame k, and the mel window of that frame."""
    from models.media import clean
    from models.synth.corpus import sentences as corpus
    from models.synth.speech import synthesize, voices
    from streamer.pipeline.compositor import Compositor
    from streamer.pipeline.mel import MelWindower

    pool = voices("train")
    compositor = Compositor(avatar, idle=True, seed=CALIBRATION_SEED)
    batches: list[dict[str, np.ndarray]] = []
    for i, text in enumerate(corpus("train", sentences, CALIBRATION_SEED)):
        speech = synthesize(text, pool[(i * 7) % len(pool)])
        windower = MelWindower(avatar.window)
        windows = [*windower.push(clean(speech.samples)), *windower.flush()]
        for window in windows:
            reference, masked = compositor.inputs(len(batches))
            batches.append(
                {"reference": reference[None], "masked": masked[None], "mel": window[None]}
            )
    if len(batches) > frames:  # evenly spread over speech and pauses
        picks = np.linspace(0, len(batches) - 1, frames).round().astype(int)
        batches = [batches[i] for i in picks]
    return batches


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over prepared feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize(
    model_path: str | Path,
    out_path: str | Path,
    mode: Mode = "static",
    avatar: Any = None,
) -> Path:
    """Write the INT8 model to ``out_path`` atomically (``static`` needs the ``avatar``)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, out = Path(model_path), Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        written = Path(tmp) / "int8.onnx"
        if mode == "dynamic":
            quantize_dynamic(str(prepared), str(written), weight_type=QuantType.QInt8)
        else:
            if avatar is None:
                raise ValueError("static quantisation needs the avatar for calibration")
            quantize_static(
                str(prepared),
                str(written),
                _Reader(calibration_batches(avatar)),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                calibrate_method=CalibrationMethod.MinMax,
            )
        os.replace(written, out)
    return out


# --- the gate: quality and speed against FP32 ---------------------------------------------

INT8_FILE = "generator.int8.onnx"
MAX_LOSS = 0.05  # every eval figure within 5% of FP32
# Figures where lower is better; a change in the good direction never fails the gate.
LOWER_IS_BETTER = {"stillness"}


def generator_ms(model_path: Path | str, threads: int = 2, batch: int = 1, runs: int = 30) -> float:
    """Median ms per frame of the runtime's ONNX backend on realistic-sized random inputs."""
    import time

    from streamer.engine.onnx import OnnxBackend

    backend = OnnxBackend(model_path, threads=threads)
    spec = {i.name: i.shape for i in backend._session.get_inputs()}
    rng = np.random.default_rng(0)
    feed = [
        rng.random((batch, *(int(d) for d in spec[name][1:])), dtype=np.float32)
        for name in ("reference", "masked", "mel")
    ]
    for _ in range(3):
        backend.infer(*feed)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        backend.infer(*feed)
        times.append((time.perf_counter() - started) * 1000.0 / batch)
    return float(np.median(times))


def eval_with_model(avatar_name: str, model_path: Path, n_cases: int) -> dict[str, Any]:
    """``avatarcast eval`` figures with the ONNX backend running ``model_path``."""
    from unittest import mock

    import models.eval as evaluation
    import streamer.engine.factory as factory

    real = factory.make_backend

    def pointed(name: str, avatar: Any, threads: int = 2, model_path_: Any = None) -> Any:
        return real("onnx-cpu", avatar, threads, model_path=model_path)

    with mock.patch.object(factory, "make_backend", pointed):
        return evaluation.run_eval(avatar_name, "onnx-cpu", n_cases=n_cases)


def compare(fp32: dict[str, Any], int8: dict[str, Any]) -> dict[str, float]:
    """Relative loss per figure (positive = INT8 is worse), over lipsync and image."""
    losses: dict[str, float] = {}
    for group in ("lipsync", "image"):
        for key, base in fp32[group].items():
            value = int8[group].get(key)
            if base is None or value is None or key == "lag_ms":
                continue
            change = (value - base) / abs(base) if base else 0.0
            losses[key] = change if key in LOWER_IS_BETTER else -change
    # Lag is in ms around 0: compare it against one frame (40 ms) rather than relatively.
    lag32, lag8 = fp32["lipsync"].get("lag_ms"), int8["lipsync"].get("lag_ms")
    if lag32 is not None and lag8 is not None:
        losses["lag_ms"] = abs(lag8 - lag32) / 40.0
    return losses


def main(argv: list[str] | None = None) -> int:
    """``python -m models.quantize [--avatar NAME] [--out FILE]``: build the INT8 model, measure
    it against FP32 and keep it (beside the avatar's model, or at ``--out``) only if every
    eval figure is within 5% and it is faster; prints the measurements as JSON."""
    import argparse
    import json
    import sys

    from models.avatar import load_avatar
    from streamer.config import Settings

    parser = argparse.ArgumentParser(prog="python -m models.quantize")
    parser.add_argument("--avatar", default="default")
    parser.add_argument("--mode", choices=("static", "dynamic"), default="static")
    parser.add_argument("--cases", type=int, default=12, help="eval cases (12 = avatarcast eval)")
    parser.add_argument("--out", default=None, help=f"default: the avatar's {INT8_FILE}")
    args = parser.parse_args(argv)
    avatar = load_avatar(args.avatar, Settings.from_env().home)
    out = Path(args.out) if args.out else avatar.path / INT8_FILE
    with tempfile.TemporaryDirectory() as tmp:
        candidate = quantize(avatar.model_path, Path(tmp) / INT8_FILE, args.mode, avatar)
        ms = {"fp32": generator_ms(avatar.model_path), "int8": generator_ms(candidate)}
        figures = {
            "fp32": eval_with_model(avatar.name, avatar.model_path, args.cases),
            "int8": eval_with_model(avatar.name, candidate, args.cases),
        }
        losses = compare(figures["fp32"], figures["int8"])
        quality = all(loss <= MAX_LOSS for loss in losses.values())
        faster = ms["int8"] < ms["fp32"]
        report = {
            "mode": args.mode,
            "generator_ms_per_frame_b1_2threads": {k: round(v, 2) for k, v in ms.items()},
            "eval": {k: {"lipsync": v["lipsync"], "image": v["image"]} for k, v in figures.items()},
            "relative_loss": {k: round(v, 4) for k, v in losses.items()},
            "within_5pct": quality,
            "faster": faster,
            "kept": str(out) if quality and faster else None,
        }
        if quality and faster:
            out.parent.mkdir(parents=True, exist_ok=True)
            staged = out.with_name(out.name + ".tmp")
            staged.write_bytes(candidate.read_bytes())
            os.replace(staged, out)
    print(json.dumps(report, indent=2))
    if not (quality and faster):
        print("quantize: the INT8 model was not kept (see the figures)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
