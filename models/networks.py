"""The networks: the mouth generator, the SyncNet expert and the patch discriminator.

The generator is small because the person is fixed: it only has to redraw one mouth, so it
works at 160 px with a stride-2 stem and a PixelShuffle output, and it is conditioned on the
audio through a tiny 1-D encoder whose auxiliary head predicts the teacher's mouth params.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import DiscConfig, GeneratorConfig, SyncNetConfig

# Log-mel values lie in about [-5, 2] (log10 power, floor 1e-5): centre and scale them once
# here so every network sees inputs of order one.
MEL_SHIFT = 2.5
MEL_SCALE = 0.5


def normalise_mel(mel: Tensor) -> Tensor:
    return (mel + MEL_SHIFT) * MEL_SCALE


def conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class AudioEncoder(nn.Module):
    """(B, T, n_mels) log-mel window -> (B, dim) embedding, by 1-D convolutions over time."""

    def __init__(self, n_mels: int, frames: int, channels: int, dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv1d(n_mels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm1d(channels),
            nn.ReLU(inplace=True),
        ]
        length = frames
        for _ in range(3):
            layers += [
                nn.Conv1d(channels, channels, 3, 2, 1, bias=False),
                nn.BatchNorm1d(channels),
                nn.ReLU(inplace=True),
            ]
            length = (length + 1) // 2
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(channels * length, dim), nn.ReLU())

    def forward(self, mel: Tensor) -> Tensor:
        return self.proj(self.convs(normalise_mel(mel).transpose(1, 2)))


class FiLM(nn.Module):
    """Scale and shift feature maps by the condition vector (identity at initialisation)."""

    def __init__(self, cond: int, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(cond, 2 * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        gamma, beta = self.linear(cond).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return x * (1.0 + gamma) + beta


class UpBlock(nn.Module):
    def __init__(self, cin: int, skip: int, cout: int, cond: int) -> None:
        super().__init__()
        # Reduce channels before upsampling: the 1x1 conv then runs at a quarter of the pixels.
        self.reduce = conv_bn(cin, cout, kernel=1)
        self.fuse = conv_bn(cout + skip, cout)
        self.film = FiLM(cond, cout)

    def forward(self, x: Tensor, skip: Tensor, cond: Tensor) -> Tensor:
        x = F.interpolate(self.reduce(x), scale_factor=2.0, mode="nearest")
        return self.film(self.fuse(torch.cat([x, skip], dim=1)), cond)


class ResBlock(nn.Module):
    def __init__(self, channels: int, cond: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(channels, channels),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.film = FiLM(cond, channels)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return F.relu(x + self.film(self.body(x), cond))


class Generator(nn.Module):
    """(reference, masked, mel) -> mouth crop, all images (B, 3, S, S) in [0, 1]."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        cond = cfg.cond_dim + cfg.n_params
        self.audio = AudioEncoder(cfg.n_mels, cfg.mel_frames, cfg.audio_channels, cfg.audio_dim)
        self.params_head = nn.Sequential(
            nn.Linear(cfg.audio_dim, 64), nn.ReLU(), nn.Linear(64, cfg.n_params)
        )
        self.cond_proj = nn.Sequential(nn.Linear(cfg.audio_dim, cfg.cond_dim), nn.ReLU())
        self.stem = nn.Sequential(conv_bn(6, c[0], stride=2), conv_bn(c[0], c[0]))
        self.down = nn.ModuleList(
            nn.Sequential(conv_bn(c[i], c[i + 1], stride=2), conv_bn(c[i + 1], c[i + 1]))
            for i in range(len(c) - 1)
        )
        self.inject = nn.Linear(cond, c[-1])  # the audio enters the bottleneck as a bias map
        self.blocks = nn.ModuleList(ResBlock(c[-1], cond) for _ in range(cfg.bottleneck_blocks))
        self.up = nn.ModuleList(
            UpBlock(c[i + 1], c[i], c[i], cond) for i in reversed(range(len(c) - 1))
        )
        self.head = nn.Sequential(nn.Conv2d(c[0], 3 * 4, 3, 1, 1), nn.PixelShuffle(2))

    def encode_audio(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        """Audio embedding and predicted mouth params (the auxiliary head)."""
        emb = self.audio(mel)
        return emb, self.params_head(emb)

    def forward(
        self, reference: Tensor, masked: Tensor, mel: Tensor, params: Tensor | None = None
    ) -> Tensor:
        return self.forward_with_params(reference, masked, mel, params)[0]

    def forward_with_params(
        self, reference: Tensor, masked: Tensor, mel: Tensor, params: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Image and predicted params; ``params`` (teacher forcing) replaces the prediction
        in the decoder condition only, so the aux head still learns from the audio."""
        emb, predicted = self.encode_audio(mel)
        used = predicted if params is None else params
        cond = torch.cat([used, self.cond_proj(emb)], dim=1)
        x = self.stem(torch.cat([reference, masked], dim=1))
        skips = [x]
        for down in self.down:
            x = down(x)
            skips.append(x)
        x = F.relu(x + self.inject(cond).unsqueeze(-1).unsqueeze(-1))
        for block in self.blocks:
            x = block(x, cond)
        for up, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = up(x, skip, cond)
        return torch.sigmoid(self.head(x)), predicted


def mouth_half(crop: Tensor, size: tuple[int, int]) -> Tensor:
    """Lower half of a (B, 3, S, S) crop resized to ``size`` (h, w): what SyncNet looks at."""
    half = crop[:, :, crop.shape[2] // 2 :, :]
    return F.interpolate(half, size=size, mode="bilinear", align_corners=False)


class SyncNet(nn.Module):
    """Audio and mouth embeddings whose cosine similarity says whether they belong together."""

    def __init__(self, cfg: SyncNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        cin = 3
        for cout in cfg.channels:
            layers += [conv_bn(cin, cout, stride=2), conv_bn(cout, cout)]
            cin = cout
        self.face = nn.Sequential(
            *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, cfg.embed_dim)
        )
        # Same shape as the generator's encoder (defaults), so training can warm-start it.
        self.audio = nn.Sequential(
            AudioEncoder(cfg.n_mels, cfg.mel_frames, cfg.audio_channels, cfg.audio_dim),
            nn.Linear(cfg.audio_dim, cfg.embed_dim),
        )

    def embed(self, crop: Tensor, mel: Tensor) -> tuple[Tensor, Tensor]:
        face = F.normalize(self.face(mouth_half(crop, self.cfg.image_size)), dim=1)
        audio = F.normalize(self.audio(mel), dim=1)
        return face, audio

    def forward(self, crop: Tensor, mel: Tensor) -> Tensor:
        """Probability in (0, 1) that mouth and audio are in sync."""
        face, audio = self.embed(crop, mel)
        cos = (face * audio).sum(dim=1)
        return ((cos + 1.0) * 0.5).clamp(1e-6, 1.0 - 1e-6)


class PatchDiscriminator(nn.Module):
    """LSGAN patch critic: one realness score per ~40 px patch of the crop."""

    def __init__(self, cfg: DiscConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, cout in enumerate(cfg.channels):
            layers.append(nn.Conv2d(cin, cout, 4, 2, 1))
            if i > 0:
                layers.append(nn.InstanceNorm2d(cout, affine=True))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, crop: Tensor) -> Tensor:
        return self.net(crop * 2.0 - 1.0)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def generator_macs(cfg: GeneratorConfig) -> int:
    """Multiply-accumulates of one generator frame, counted with forward hooks."""
    model = Generator(cfg).eval()
    total = 0

    def hook(mod: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d | nn.Conv1d):
            k = 1
            for s in mod.kernel_size:
                k *= s
            total += out.numel() * (mod.in_channels // mod.groups) * k
        elif isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    s = cfg.crop
    with torch.no_grad():
        model(
            torch.zeros(1, 3, s, s),
            torch.zeros(1, 3, s, s),
            torch.zeros(1, cfg.mel_frames, cfg.n_mels),
        )
    for h in handles:
        h.remove()
    return total
