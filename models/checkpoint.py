"""Checkpoints as plain data: the one loader, the one atomic writer, and the generator in one.

A checkpoint is a dict of tensors, numbers and strings (``config``, ``state``, ...), read with
``weights_only=True`` so that loading a file never runs code from it. Training, fine-tuning,
export, adaptation and the torch backend all read checkpoints through this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.config import GeneratorConfig, ModelConfig, from_dict
from models.networks import Generator


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """A checkpoint as plain data (no classes unpickled)."""
    ckpt: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    return ckpt


def save_checkpoint(ckpt: dict[str, Any], path: Path) -> None:
    """Write next to ``path``, then rename: a run stopped mid-write leaves the old file whole."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def generator_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """The generator of a training or package checkpoint, in eval mode.

    A generator-only checkpoint (its config and state at the top level) is read as well.
    """
    config = ckpt["config"]
    state = ckpt["state"]
    g = Generator(from_dict(GeneratorConfig, config.get("generator", config)))
    g.load_state_dict(state.get("generator", state))
    return g.eval()


def cpu_copy(generator: nn.Module, model_cfg: ModelConfig) -> nn.Module:
    """A CPU copy of a (possibly CUDA) generator in eval mode, for export."""
    copy = Generator(model_cfg.generator)
    copy.load_state_dict({k: v.cpu() for k, v in generator.state_dict().items()})
    return copy.eval()
