"""A reduced CPU model: the generator quantised to INT8 with ONNX Runtime's tools.

Two ways are offered: ``dynamic`` (weights INT8, activations quantised per call) and
``static`` (weights and activations INT8 as QDQ pairs, the activation ranges calibrated on
real inputs: the avatar's own crops and mel windows of training-split speech from the
teacher, the same distribution the runtime sees). Whether the result is worth shipping is an
empirical question (INT8 convolutions are not always faster than FP32 on a small CPU, and a
lip-sync model loses quality where it hurts first: the mouth), so :func:`quantize` only
writes a file; the gate (:mod:`streamer.measure.int8_gate`) measures it against FP32 and keeps
it only when it is as good and faster. docs/engine.md records what was measured and what ships.
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
# 16 sentences, 384 frames: with 4 and 96 the activation ranges missed the closed-lip frames,
# and the closure-polished model's INT8 closed 88 % of p/b/m against FP32's 95.5 % (now 95.5 %).
CALIBRATION_SENTENCES = 16
CALIBRATION_FRAMES = 384


def calibration_batches(
    avatar: Any, sentences: int = CALIBRATION_SENTENCES, frames: int = CALIBRATION_FRAMES
) -> list[dict[str, np.ndarray]]:
    """Generator inputs (batch 1) from teacher speech of the training split: the reference and
    masked crops the compositor builds for frame k, and the mel window of that frame."""
    from models.audio import MelWindower
    from models.compositor import Compositor
    from models.media import clean
    from models.synth.corpus import sentences as corpus
    from models.synth.speech import synthesize, voices

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


INT8_FILE = "generator.int8.onnx"  # the reduced model, beside the avatar's FP32 model
