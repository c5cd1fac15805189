"""The closure polish: a short last stage that teaches a trained generator to shut its lips.

p/b/m are 60-100 ms of speech, about one frame in seven of the teacher's data, and a generator
trained on frames drawn evenly closes on the voices it heard in training but only part way on
voices it never heard: on festival's held-out ``ked_diphone`` the built-in model closed its lips
on 77 % of p/b/m (espeak's held-out voices: 98-100 %; ``python -m streamer.measure.voices``),
and on recorded human speech on 62 %. The polish continues the generator stage for a few
hundred steps at a fifth of its learning rate, with the same losses and experts (the frozen
SyncNet and the patch critic), on batches in which a quarter of the frames are closures.

``python -m models.polish --base CKPT --experts CKPT [--out DIR]`` polishes a package's
generator checkpoint with a training run's experts and writes the generator (checkpoint and
ONNX, parity-checked) into the package; the recipe runs the same stage after training.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from models.config import ModelConfig
from models.data import FrameDataset
from models.networks import Generator, PatchDiscriminator, SyncNet
from models.person import with_closures
from models.step import Gan, LossWeights, cosine_lr, freeze, generator_step, set_lr, to_device
from models.synth.visemes import PRESS, PRESSED

log = logging.getLogger("models.polish")

WARMUP = 20


@dataclass(frozen=True)
class PolishConfig:
    steps: int = 600
    lr_scale: float = 0.2  # of the generator stage's learning rates (generator and critic)
    closures: float = 0.25  # share of each batch drawn from the closure frames
    seed: int = 0


def closure_frames(data: FrameDataset) -> np.ndarray:
    """Indices of the rendered frames whose lips press together."""
    return np.flatnonzero(data.params[:, PRESS] > PRESSED)


def batch_index(
    rng: np.random.Generator, n: int, closed: np.ndarray, batch: int, share: float
) -> np.ndarray:
    """``batch`` frame indices, each a closure with probability ``share`` (else any frame)."""
    return with_closures(rng, rng.integers(0, n, batch), closed, share)


def polish(
    generator: Generator,
    experts: dict[str, Any],
    cfg: ModelConfig,
    data: FrameDataset,
    polish_cfg: PolishConfig = PolishConfig(),
    device: torch.device | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Polish ``generator`` in place; ``experts`` holds the run's ``syncnet`` and ``disc``
    states. Returns the last step's losses."""
    from tqdm import tqdm

    device = device or torch.device("cpu")
    t, p = cfg.train, polish_cfg
    torch.manual_seed(p.seed)
    rng = np.random.default_rng(p.seed)
    syncnet = SyncNet(cfg.syncnet).to(device)
    syncnet.load_state_dict(experts["syncnet"])
    freeze(syncnet)
    disc = PatchDiscriminator(cfg.disc).to(device)
    disc.load_state_dict(experts["disc"])
    lr = t.gen_lr * p.lr_scale
    opt = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_disc = torch.optim.Adam(disc.parameters(), lr=t.disc_lr * p.lr_scale, betas=(0.5, 0.999))
    gan = Gan(generator, opt, syncnet, disc, opt_disc)
    weights = LossWeights(t.w_l1, t.w_edge, t.w_sync, t.w_adv, t.w_params)
    mask = torch.from_numpy(data.mask).to(device)[None, None]
    closed = closure_frames(data)
    log.info("polishing on %d closure frames of %d", len(closed), len(data))
    logs: dict[str, float] = {}
    for step in tqdm(range(p.steps), desc="polish", disable=not progress, dynamic_ncols=True):
        set_lr(opt, cosine_lr(step, p.steps, lr, WARMUP))
        idx = batch_index(rng, len(data), closed, t.gen_batch, p.closures)
        batch = to_device(data.generator_batch(rng, t.gen_batch, idx), device)
        logs = generator_step(gan, batch, mask, weights, adversarial=True)
    generator.eval()
    return logs


def polish_checkpoint(
    base: Path,
    experts: Path,
    out: Path,
    polish_cfg: PolishConfig = PolishConfig(),
    data_dir: str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """Polish the generator of checkpoint ``base`` with the experts (and config, and data
    unless ``data_dir``) of training checkpoint ``experts``; write a generator-only checkpoint
    to ``out`` and return it."""
    from models.checkpoint import generator_from_checkpoint, load_checkpoint, save_checkpoint
    from models.train import resolve_device

    dev = resolve_device(device)
    run = load_checkpoint(experts)
    cfg = ModelConfig.from_dict(run["config"])
    if data_dir is not None:
        cfg = replace(cfg, train=replace(cfg.train, data_dir=data_dir))
    t = cfg.train
    data = FrameDataset(t.data_dir, gain_db=t.gain_db, colour=t.colour, look=t.look)
    start = load_checkpoint(base)
    generator = cast(Generator, generator_from_checkpoint(start).to(dev))
    polish(generator, run["state"], cfg, data, polish_cfg, dev, progress)
    kept = ("config", "stage", "step", "seconds", "device")
    slim: dict[str, Any] = {
        **{k: start[k] for k in kept if k in start},
        "polish": {"steps": polish_cfg.steps, "closures": polish_cfg.closures},
        "state": {"generator": {k: v.cpu() for k, v in generator.state_dict().items()}},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(slim, out)
    return out


def main(argv: list[str] | None = None) -> int:
    from models.export import export_onnx

    parser = argparse.ArgumentParser(prog="python -m models.polish", description=__doc__)
    parser.add_argument("--base", type=Path, required=True, help="a generator checkpoint")
    parser.add_argument(
        "--experts", type=Path, required=True, help="a training run's checkpoint.pt"
    )
    parser.add_argument("--out", type=Path, help="package to write (default: beside --base)")
    parser.add_argument("--data", help="the teacher dataset (default: the run's)")
    parser.add_argument("--steps", type=int, default=PolishConfig.steps)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    for path in (args.base, args.experts):
        if not path.is_file():
            parser.error(f"{path}: no such checkpoint")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = args.out or args.base.parent
    checkpoint = polish_checkpoint(
        args.base,
        args.experts,
        out / "checkpoint.pt",
        PolishConfig(steps=args.steps),
        args.data,
        args.device,
    )
    parity = export_onnx(checkpoint, out / "generator.onnx")
    log.info("wrote %s and generator.onnx (ONNX parity %.1e)", checkpoint, parity)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
