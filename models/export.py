"""Export the generator to ONNX, checked against torch on random and realistic inputs."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.config import GeneratorConfig

INPUTS = ("reference", "masked", "mel")
OUTPUT = "mouth"
OPSET = 17
PARITY_FP32 = 1e-3
PARITY_FP16 = 2e-2  # half precision cannot meet 1e-3 on [0, 1] pixels; 2e-2 is ~5/255


class ParityError(RuntimeError):
    """The exported model does not reproduce the torch model's outputs."""


def _example(cfg: GeneratorConfig, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    s = cfg.crop
    return (
        torch.rand(batch, 3, s, s, generator=g),
        torch.rand(batch, 3, s, s, generator=g),
        torch.rand(batch, cfg.mel_frames, cfg.n_mels, generator=g) * 6.0 - 5.0,
    )


def cpu_session(path: Path, threads: int = 2) -> Any:
    """An ONNX Runtime CPU session on the exported ``path``: the one the parity check runs,
    and how a caller reads the graph's input and output names."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def export_generator(
    model: nn.Module, cfg: GeneratorConfig, out_path: str | Path, fp16: bool = False
) -> float:
    """Write ``out_path`` (atomically) and return the max abs difference against torch."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().float()
    example = _example(cfg, 2)
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            model,
            example,
            str(tmp),
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            opset_version=OPSET,
            dynamic_axes={name: {0: "batch"} for name in (*INPUTS, OUTPUT)},
            dynamo=False,
        )
    if fp16:
        _to_fp16(tmp)
    diff = parity(model, cfg, tmp, fp16)
    limit = PARITY_FP16 if fp16 else PARITY_FP32
    if not diff <= limit:
        tmp.unlink(missing_ok=True)
        raise ParityError(f"ONNX output differs from torch by {diff:.2e} (limit {limit:.0e})")
    os.replace(tmp, out)
    return diff


def _to_fp16(path: Path) -> None:
    """Weights and activations in half precision, inputs and outputs kept float32, so the
    runtime feeds the same arrays to either model."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))
    half = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(half, str(path))


def parity(model: nn.Module, cfg: GeneratorConfig, onnx_path: str | Path, fp16: bool) -> float:
    """Max abs difference between torch and ONNX Runtime at batch 1 and 3."""
    sess = cpu_session(Path(onnx_path))
    worst = 0.0
    for batch, seed in ((1, 1), (3, 2)):
        inputs = _example(cfg, batch, seed)
        with torch.no_grad():
            expected = model(*inputs).numpy()
        got = sess.run([OUTPUT], {n: t.numpy() for n, t in zip(INPUTS, inputs, strict=True)})[0]
        worst = max(worst, float(np.abs(got.astype(np.float32) - expected).max()))
    return worst


def export_onnx(checkpoint: str | Path, out_path: str | Path, fp16: bool = False) -> float:
    """Export the generator of a training checkpoint; returns the parity max abs difference
    and raises :class:`ParityError` when it exceeds the limit."""
    from models.checkpoint import generator_from_checkpoint, load_checkpoint
    from models.config import from_dict

    ckpt = load_checkpoint(checkpoint)
    cfg = from_dict(GeneratorConfig, ckpt["config"]["generator"])
    return export_generator(generator_from_checkpoint(ckpt), cfg, out_path, fp16=fp16)
