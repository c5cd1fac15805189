"""ONNX export: parity with torch, dynamic batch, names, FP16 and the failure path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import models.export as export
from models.config import GeneratorConfig, ModelConfig
from models.networks import Generator


def _checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig()
    g = Generator(cfg.generator)
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {
            "config": cfg.to_dict(),
            "stage": "done",
            "step": 0,
            "state": {"generator": g.state_dict()},
        },
        path,
    )
    return path


def test_export_parity_and_io(tmp_path: Path) -> None:
    out = tmp_path / "g.onnx"
    diff = export.export_onnx(_checkpoint(tmp_path), out)
    assert diff <= 1e-3
    sess = export.cpu_session(out)
    assert [i.name for i in sess.get_inputs()] == ["reference", "masked", "mel"]
    assert [o.name for o in sess.get_outputs()] == ["mouth"]
    feed = {
        "reference": np.zeros((4, 3, 160, 160), np.float32),
        "masked": np.zeros((4, 3, 160, 160), np.float32),
        "mel": np.full((4, 24, 80), -5.0, np.float32),
    }
    assert sess.run(None, feed)[0].shape == (4, 3, 160, 160)


def test_export_fp16(tmp_path: Path) -> None:
    out = tmp_path / "g16.onnx"
    diff = export.export_onnx(_checkpoint(tmp_path), out, fp16=True)
    assert diff <= export.PARITY_FP16
    assert out.stat().st_size < (tmp_path / "checkpoint.pt").stat().st_size


def test_parity_failure_raises_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "parity", lambda *a, **k: 0.5)
    out = tmp_path / "bad.onnx"
    with pytest.raises(export.ParityError):
        export.export_generator(Generator(GeneratorConfig()), GeneratorConfig(), out)
    assert not out.exists()
    assert not list(tmp_path.glob("*.tmp"))
