"""Image figures of a generated mouth region: fidelity to a reference and sharpness."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from models.avatar import MASK_CUT

SHARP_REGION = 0.5  # where the generated mouth is shown at full strength


def mouth_crop(frame: np.ndarray, box: Sequence[int], size: int) -> np.ndarray:
    """The (size, size, 3) mouth crop of ``frame`` at ``box`` (area-resized when larger)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    crop = frame[y0:y1, x0:x1]
    if x1 - x0 != size:
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return crop


def region_quality(
    generated: np.ndarray, teacher: np.ndarray, mask: np.ndarray
) -> tuple[float, float]:
    """(PSNR dB, SSIM) of two (S, S, 3) uint8 crops over the pixels the generator
    replaces (``mask`` > MASK_CUT)."""
    from skimage.metrics import structural_similarity

    region = mask > MASK_CUT
    a = generated.astype(np.float64)
    b = teacher.astype(np.float64)
    mse = float(np.mean((a - b)[region] ** 2))
    psnr = 100.0 if mse == 0 else 10.0 * np.log10(255.0**2 / mse)
    _, ssim_map = structural_similarity(
        generated, teacher, channel_axis=2, data_range=255, full=True
    )
    ssim = float(np.mean(np.asarray(ssim_map).mean(axis=2)[region]))
    return psnr, ssim


def detail_energy(crop: np.ndarray, mask: np.ndarray) -> float:
    """High-frequency energy of an (S, S, 3) uint8 crop where ``mask`` > 0.5: the variance of
    the Laplacian of its luma. A blurred mouth has a fraction of a real one's."""
    grey = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY).astype(np.float32)
    lap = cv2.Laplacian(grey, cv2.CV_32F, ksize=3)
    return float(np.var(lap[mask > SHARP_REGION]))
