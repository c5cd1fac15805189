"""Acoustic augmentation of teacher speech, keeping the phone times true to the audio.

The generator must follow any voice in any room, so training audio gets noise, reverb, gain,
pitch and tempo changes. Tempo is the only change that moves phones: their times are scaled
by the stretch factor. Time-scale changes use WSOLA, whose alignment error is bounded by its
search tolerance (5 ms), well inside the 10 ms mel hop.
"""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import numpy as np
from scipy.signal import butter, fftconvolve, lfilter, resample_poly, sosfilt

from models.audio import SAMPLE_RATE
from models.synth.phonemes import Phone
from models.synth.speech import Speech

NOISE_KINDS = ("white", "pink", "babble")
_FRAME = 384  # 24 ms WSOLA frames
_HOP = _FRAME // 2
_TOLERANCE = 80  # 5 ms: the most a frame may move to keep the waveform continuous


# --- building blocks on arrays -------------------------------------------------------------


def speech_level(x: np.ndarray) -> float:
    """RMS of the louder half of 20 ms blocks: the level of speech, not of its pauses."""
    block = SAMPLE_RATE // 50
    n = len(x) // block
    if n == 0:
        return float(np.sqrt(np.mean(x.astype(np.float64) ** 2) + 1e-12))
    energy = np.mean(x[: n * block].astype(np.float64).reshape(n, block) ** 2, axis=1)
    loud = np.sort(energy)[n // 2 :]
    return float(np.sqrt(np.mean(loud) + 1e-12))


def _coloured_noise(n: int, rng: np.random.Generator, kind: str) -> np.ndarray:
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    if kind == "pink":
        # 1/f power: scale the spectrum by 1/sqrt(f).
        spectrum = np.fft.rfft(white)
        f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
        spectrum /= np.sqrt(np.maximum(f, 20.0))
        return np.fft.irfft(spectrum, n)
    if kind == "babble":
        return _babble(n, rng)
    raise ValueError(f"unknown noise kind {kind!r}")


def _babble(n: int, rng: np.random.Generator) -> np.ndarray:
    """Several speech-shaped talkers: formant-filtered noise gated at syllable rate."""
    out = np.zeros(n)
    t = np.arange(n) / SAMPLE_RATE
    for _ in range(int(rng.integers(3, 7))):
        source = rng.standard_normal(n)
        voice = np.zeros(n)
        for formant in rng.uniform([300, 900, 2200], [900, 2200, 3200]):
            r = 0.97
            theta = 2 * np.pi * formant / SAMPLE_RATE
            voice += lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], source)
        syllables = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6.3))
        out += voice * syllables**2
    return out


def add_noise(x: np.ndarray, rng: np.random.Generator, snr_db: float, kind: str) -> np.ndarray:
    """Mix noise of ``kind`` at ``snr_db`` relative to the speech level."""
    noise = _coloured_noise(len(x), rng, kind)
    noise *= speech_level(x) / (np.sqrt(np.mean(noise**2)) + 1e-12) / 10 ** (snr_db / 20)
    return (x + noise).astype(np.float32)


def room_impulse(rng: np.random.Generator, rt60: float) -> np.ndarray:
    """A synthetic RIR: the direct path at sample 0, then exponentially decaying reflections."""
    n = max(int(rt60 * SAMPLE_RATE), 16)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    tail[: int(0.002 * SAMPLE_RATE)] = 0.0  # the first reflection arrives after the direct sound
    rir = tail * rng.uniform(0.2, 0.6) / (np.sqrt(np.sum(tail**2)) + 1e-12)
    rir[0] = 1.0  # no delay, so phone times stay right
    return rir


