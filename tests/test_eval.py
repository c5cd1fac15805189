"""eval: the measures on signals whose answers are known, and the landmark meter on a face."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from models import heldout
from models import lipsync as ev
from models.audio import MelWindower
from models.quality import region_quality
from models.synth.phonemes import Phone
from streamer.measure import eval as measure_eval


def phones(spec: list[tuple[str, float]]) -> tuple[Phone, ...]:
    """Phones from (symbol, duration) pairs laid end to end."""
    out, t = [], 0.0
    for symbol, duration in spec:
        out.append(Phone(symbol, t, t + duration))
        t += duration
    return tuple(out)


UTTERANCE = phones(
    [
        ("sil", 0.4),
        ("M", 0.08),
        ("AA", 0.2),
        ("P", 0.08),
        ("IY", 0.16),
        ("sil", 0.5),
        ("B", 0.08),
        ("OW", 0.24),
        ("T", 0.08),
        ("AE", 0.2),
        ("sil", 0.4),
    ]
)


def target(ph: object, times: np.ndarray) -> np.ndarray:
    """A smooth stand-in for visemes.openness: open on vowels, closed elsewhere."""
    out = np.zeros(len(times))
    for p in UTTERANCE:
        if p.symbol in {"AA", "IY", "OW", "AE"}:
            centre, half = (p.start + p.end) / 2, p.duration / 2
            out += np.clip(1 - np.abs(times - centre) / (half + 0.02), 0, 1)
    return out


def track(aperture_fn: Callable[[np.ndarray], np.ndarray], n: int = 60) -> ev.Track:
    times = (np.arange(n) + 0.5) / 25
    return ev.Track(aperture_fn(times), UTTERANCE)


def test_lag_is_found_within_a_step() -> None:
    late = track(lambda t: 0.3 * target(None, t - 0.06) + 0.01)
    r, lag = ev.lag_correlation([late], target)
    assert r > 0.99
    assert abs(lag - 60.0) <= 5.0
    early = track(lambda t: target(None, t + 0.04))
    assert abs(ev.lag_correlation([early], target)[1] + 40.0) <= 5.0


def test_lag_ignores_missing_frames() -> None:
    t = track(lambda t: target(None, t))
    t.aperture[5:9] = np.nan
    r, lag = ev.lag_correlation([t], target)
    assert r > 0.99 and lag == 0.0


def test_bilabial_closed_counts_phones() -> None:
    shut = track(lambda t: target(None, t))
    assert ev.bilabial_closed([shut], threshold=0.05) == 1.0
    # Lips never closing: no bilabial counts as closed.
    assert ev.bilabial_closed([track(lambda t: target(None, t) + 0.2)], threshold=0.05) == 0.0
    none = ev.Track(np.zeros(10), phones([("sil", 0.4)]))
    assert ev.bilabial_closed([none], 0.05) is None


def test_stillness_compares_pauses_with_speech() -> None:
    still = track(lambda t: target(None, t))
    pause, speech = ev.pause_and_speech(still)
    assert pause.any() and speech.any() and not (pause & speech).any()
    # Pauses (0-0.4, 0.92-1.42, 2.02-2.42 s) keep only frames 80 ms inside their edges.
    times = still.times[pause]
    inner = [(0.08, 0.32), (1.0, 1.34), (2.1, 2.34)]
    assert all(any(lo <= t < hi for lo, hi in inner) for t in times)
    assert len(times) == 6 + 8 + 6
    assert ev.stillness([still]) == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(0)
    chatter = track(lambda t: target(None, t) + 0.5 * rng.random(len(t)))
    noisy = ev.stillness([chatter])
    assert noisy is not None and noisy > 0.3


def test_closed_threshold_between_closed_and_open() -> None:
    rng = np.random.default_rng(1)
    closed = 0.01 + 0.005 * rng.random(100)
    opened = 0.2 + 0.05 * rng.random(100)
    apertures = np.concatenate([closed, opened, [np.nan]])
    params = np.concatenate([np.zeros(100), np.full(100, 0.8), [0.0]])
    threshold = ev.closed_threshold(apertures, params)
    assert closed.max() < threshold < 0.1
    with pytest.raises(ValueError):
        ev.closed_threshold(opened, np.full(100, 0.8))


def test_region_quality_over_the_mask() -> None:
    rng = np.random.default_rng(2)
    crop = rng.integers(0, 255, (160, 160, 3), dtype=np.uint8)
    mask = np.zeros((160, 160), np.float32)
    mask[60:120, 40:120] = 1.0
    psnr, ssim = region_quality(crop, crop, mask)
    assert psnr == 100.0 and ssim == pytest.approx(1.0)
    # Damage outside the mask does not count; inside it does.
    outside = crop.copy()
    outside[:30] = 0
    assert region_quality(outside, crop, mask)[0] == 100.0
    inside = crop.copy()
    inside[70:110, 50:110] = 255 - inside[70:110, 50:110]
    psnr, ssim = region_quality(inside, crop, mask)
    assert psnr < 20 and ssim < 0.8


def test_cases_are_held_out_and_deterministic() -> None:
    from models.synth.speech import voices

    chosen = heldout.case_voices(8)
    assert chosen == heldout.case_voices(8)
    held = {v.name for v in voices("heldout")}
    assert {v.name for v in chosen} <= held
    assert len({v.name for v in chosen}) >= 6
    assert any(v.engine == "festival" for v in chosen)


def test_cases_without_festival_are_espeak_voices(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with espeak-ng only still evaluates (create's self-check once died there)."""
    from models.synth import speech

    monkeypatch.setattr(speech, "festival_installed", lambda: False)
    chosen = heldout.case_voices(12)
    assert {v.engine for v in chosen} == {"espeak"} and len({v.name for v in chosen}) >= 8


