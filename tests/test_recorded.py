"""Recorded human speech for eval (models/speech, models.recorded) and the mel augmentation
that trains the generator for real microphones (models.melaug)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from models import melaug
from models.audio import LOG_FLOOR, SAMPLE_RATE, log_mel
from models.heldout import LEAD_SILENCE_S, TAIL_SILENCE_S
from models.recorded import recorded_cases, recorded_speech
from models.synth.phonemes import BILABIALS, SILENCE, VOWELS


def test_every_recorded_case_is_speech_with_phones_that_tile_it() -> None:
    cases = recorded_cases()
    assert len(cases) >= 12
    assert len({c.speaker for c in cases}) >= 3
    speeches = recorded_speech()
    for case, speech in zip(cases, speeches, strict=True):
        duration = len(speech.samples) / SAMPLE_RATE
        assert speech.voice.engine == "recorded"
        assert 0.5 < np.abs(speech.samples).max() <= 1.0
        phones = speech.phones
        assert phones[0].start == 0 and phones[-1].end == pytest.approx(duration)
        assert all(a.end == pytest.approx(b.start) for a, b in itertools.pairwise(phones))
        assert any(p.symbol in VOWELS for p in phones), case.name
        # The silences added around each clip, as for the synthetic cases.
        lead = speech.samples[: int(LEAD_SILENCE_S * SAMPLE_RATE)]
        tail = speech.samples[-int(TAIL_SILENCE_S * SAMPLE_RATE) :]
        assert not lead.any() and not tail.any()
    assert sum(p.symbol in BILABIALS for s in speeches for p in s.phones) >= 30


def test_the_alignment_puts_the_voice_inside_the_phones() -> None:
    """The aligner's phones hold the energy: speech frames are far louder than silences."""
    for speech in recorded_speech():
        energy = log_mel(speech.samples).mean(axis=1)  # one value per 10 ms
        times = np.arange(len(energy)) * 0.01
        spoken = np.zeros(len(energy), bool)
        for p in speech.phones:
            if p.symbol != SILENCE:
                spoken |= (times >= p.start) & (times < p.end)
        assert np.median(energy[spoken]) > np.median(energy[~spoken]) + 0.5, speech.text


def test_gain_alone_shifts_every_bin_alike() -> None:
    mel = np.full((16, 24, 80), -2.0, np.float32)
    out = melaug.perturb(mel, np.random.default_rng(1), gain_db=12.0)
    spread = out.max(axis=(1, 2)) - out.min(axis=(1, 2))
    assert np.allclose(spread, 0) and np.abs(out + 2.0).max() <= 1.2 + 1e-6


def test_colour_is_smooth_across_bins_and_spares_some_windows() -> None:
    rng = np.random.default_rng(3)
    colour = melaug.spectral_colour(rng, 2000, 80, 1.0)[:, 0, :]
    untouched = np.all(colour == 0, axis=1).mean()
    assert 0.2 < untouched < 0.4  # 30 % keep the voice's own spectrum
    coloured = colour[np.any(colour != 0, axis=1)]
    assert np.abs(coloured).max() < 1.5  # within +-15 dB
    # Smooth: neighbouring bins differ far less than the colouring's own range.
    step = np.abs(np.diff(coloured, axis=1)).max(axis=1)
    assert np.median(step) < 0.1 * np.median(np.ptp(coloured, axis=1))
    # No direction is preferred: on average the colouring is close to flat.
    assert np.abs(coloured.mean(axis=0)).max() < 0.15


def test_perturb_keeps_the_floor_and_is_reproducible() -> None:
    floor = np.log10(LOG_FLOOR)
    mel = np.full((8, 24, 80), floor, np.float32)
    a = melaug.perturb(mel, np.random.default_rng(5), 12.0, colour=1.0)
    b = melaug.perturb(mel, np.random.default_rng(5), 12.0, colour=1.0)
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert a.min() >= floor


def test_eval_text_shows_the_recorded_figures() -> None:
    from streamer.measure.eval import format_text

    figures = {"r": 0.8, "lag_ms": 5.0, "bilabial_closed": 0.9, "stillness": 0.1}
    result = {
        "avatar": "default",
        "cases": 12,
        "lipsync": figures,
        "teacher": figures,
        "image": {"psnr_db": None, "ssim": None, "sharpness": 1.0},
        "recorded": {"cases": 12, "lipsync": {**figures, "r": 0.71}, "teacher": figures},
    }
    text = format_text(result)
    assert "recorded human speech: 12 cases" in text
    assert "0.71" in text
