"""``avatarcast avatar train NAME``: fit the generator to one person's own video.

The run starts from the avatar's current ``checkpoint.pt`` (at first the default model) and
learns from the ``person/`` material that ``avatar create`` wrote: per used frame the mouth
crop, its masked copy (the generator's input) and the mel window of the person's speech. The
tail of the video holding the last ``holdout`` share of the speech is never trained on: it
is where :mod:`models.person_eval` compares the old and the new model afterwards.

Losses: L1 in the feather mask and on edges (as in the default's training), the frozen
SyncNet expert when the starting checkpoint holds one (the default's does not: then sync is
skipped), and optionally the LSGAN patch critic. No teacher params: a person has none.

The run's state (models, optimisers, random state, step) is saved atomically to
``HOME/work/NAME/finetune.pt`` (``HOME``: the server's home) every ``checkpoint_every``
steps, so ``--resume`` continues exactly there. The package changes only at the end, and
only when the new model is better on the held-out part (or ``force``): a copy of the package
with the new checkpoint and its ONNX export (checked for parity) is renamed into place
(:func:`models.avatar.replace_package`). The step itself is :mod:`models.step`'s, which the
default's training shares.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.avatar import (
    CHECKPOINT_FILE,
    DEFAULT_NAME,
    MODEL_FILE,
    Avatar,
    load_avatar,
    replace_package,
)
from models.checkpoint import (
    cpu_copy,
    generator_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from models.config import ModelConfig
from models.networks import Generator, PatchDiscriminator, SyncNet
from models.ownership import file_sha256
from models.person import FinetuneError, PersonData, load_person, training_batch
from models.progress_lines import ProgressLines
from models.step import Gan, LossWeights, cosine_lr, freeze, generator_step, set_lr, to_device

STATE_FILE = "finetune.pt"
LR_FLOOR = 0.1  # the cosine decays to a tenth of the learning rate


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 1500
    batch: int = 8
    lr: float = 2e-4  # a fifth of the default's: the model is already good, keep it so
    seed: int = 0
    holdout: float = 0.15  # share of the speech frames, at the end of the video, held out
    w_l1: float = 1.0
    w_edge: float = 0.5
    w_sync: float = 0.03
    w_adv: float = 0.0  # the critic is optional: 0 leaves it out (cheaper, steadier)
    adv_start: float = 0.5
    disc_lr: float = 2e-4
    gain_db: float = 6.0  # random gain on the mel windows
    colour: float = 1.0  # random spectral colour on them (models.melaug), as in training
    closures: float = 0.0  # share of each batch drawn from closure frames (where known)
    hold_hearing: bool = False  # keep the audio encoder and its params head as they are
    checkpoint_every: int = 100
    threads: int = 0  # torch CPU threads; 0 = torch's default

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# --- the run ---------------------------------------------------------------------------------


def work_dir(name: str, home: Path) -> Path:
    """Where a run of ``avatar train NAME`` keeps its state until it is done."""
    return home / "work" / name


def hold(*modules: torch.nn.Module) -> None:
    """Keep ``modules`` as they are while the rest trains: no gradients, and their batch
    norms always in inference mode (the generator's ``train()`` would switch them back)."""
    for module in modules:
        module.requires_grad_(False)
        module.eval()
        module.register_forward_pre_hook(_inference)


def _inference(module: torch.nn.Module, _: Any) -> None:
    module.eval()


class Finetuner:
    """Owns the models, optimisers and random state of one person's run."""

    def __init__(self, base: dict[str, Any], cfg: FinetuneConfig, device: torch.device) -> None:
        self.model_cfg = ModelConfig.from_dict(base["config"])
        self.cfg = cfg
        self.device = device
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        state = base["state"]
        self.generator = Generator(self.model_cfg.generator).to(device)
        self.generator.load_state_dict(state["generator"])
        if cfg.hold_hearing:
            hold(self.generator.audio, self.generator.params_head)
        self.syncnet: SyncNet | None = None
        if "syncnet" in state:
            self.syncnet = SyncNet(self.model_cfg.syncnet).to(device)
            self.syncnet.load_state_dict(state["syncnet"])
            freeze(self.syncnet)
        self.disc: PatchDiscriminator | None = None
        self.opt_disc: torch.optim.Optimizer | None = None
        if cfg.w_adv > 0:
            self.disc = PatchDiscriminator(self.model_cfg.disc).to(device)
            if "disc" in state:
                self.disc.load_state_dict(state["disc"])
            self.opt_disc = torch.optim.Adam(
                self.disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.999)
            )
        self.opt_gen = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
        self.gan = Gan(self.generator, self.opt_gen, self.syncnet, self.disc, self.opt_disc)
        self.weights = LossWeights(l1=cfg.w_l1, edge=cfg.w_edge, sync=cfg.w_sync, adv=cfg.w_adv)
        self.step = 0
        self.seconds = 0.0

    def state(self, base_sha: str) -> dict[str, Any]:
        state: dict[str, Any] = {
            "generator": self.generator.state_dict(),
            "opt_gen": self.opt_gen.state_dict(),
        }
        if self.disc is not None and self.opt_disc is not None:
            state["disc"] = self.disc.state_dict()
            state["opt_disc"] = self.opt_disc.state_dict()
        return {
            "config": self.model_cfg.to_dict(),
            "finetune": asdict(self.cfg),
            "base_sha256": base_sha,
            "step": self.step,
            "seconds": self.seconds,
            "device": str(self.device),
            "state": state,
            "rng": {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state()},
        }

    def load(self, saved: dict[str, Any]) -> None:
        s = saved["state"]
        self.generator.load_state_dict(s["generator"])
        self.opt_gen.load_state_dict(s["opt_gen"])
        if self.disc is not None and self.opt_disc is not None and "disc" in s:
            self.disc.load_state_dict(s["disc"])
            self.opt_disc.load_state_dict(s["opt_disc"])
        self.step = int(saved["step"])
        self.seconds = float(saved.get("seconds", 0.0))
        self.rng.bit_generator.state = saved["rng"]["numpy"]
        torch.set_rng_state(saved["rng"]["torch"])

    def train_step(self, data: PersonData) -> dict[str, float]:
        c = self.cfg
        set_lr(self.opt_gen, cosine_lr(self.step, c.steps, c.lr, floor=LR_FLOOR))
        b = to_device(
            training_batch(data, self.rng, c.batch, c.gain_db, c.colour, c.closures), self.device
        )
        focused = data.mask if data.focus is None else data.mask * data.focus
        logs = generator_step(
            self.gan,
            b,
            torch.from_numpy(data.mask).to(self.device)[None, None],
            self.weights,
            focus=torch.from_numpy(np.ascontiguousarray(focused)).to(self.device)[None, None],
            adversarial=min(1.0, self.step / max(1, c.steps)) >= c.adv_start,
        )
        self.step += 1
        return logs

    def run(self, data: PersonData, base_sha: str, path: Path, progress: bool) -> None:
        from tqdm import tqdm

        c = self.cfg
        on_terminal = sys.stderr.isatty()
        bar = tqdm(
            total=c.steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not (progress and on_terminal),
            dynamic_ncols=True,
            file=sys.stderr,
        )
        # Without a terminal: lines (each 10 s) in the bar's place.
        lines = ProgressLines() if progress and not on_terminal else None
        start = time.monotonic()
        try:
            while self.step < c.steps:
                logs = self.train_step(data)
                bar.update()
                if lines is not None:
                    lines.update("train", self.step, c.steps)
                if self.step % 5 == 0 or self.step == c.steps:
                    bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()}, refresh=False)
                if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                    now = time.monotonic()
                    self.seconds += now - start
                    start = now
                    save_checkpoint(self.state(base_sha), path)
        finally:
            bar.close()

    def package_checkpoint(self, base: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint the package ships: the default's format (``export_onnx`` and
        ``generator_from_checkpoint`` read it), the expert carried over unchanged."""
        state: dict[str, Any] = {"generator": self.generator.state_dict()}
        for key in ("syncnet", "disc"):
            if key in base["state"]:
                state[key] = base["state"][key]
        if self.disc is not None:
            state["disc"] = self.disc.state_dict()
        return {
            "config": self.model_cfg.to_dict(),
            "stage": "done",
            "step": self.step,
            "seconds": {"finetune": self.seconds},
            "device": str(self.device),
            "finetune": asdict(self.cfg),
            "state": {k: {n: v.cpu() for n, v in s.items()} for k, s in state.items()},
        }


@dataclass(frozen=True)
class TrainReport:
    name: str
    steps: int
    seconds: float  # training time of this call (resumed steps are not counted)
    steps_run: int
    old: Any  # models.person_eval.PersonScore
    new: Any
    kept: bool  # the new model replaced the old one
    forced: bool
    parity: float | None  # ONNX vs torch max abs difference of the written model
    heldout_frames: int
    train_frames: int
    work: Path  # where the run's state stays when the new model is not kept

    @property
    def steps_per_s(self) -> float:
        return self.steps_run / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        lines = [
            f"trained avatar {self.name!r}: {self.steps} steps "
            f"({self.steps_run} now, {self.steps_per_s:.2f} steps/s), "
            f"{self.train_frames} frames trained on, {self.heldout_frames} held out",
            f"{'held-out':16}{'old':>10}{'new':>10}",
        ]
        for key, digits in (("r", 3), ("lag_ms", 0), ("miss", 3), ("psnr_db", 2), ("ssim", 4)):
            old, new = self.old.show(key, digits), self.new.show(key, digits)
            lines.append(f"{key:16}{old:>10}{new:>10}")
        if self.kept:
            how = "forced" if self.forced and not self.new.better_than(self.old) else "better"
            lines.append(f"kept the new model ({how}); ONNX parity {self.parity:.1e}")
        else:
            lines.append(
                "kept the old model: the new one is not better on the held-out part "
                f"(--resume --force keeps it anyway; its state is in {self.work})"
            )
        return "\n".join(lines)


def train_avatar(
    name: str,
    *,
    home: Path,
    device: str = "auto",
    steps: int | None = None,
    resume: bool = False,
    force: bool = False,
    cfg: FinetuneConfig | None = None,
    progress: bool = True,
) -> TrainReport:
    """Fine-tune avatar ``name`` on its person's video, judge it on the held-out part, and
    replace the package's model when the new one is better (or ``force``)."""
    from models.person_eval import evaluate_generators
    from models.train import resolve_device

    if name == DEFAULT_NAME:
        raise FinetuneError("the default avatar is trained by `python -m models.recipe`")
    avatar = load_avatar(name, home)
    base_path = avatar.path / CHECKPOINT_FILE
    if not base_path.is_file():
        raise FinetuneError(f"avatar {name!r} has no {CHECKPOINT_FILE} to start from: recreate it")
    cfg = cfg or FinetuneConfig()
    if steps is not None:
        if steps < 0:
            raise FinetuneError("--steps must be 0 or more")
        cfg = replace(cfg, steps=steps)
    try:
        dev = resolve_device(device)
    except RuntimeError as exc:
        raise FinetuneError(str(exc)) from None
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    data = load_person(avatar, cfg.holdout)
    base = load_checkpoint(base_path)
    base_sha = file_sha256(base_path)
    work = work_dir(name, home)
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / STATE_FILE
    saved = load_checkpoint(state_path) if resume and state_path.is_file() else None
    if saved is not None:
        if saved.get("base_sha256") != base_sha:
            raise FinetuneError(
                f"avatar {name!r}'s model changed since that run started: train without --resume"
            )
        # The stored run's settings win, except the step count, which may be raised.
        cfg = replace(FinetuneConfig.from_dict(saved["finetune"]), steps=cfg.steps)
    tuner = Finetuner(base, cfg, dev)
    if saved is not None:
        tuner.load(saved)
    done_before = tuner.step
    started = time.monotonic()
    tuner.run(data, base_sha, state_path, progress)
    seconds = time.monotonic() - started

    old_model = generator_from_checkpoint(base).to(dev)
    scores = evaluate_generators(
        avatar, data, {"old": old_model, "new": tuner.generator}, dev, progress=progress
    )
    old, new = scores["old"], scores["new"]
    keep = force or new.better_than(old)
    parity: float | None = None
    if keep:
        parity = _write_package(avatar, tuner.package_checkpoint(base), tuner)
        shutil.rmtree(work, ignore_errors=True)
    return TrainReport(
        name=name,
        steps=tuner.step,
        seconds=seconds,
        steps_run=tuner.step - done_before,
        old=old,
        new=new,
        kept=keep,
        forced=force,
        parity=parity,
        heldout_frames=len(data.heldout),
        train_frames=len(data.train),
        work=work,
    )


def _write_package(avatar: Avatar, checkpoint: dict[str, Any], tuner: Finetuner) -> float:
    """Copy the package, put the new checkpoint and its ONNX export in, and swap it in."""
    from models.export import export_generator

    target = avatar.path
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.train-", dir=target.parent))
    try:
        package = staging / "package"
        shutil.copytree(target, package)
        # Files derived from the old generator (quantised copies) would now disagree with it.
        for stale in package.glob("generator.*.onnx"):
            stale.unlink()
        torch.save(checkpoint, package / CHECKPOINT_FILE)
        model = cpu_copy(tuner.generator, tuner.model_cfg)
        diff = export_generator(model, tuner.model_cfg.generator, package / MODEL_FILE)
        replace_package(package, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return diff


__all__ = [
    "FinetuneConfig",
    "FinetuneError",
    "PersonData",
    "TrainReport",
    "load_person",
    "train_avatar",
    "work_dir",
]
