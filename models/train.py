"""Resumable training in three stages: audio encoder, SyncNet expert, generator (+ critic).

1. ``audio``: the generator's audio encoder and its params head learn the teacher's mouth
   params from mel windows alone. No images, so thousands of steps cost minutes on a CPU, and
   the audio-only shards bring many more voices than the rendered ones.
2. ``sync``: the SyncNet expert learns to tell in-sync (mouth, audio) pairs from others; it
   starts from the trained audio encoder. Then it is frozen.
3. ``gen``: the whole generator learns the mouth crop (L1 in the mask, edges, params aux, sync
   from the frozen expert, and LSGAN from the patch critic once the images are roughly right).

One checkpoint file holds the config, the stage, the step, every model and optimiser, and the
random states, so ``resume=True`` continues exactly where a run stopped.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import losses
from models.checkpoint import load_checkpoint, save_checkpoint
from models.config import ModelConfig
from models.data import FrameDataset
from models.networks import Generator, PatchDiscriminator, SyncNet
from models.step import Gan, LossWeights, cosine_lr, freeze, generator_step, set_lr, to_device

STAGES = ("audio", "sync", "gen", "done")
CHECKPOINT = "checkpoint.pt"


WARMUP = 50  # steps of linear learning-rate warm-up at the start of each stage


class Trainer:
    """Owns the models, optimisers and random state of one run."""

    def __init__(self, cfg: ModelConfig, out_dir: Path, device: torch.device) -> None:
        self.cfg = cfg
        self.out_dir = out_dir
        self.device = device
        torch.manual_seed(cfg.train.seed)
        self.rng = np.random.default_rng(cfg.train.seed)
        self.generator = Generator(cfg.generator).to(device)
        self.syncnet = SyncNet(cfg.syncnet).to(device)
        self.disc = PatchDiscriminator(cfg.disc).to(device)
        audio_params = [
            *self.generator.audio.parameters(),
            *self.generator.params_head.parameters(),
        ]
        self.opt_audio = torch.optim.Adam(audio_params, lr=cfg.train.audio_lr)
        self.opt_sync = torch.optim.Adam(self.syncnet.parameters(), lr=cfg.train.sync_lr)
        self.opt_gen = torch.optim.Adam(
            self.generator.parameters(), lr=cfg.train.gen_lr, betas=(0.5, 0.999)
        )
        self.opt_disc = torch.optim.Adam(
            self.disc.parameters(), lr=cfg.train.disc_lr, betas=(0.5, 0.999)
        )
        self.gan = Gan(self.generator, self.opt_gen, self.syncnet, self.disc, self.opt_disc)
        self.weights = LossWeights(
            l1=cfg.train.w_l1,
            edge=cfg.train.w_edge,
            sync=cfg.train.w_sync,
            adv=cfg.train.w_adv,
            params=cfg.train.w_params,
        )
        self.stage = "audio"
        self.step = 0
        self.seconds: dict[str, float] = {}

    # -- checkpoints ----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "stage": self.stage,
            "step": self.step,
            "seconds": dict(self.seconds),
            "device": str(self.device),
            "state": {
                "generator": self.generator.state_dict(),
                "syncnet": self.syncnet.state_dict(),
                "disc": self.disc.state_dict(),
                "opt_audio": self.opt_audio.state_dict(),
                "opt_sync": self.opt_sync.state_dict(),
                "opt_gen": self.opt_gen.state_dict(),
                "opt_disc": self.opt_disc.state_dict(),
            },
            "rng": {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state()},
        }

    def save(self) -> Path:
        path = self.out_dir / CHECKPOINT
        save_checkpoint(self.state(), path)
        return path

    def load(self, ckpt: dict[str, Any]) -> None:
        s = ckpt["state"]
        self.generator.load_state_dict(s["generator"])
        self.syncnet.load_state_dict(s["syncnet"])
        self.disc.load_state_dict(s["disc"])
        for name in ("opt_audio", "opt_sync", "opt_gen", "opt_disc"):
            getattr(self, name).load_state_dict(s[name])
        self.stage, self.step = ckpt["stage"], int(ckpt["step"])
        self.seconds = dict(ckpt.get("seconds", {}))
        self.rng.bit_generator.state = ckpt["rng"]["numpy"]
        torch.set_rng_state(ckpt["rng"]["torch"])

    # -- stages ---------------------------------------------------------------------------

    def run(self, data: FrameDataset, progress: bool = True) -> None:
        t = self.cfg.train
        plan = {"audio": t.audio_steps, "sync": t.sync_steps, "gen": t.gen_steps}
        steppers = {"audio": self._audio_step, "sync": self._sync_step, "gen": self._gen_step}
        from tqdm import tqdm

        while self.stage != "done":
            total = plan[self.stage]
            bar = tqdm(
                total=total,
                initial=self.step,
                desc=self.stage,
                disable=not progress,
                dynamic_ncols=True,
            )
            start = time.monotonic()
            while self.step < total:
                logs = steppers[self.stage](data, self.step, total)
                self.step += 1
                bar.update()
                if self.step % 10 == 0 or self.step == total:
                    bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()}, refresh=False)
                if self.step % t.checkpoint_every == 0:
                    self._account(start)
                    start = time.monotonic()
                    self.save()
            bar.close()
            self._account(start)
            self.stage = STAGES[STAGES.index(self.stage) + 1]
            self.step = 0
            self.save()

    def _account(self, start: float) -> None:
        self.seconds[self.stage] = self.seconds.get(self.stage, 0.0) + time.monotonic() - start

    def _audio_step(self, data: FrameDataset, step: int, total: int) -> dict[str, float]:
        t = self.cfg.train
        set_lr(self.opt_audio, cosine_lr(step, total, t.audio_lr, WARMUP))
        self.generator.train()
        b = to_device(data.audio_batch(self.rng, t.audio_batch), self.device)
        _, pred = self.generator.encode_audio(b["mel"])
        loss = losses.params_loss(pred, b["params"])
        self.opt_audio.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_audio.step()
        return {"params": loss.item()}

    def _sync_step(self, data: FrameDataset, step: int, total: int) -> dict[str, float]:
        t = self.cfg.train
        if step == 0:
            self._warm_start_syncnet()
        set_lr(self.opt_sync, cosine_lr(step, total, t.sync_lr, WARMUP))
        self.syncnet.train()
        b = to_device(data.sync_batch(self.rng, t.sync_batch), self.device)
        prob = self.syncnet(b["crop"], b["mel"])
        loss = losses.sync_bce(prob, b["label"])
        self.opt_sync.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_sync.step()
        acc = ((prob > 0.5).float() == b["label"]).float().mean()
        return {"bce": loss.item(), "acc": acc.item()}

    def _warm_start_syncnet(self) -> None:
        """The expert's audio branch starts from the trained audio encoder when shapes match."""
        src = self.generator.audio.state_dict()
        dst = self.syncnet.audio[0]
        if all(v.shape == dst.state_dict()[k].shape for k, v in src.items()):
            dst.load_state_dict(src)

    def _gen_step(self, data: FrameDataset, step: int, total: int) -> dict[str, float]:
        t = self.cfg.train
        freeze(self.syncnet)
        frac = step / max(1, total)
        set_lr(self.opt_gen, cosine_lr(step, total, t.gen_lr, WARMUP))
        b = to_device(data.generator_batch(self.rng, t.gen_batch), self.device)
        mask = torch.from_numpy(data.mask).to(self.device)[None, None]
        forcing = t.teacher_forcing * max(0.0, 1.0 - frac / max(1e-6, t.teacher_forcing_end))
        params = b["params"] if self.rng.random() < forcing else None
        adversarial = frac >= t.adv_start and t.w_adv > 0
        return generator_step(
            self.gan, b, mask, self.weights, forcing=params, adversarial=adversarial
        )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no CUDA device is available")
    return torch.device(device)


def train(
    cfg: ModelConfig,
    out_dir: str | Path,
    device: str = "auto",
    steps: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Run (or continue) all stages; ``steps`` overrides the generator stage's step count.

    Returns the checkpoint path. With ``resume`` the config stored in the checkpoint wins,
    except for the step counts, which may be raised to train longer.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if steps is not None:
        cfg = replace(cfg, train=replace(cfg.train, gen_steps=steps))
    path = out / CHECKPOINT
    ckpt = load_checkpoint(path) if resume and path.exists() else None
    if ckpt is not None:
        stored = ModelConfig.from_dict(ckpt["config"])
        cfg = replace(
            stored,
            train=replace(
                stored.train,
                audio_steps=cfg.train.audio_steps,
                sync_steps=cfg.train.sync_steps,
                gen_steps=cfg.train.gen_steps,
            ),
        )
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    dev = resolve_device(device)
    trainer = Trainer(cfg, out, dev)
    if ckpt is not None:
        trainer.load(ckpt)
    t = cfg.train
    data = FrameDataset(t.data_dir, gain_db=t.gain_db, colour=t.colour, look=t.look)
    trainer.run(data, progress=progress)
    return path
