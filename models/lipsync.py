"""Lip-sync figures from mouth apertures measured by independent face landmarks.

The measures of ``avatarcast eval`` (:mod:`streamer.measure.eval` runs them on the server's
own frame path) and of the person eval: MediaPipe Face Mesh gives the mouth aperture per
frame, which is compared with the phoneme-derived openness
(:func:`models.synth.visemes.openness`) and the phone timings:

- ``r``, ``lag_ms``: Pearson correlation at the best lag within +-200 ms (5 ms steps, all
  cases pooled); a positive lag means the mouth moves after the sound.
- ``bilabial_closed``: the fraction of P/B/M phones during which the lips close.
- ``stillness``: std of aperture inside pauses over std of aperture during speech.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from models.audio import FPS
from models.lag import LAG_STEP_S, MAX_LAG_S
from models.lag import lag_correlation as best_lag
from models.synth.phonemes import BILABIALS, SILENCE, Phone

Progress = Callable[[str], None]

PAUSE_MIN_S = 0.2
PAUSE_EDGE_S = 0.08
# MediaPipe Face Mesh landmark indices: inner-lip midpoints and the outer eye corners. The eye
# corners do not move with the jaw, so they normalise the gap for face size and distance.
UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
EYE_OUTER_RIGHT, EYE_OUTER_LEFT = 33, 263


# --- measuring ------------------------------------------------------------------------------


def aperture_from_landmarks(points: np.ndarray) -> float:
    """Inner-lip gap over the outer eye-corner distance, from (478, 2) pixel coordinates."""
    gap = float(np.linalg.norm(points[UPPER_INNER_LIP] - points[LOWER_INNER_LIP]))
    eyes = float(np.linalg.norm(points[EYE_OUTER_RIGHT] - points[EYE_OUTER_LEFT]))
    return gap / eyes if eyes > 0 else float("nan")


class ApertureMeter:
    """MediaPipe Face Mesh in tracking mode over one video; NaN where no face is found."""

    def __init__(self) -> None:
        from models.mediapipe_compat import import_mediapipe, started

        mp = import_mediapipe()

        self._mesh = started(
            lambda: mp.solutions.face_mesh.FaceMesh(
                static_image_mode=False, refine_landmarks=True, max_num_faces=1
            )
        )

    def __enter__(self) -> ApertureMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._mesh.close()

    def measure(self, rgb: np.ndarray) -> float:
        result = self._mesh.process(np.ascontiguousarray(rgb))
        if not result.multi_face_landmarks:
            return float("nan")
        height, width = rgb.shape[:2]
        landmarks = result.multi_face_landmarks[0].landmark
        points = np.array([(p.x * width, p.y * height) for p in landmarks], np.float64)
        return aperture_from_landmarks(points)


@dataclass(frozen=True)
class Track:
    """One video's measured aperture per frame, with the phones of its speech."""

    aperture: np.ndarray  # (n,) float64, NaN where no face was found
    phones: tuple[Phone, ...]

    @property
    def times(self) -> np.ndarray:
        return (np.arange(len(self.aperture)) + 0.5) / FPS


def lag_correlation(
    tracks: Sequence[Track],
    target: Callable[[Sequence[Phone], np.ndarray], np.ndarray],
    max_lag_s: float = MAX_LAG_S,
    step_s: float = LAG_STEP_S,
) -> tuple[float, float]:
    """(best r, its lag in ms): aperture at t against ``target`` at t - lag, cases pooled.

    The target is a function of time, so lags finer than a frame need no interpolation of
    the measurement.
    """
    measured = np.concatenate([t.aperture for t in tracks])
    return best_lag(
        measured,
        lambda lag: np.concatenate([target(t.phones, t.times - lag) for t in tracks]),
        max_lag_s,
        step_s,
    )


def _frames_overlapping(phone: Phone, n: int) -> np.ndarray:
    first = int(np.floor(phone.start * FPS))
    last = int(np.ceil(phone.end * FPS))  # exclusive
    return np.arange(max(0, first), min(n, max(last, first + 1)))


def bilabial_closed(tracks: Sequence[Track], threshold: float) -> float | None:
    """Fraction of P/B/M phones with some overlapping frame's aperture below ``threshold``."""
    closed = total = 0
    for track in tracks:
        for phone in track.phones:
            if phone.symbol not in BILABIALS:
                continue
            frames = _frames_overlapping(phone, len(track.aperture))
            values = track.aperture[frames]
            values = values[np.isfinite(values)]
            if not len(values):
                continue
            total += 1
            closed += int(values.min() < threshold)
    return closed / total if total else None


def pause_and_speech(track: Track) -> tuple[np.ndarray, np.ndarray]:
    """Boolean frame masks: inside long pauses (edges trimmed), and inside speech phones."""
    t = track.times
    pause = np.zeros(len(t), bool)
    speech = np.zeros(len(t), bool)
    for phone in track.phones:
        inside = (t >= phone.start) & (t < phone.end)
        if phone.symbol != SILENCE:
            speech |= inside
        elif phone.duration > PAUSE_MIN_S:
            pause |= (t >= phone.start + PAUSE_EDGE_S) & (t < phone.end - PAUSE_EDGE_S)
    return pause, speech


def stillness(tracks: Sequence[Track]) -> float | None:
    """std of aperture in pauses over std in speech, over all cases; None without pauses."""
    pauses, speech = [], []
    for track in tracks:
        p, s = pause_and_speech(track)
        pauses.append(track.aperture[p])
        speech.append(track.aperture[s])
    pa = np.concatenate(pauses)
    sp = np.concatenate(speech)
    pa, sp = pa[np.isfinite(pa)], sp[np.isfinite(sp)]
    if len(pa) < 2 or len(sp) < 2 or np.std(sp) == 0:
        return None
    return float(np.std(pa) / np.std(sp))


def closed_threshold(apertures: np.ndarray, open_params: np.ndarray) -> float:
    """The aperture below which lips count as closed, from teacher frames and their params.

    Frames rendered fully closed (open = 0) set the closed level (95th percentile); the
    threshold lies a fifth of the way from it to the median aperture of clearly open frames,
    so landmark jitter on a closed mouth never counts as open, and a half-closed one never
    counts as closed.
    """
    ok = np.isfinite(apertures)
    closed = apertures[ok & (open_params <= 0.0)]
    opened = apertures[ok & (open_params >= 0.5)]
    if not len(closed):
        raise ValueError("no closed-mouth teacher frames to calibrate on")
    level = float(np.percentile(closed, 95))
    if not len(opened):
        return level * 1.5 + 1e-3
    return level + 0.2 * max(0.0, float(np.median(opened)) - level)


def summarise(tracks: Sequence[Track], threshold: float) -> dict[str, float | None]:
    from models.synth.visemes import openness

    r, lag = lag_correlation(tracks, openness)
    closed = bilabial_closed(tracks, threshold)
    still = stillness(tracks)
    return {
        "r": rounded(r, 3),
        "lag_ms": rounded(lag, 1),
        "bilabial_closed": rounded(closed, 3),
        "stillness": rounded(still, 3),
    }


def rounded(value: float | None, digits: int) -> float | None:
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), digits)
