"""Catching up a live stream that fell behind, without a pause to skip.

A live stream (the WebSocket PCM, the microphone) that arrived late once stays that much
behind: its later chunks queue after the late one. Pauses give the time back (their quiet
samples are skipped), but a voice that never pauses would carry the delay for good. Here
such a chunk loses one pitch period of its voiced sound: the samples a period apart are
nearly the same, so the splice is one period shorter and sounds the same, only a little
faster. Unvoiced or noisy audio loses a short block instead. A raised-cosine crossfade hides
the joint either way.
"""

from __future__ import annotations

import numpy as np

from models.audio import SAMPLE_RATE

FADE = SAMPLE_RATE * 3 // 1000  # 3 ms crossfade at the joint
MIN_PERIOD = SAMPLE_RATE // 400  # 2.5 ms: a 400 Hz voice
MAX_PERIOD = SAMPLE_RATE // 80  # 12.5 ms: an 80 Hz voice
UNVOICED = SAMPLE_RATE * 5 // 1000  # what unvoiced sound loses at a time
OVERLAP = SAMPLE_RATE * 6 // 1000  # a lag is judged on at least 6 ms of overlap
VOICED = 0.6  # the normalised autocorrelation above which a lag is taken as the period


def _period(x: np.ndarray, longest: int) -> int:
    """The lag in [MIN_PERIOD, longest] where ``x`` best repeats itself, or 0 if none does."""
    n = len(x)
    lags = np.arange(MIN_PERIOD, min(longest, n - OVERLAP) + 1)
    if not len(lags):
        return 0
    x = x - x.mean()
    # Normalised autocorrelation for every lag, from one FFT of the zero-padded chunk.
    size = 1 << int(np.ceil(np.log2(2 * n)))
    spectrum = np.fft.rfft(x, size)
    corr = np.fft.irfft(spectrum * np.conj(spectrum), size)[lags]
    energy = np.cumsum(np.concatenate(([0.0], x.astype(np.float64) ** 2)))
    head = energy[n - lags]  # sum of x[t]^2 over t < n - lag
    tail = energy[n] - energy[lags]  # sum of x[t]^2 over t >= lag
    score = corr / np.sqrt(np.maximum(head * tail, 1e-12))
    best = int(np.argmax(score))
    return int(lags[best]) if score[best] >= VOICED else 0


def shorten(chunk: np.ndarray, most: int) -> np.ndarray:
    """``chunk`` with at most ``most`` samples taken out at one joint (or unchanged)."""
    x = np.asarray(chunk, np.float32)
    n = len(x)
    period = _period(x, MAX_PERIOD)
    drop = period or min(UNVOICED, most)
    # A voiced chunk loses a whole period or nothing: less would break its waveform.
    if drop > most or drop < MIN_PERIOD or n < drop + 2 * FADE:
        return x
    # The joint goes where the sound is quietest, which hides it best.
    # Window j covers x[j : j + FADE + drop]: the fade-out and the dropped samples.
    windows = np.convolve(x.astype(np.float64) ** 2, np.ones(drop + FADE), mode="valid")
    cut = FADE + int(np.argmin(windows))
    fade_in = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, FADE, dtype=np.float32))
    joint = x[cut - FADE : cut] * (1.0 - fade_in) + x[cut + drop - FADE : cut + drop] * fade_in
    return np.concatenate((x[: cut - FADE], joint, x[cut + drop :]))
