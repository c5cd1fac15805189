"""Training end to end on the stand-in teacher: data shards, stages, checkpoints, resume."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.config import ModelConfig, TrainConfig
from models.data import BuildConfig, FrameDataset, StandInTeacher, build_dataset
from models.train import train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("data")
    build_dataset(
        d,
        BuildConfig(render_utterances=4, audio_utterances=6, shard_size=3, workers=1),
        StandInTeacher(),
        progress=False,
    )
    return d


def _cfg(data_dir: Path, gen_steps: int = 4) -> ModelConfig:
    return ModelConfig(
        train=TrainConfig(
            data_dir=str(data_dir),
            audio_steps=3,
            audio_batch=16,
            sync_steps=3,
            sync_batch=8,
            gen_steps=gen_steps,
            gen_batch=2,
            checkpoint_every=2,
            adv_start=0.5,
            threads=1,
        )
    )


def test_dataset_shapes(data_dir: Path) -> None:
    ds = FrameDataset(data_dir)
    assert len(ds) > 0 and ds.crops.shape[1:] == (160, 160, 3)
    b = ds.generator_batch(np.random.default_rng(0), 3)
    assert b["reference"].shape == b["masked"].shape == b["target"].shape == (3, 3, 160, 160)
    assert b["mel"].shape == (3, 24, 80) and b["params"].shape == (3, 4)
    # The masked input carries nothing where the generator draws.
    assert float(b["masked"][:, :, ds.mask > 0.05].max()) == 0.0
    s = ds.sync_batch(np.random.default_rng(0), 8)
    assert set(np.unique(s["label"])) <= {0.0, 1.0}
    assert len(ds.audio_batch(np.random.default_rng(0), 5)["mel"]) == 5


def test_build_skips_existing_shards(data_dir: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in data_dir.glob("render-*.npz")}
    build_dataset(
        data_dir,
        BuildConfig(render_utterances=4, audio_utterances=6, shard_size=3, workers=1),
        StandInTeacher(),
        progress=False,
    )
    assert {p: p.stat().st_mtime_ns for p in data_dir.glob("render-*.npz")} == before


def test_train_all_stages_and_resume(data_dir: Path, tmp_path: Path) -> None:
    path = train(_cfg(data_dir), tmp_path, "cpu", progress=False)
    ckpt = load_checkpoint(path)  # weights_only: plain data, no classes
    assert ckpt["stage"] == "done"
    assert set(ckpt["seconds"]) == {"audio", "sync", "gen"}
    assert ModelConfig.from_dict(ckpt["config"]).train.gen_steps == 4

    # Interrupted during the generator stage: resuming finishes it from the saved step.
    ckpt["stage"], ckpt["step"] = "gen", 2
    torch.save(ckpt, path)
    train(_cfg(data_dir), tmp_path, "cpu", resume=True, progress=False)
    again = load_checkpoint(path)
    assert again["stage"] == "done"
    assert again["seconds"]["gen"] > ckpt["seconds"]["gen"]


def test_steps_override_and_fixed_seed(data_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(data_dir, gen_steps=50)
    cfg = replace(cfg, train=replace(cfg.train, audio_steps=2, sync_steps=1))
    a = load_checkpoint(train(cfg, tmp_path / "a", "cpu", steps=2, progress=False))
    b = load_checkpoint(train(cfg, tmp_path / "b", "cpu", steps=2, progress=False))
    assert a["config"]["train"]["gen_steps"] == 2
    for k, v in a["state"]["generator"].items():
        assert torch.equal(v, b["state"]["generator"][k]), k


def test_the_closure_polish(data_dir: Path, tmp_path: Path) -> None:
    """models.polish: batches drawn a quarter from the frames whose lips press together; the
    polished generator is written generator-only, loads, exports, and has moved."""
    from models.checkpoint import generator_from_checkpoint
    from models.export import export_onnx
    from models.polish import PolishConfig, batch_index, closure_frames, polish_checkpoint

    data = FrameDataset(data_dir)
    closed = closure_frames(data)
    assert 0 < len(closed) < len(data) and (data.params[closed, 3] > 0.5).all()
    rng = np.random.default_rng(0)
    drawn = np.concatenate([batch_index(rng, len(data), closed, 12, 0.25) for _ in range(500)])
    share = np.isin(drawn, closed).mean()
    natural = len(closed) / len(data)
    assert share == pytest.approx(0.25 + 0.75 * natural, abs=0.03)
    assert np.isin(batch_index(rng, len(data), closed, 64, 1.0), closed).all()

    base = train(_cfg(data_dir), tmp_path / "run", "cpu", progress=False)
    out = polish_checkpoint(base, base, tmp_path / "generator.pt", PolishConfig(steps=3))
    polished = load_checkpoint(out)
    assert set(polished["state"]) == {"generator"} and polished["polish"]["steps"] == 3
    before = load_checkpoint(base)["state"]["generator"]
    assert any(not torch.equal(v, before[k]) for k, v in polished["state"]["generator"].items())
    generator_from_checkpoint(polished)
    assert export_onnx(out, tmp_path / "generator.onnx") < 1e-3