def microphone_colour(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a microphone, a codec or a phone line does to a voice: a random low shelf (thin or
    boomy), a random high shelf (dull or bright) and, now and then, a band limit. Each shelf
    adds a scaled low- or high-passed copy, so the phase stays near the input's; no filter here
    delays the voice by more than a millisecond, so phone times stay true."""
    nyquist = SAMPLE_RATE / 2
    y = x.astype(np.float64)
    if rng.random() < 0.6:
        corner, gain_db = rng.uniform(150, 500), rng.uniform(-8.0, 12.0)
        low = sosfilt(butter(2, corner / nyquist, output="sos"), y)
        y = y + (10 ** (gain_db / 20) - 1) * low
    if rng.random() < 0.6:
        corner, gain_db = rng.uniform(2000, 5000), rng.uniform(-12.0, 8.0)
        high = sosfilt(butter(2, corner / nyquist, "high", output="sos"), y)
        y = y + (10 ** (gain_db / 20) - 1) * high
    if rng.random() < 0.3:  # telephone to wide-band codecs
        y = sosfilt(butter(6, rng.uniform(3400, 7500) / nyquist, output="sos"), y)
    if rng.random() < 0.3:  # small speakers and rumble filters
        y = sosfilt(butter(2, rng.uniform(60, 300) / nyquist, "high", output="sos"), y)
    return y.astype(np.float32)


def reverberate(x: np.ndarray, rng: np.random.Generator, rt60: float) -> np.ndarray:
    wet = fftconvolve(x, room_impulse(rng, rt60))[: len(x)]
    return wet.astype(np.float32)


def wsola(x: np.ndarray, speed: float) -> np.ndarray:
    """Time-scale ``x`` by 1/speed (speed > 1 is shorter) keeping its pitch."""
    if speed <= 0:
        raise ValueError("speed must be > 0")
    n_out = round(len(x) / speed)
    if len(x) < _FRAME or n_out < _FRAME:
        return resample_poly(x, max(n_out, 1), max(len(x), 1)).astype(np.float32)
    window = np.hanning(_FRAME + 1)[:-1]
    pad = _TOLERANCE + _FRAME
    padded = np.concatenate([np.zeros(pad), x.astype(np.float64), np.zeros(pad + _FRAME)])
    out = np.zeros(n_out + _FRAME)
    norm = np.zeros(n_out + _FRAME)
    previous = pad  # input position of the last frame taken
    for k in range(n_out // _HOP + 1):
        target = pad + round(k * _HOP * speed)
        if k == 0:
            position = target
        else:
            # Take the frame near ``target`` that best continues the previous one.
            natural = padded[previous + _HOP : previous + _HOP + _FRAME]
            region = padded[target - _TOLERANCE : target + _TOLERANCE + _FRAME]
            score = np.correlate(region, natural, mode="valid")
            position = target - _TOLERANCE + int(np.argmax(score))
        out[k * _HOP : k * _HOP + _FRAME] += padded[position : position + _FRAME] * window
        norm[k * _HOP : k * _HOP + _FRAME] += window
        previous = position
    return (out[:n_out] / np.maximum(norm[:n_out], 1e-3)).astype(np.float32)


def shift_pitch_samples(x: np.ndarray, semitones: float) -> np.ndarray:
    """Raise pitch by ``semitones`` at the same duration (resample, then WSOLA back)."""
    ratio = Fraction(2 ** (semitones / 12)).limit_denominator(64)
    # Resampling by 1/ratio plays ``ratio`` times faster: higher and shorter.
    shifted = resample_poly(x.astype(np.float64), ratio.denominator, ratio.numerator)
    stretched = wsola(shifted, len(shifted) / len(x))
    out = np.zeros(len(x), np.float32)
    out[: min(len(x), len(stretched))] = stretched[: len(x)]
    return out


# --- on Speech -----------------------------------------------------------------------------


def _scale_phones(phones: tuple[Phone, ...], factor: float, duration: float) -> tuple[Phone, ...]:
    """Phone times multiplied by ``factor``, the last ending exactly at ``duration``."""
    out = []
    for i, p in enumerate(phones):
        start = min(p.start * factor, duration)
        end = duration if i == len(phones) - 1 else min(p.end * factor, duration)
        out.append(Phone(p.symbol, start, max(end, start)))
    return tuple(out)


def _with(speech: Speech, samples: np.ndarray, phones: tuple[Phone, ...] | None = None) -> Speech:
    peak = float(np.max(np.abs(samples))) if len(samples) else 0.0
    if peak > 1.0:
        samples = samples / peak  # keep the contract: peak <= 1
    return replace(
        speech,
        samples=np.ascontiguousarray(samples, np.float32),
        phones=speech.phones if phones is None else phones,
    )


def change_tempo(speech: Speech, speed: float) -> Speech:
    """Speak ``speed`` times faster (pitch kept); phone times divided by ``speed``."""
    samples = wsola(speech.samples, speed)
    factor = len(samples) / max(len(speech.samples), 1)
    return _with(speech, samples, _scale_phones(speech.phones, factor, len(samples) / SAMPLE_RATE))


def shift_pitch(speech: Speech, semitones: float) -> Speech:
    return _with(speech, shift_pitch_samples(speech.samples, semitones))


def with_noise(speech: Speech, rng: np.random.Generator, snr_db: float, kind: str) -> Speech:
    return _with(speech, add_noise(speech.samples, rng, snr_db, kind))


def with_reverb(speech: Speech, rng: np.random.Generator, rt60: float) -> Speech:
    return _with(speech, reverberate(speech.samples, rng, rt60))


def with_microphone(speech: Speech, rng: np.random.Generator) -> Speech:
    return _with(speech, microphone_colour(speech.samples, rng))


def with_gain(speech: Speech, gain_db: float) -> Speech:
    return _with(speech, speech.samples * np.float32(10 ** (gain_db / 20)))


def augment(speech: Speech, rng: np.random.Generator) -> Speech:
    """A random subset of tempo, pitch, reverb, noise and gain (in that order)."""
    out = speech
    if rng.random() < 0.3:
        out = change_tempo(out, float(rng.uniform(0.8, 1.25)))
    if rng.random() < 0.3:
        out = shift_pitch(out, float(rng.uniform(-3.0, 3.0)))
    if rng.random() < 0.3:
        out = with_reverb(out, rng, float(rng.uniform(0.15, 0.7)))
    if rng.random() < 0.5:
        kind = NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))]
        out = with_noise(out, rng, float(rng.uniform(5.0, 30.0)), kind)
    if rng.random() < 0.8:
        out = with_gain(out, float(rng.uniform(-24.0, 6.0)))
    return out
