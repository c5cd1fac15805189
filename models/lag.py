"""The lag correlation that both evals use: how well a measured mouth follows an expected one,
and how late.

``avatarcast eval`` compares the aperture with the phonemes' openness, ``avatar train``'s
held-out judge with the person's real aperture; both ask for the best Pearson r over lags
within +-200 ms in 5 ms steps, finer than a 40 ms frame.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MAX_LAG_S = 0.2
LAG_STEP_S = 0.005


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r over the frames where both are finite; NaN when it is undefined."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def lag_correlation(
    measured: np.ndarray,
    expected_at: Callable[[float], np.ndarray],
    max_lag_s: float = MAX_LAG_S,
    step_s: float = LAG_STEP_S,
) -> tuple[float, float]:
    """(best r, its lag in ms) of ``measured`` at t against ``expected_at(lag)``, the
    expected series at t - lag; a positive lag means the measured mouth moves late."""
    best_r, best_lag = float("nan"), 0.0
    steps = round(max_lag_s / step_s)
    # Outwards from zero, replacing only on a strictly better r: ties keep the smaller lag.
    for i in sorted(range(-steps, steps + 1), key=lambda j: (abs(j), j)):
        lag = i * step_s
        r = pearson(measured, expected_at(lag))
        if np.isfinite(r) and (not np.isfinite(best_r) or r > best_r):
            best_r, best_lag = r, lag * 1000.0
    return best_r, best_lag
