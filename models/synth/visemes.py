"""Mouth parameters from phone timings: coarticulated viseme tracks for the teacher face.

Each phone pulls the mouth toward its viseme target with a dominance function (Cohen and
Massaro): a bump centred on the phone that decays with distance in time, more slowly before
the phone than after, so the lips anticipate what comes next.  The parameters at a time are
the dominance-weighted mean of the targets.  Bilabials (p, b, m) then force the lips shut over
their closure, whatever the neighbours want, because a p that does not close reads as wrong.

Columns of a track: ``open`` (0 closed .. 1 wide), ``width`` (-1 pucker .. 1 spread),
``round`` (0 .. 1) and ``press`` (0 .. 1, lips pressed together).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.synth.phonemes import BILABIALS, SILENCE, Phone

N_PARAMS = 4
OPEN, WIDTH, ROUND, PRESS = range(N_PARAMS)
PRESSED = 0.5  # a frame whose press is above this is a closure (the lips of p, b, m)


@dataclass(frozen=True)
class Viseme:
    """Target mouth shape of one phoneme and how strongly it resists its neighbours."""

    open: float
    width: float
    round: float
    press: float
    dominance: float

    def target(self) -> tuple[float, float, float, float]:
        return (self.open, self.width, self.round, self.press)


_V = Viseme
VISEMES: dict[str, Viseme] = {
    SILENCE: _V(0.0, 0.0, 0.0, 0.0, 1.0),
    # Vowels: open by jaw height, spread for front vowels, rounded for back rounded ones.
    "AA": _V(0.95, 0.10, 0.00, 0.0, 0.9),
    "AE": _V(0.80, 0.40, 0.00, 0.0, 0.9),
    "AH": _V(0.65, 0.10, 0.00, 0.0, 0.7),
    "AO": _V(0.75, -0.30, 0.55, 0.0, 0.9),
    "AW": _V(0.80, -0.10, 0.30, 0.0, 0.9),
    "AY": _V(0.85, 0.20, 0.00, 0.0, 0.9),
    "EH": _V(0.60, 0.35, 0.00, 0.0, 0.8),
    "ER": _V(0.40, -0.20, 0.40, 0.0, 0.7),
    "EY": _V(0.55, 0.45, 0.00, 0.0, 0.8),
    "IH": _V(0.45, 0.45, 0.00, 0.0, 0.7),
    "IY": _V(0.35, 0.70, 0.00, 0.0, 0.8),
    "OW": _V(0.60, -0.50, 0.70, 0.0, 0.9),
    "OY": _V(0.65, -0.30, 0.50, 0.0, 0.9),
    "UH": _V(0.40, -0.40, 0.50, 0.0, 0.7),
    "UW": _V(0.30, -0.80, 0.90, 0.0, 0.9),
    # Consonants: bilabials closed and pressed; labiodentals nearly closed; the tongue
    # consonants leave the jaw fairly free, hence their low dominance.
    "P": _V(0.0, 0.0, 0.0, 1.0, 1.5),
    "B": _V(0.0, 0.0, 0.0, 0.9, 1.5),
    "M": _V(0.0, 0.0, 0.0, 0.8, 1.5),
    "F": _V(0.10, 0.10, 0.00, 0.3, 0.9),
    "V": _V(0.10, 0.10, 0.00, 0.3, 0.9),
    "TH": _V(0.25, 0.10, 0.00, 0.0, 0.6),
    "DH": _V(0.25, 0.10, 0.00, 0.0, 0.5),
    "T": _V(0.25, 0.10, 0.00, 0.0, 0.5),
    "D": _V(0.25, 0.10, 0.00, 0.0, 0.5),
    "N": _V(0.22, 0.10, 0.00, 0.0, 0.5),
    "L": _V(0.30, 0.10, 0.00, 0.0, 0.4),
    "S": _V(0.15, 0.40, 0.00, 0.0, 0.7),
    "Z": _V(0.15, 0.40, 0.00, 0.0, 0.7),
    "SH": _V(0.25, -0.30, 0.60, 0.0, 0.8),
    "ZH": _V(0.25, -0.30, 0.60, 0.0, 0.8),
    "CH": _V(0.25, -0.30, 0.60, 0.0, 0.8),
    "JH": _V(0.25, -0.30, 0.60, 0.0, 0.8),
    "K": _V(0.35, 0.00, 0.00, 0.0, 0.4),
    "G": _V(0.35, 0.00, 0.00, 0.0, 0.4),
    "NG": _V(0.30, 0.00, 0.00, 0.0, 0.4),
    "HH": _V(0.40, 0.00, 0.00, 0.0, 0.2),
    "R": _V(0.30, -0.30, 0.40, 0.0, 0.6),
    "W": _V(0.15, -0.80, 0.90, 0.0, 0.9),
    "Y": _V(0.25, 0.50, 0.00, 0.0, 0.6),
}

# Seconds by which the lips lead the sound, and the dominance decay rates (1/s) before and
# after a phone's centre: the slower decay before the centre is the anticipation.
LEAD = 0.02
RATE_BEFORE = 16.0
RATE_AFTER = 24.0
# A pause shorter than this does not get full rest-pose strength: speakers keep the mouth
# moving through short gaps between words.
FULL_PAUSE = 0.2
# Open values below this are rounded to exactly closed so silence is truly still.
CLOSED_EPS = 0.02


def _dominance(phones: Sequence[Phone], times: np.ndarray) -> np.ndarray:
    """(n_phones, n_times) dominance of each phone at each time."""
    starts = np.array([p.start for p in phones], dtype=np.float64)
    ends = np.array([p.end for p in phones], dtype=np.float64)
    centres = 0.5 * (starts + ends) - LEAD
    half = 0.5 * (ends - starts)
    strength = np.array([VISEMES[p.symbol].dominance for p in phones], dtype=np.float64)
    is_pause = np.array([p.symbol == SILENCE for p in phones])
    strength = np.where(
        is_pause, strength * np.clip((ends - starts) / FULL_PAUSE, 0.05, 1), strength
    )
    # Distance from the phone's own interval (zero inside it): a long phone holds its target.
    tau = times[None, :] - centres[:, None]
    outside = np.maximum(np.abs(tau) - half[:, None] * 0.6, 0.0)
    rate = np.where(tau < 0, RATE_BEFORE, RATE_AFTER)
    return np.asarray(strength[:, None] * np.exp(-rate * outside), dtype=np.float64)


def track_at(phones: Sequence[Phone], times: np.ndarray) -> np.ndarray:
    """(n, 4) float32 mouth parameters at arbitrary ``times`` (seconds)."""
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    out = np.zeros((times.size, N_PARAMS), dtype=np.float64)
    if not phones or times.size == 0:
        return out.astype(np.float32)
    targets = np.array([VISEMES[p.symbol].target() for p in phones], dtype=np.float64)
    dom = _dominance(phones, times) + 1e-12
    out = (dom.T @ targets) / dom.sum(axis=0)[:, None]
    for phone in phones:
        if phone.symbol in BILABIALS:
            inside = (times >= phone.start - LEAD) & (times < phone.end - LEAD * 0.5)
            out[inside, OPEN] = 0.0
            out[inside, PRESS] = np.maximum(out[inside, PRESS], VISEMES[phone.symbol].press)
    after_last = times >= phones[-1].end
    out[after_last] = 0.0
    out[:, OPEN] = np.where(out[:, OPEN] < CLOSED_EPS, 0.0, out[:, OPEN])
    # Far tails of the dominance functions would leave a pause minutely off rest.
    out[np.abs(out) < 1e-3] = 0.0
    np.clip(out[:, OPEN], 0.0, 1.0, out=out[:, OPEN])
    np.clip(out[:, WIDTH], -1.0, 1.0, out=out[:, WIDTH])
    np.clip(out[:, ROUND:], 0.0, 1.0, out=out[:, ROUND:])
    return out.astype(np.float32)


def frame_times(n_frames: int, fps: float = 25.0) -> np.ndarray:
    """Centres of video frames in seconds: frame k covers [k/fps, (k+1)/fps)."""
    return (np.arange(n_frames, dtype=np.float64) + 0.5) / fps


def mouth_track(phones: Sequence[Phone], n_frames: int, fps: float = 25.0) -> np.ndarray:
    """(n_frames, 4) float32 mouth parameters sampled at video frame centres."""
    return track_at(phones, frame_times(n_frames, fps))


def openness(phones: Sequence[Phone], times: np.ndarray) -> np.ndarray:
    """The phoneme-derived mouth openness at ``times``: the target curve of lip-sync eval.

    It is exactly the ``open`` column the teacher renders, so the teacher's own frames score
    the ceiling.
    """
    return track_at(phones, times)[:, OPEN]
