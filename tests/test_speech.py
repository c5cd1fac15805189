"""Teacher speech: voices and splits, phone timings against the audio, corpus, augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from models.audio import SAMPLE_RATE
from models.synth import speech as speech_module
from models.synth.augment import (
    NOISE_KINDS,
    augment,
    change_tempo,
    shift_pitch,
    speech_level,
    with_microphone,
    with_noise,
    with_reverb,
)
from models.synth.corpus import sentences, split_of
from models.synth.espeak import engine
from models.synth.phonemes import BILABIALS, PHONEMES, SILENCE, VOWELS
from models.synth.speech import (
    Speech,
    Voice,
    espeak_phones,
    random_voice,
    synthesize,
    voices,
)

ESPEAK = Voice("espeak", "en-us", 175, 50)
FESTIVAL = [Voice("festival", n, 1.0, 1.0) for n in ("kal_diphone", "ked_diphone")] + [
    Voice("festival", "cmu_us_slt_arctic_hts", 1.0, 1.0)
]
SONORANTS = VOWELS | {"M", "N", "L", "R", "W", "Y", "Z", "S", "SH", "V"}


def _db(x: np.ndarray, hop: int = 32, win: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """10 ms RMS in dB every 2 ms, and the frame centre times."""
    n = (len(x) - win) // hop + 1
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    rms = np.sqrt(np.mean(x[idx].astype(np.float64) ** 2, axis=1)) + 1e-6
    return 20 * np.log10(rms), (np.arange(n) * hop + win / 2) / SAMPLE_RATE


def _check_speech(s: Speech) -> None:
    assert s.samples.dtype == np.float32 and s.samples.ndim == 1
    assert 0.1 < np.max(np.abs(s.samples)) <= 1.0
    assert s.phones[0].start == 0.0
    assert s.phones[-1].end == pytest.approx(len(s.samples) / SAMPLE_RATE, abs=1e-9)
    for a, b in zip(s.phones, s.phones[1:], strict=False):
        assert a.end == pytest.approx(b.start, abs=1e-9)
        assert not (a.symbol == b.symbol == SILENCE)
    assert all(p.symbol in PHONEMES and p.duration > 0 for p in s.phones)


def _alignment_lag(speeches: list[Speech]) -> float:
    """The label shift (s) that best matches speech energy: ~0 if the timings are right."""
    lags = np.arange(-30, 31, 2) / 1000
    score = np.zeros(len(lags))
    for s in speeches:
        db, t = _db(s.samples)
        active = db > np.percentile(db, 95) - 35
        for j, lag in enumerate(lags):
            label = np.zeros(len(t), bool)
            for p in s.phones:
                if p.symbol != SILENCE:
                    label[(t >= p.start + lag) & (t < p.end + lag)] = True
            score[j] += np.mean(label == active)
    return float(lags[int(np.argmax(score))])


# --- voices --------------------------------------------------------------------------------


def test_heldout_voices_never_appear_in_train() -> None:
    train, heldout = voices("train"), voices("heldout")
    assert len(train) >= 50 and len(heldout) >= 8
    assert not {v.name for v in train} & {v.name for v in heldout}
    # Neither the dialect nor the variant of a held-out espeak voice is ever trained on.
    parts = [v.name.split("+") for v in train if v.engine == "espeak"]
    held = [v.name.split("+") for v in heldout if v.engine == "espeak"]
    assert not {p[0] for p in parts} & {p[0] for p in held}
    assert not {p[1] for p in parts if len(p) > 1} & {p[1] for p in held if len(p) > 1}
    for split in (train, heldout):
        assert {v.engine for v in split} == {"espeak", "festival"}


def test_random_voice_is_reproducible_and_in_split() -> None:
    names = {v.name for v in voices("heldout")}
    a = [random_voice("heldout", np.random.default_rng(3)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(0)
    drawn = [random_voice("heldout", rng) for _ in range(60)]
    assert all(v.name in names for v in drawn)
    assert len({v.rate for v in drawn}) > 30
    assert {v.engine for v in drawn} == {"espeak", "festival"}
    with pytest.raises(ValueError):
        voices("test")  # type: ignore[arg-type]


def test_without_festival_the_teacher_speaks_espeak_and_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`make run` and the image once had espeak-ng only: `create` drew a festival voice for a
    third of its sentences and died of FileNotFoundError."""
    monkeypatch.setattr(speech_module, "festival_installed", lambda: False)
    rng = np.random.default_rng(0)
    assert {random_voice("train", rng).engine for _ in range(60)} == {"espeak"}
    with pytest.raises(RuntimeError, match=r"festival is not installed.*apt install festival"):
        synthesize("Bob paid me.", FESTIVAL[0])


