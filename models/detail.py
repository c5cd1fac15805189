"""Detail transfer: the real skin's fine texture put back where the generated mouth matches it.

The generator draws the mouth region at 160 px from features computed at 80 px and coarser,
and is trained with L1 losses: what it draws is right in shape and colour but soft, and a
soft patch inside an otherwise sharp face is what people see first. Where the generated
region still shows the base frame's skin (cheeks, the philtrum, closed lips) its low
frequencies agree with the base frame's, and the base frame's own high frequencies are the
true texture, so they replace the generated ones. The jaw and the lower lip move down as the
mouth opens, so the base is also tried shifted down by a few steps: a dropped chin gets its
own texture, moved with it. Where the mouth really changed (parted lips, teeth, the interior)
nothing agrees and the generated pixels stay as drawn, and so do they wherever the base is
the softer of the two (an upscaled photo). Nothing is invented: every added detail is the
person's own.

For a photo avatar the reference crop is a second source (:class:`Reference`): the teacher's
drawing of the same face with the mouth half open, at the same place. Where the mouth changed
(nothing of the base agrees) but its low frequencies agree with the reference's, the reference's
detail goes in: the seams and edges of the teeth, which the generator otherwise draws as one
soft white band. The upper teeth are fixed to the head, so they sit where the reference has
them.

It runs on every frame, so the comparison is made at a quarter of the pixels (80 px) and the
low-pass is a Gaussian pyramid step: 1-2 ms per frame on one CPU core, and up to 0.7 ms more
where a photo's mouth is open and the reference has detail to give.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

TOLERANCE = 26.0  # low-pass difference (8-bit levels) at which the base texture is dropped
SHIFTS = (0, -2, 2, 4, 6)  # downward shifts of the base tried, in pixels of the half scale
PREFER = 2.0  # levels by which a shifted base must agree better than the unshifted one
TOLERANCE_REFERENCE = 16.0  # the same for the reference, stricter: it is another mouth state
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _low(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low-pass at full size, low-pass luma at half size) of an (S, S, 3) float32 image."""
    half = cv2.pyrDown(image)
    quarter = cv2.pyrDown(half)
    full = cv2.pyrUp(cv2.pyrUp(quarter, dstsize=half.shape[1::-1]), dstsize=image.shape[1::-1])
    smooth_half = cv2.pyrUp(quarter, dstsize=half.shape[1::-1])
    return full, np.asarray(smooth_half @ LUMA, np.float32)


def _shifted(image: np.ndarray, dy: int) -> np.ndarray:
    """``image`` moved ``dy`` rows down (up when negative), edge rows repeated."""
    if dy == 0:
        return image
    out = np.empty_like(image)
    if dy > 0:
        out[dy:] = image[:-dy]
        out[:dy] = image[:1]
    else:
        out[:dy] = image[-dy:]
        out[dy:] = image[-1:]
    return out


class Reference:
    """A second source of detail (see the module's text): its high frequencies, its low-pass
    luma at half size and its detail energy, computed once for every frame."""

    def __init__(self, image: np.ndarray) -> None:
        image = np.asarray(image, np.float32)
        low, self.luma = _low(image)
        self.detail = image - low
        self.energy = cv2.blur(np.abs(self.detail) @ LUMA, (7, 7))


def transfer_detail(
    generated: np.ndarray, base: np.ndarray, reference: Reference | None = None
) -> np.ndarray:
    """``generated`` with the high frequencies of ``base`` where both agree at low frequency,
    and, where none of the base agrees, those of ``reference`` where it does.

    All are (S, S, 3) float32 in 0..255 with S even; shifts are scaled to S / 160.
    """
    size = generated.shape[0]
    scale = size / 160.0
    low_gen, luma_gen = _low(generated)
    low_base, luma_base = _low(base)
    # Per pixel of the half scale, the shift whose low frequencies agree best (no shift wins
    # a near tie); the gap maps are smoothed first so that neighbours take the same shift.
    moves = [round(shift * scale) for shift in SHIFTS]
    maps = [cv2.blur(cv2.absdiff(luma_gen, _shifted(luma_base, dy)), (5, 5)) for dy in moves]
    gaps = np.asarray(np.stack(maps), np.float32)
    gaps[1:] += np.float32(PREFER)
    best = np.argmin(gaps, axis=0)
    best_gap = np.min(gaps, axis=0)
    full = (size, size)
    keep = np.clip(1.0 - best_gap / TOLERANCE, 0.0, 1.0)
    keep = cv2.resize(cv2.blur(keep, (5, 5)), full, interpolation=cv2.INTER_LINEAR)
    # Each pixel takes the base's texture from the rows its chosen shift brings down to it.
    rise = cv2.resize(
        2.0 * np.asarray(moves, np.float32)[best], full, interpolation=cv2.INTER_NEAREST
    )
    xs, ys = _grid(size)
    detail = cv2.remap(
        base - low_base, xs, ys - rise, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE
    )
    high_gen = generated - low_gen
    # Only where the base is the more detailed: a soft base never blurs a crisp drawing.
    energy_base = cv2.blur(np.abs(detail) @ LUMA, (7, 7))
    energy_gen = cv2.blur(np.abs(high_gen) @ LUMA, (7, 7))
    keep *= _richer(energy_base, energy_gen)
    out = generated + keep[..., None] * (detail - high_gen)
    if reference is not None:
        gap = cv2.blur(cv2.absdiff(luma_gen, reference.luma), (5, 5))
        changed = np.clip(best_gap / TOLERANCE, 0.0, 1.0)
        take = np.clip(1.0 - gap / TOLERANCE_REFERENCE, 0.0, 1.0) * changed
        if float(take.max()) > 0.1:  # a closed mouth (most frames): next to nothing to take
            take = cv2.resize(cv2.blur(take, (5, 5)), full, interpolation=cv2.INTER_LINEAR)
            take *= _richer(reference.energy, energy_gen)
            out += take[..., None] * (reference.detail - high_gen)
    return np.asarray(out, np.float32)


def _richer(energy_source: np.ndarray, energy_generated: np.ndarray) -> np.ndarray:
    """0..1: how much more detail the source has than the generated pixels."""
    ratio = energy_source / np.maximum(energy_generated, 0.5)
    return np.asarray(np.clip(2.5 * (ratio - 0.7), 0.0, 1.0), np.float32)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs, ys
