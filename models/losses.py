"""Losses of the three training stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Outside the feather mask the compositor keeps the base frame, so errors there barely matter;
# a small weight keeps the generator from drawing nonsense that could show at the soft edge.
OUTSIDE_WEIGHT = 0.1


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """L1 weighted by the feather mask (B or 1, 1, H, W), normalised by the weight sum."""
    weight = (mask + OUTSIDE_WEIGHT).expand_as(pred)
    return ((pred - target).abs() * weight).sum() / weight.sum()


def _gradients(x: Tensor) -> tuple[Tensor, Tensor]:
    return x[:, :, :, 1:] - x[:, :, :, :-1], x[:, :, 1:, :] - x[:, :, :-1, :]


def edge_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """L1 between image gradients in the mask: L1 alone blurs lip edges and teeth."""
    pgx, pgy = _gradients(pred)
    tgx, tgy = _gradients(target)
    mx, my = mask[:, :, :, 1:], mask[:, :, 1:, :]
    ex = ((pgx - tgx).abs() * mx).mean()
    ey = ((pgy - tgy).abs() * my).mean()
    return (ex + ey) / mask.mean().clamp_min(1e-3)


def params_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Smooth L1 on the mouth params: the fast, rendering-free signal for the audio encoder."""
    return F.smooth_l1_loss(pred, target, beta=0.1)


def sync_bce(prob: Tensor, label: Tensor) -> Tensor:
    return F.binary_cross_entropy(prob, label)


def sync_loss(prob: Tensor) -> Tensor:
    """Generator side: the frozen expert should find generated mouths in sync."""
    return -torch.log(prob).mean()


def lsgan_d(real: Tensor, fake: Tensor) -> Tensor:
    return 0.5 * (((real - 1.0) ** 2).mean() + (fake**2).mean())


def lsgan_g(fake: Tensor) -> Tensor:
    return ((fake - 1.0) ** 2).mean()
