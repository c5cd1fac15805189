"""Idle motion of a face that is not speaking: blinks, breathing and a slight head sway."""

from __future__ import annotations

import numpy as np


def _blink_shape(fps: float) -> np.ndarray:
    """Lid closure over one ~200 ms blink: a fast close and a slower opening."""
    t = np.arange(round(0.2 * fps) + 1, dtype=np.float64) / fps
    close, reopen = 0.08, 0.14
    shape = np.where(t < close, t / close, 1.0 - (t - close) / reopen)
    return np.clip(shape, 0.0, 1.0)[1:]


def idle_track(
    n: int, rng: np.random.Generator, fps: float = 25.0
) -> tuple[np.ndarray, np.ndarray]:
    """Blinks every 2-6 s (~200 ms each), breathing-like vertical motion, slight head sway."""
    blink = np.zeros(n, dtype=np.float32)
    shape = _blink_shape(fps)
    k = int(rng.uniform(0.5, 3.0) * fps)
    while k < n:
        end = min(n, k + shape.size)
        blink[k:end] = shape[: end - k]
        k += int(rng.uniform(2.0, 6.0) * fps)
    t = np.arange(n, dtype=np.float64) / fps

    def sway(amplitude: float, low: float, high: float) -> np.ndarray:
        # Two incommensurate slow sines with random phases: smooth and never periodic-looking.
        f1, f2 = rng.uniform(low, high, size=2)
        p1, p2 = rng.uniform(0, 2 * np.pi, size=2)
        return amplitude * (
            0.65 * np.sin(2 * np.pi * f1 * t + p1) + 0.35 * np.sin(2 * np.pi * f2 * t + p2)
        )

    breathing = 1.2 * np.sin(2 * np.pi * rng.uniform(0.2, 0.3) * t + rng.uniform(0, 2 * np.pi))
    head = np.stack(
        [
            sway(2.0, 0.05, 0.2),
            sway(1.0, 0.05, 0.2) + breathing,
            sway(0.8, 0.04, 0.15),
            1.0 + sway(0.006, 0.03, 0.1),
        ],
        axis=1,
    ).astype(np.float32)
    return blink, head
