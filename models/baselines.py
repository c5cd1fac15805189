"""Reference generators of the size that people deploy today, for speed ratios in ``bench``.

Two networks with random weights, built after the Wav2Lip paper's description (Prajwal et al.,
2020): a face encoder over the masked target and a reference stacked as 6 channels, an audio
encoder over a mel window, and a face decoder that upsamples the joint embedding through
transposed convolutions, taking the matching encoder features as skip connections.

- ``wav2lip96``: the original's size, 96 px input, about 36 M parameters.
- ``wav2lip256``: the 256 px variant the community trains for sharper mouths, one more
  down/up stage and wider high-resolution layers, about 54 M parameters.

Only the architecture matters here: the weights are random, since a time per frame does not
depend on them. The specs are data (a frozen dataclass per network), not code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One resolution stage: a convolution that may change size, then residual blocks."""

    channels: int
    kernel: int
    stride: int | tuple[int, int]
    padding: int
    residual: int = 0


@dataclass(frozen=True)
class UpStage:
    """One decoder stage: a transposed convolution (after concatenating the skip), residuals."""

    channels: int
    kernel: int
    stride: int
    padding: int
    output_padding: int
    residual: int


@dataclass(frozen=True)
class BaselineSpec:
    name: str
    face_size: int
    mel_shape: tuple[int, int]  # (mels, frames) of the audio window, as the paper feeds it
    face_encoder: tuple[Stage, ...]
    audio_encoder: tuple[Stage, ...]
    decoder: tuple[UpStage, ...]
    head_channels: int  # channels of the last 3x3 conv before the 1x1 RGB output


def _face_encoder(first: int, widths: Sequence[tuple[int, int]]) -> tuple[Stage, ...]:
    """A 7x7 stem, stride-2 stages of (channels, residual blocks), then collapse to 1x1."""
    stages = [Stage(first, 7, 1, 3)]
    stages += [Stage(c, 3, 2, 1, r) for c, r in widths]
    stages += [Stage(512, 3, 1, 0), Stage(512, 1, 1, 0)]
    return tuple(stages)


# The audio encoder reduces an 80 x 16 mel window to a 512-d embedding.
_AUDIO = (
    Stage(32, 3, 1, 1, 2),
    Stage(64, 3, (3, 1), 1, 2),
    Stage(128, 3, 3, 1, 2),
    Stage(256, 3, (3, 2), 1, 1),
    Stage(512, 3, 1, 0),
    Stage(512, 1, 1, 0),
)

WAV2LIP96 = BaselineSpec(
    name="wav2lip96",
    face_size=96,
    mel_shape=(80, 16),
    # 96 -> 48 -> 24 -> 12 -> 6 -> 3 -> 1
    face_encoder=_face_encoder(16, [(32, 2), (64, 3), (128, 2), (256, 2), (512, 1)]),
    audio_encoder=_AUDIO,
    decoder=(
        UpStage(512, 3, 1, 0, 0, 1),  # 1 -> 3
        UpStage(512, 3, 2, 1, 1, 2),  # 3 -> 6
        UpStage(384, 3, 2, 1, 1, 2),  # 6 -> 12
        UpStage(256, 3, 2, 1, 1, 2),  # 12 -> 24
        UpStage(128, 3, 2, 1, 1, 2),  # 24 -> 48
        UpStage(64, 3, 2, 1, 1, 2),  # 48 -> 96
    ),
    head_channels=32,
)

WAV2LIP256 = BaselineSpec(
    name="wav2lip256",
    face_size=256,
    mel_shape=(80, 16),
    # 256 -> 128 -> 64 -> 32 -> 16 -> 8 -> 4 -> 1: one more stage than the 96 px network,
    # and the 4x4 map collapses with a 4x4 convolution.
    face_encoder=(
        Stage(16, 7, 1, 3),
        Stage(32, 3, 2, 1, 2),
        Stage(64, 3, 2, 1, 3),
        Stage(128, 3, 2, 1, 3),
        Stage(256, 3, 2, 1, 2),
        Stage(512, 3, 2, 1, 1),
        Stage(512, 3, 2, 1, 1),
        Stage(512, 4, 1, 0),
        Stage(512, 1, 1, 0),
    ),
    audio_encoder=_AUDIO,
    decoder=(
        UpStage(512, 4, 1, 0, 0, 1),  # 1 -> 4
        UpStage(512, 3, 2, 1, 1, 1),  # 4 -> 8
        UpStage(512, 3, 2, 1, 1, 2),  # 8 -> 16
        UpStage(384, 3, 2, 1, 1, 2),  # 16 -> 32
        UpStage(256, 3, 2, 1, 1, 2),  # 32 -> 64
        UpStage(128, 3, 2, 1, 1, 2),  # 64 -> 128
        UpStage(64, 3, 2, 1, 1, 2),  # 128 -> 256
    ),
    head_channels=32,
)

SPECS: dict[str, BaselineSpec] = {s.name: s for s in (WAV2LIP96, WAV2LIP256)}


