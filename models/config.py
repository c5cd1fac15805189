"""Configuration of the lip-sync networks and of their training.

Every value is a frozen dataclass of plain numbers and strings, so a checkpoint can carry
its configuration as a dict (``asdict``) and be read back with ``torch.load(weights_only=True)``
without unpickling any class of ours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from models.audio import N_MELS, WindowConfig

N_PARAMS = 4  # the teacher's mouth parameters: open, width, round, press
CROP = 160


@dataclass(frozen=True)
class GeneratorConfig:
    """A small U-Net over (reference, masked target) conditioned on an audio window.

    The budget is about 0.3-0.6 GFLOP per frame: the stem halves the resolution at once and
    the output is restored by PixelShuffle, so no convolution runs at 160 px.
    """

    crop: int = CROP
    mel_frames: int = WindowConfig().length
    n_mels: int = N_MELS
    channels: tuple[int, ...] = (16, 32, 64, 128)  # at 80, 40, 20, 10 px
    audio_channels: int = 128
    audio_dim: int = 128
    cond_dim: int = 64  # audio embedding part of the decoder condition (the params add 4)
    bottleneck_blocks: int = 2
    n_params: int = N_PARAMS


@dataclass(frozen=True)
class SyncNetConfig:
    """Expert that scores whether a mouth (lower half of the crop) matches an audio window."""

    crop: int = CROP
    mel_frames: int = WindowConfig().length
    n_mels: int = N_MELS
    image_size: tuple[int, int] = (40, 80)  # the lower half of the crop, downscaled 2x
    channels: tuple[int, ...] = (32, 64, 128, 192)
    audio_channels: int = 128
    audio_dim: int = 128
    embed_dim: int = 128


@dataclass(frozen=True)
class DiscConfig:
    """PatchGAN discriminator on the mouth crop."""

    crop: int = CROP
    channels: tuple[int, ...] = (16, 32, 64)


@dataclass(frozen=True)
class TrainConfig:
    """Stages run in order: audio encoder pretraining, SyncNet, generator (+ discriminator)."""

    data_dir: str = "data/default"
    seed: int = 0
    audio_steps: int = 3000
    audio_batch: int = 256
    audio_lr: float = 2e-3
    sync_steps: int = 800
    sync_batch: int = 64
    sync_lr: float = 1e-3
    gen_steps: int = 2500
    gen_batch: int = 12
    gen_lr: float = 1e-3
    disc_lr: float = 2e-4
    # Loss weights: L1 in the mask dominates; the others shape what L1 cannot.
    w_l1: float = 1.0
    w_params: float = 2.0
    w_sync: float = 0.03
    w_adv: float = 0.01
    w_edge: float = 0.5
    adv_start: float = 0.5  # fraction of the generator stage before the discriminator joins
    # Teacher forcing: the decoder sees the true mouth params with this probability, decayed
    # to zero by ``teacher_forcing_end`` of the stage, so it learns params -> image at once.
    teacher_forcing: float = 0.5
    teacher_forcing_end: float = 0.6
    gain_db: float = 12.0  # random gain applied to the mel windows (gain invariance)
    colour: float = 1.0  # random spectral colour on them (models.melaug: channel invariance)
    look: float = 0.5  # share of generator samples seen through a random camera (models.lookaug)
    checkpoint_every: int = 250
    threads: int = 0  # torch CPU threads; 0 = leave torch's default


@dataclass(frozen=True)
class ModelConfig:
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    syncnet: SyncNetConfig = field(default_factory=SyncNetConfig)
    disc: DiscConfig = field(default_factory=DiscConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {
            "generator": asdict(self.generator),
            "syncnet": asdict(self.syncnet),
            "disc": asdict(self.disc),
            "train": asdict(self.train),
        }

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, Any]]) -> ModelConfig:
        return cls(
            generator=from_dict(GeneratorConfig, data.get("generator", {})),
            syncnet=from_dict(SyncNetConfig, data.get("syncnet", {})),
            disc=from_dict(DiscConfig, data.get("disc", {})),
            train=from_dict(TrainConfig, data.get("train", {})),
        )


T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a config dataclass from a dict, turning lists back into tuples; unknown keys fail."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**values)
