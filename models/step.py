"""The generator training step that ``train`` (the default model) and ``avatar train`` (one
person) share, with its learning-rate schedule and the SyncNet freeze.

One step: the generator draws the mouth crop from a reference, the masked frame and the mel
window; L1 and edge losses inside the (optionally focused) feather mask; the auxiliary mouth
params loss when the batch has teacher params; the frozen SyncNet expert's sync loss on what
the compositor would show; and, once ``adversarial``, the LSGAN patch critic, which then takes
its own step. Keeping it in one place keeps the two trainings the same model of the problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from models import losses
from models.networks import Generator, PatchDiscriminator, SyncNet


def cosine_lr(step: int, total: int, base: float, warmup: int = 0, floor: float = 0.05) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``base`` to
    ``floor * base``: the last steps polish rather than move."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def freeze(expert: nn.Module) -> None:
    """The SyncNet expert judges the generator; it must not learn from it."""
    expert.eval()
    for p in expert.parameters():
        p.requires_grad_(False)


def to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, Tensor]:
    return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()}


@dataclass(frozen=True)
class LossWeights:
    l1: float
    edge: float
    sync: float
    adv: float
    params: float = 0.0  # only where the batch carries the teacher's mouth params


@dataclass(frozen=True)
class Gan:
    """What a generator step updates (generator, critic) and judges with (the expert)."""

    generator: Generator
    opt_gen: torch.optim.Optimizer
    syncnet: SyncNet | None = None  # frozen; None skips the sync loss
    disc: PatchDiscriminator | None = None
    opt_disc: torch.optim.Optimizer | None = None


def generator_step(
    gan: Gan,
    batch: dict[str, Tensor],
    mask: Tensor,
    weights: LossWeights,
    *,
    focus: Tensor | None = None,
    forcing: Tensor | None = None,
    adversarial: bool = False,
) -> dict[str, float]:
    """One optimiser step of the generator (and of the critic when ``adversarial``).

    ``batch``: reference, masked, target (B, 3, S, S) and mel, optionally params; ``mask``
    (1, 1, S, S) is the feather mask the compositor pastes with, ``focus`` the loss weight in
    its place (the lips weighted up), ``forcing`` teacher params that condition the decoder.
    """
    target = batch["target"]
    weight = mask if focus is None else focus
    gan.generator.train()
    fake, pred = gan.generator.forward_with_params(
        batch["reference"], batch["masked"], batch["mel"], forcing
    )
    l1 = losses.masked_l1(fake, target, weight)
    edge = losses.edge_loss(fake, target, weight)
    loss = weights.l1 * l1 + weights.edge * edge
    logs = {"l1": l1.item(), "edge": edge.item()}
    if "params" in batch:
        aux = losses.params_loss(pred, batch["params"])
        loss = loss + weights.params * aux
        logs["params"] = aux.item()
    # What the compositor shows: the generated mouth inside the mask, the frame outside.
    shown = fake * mask + target * (1.0 - mask)
    if gan.syncnet is not None and weights.sync > 0:
        sync = losses.sync_loss(gan.syncnet(shown, batch["mel"]))
        loss = loss + weights.sync * sync
        logs["sync"] = sync.item()
    critic = gan.disc if adversarial else None
    if critic is not None:
        adv = losses.lsgan_g(critic(shown))
        loss = loss + weights.adv * adv
        logs["adv"] = adv.item()
    gan.opt_gen.zero_grad(set_to_none=True)
    loss.backward()
    gan.opt_gen.step()
    if critic is not None and gan.opt_disc is not None:
        d_loss = losses.lsgan_d(critic(target), critic(shown.detach()))
        gan.opt_disc.zero_grad(set_to_none=True)
        d_loss.backward()
        gan.opt_disc.step()
        logs["d"] = d_loss.item()
    return logs