# --- synthesis ------------------------------------------------------------------------------


SCOTTISH = Voice("espeak", "en-gb-scotland+f3", 150, 70)


@pytest.mark.parametrize("voice", [ESPEAK, SCOTTISH, *FESTIVAL])
def test_synthesize_gives_16k_audio_tiled_by_arpabet_phones(voice: Voice) -> None:
    s = synthesize("Bob paid me a map, didn't he?", voice)
    _check_speech(s)
    symbols = [p.symbol for p in s.phones]
    assert symbols[0] == SILENCE and symbols[-1] == SILENCE
    assert {"B", "P", "M"} <= set(symbols)
    assert 1.0 < s.duration < 4.0
    assert s.text.startswith("Bob") and s.voice == voice


def test_festival_text_is_quoted_safely() -> None:
    s = synthesize('He said "stop" \\ then (quit) ; café', FESTIVAL[0])
    _check_speech(s)


def test_empty_text_is_rejected() -> None:
    with pytest.raises(ValueError):
        synthesize("  ", ESPEAK)


@pytest.mark.parametrize("voice", [ESPEAK, Voice("espeak", "en+klatt", 175, 50), *FESTIVAL])
def test_phone_times_match_the_audio(voice: Voice) -> None:
    """Pauses are silent, p/b close, and energy lines up with the phones within 10 ms."""
    speeches = [synthesize(t, voice) for t in sentences("train", 4, seed=11)]
    lag = _alignment_lag(speeches)
    assert abs(lag) <= 0.010, f"phone labels off by {lag * 1000:.0f} ms"
    onsets, pause_db, closure_db = [], [], []
    for s in speeches:
        db, t = _db(s.samples)
        loud = np.percentile(db, 95)
        for a, b in zip(s.phones, s.phones[1:], strict=False):
            if a.symbol == SILENCE and b.symbol in SONORANTS and a.duration > 0.06:
                hit = (t > a.start + 0.02) & (t < b.end) & (db > loud - 30)
                if hit.any():
                    onsets.append(t[hit][0] - b.start)
        for p in s.phones:
            inside = (t > p.start + 0.01) & (t < p.end - 0.01)
            if p.symbol == SILENCE and p.duration > 0.1 and inside.any():
                pause_db.append(np.median(db[inside]) - loud)
            if p.symbol in {"P", "B"} and inside.any():
                closure_db.append(np.min(db[inside]) - loud)
    assert onsets and abs(float(np.median(onsets))) <= 0.012
    assert pause_db and np.median(pause_db) < -35
    assert closure_db and np.median(closure_db) < -18


def test_every_espeak_phoneme_of_every_dialect_maps() -> None:
    texts = sentences("train", 12, seed=5) + sentences("heldout", 6, seed=5)
    dialects = {
        v.name.split("+")[0]
        for split in ("train", "heldout")
        for v in voices(split)
        if v.engine == "espeak"
    }
    unknown = set()
    for dialect in sorted(dialects):
        for text in texts:
            for event in engine().synthesize(text, dialect).events:
                try:
                    espeak_phones(event.name)
                except KeyError:
                    unknown.add((dialect, event.name))
    assert not unknown


def test_rate_and_pitch_change_the_voice() -> None:
    text = "Bob bought a map in May."
    slow = synthesize(text, Voice("espeak", "en-us", 120, 50))
    fast = synthesize(text, Voice("espeak", "en-us", 240, 50))
    assert slow.duration > 1.4 * fast.duration
    stretched = synthesize(text, Voice("festival", "kal_diphone", 1.3, 1.0))
    normal = synthesize(text, Voice("festival", "kal_diphone", 1.0, 1.0))
    assert stretched.duration > 1.15 * normal.duration
    hts_fast = synthesize(text, Voice("festival", "cmu_us_slt_arctic_hts", 0.8, 1.0))
    hts = synthesize(text, Voice("festival", "cmu_us_slt_arctic_hts", 1.0, 1.0))
    assert hts_fast.duration < 0.9 * hts.duration


# --- corpus ---------------------------------------------------------------------------------


def test_corpus_splits_are_disjoint_and_reproducible() -> None:
    train = sentences("train", 400, seed=0)
    heldout = sentences("heldout", 100, seed=0)
    assert len(set(train)) == 400 and len(set(heldout)) == 100
    assert not set(train) & set(heldout)
    assert not set(sentences("train", 300, seed=1)) & set(sentences("heldout", 300, seed=2))
    assert sentences("train", 50, seed=0) == train[:50]
    assert all(split_of(s) == "heldout" for s in heldout)


