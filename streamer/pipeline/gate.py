"""The voice gate: sound far below the voice reaches the generator as silence.

A recording carries room tone, breath and hiss around and between its words, 30-50 dB under
the voice. The generator learnt from speech padded with digital silence; fed room tone, it
opened the mouth where nobody speaks, most of all where a recording's tail of room tone meets
the silence after it (recorded speech in ``eval``: stillness 0.30 against 0.01 for the
held-out synthetic voices). The gate fades every 10 ms of a frame's window that lies more than
``BELOW_DB`` under the loudest 20 ms of the last ``REFERENCE_S`` seconds, so those frames get
the mouth at rest, and a window with nothing left gets the idle mouth. Only what the
generator hears is gated; what the viewer hears is untouched.

The reference looks back only: a live stream has no future to look at, and the server and
``render`` prepare frames alike. So room tone before a session's first words is not gated.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter1d

from models.audio import HOP, SAMPLE_RATE

BELOW_DB = 30.0  # hops this far under the voice's loudest are faded out ...
RAMP_DB = 6.0  # ... over this many dB
HOLD = 3  # a hop that passes keeps this many hops either side open (30 ms)
REFERENCE_S = 4.0  # the voice's level is the loudest 20 ms of this much past audio
SILENT_DB = -100.0  # a window with no hop louder than this is silence already


def hop_levels(samples: np.ndarray) -> np.ndarray:
    """dBFS of each 10 ms hop's 20 ms neighbourhood (the hop and the one after it)."""
    n = len(samples) // HOP
    if n == 0:
        return np.zeros(0)
    hops = np.asarray(samples[: n * HOP], np.float32).reshape(n, HOP)
    energy = np.einsum("ij,ij->i", hops, hops).astype(np.float64) / HOP
    paired = 0.5 * (energy + np.append(energy[1:], energy[-1]))
    return 10.0 * np.log10(paired + 1e-12)


def voice_gate(window: np.ndarray, history: np.ndarray) -> np.ndarray:
    """``window`` with its hops far under the voice faded to zero; ``history`` is the audio
    before it (up to :data:`REFERENCE_S`), which with the window sets the voice's level."""
    levels = hop_levels(window)
    if not len(levels) or levels.max() < SILENT_DB:
        return window
    reference = max(levels.max(), float(np.max(hop_levels(history), initial=SILENT_DB)))
    gain = np.clip((levels - (reference - BELOW_DB)) / RAMP_DB, 0.0, 1.0)
    if gain.min() >= 1.0:
        return window
    held = maximum_filter1d(gain, 2 * HOLD + 1, mode="constant")
    # Gain per hop at the hop's centre, linear in between; the tail past the last hop keeps it.
    centres = np.arange(len(held)) * HOP + HOP // 2
    ramp = np.interp(np.arange(len(window)), centres, held)
    return (window * ramp).astype(np.float32)


def history_range(lo: int) -> tuple[int, int]:
    """The samples before a window starting at ``lo`` that set the voice's level."""
    return lo - int(REFERENCE_S * SAMPLE_RATE), lo
