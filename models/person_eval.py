"""Judging a person's avatar on the held-out tail of their own video.

For every held-out frame the generator draws the mouth from the person's real audio (with
the package's reference crop and the real frame's masked crop, as in training), and the
person's real mouth crop of that frame is the answer. Both are pasted into the avatar's base
frames the way the streaming compositor does (the same base frame for both), and MediaPipe
Face Mesh measures the mouth aperture of each (:class:`models.lipsync.ApertureMeter`):

- ``r``, ``lag_ms``: Pearson correlation of the generated aperture with the real one at the
  best lag within +-200 ms (5 ms steps, the real series interpolated in time, clips pooled);
  a positive lag means the generated mouth moves after the real one.
- ``miss``: the mean absolute difference of the generated aperture from the real one at that
  lag, over the real aperture's standard deviation. Correlation forgives an offset and a small
  swing; the miss counts a mouth that never quite closes, or that moves in silence.
- ``psnr_db``, ``ssim``: the generated mouth crop against the real crop, over the pixels the
  generator replaces (:func:`models.quality.region_quality`).

Measuring the real side through the same paste and meter makes the two comparable: what
differs is only the mouth.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.audio import FPS
from models.avatar import Avatar, keep_mask
from models.lag import MAX_LAG_S
from models.lag import lag_correlation as best_lag
from models.lipsync import ApertureMeter
from models.person import PersonData
from models.quality import region_quality

BATCH = 16
R_MARGIN = 0.02  # lip-sync differences smaller than this are noise on a short held-out part
PSNR_MARGIN_DB = 0.5
R_WORKING = 0.75  # below this the mouth does not follow the voice (the photo bar)
R_DECISIVE = 0.1  # a lip-sync gain this large is no noise, even on a short held-out part
MISS_DECISIVE = 0.7  # an aperture miss cut to this share of the old one is no noise either


@dataclass(frozen=True)
class PersonScore:
    r: float | None
    lag_ms: float | None
    psnr_db: float | None
    ssim: float | None
    frames: int
    clips: int
    miss: float | None = None  # mean |generated - real| aperture at the lag, over real's spread

    def better_than(self, other: PersonScore) -> bool:
        """Lip sync not worse (r within ``R_MARGIN``) and the mouth closer to the person's
        (higher PSNR), or clearly better lip sync at about the same image quality, or lip sync
        decisively better whatever the PSNR: where ``other``'s mouth does not follow the voice
        (r under ``R_WORKING``), r better by ``R_DECISIVE``; or, at an r not worse, a mouth
        whose aperture misses the real one by at most ``MISS_DECISIVE`` of ``other``'s miss.
        A mouth that copies the reference (still, or never quite closed) scores a high PSNR
        on a held-out part, and even a fair r where it moves a little with the voice, and is
        still no avatar."""
        if self.psnr_db is None or other.psnr_db is None:
            return False
        if self.r is None or other.r is None:
            return self.psnr_db > other.psnr_db
        if other.r < R_WORKING and self.r >= other.r + R_DECISIVE:
            return True
        if (
            self.miss is not None
            and other.miss is not None
            and self.r >= other.r - R_MARGIN
            and self.miss <= MISS_DECISIVE * other.miss
        ):
            return True
        return (self.r >= other.r - R_MARGIN and self.psnr_db > other.psnr_db) or (
            self.r > other.r + R_MARGIN and self.psnr_db >= other.psnr_db - PSNR_MARGIN_DB
        )

    def show(self, key: str, digits: int) -> str:
        """Figure ``key`` with ``digits`` decimals, or "n/a" where it was not measured."""
        value = getattr(self, key)
        return "n/a" if value is None else f"{value:.{digits}f}"

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "r": self.r,
            "lag_ms": self.lag_ms,
            "psnr_db": self.psnr_db,
            "ssim": self.ssim,
            "frames": self.frames,
            "clips": self.clips,
            "miss": self.miss,
        }


def shifted(values: np.ndarray, lag_s: float) -> np.ndarray:
    """``values`` (one per frame) at time t - lag, linearly interpolated; NaN where either
    neighbouring frame is NaN or the time falls outside the clip."""
    n = len(values)
    pos = np.arange(n) - lag_s * FPS
    lo = np.floor(pos).astype(int)
    w = pos - lo
    out = np.full(n, np.nan)
    inside = (lo >= 0) & (lo + 1 <= n - 1)
    exact = np.isclose(w, 0.0) & (lo >= 0) & (lo <= n - 1)
    a = values[np.clip(lo, 0, n - 1)]
    b = values[np.clip(lo + 1, 0, n - 1)]
    out[inside] = (a * (1.0 - w) + b * w)[inside]
    out[exact] = a[exact]
    return out


def lag_correlation(
    generated: Sequence[np.ndarray], real: Sequence[np.ndarray], max_lag_s: float = MAX_LAG_S
) -> tuple[float, float]:
    """(best r, its lag in ms) of generated aperture at t against real aperture at t - lag."""
    return best_lag(
        np.concatenate(list(generated)),
        lambda lag: np.concatenate([shifted(x, lag) for x in real]),
        max_lag_s,
    )


class _Paster:
    """The streaming compositor's paste without idle motion: frame k of a clip stands on the
    k-th base frame of the ping-pong loop, so generated and real share a base frame."""

    def __init__(self, avatar: Avatar) -> None:
        from models.compositor import Compositor

        self._compositor = Compositor(avatar, idle=False)

    def paste(self, k: int, crop: np.ndarray) -> np.ndarray:
        """``crop`` (S, S, 3) uint8 into base frame k: an RGB frame."""
        chw = np.ascontiguousarray(crop.transpose(2, 0, 1), np.float32) / 255.0
        return self._compositor.compose(k, chw)


def _generate(
    model: nn.Module, data: PersonData, clip: np.ndarray, device: torch.device
) -> np.ndarray:
    """The generator's crops (n, S, S, 3) uint8 for one clip's indices."""
    keep = keep_mask(data.mask)
    reference = np.ascontiguousarray(data.reference.transpose(2, 0, 1), np.float32) / 255.0
    out = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(clip), BATCH):
            idx = clip[start : start + BATCH]
            target = np.ascontiguousarray(data.crops[idx].transpose(0, 3, 1, 2), np.float32)
            masked = target / 255.0 * keep[None, None]
            refs = np.repeat(reference[None], len(idx), axis=0)
            mel = data.windows[idx].astype(np.float32)
            y = model(*(torch.from_numpy(a).to(device) for a in (refs, masked, mel)))
            out.append(y.float().cpu().numpy())
    crops = np.concatenate(out).transpose(0, 2, 3, 1)
    return np.asarray(np.clip(np.rint(crops * 255.0), 0, 255), np.uint8)


def _apertures(paster: _Paster, crops: np.ndarray) -> np.ndarray:
    values = np.full(len(crops), np.nan)
    with ApertureMeter() as meter:  # a fresh tracker per clip: clips are not continuous
        for k, crop in enumerate(crops):
            values[k] = meter.measure(paster.paste(k, crop))
    return values


def evaluate_generators(
    avatar: Avatar,
    data: PersonData,
    models: Mapping[str, nn.Module],
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[str, PersonScore]:
    """A :class:`PersonScore` per named generator on the held-out clips of ``data``."""
    dev = torch.device(device)
    paster = _Paster(avatar)
    clips = data.clips()
    real = [_apertures(paster, data.crops[c]) for c in clips]
    scores: dict[str, PersonScore] = {}
    for name, model in models.items():
        generated: list[np.ndarray] = []
        psnrs: list[float] = []
        ssims: list[float] = []
        for clip in clips:
            crops = _generate(model, data, clip, dev)
            generated.append(_apertures(paster, crops))
            for fake, true in zip(crops, data.crops[clip], strict=True):
                psnr, ssim = region_quality(fake, true, data.mask)
                psnrs.append(psnr)
                ssims.append(ssim)
        r, lag = lag_correlation(generated, real) if clips else (float("nan"), 0.0)
        miss = _miss(generated, real, lag / 1000.0) if clips else float("nan")
        scores[name] = PersonScore(
            r=_round(r, 3),
            lag_ms=_round(lag, 1) if np.isfinite(r) else None,
            psnr_db=_round(float(np.mean(psnrs)), 2) if psnrs else None,
            ssim=_round(float(np.mean(ssims)), 4) if ssims else None,
            frames=sum(len(c) for c in clips),
            clips=len(clips),
            miss=_round(miss, 3),
        )
        if progress:
            print(f"eval {name}: {scores[name].to_json()}", file=sys.stderr)
    return scores


def _miss(generated: Sequence[np.ndarray], real: Sequence[np.ndarray], lag_s: float) -> float:
    """Mean absolute difference of the generated aperture from the real one ``lag_s`` earlier,
    over the real aperture's standard deviation: a mouth that follows the voice but never
    closes, or moves in silence, misses by its offset even where its correlation is high."""
    gen = np.concatenate(list(generated))
    ref = np.concatenate([shifted(x, lag_s) for x in real])
    both = np.isfinite(gen) & np.isfinite(ref)
    if both.sum() < 2:
        return float("nan")
    spread = float(np.std(ref[both]))
    return float(np.mean(np.abs(gen[both] - ref[both]))) / spread if spread > 0 else float("nan")


def _round(value: float, digits: int) -> float | None:
    return round(float(value), digits) if np.isfinite(value) else None


__all__ = ["PersonScore", "evaluate_generators", "lag_correlation", "shifted"]