def test_meter_measures_a_real_face() -> None:
    pytest.importorskip("mediapipe")
    import cv2
    from skimage import data

    face = cv2.resize(data.astronaut()[0:256, 96:352], (512, 512), interpolation=cv2.INTER_CUBIC)
    with ev.ApertureMeter() as meter:
        aperture = meter.measure(face)
        blank = meter.measure(np.zeros((256, 256, 3), np.uint8))
    # The photo smiles with its teeth showing: open, but less than a gaping mouth.
    assert 0.02 < aperture < 0.4
    assert np.isnan(blank)


class OracleBackend:
    """A perfect generator for one utterance: each mel window gets the teacher's mouth crop of
    the frame whose window it is (the nearest of the utterance's windows), whatever order and
    batching the frame path asks in (silence is rendered once per base frame and cached)."""

    name, device = "oracle", "cpu"

    def __init__(self, crops: np.ndarray, windows: np.ndarray) -> None:
        self._crops = crops
        self._windows = windows.reshape(len(windows), -1)

    def infer(self, reference: np.ndarray, masked: np.ndarray, mel: np.ndarray) -> np.ndarray:
        asked = mel.reshape(len(mel), -1)
        distance = ((asked[:, None, :] - self._windows[None, :, :]) ** 2).sum(axis=2)
        batch = self._crops[np.argmin(distance, axis=1)]
        return np.transpose(batch, (0, 3, 1, 2)).astype(np.float32) / 255.0


def test_a_perfect_generator_scores_like_the_teacher(tmp_path: Path) -> None:
    """Frame indexing, crop placement and the lag sign agree between the two paths."""
    pytest.importorskip("mediapipe")
    from models.avatar import read_avatar, write_avatar
    from models.synth.clip import default_assets, render_clip
    from models.synth.speech import Voice, synthesize

    assets = default_assets()
    root = write_avatar(
        tmp_path / "default",
        name="default",
        kind="photo",
        frames=assets["frames"],
        boxes=assets["boxes"],
        mask=assets["mask"],
        reference=assets["reference"],
        model=b"not used by the oracle",
        blink_frames=assets["blink_frames"],
    )
    avatar = read_avatar(root)
    speech = synthesize("Bob made a map of the pool.", Voice("espeak", "en-us-nyc+f3", 160, 50))
    seed = 7
    clip = render_clip(speech, np.random.default_rng(seed), idle=False)
    windower = MelWindower(avatar.window)
    windows = np.concatenate([windower.push(speech.samples), windower.flush()])
    oracle = OracleBackend(clip.crops, windows)
    result = measure_eval.measure_case(speech, avatar, oracle, True, seed)
    assert result.psnr_db is not None and result.psnr_db > 35
    assert result.ssim is not None and result.ssim > 0.95
    gen, teacher = result.generated.aperture, result.teacher.aperture
    assert np.isfinite(gen).all() and np.isfinite(teacher).all()
    # The compositor puts the base frame's own skin texture back (models/detail.py), which
    # moves Face Mesh's lip points by a fraction of a pixel.
    assert np.abs(gen - teacher).max() < 0.025
    from models.synth.visemes import openness

    r, lag = ev.lag_correlation([result.generated], openness)
    assert r > 0.9 and abs(lag) <= 10


