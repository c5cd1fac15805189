"""The test speech of the live bench: a steady voice, speech bursts with clear onsets, WAV bytes.

Generated in closed form from a sample offset, so that a speaker streaming 20 ms chunks and a
WAV posted whole carry the same signal, and a test can know where every onset is.
"""

from __future__ import annotations

import io
import wave

import numpy as np

from models.audio import SAMPLE_RATE

BURST_PERIOD_S = 1.2
BURST_ON_S = 0.5


def voiced(n: int, start: int = 0) -> np.ndarray:
    """A steady voiced sound (harmonics of ~120 Hz), float32 in [-0.6, 0.6]."""
    t = (start + np.arange(n)) / SAMPLE_RATE
    # The phase of a pitch 120 + 15 sin(2 pi 0.7 t) Hz, in closed form so that chunks join.
    phase = 2 * np.pi * (120.0 * t - 15.0 / (2 * np.pi * 0.7) * np.cos(2 * np.pi * 0.7 * t))
    x = np.zeros(n)
    for h in range(1, 10):
        x += np.sin(h * phase) / h
    return (0.6 * x / 2.9).astype(np.float32)


def bursts(n: int, start: int = 0) -> np.ndarray:
    """Speech bursts with clear onsets: ``BURST_ON_S`` of voice every ``BURST_PERIOD_S``."""
    t = (start + np.arange(n)) / SAMPLE_RATE
    on = (t % BURST_PERIOD_S) < BURST_ON_S
    syllables = 0.55 + 0.45 * np.abs(np.sin(2 * np.pi * 3.0 * t))
    return (voiced(n, start) * syllables * on).astype(np.float32)


def pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] as little-endian s16 PCM, what a client sends a session."""
    return np.clip(np.rint(samples * 32767.0), -32768, 32767).astype("<i2").tobytes()


def wav_bytes(samples: np.ndarray) -> bytes:
    """A 16 kHz mono WAV file of ``samples``, as ``POST speak`` takes it."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm16(samples))
    return buffer.getvalue()