def _build_module(spec: BaselineSpec) -> torch.nn.Module:
    """The torch module for a spec (torch is imported here: serving never needs it)."""
    import torch
    from torch import nn

    class ConvBlock(nn.Module):
        def __init__(
            self,
            cin: int,
            cout: int,
            kernel: int,
            stride: int | tuple[int, int],
            padding: int,
            residual: bool = False,
        ) -> None:
            super().__init__()
            self.conv = nn.Sequential(
                nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout)
            )
            self.residual = residual

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return torch.relu(y + x if self.residual else y)

    class UpBlock(nn.Module):
        def __init__(self, cin: int, stage: UpStage) -> None:
            super().__init__()
            self.up = nn.Sequential(
                nn.ConvTranspose2d(
                    cin,
                    stage.channels,
                    stage.kernel,
                    stage.stride,
                    stage.padding,
                    stage.output_padding,
                ),
                nn.BatchNorm2d(stage.channels),
                nn.ReLU(),
            )
            res = [
                ConvBlock(stage.channels, stage.channels, 3, 1, 1, residual=True)
                for _ in range(stage.residual)
            ]
            self.res = nn.Sequential(*res)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.res(self.up(x))

    def encoder(cin: int, stages: Sequence[Stage]) -> nn.ModuleList:
        blocks = nn.ModuleList()
        for st in stages:
            layers: list[nn.Module] = [
                ConvBlock(cin, st.channels, st.kernel, st.stride, st.padding)
            ]
            layers += [
                ConvBlock(st.channels, st.channels, 3, 1, 1, residual=True)
                for _ in range(st.residual)
            ]
            blocks.append(nn.Sequential(*layers))
            cin = st.channels
        return blocks

    class Wav2LipLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.face_encoder = encoder(6, spec.face_encoder)
            self.audio_encoder = nn.Sequential(*encoder(1, spec.audio_encoder))
            # Skips come from the encoder outputs in reverse, starting with the 1x1 embedding.
            skips = [st.channels for st in spec.face_encoder][::-1]
            # The two final 1x1-resolution face layers form one skip in the paper's layout.
            skips = [skips[0], *skips[2:]]
            embed = spec.audio_encoder[-1].channels
            self.bottleneck = ConvBlock(embed, embed, 1, 1, 0)
            ups = nn.ModuleList()
            cin = embed + skips[0]
            for stage, skip in zip(spec.decoder, skips[1:], strict=True):
                ups.append(UpBlock(cin, stage))
                cin = stage.channels + skip
            self.decoder = ups
            self.head = nn.Sequential(
                ConvBlock(cin, spec.head_channels, 3, 1, 1),
                nn.Conv2d(spec.head_channels, 3, 1),
                nn.Sigmoid(),
            )

        def forward(self, face: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
            audio = self.bottleneck(self.audio_encoder(mel))
            feats = []
            x = face
            for block in self.face_encoder:
                x = block(x)
                feats.append(x)
            # The 3x3->1x1 collapse and the 1x1 conv after it give one 1x1 skip.
            feats = [*feats[:-2], feats[-1]]
            x = audio
            for up in self.decoder:
                x = torch.cat([x, feats.pop()], dim=1)
                x = up(x)
            x = torch.cat([x, feats.pop()], dim=1)
            return self.head(x)

    return Wav2LipLike()


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """The baseline ``name`` in eval mode with seeded random weights."""
    import torch

    spec = SPECS[name]
    torch.manual_seed(seed)
    module = _build_module(spec)
    return module.eval()


def count_params(name: str) -> int:
    return sum(p.numel() for p in build(name).parameters())


def example_inputs(name: str, batch: int = 1) -> dict[str, np.ndarray]:
    """Random numpy inputs for the ONNX model: ``face`` (B,6,S,S) and ``mel`` (B,1,80,16)."""
    spec = SPECS[name]
    rng = np.random.default_rng(0)
    s = spec.face_size
    return {
        "face": rng.random((batch, 6, s, s), dtype=np.float32),
        "mel": rng.standard_normal((batch, 1, *spec.mel_shape)).astype(np.float32),
    }


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "avatarcast"


@dataclass(frozen=True)
class ExportedBaseline:
    name: str
    path: Path
    params: int


def export_onnx(name: str, directory: Path | None = None) -> ExportedBaseline:
    """Export the baseline to ONNX once (opset 17, dynamic batch), cached by architecture.

    The parameter count is stored next to the model so that later runs need no torch.
    """
    directory = directory or cache_dir()
    # The file name carries a digest of the spec, so a changed architecture is re-exported.
    digest = hashlib.sha1(repr(SPECS[name]).encode()).hexdigest()[:10]
    path = directory / f"{name}-{digest}.onnx"
    count_file = path.with_suffix(".params")
    if path.exists() and count_file.exists():
        return ExportedBaseline(name, path, int(count_file.read_text()))

    import torch

    directory.mkdir(parents=True, exist_ok=True)
    module = build(name)
    params = sum(p.numel() for p in module.parameters())
    inputs = {k: torch.from_numpy(v) for k, v in example_inputs(name).items()}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    log.info("exporting %s (%.1f M params) to %s", name, params / 1e6, path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            module,
            (inputs["face"], inputs["mel"]),
            str(tmp),
            input_names=["face", "mel"],
            output_names=["mouth"],
            dynamic_axes={"face": {0: "batch"}, "mel": {0: "batch"}, "mouth": {0: "batch"}},
            opset_version=17,
            dynamo=False,  # the TorchScript exporter needs no onnxscript
        )
    # Rename last: a crashed export never leaves a half-written model in the cache.
    tmp.replace(path)
    count_file.write_text(str(params))
    return ExportedBaseline(name, path, params)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m models.baselines``: print the parameter counts."""
    for name in SPECS:
        print(f"{name}: {count_params(name) / 1e6:.2f} M parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
