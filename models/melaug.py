"""Augmentation of log-mel windows at batch time: level and spectral colour.

The training voices are synthetic and reach the mel through no microphone and no room. A real
voice comes through both: a laptop microphone thins the bass, a headset boosts it, a room or a
codec tilts the spectrum. On recorded human speech (:mod:`models.recorded`) the mean log-mel of
the lowest ten bins (55-400 Hz) lies about 8 dB above the synthetic held-out voices'. The
generator must read the mouth from what is said, not from the channel, so each window gets a
random gain (a shift of the whole log-mel) and, most of the time, a random smooth colouring
across the mel bins: a tilt, a bump or dip low in the spectrum, and a gentle ripple. Both are
additions in the log domain, that is linear filters on the signal, and cost nothing to apply to
cached windows.
"""

from __future__ import annotations

import numpy as np

from models.audio import LOG_FLOOR

COLOUR_SHARE = 0.7  # of windows coloured; the rest keep the voice's own spectrum
# In log10 units of the mel power (0.1 = 1 dB), at strength 1.
TILT = 0.6  # end to end across the bins, either way
LOW_CUT, LOW_BOOST = 0.4, 0.8  # a bump or dip in the lowest third, half the time
RIPPLE = 0.15  # each of three slow cosines across the bins


def spectral_colour(rng: np.random.Generator, n: int, bins: int, strength: float) -> np.ndarray:
    """(n, 1, bins) smooth random log-mel offsets: one colouring per window, 0 where none."""
    x = np.linspace(0.0, 1.0, bins)[None, :]
    tilt = rng.uniform(-TILT, TILT, (n, 1)) * (x - 0.5)
    centre = rng.uniform(0.0, 0.3, (n, 1))
    width = rng.uniform(0.05, 0.15, (n, 1))
    bump = rng.uniform(-LOW_CUT, LOW_BOOST, (n, 1)) * np.exp(-0.5 * ((x - centre) / width) ** 2)
    bump *= rng.random((n, 1)) < 0.5
    ripple = sum(
        rng.uniform(-RIPPLE, RIPPLE, (n, 1))
        * np.cos(np.pi * k * x + rng.uniform(0.0, 2 * np.pi, (n, 1)))
        for k in (2, 3, 5)
    )
    on = rng.random((n, 1)) < COLOUR_SHARE
    return (strength * on * (tilt + bump + ripple))[:, None, :].astype(np.float32)


def perturb(
    mel: np.ndarray, rng: np.random.Generator, gain_db: float, colour: float = 0.0
) -> np.ndarray:
    """(B, T, bins) windows with a random gain within +-``gain_db`` and, with ``colour`` > 0,
    a random spectral colouring of that strength; the floor stays where a real signal puts it."""
    out = mel.astype(np.float32) + rng.uniform(-gain_db, gain_db, (len(mel), 1, 1)) / 10.0
    if colour > 0:
        out += spectral_colour(rng, len(mel), mel.shape[-1], colour)
    return np.maximum(out, np.log10(LOG_FLOOR)).astype(np.float32)