def test_corpus_is_rich_for_lip_reading() -> None:
    texts = sentences("train", 300, seed=0)
    assert sum("?" in t for t in texts) > 20
    assert sum(any(c.isdigit() for c in t) for t in texts) > 30
    assert sum(any(c in t.lower() for c in "pbm") for t in texts) > 0.9 * len(texts)
    words = [len(t.split()) for t in texts]
    assert min(words) <= 3 and max(words) >= 20
    phones = set()
    for t in texts[:40]:
        phones |= {p.symbol for p in synthesize(t, ESPEAK).phones}
    assert phones >= VOWELS
    assert phones >= BILABIALS


# --- augmentation ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech() -> Speech:
    return synthesize("Bob, my boy, bring the brave balloon back to Bombay.", ESPEAK)


@pytest.mark.parametrize("speed", [0.8, 1.25])
def test_tempo_scales_audio_and_phone_times_together(speech: Speech, speed: float) -> None:
    out = change_tempo(speech, speed)
    _check_speech(out)
    assert out.duration == pytest.approx(speech.duration / speed, rel=0.01)
    assert [p.symbol for p in out.phones] == [p.symbol for p in speech.phones]
    assert abs(_alignment_lag([out])) <= 0.010


def test_pitch_shift_keeps_duration_and_timing(speech: Speech) -> None:
    out = shift_pitch(speech, 3.0)
    assert len(out.samples) == len(speech.samples)
    assert out.phones == speech.phones
    assert abs(_alignment_lag([out])) <= 0.010

    def centroid(x: np.ndarray) -> float:
        spectrum = np.abs(np.fft.rfft(x))
        return float(np.sum(spectrum * np.arange(len(spectrum))) / np.sum(spectrum))

    assert centroid(out.samples) > 1.05 * centroid(speech.samples)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_noise_reaches_the_requested_snr(speech: Speech, kind: str) -> None:
    out = with_noise(speech, np.random.default_rng(0), 10.0, kind)
    noise = out.samples - speech.samples
    assert np.all(np.isfinite(out.samples)) and np.max(np.abs(out.samples)) <= 1.0
    snr = 20 * np.log10(speech_level(speech.samples) / np.sqrt(np.mean(noise**2)))
    assert snr == pytest.approx(10.0, abs=0.5)


def test_reverb_keeps_length_and_onset(speech: Speech) -> None:
    out = with_reverb(speech, np.random.default_rng(1), 0.5)
    assert len(out.samples) == len(speech.samples)
    first = int(np.argmax(np.abs(speech.samples) > 0.05))
    assert int(np.argmax(np.abs(out.samples) > 0.05)) == pytest.approx(first, abs=16)


def test_microphone_colour_changes_the_spectrum_not_the_timing(speech: Speech) -> None:
    rng = np.random.default_rng(2)
    changed = 0
    for _ in range(8):
        out = with_microphone(speech, rng)
        assert len(out.samples) == len(speech.samples) and out.phones == speech.phones
        assert np.max(np.abs(out.samples)) <= 1.0
        # The coloured voice still lines up with the original within a millisecond.
        n = 4096
        a = np.fft.rfft(speech.samples, 2 * n)
        b = np.fft.rfft(out.samples, 2 * n)
        xcorr = np.fft.irfft(a.conj() * b)
        lag = int(np.argmax(np.concatenate([xcorr[-16:], xcorr[:17]]))) - 16
        assert abs(lag) <= SAMPLE_RATE // 1000
        spectrum_in = np.abs(np.fft.rfft(speech.samples)) + 1e-9
        spectrum_out = np.abs(np.fft.rfft(out.samples)) + 1e-9
        changed += np.ptp(np.log10(spectrum_out / spectrum_in)[100:-100]) > 0.3
    assert changed >= 5  # most draws colour the voice audibly


def test_augment_keeps_the_speech_contract(speech: Speech) -> None:
    rng = np.random.default_rng(7)
    durations = set()
    for _ in range(12):
        out = augment(speech, rng)
        _check_speech_loose(out)
        durations.add(round(out.duration, 3))
    assert len(durations) > 1  # tempo was drawn at least once


def _check_speech_loose(s: Speech) -> None:
    assert s.samples.dtype == np.float32 and np.max(np.abs(s.samples)) <= 1.0
    assert s.phones[0].start == 0.0
    assert s.phones[-1].end == pytest.approx(len(s.samples) / SAMPLE_RATE, abs=1e-9)