def test_pad_silence_extends_edge_pauses() -> None:
    from models.synth.speech import Speech, Voice

    speech = Speech(
        np.ones(16000, np.float32),
        phones([("sil", 0.1), ("AA", 0.8), ("M", 0.1)]),
        "a",
        Voice("espeak", "en-us", 175, 50),
    )
    padded = heldout.pad_silence(speech, 0.4, 0.6)
    assert len(padded.samples) == 16000 * 2
    assert padded.samples[:6400].max() == 0 and padded.samples[6400:22400].min() == 1
    symbols = [p.symbol for p in padded.phones]
    assert symbols == ["sil", "AA", "M", "sil"]
    assert padded.phones[0].start == 0 and padded.phones[0].end == pytest.approx(0.5)
    assert padded.phones[-1].start == pytest.approx(1.4) and padded.phones[-1].end == 2.0
    assert all(a.end == pytest.approx(b.start) for a, b in itertools.pairwise(padded.phones))


@pytest.mark.parametrize("cases", ["0", "97", "many", "-3"])
def test_a_bad_case_count_is_a_usage_error(cases: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        measure_eval.build_parser().parse_args(["--cases", cases])
    assert exit_info.value.code == 2
    assert "--cases" in capsys.readouterr().err
    assert measure_eval.build_parser().parse_args(["--cases", "48"]).cases == 48


def test_figures_by_voice_find_the_voice_whose_lips_stay_open() -> None:
    """``python -m streamer.measure.voices``: a voice whose generated lips never close stands
    out from the ones that close, each espeak variant counted by speaker and by variant."""
    from streamer.measure.voices import by_voice, groups

    teacher = track(lambda t: target(None, t))
    rendered = np.where(teacher.aperture > 0, 0.8, 0.0)  # the teacher's params: open or shut

    def case(shift: float) -> measure_eval.CaseResult:
        generated = track(lambda t: target(None, t) + shift)
        return measure_eval.CaseResult(generated, teacher, rendered, None, None, 1.0)

    assert groups("en-us-nyc+f3") == ["speaker en-us-nyc", "variant f3"]
    assert groups("ked_diphone") == ["voice ked_diphone"]
    table = by_voice([("en-us-nyc+f3", case(0.0)), ("ked_diphone", case(0.5))])
    assert set(table) == {"speaker en-us-nyc", "variant f3", "voice ked_diphone"}
    assert table["speaker en-us-nyc"]["generated"]["bilabial_closed"] == 1.0
    assert table["voice ked_diphone"]["generated"]["bilabial_closed"] == 0.0
    assert table["voice ked_diphone"]["teacher"]["bilabial_closed"] == 1.0
    assert table["voice ked_diphone"]["cases"] == 1


def test_the_landmark_models_write_nothing_to_stderr() -> None:
    """MediaPipe's C++ side writes warnings as a graph opens its models ("Feedback manager
    requires a model with a single signature...", from the graph's own threads while the
    solution is being made) and when it first meets a face ("Using NORM_RECT..."). With the
    making outside the quiet start-up, a fifth to a third of the meters wrote a line, in the
    middle of ``create``'s progress and of every ``eval`` (7 and 13 lines from these 40)."""
    import subprocess
    import sys

    code = (
        "from models.lipsync import ApertureMeter\n"
        "from models.synth.face import load_photo\n"
        "from models.tracking import FaceTracker\n"
        "face = load_photo()\n"
        "with FaceTracker(video=False) as tracker:\n"
        "    assert tracker.landmarks(face)\n"
        "for _ in range(40):\n"
        "    with ApertureMeter() as meter:\n"
        "        assert all(meter.measure(face) > 0.0 for _ in range(5))\n"
        "print('measured')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and "measured" in done.stdout, done.stderr[-2000:]
    assert done.stderr.strip() == "", done.stderr[-2000:]
