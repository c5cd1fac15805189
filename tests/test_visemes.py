import numpy as np

from models.synth.phonemes import Phone
from models.synth.visemes import OPEN, PRESS, ROUND, WIDTH, frame_times, mouth_track, openness


def utterance(*spec: tuple[str, float]) -> tuple[Phone, ...]:
    phones, t = [], 0.0
    for symbol, duration in spec:
        phones.append(Phone(symbol, t, t + duration))
        t += duration
    return tuple(phones)


SPEECH = utterance(
    ("sil", 0.4),
    ("P", 0.08),
    ("AA", 0.18),
    ("M", 0.09),
    ("IY", 0.15),
    ("sil", 0.05),
    ("B", 0.07),
    ("UW", 0.2),
    ("T", 0.06),
    ("sil", 0.5),
)


def test_shape_dtype_and_ranges() -> None:
    track = mouth_track(SPEECH, 45)
    assert track.shape == (45, 4) and track.dtype == np.float32
    assert track[:, OPEN].min() >= 0 and track[:, OPEN].max() <= 1
    assert track[:, WIDTH].min() >= -1 and track[:, WIDTH].max() <= 1
    assert track[:, ROUND:].min() >= 0 and track[:, ROUND:].max() <= 1


def test_silence_is_closed_rest() -> None:
    track = mouth_track(SPEECH, 45)
    assert np.all(track[:5, OPEN] == 0.0)  # leading pause, before any anticipation
    assert np.abs(track[:5]).max() < 0.05
    assert np.all(track[-5:] == 0.0)


def test_bilabials_close_the_lips() -> None:
    times = np.linspace(0, 1.8, 1000)
    curve = openness(SPEECH, times)
    for phone in SPEECH:
        if phone.symbol in {"P", "B", "M"}:
            inside = (times >= phone.start) & (times < phone.end - 0.01)
            assert inside.any()
            assert np.all(curve[inside] == 0.0), phone


def test_bilabials_press_the_lips() -> None:
    p = SPEECH[1]
    track = mouth_track(SPEECH, 45)
    k = int((p.start + p.end) / 2 * 25)
    assert track[k, PRESS] > 0.5


def test_vowels_open_and_round() -> None:
    times = np.array([0.57, 1.0])  # middle of AA, middle of UW
    track = mouth_track(SPEECH, 45)
    aa = np.interp(times[0], frame_times(45), track[:, OPEN])
    assert aa > 0.6
    uw = track[26]  # frame centre 1.06 s, inside UW
    assert uw[ROUND] > 0.5 and uw[WIDTH] < -0.3


def test_lips_anticipate_the_vowel() -> None:
    phones = utterance(("sil", 0.5), ("HH", 0.1), ("AA", 0.3), ("sil", 0.5))
    t = np.array([0.59, 0.61, 0.75])
    curve = openness(phones, t)
    assert curve[0] > 0.3  # opening before the vowel starts
    assert curve[2] > curve[1] > curve[0]


def test_openness_is_the_track_open_column() -> None:
    track = mouth_track(SPEECH, 45)
    np.testing.assert_array_equal(openness(SPEECH, frame_times(45)), track[:, OPEN])


def test_short_pause_keeps_mouth_moving_long_pause_closes() -> None:
    phones = utterance(("AA", 0.2), ("sil", 0.05), ("AA", 0.2), ("sil", 0.8), ("AA", 0.2))
    curve = openness(phones, np.array([0.225, 0.85]))
    assert curve[0] > 0.4
    assert curve[1] == 0.0


def test_empty_and_fps() -> None:
    assert np.all(mouth_track((), 3) == 0.0)
    assert mouth_track(SPEECH, 90, fps=50).shape == (90, 4)
