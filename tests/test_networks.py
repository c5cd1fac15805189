"""Shapes, ranges, budget and config round trips of the networks."""

from __future__ import annotations

import torch

from models.config import GeneratorConfig, ModelConfig, SyncNetConfig, TrainConfig
from models.networks import (
    FiLM,
    Generator,
    PatchDiscriminator,
    SyncNet,
    count_params,
    generator_macs,
)


def _inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return (
        torch.rand(batch, 3, 160, 160),
        torch.rand(batch, 3, 160, 160),
        torch.randn(batch, 24, 80),
    )


def test_generator_shapes_and_range() -> None:
    g = Generator(GeneratorConfig()).eval()
    with torch.no_grad():
        out, params = g.forward_with_params(*_inputs())
    assert out.shape == (2, 3, 160, 160)
    assert params.shape == (2, 4)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_generator_is_within_budget() -> None:
    cfg = GeneratorConfig()
    # 0.3-0.6 GFLOP per frame is the plan's budget (1 MAC = 2 FLOP).
    assert 2 * generator_macs(cfg) <= 0.6e9
    assert count_params(Generator(cfg)) < 3_000_000


def test_audio_conditions_the_output() -> None:
    g = Generator(GeneratorConfig()).eval()
    ref, masked, mel = _inputs(1)
    with torch.no_grad():
        a = g(ref, masked, mel)
        b = g(ref, masked, mel, params=torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
        # FiLM starts at identity, so give it weights before asking for a difference.
        for m in g.modules():
            if isinstance(m, FiLM):
                torch.nn.init.normal_(m.linear.weight, std=0.1)
        c = g(ref, masked, mel, params=torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert a.shape == b.shape
    assert float((a - c).abs().max()) > 1e-4


def test_syncnet_and_disc() -> None:
    s = SyncNet(SyncNetConfig()).eval()
    d = PatchDiscriminator(ModelConfig().disc)
    crop, _, mel = _inputs(3)
    with torch.no_grad():
        prob = s(crop, mel)
        score = d(crop)
    assert prob.shape == (3,)
    assert bool(((prob > 0) & (prob < 1)).all())
    assert score.shape == (3, 1, 20, 20)


def test_config_round_trip() -> None:
    cfg = ModelConfig(train=TrainConfig(gen_steps=7))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
