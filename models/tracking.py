"""Face tracking for avatar creation: MediaPipe Face Mesh per frame, then boxes over time.

Per frame the tracker keeps only a few numbers (box centre and size, mouth opening, whether
several faces of one size were seen) and the lower-face landmarks in box coordinates, so a
long video costs kilobytes per second, never frames. :func:`smooth_track` then fills short
gaps, leaves long ones out and smooths the boxes with a zero-phase filter.

The box matches the default avatar's mouth box in the teacher's geometry (measured on its
Face Mesh landmarks): a square ``BOX_SIDE`` eye-corner distances wide, centred ``BOX_DOWN``
of them below the eyes' midpoint, so the default generator sees crops framed as it learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

BOX_SIDE = 1.07  # box side / outer eye-corner distance (teacher: 160 px / 149.7 px)
BOX_DOWN = 0.89  # box centre below the eyes' midpoint, in eye-corner distances
EYE_OUTER = (33, 263)
LIP_GAP = (13, 14)  # inner lip midpoints, upper and lower
# What the generator redraws: the outer lip contour, and the jaw from cheek to cheek.
_LIPS_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIPS_OUTER = (*_LIPS_UPPER, 375, 321, 405, 314, 17, 84, 181, 91, 146)
JAW = (132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361)
MASK_POINTS = LIPS_OUTER + JAW
EQUAL_FACES = 0.85  # a second face at least this large relative to the first is ambiguous
MAX_GAP_FRAMES = 8  # face-lost gaps up to 0.32 s are interpolated; longer ones are left out


@dataclass(frozen=True)
class FaceObservation:
    centre: tuple[float, float]  # box centre, pixels of the tracked frame
    side: float  # box side, pixels
    opening: float  # inner lip gap / eye distance
    mask_points: np.ndarray  # (len(MASK_POINTS), 2) float32 in box units (0..1 across)
    faces: int  # faces seen in the frame
    ambiguous: bool  # several faces of about equal size


def observe(landmarks: np.ndarray, faces: int = 1, ambiguous: bool = False) -> FaceObservation:
    """The box and mouth measures from (468+, 2) landmarks in pixels."""
    lm = np.asarray(landmarks, np.float64)[:, :2]
    left, right = lm[EYE_OUTER[0]], lm[EYE_OUTER[1]]
    eye = right - left
    scale = float(np.hypot(*eye))
    mid = 0.5 * (left + right)
    # "Down" is perpendicular to the eye line, so a tilted head keeps the box on its mouth.
    down = np.array([-eye[1], eye[0]]) / max(scale, 1e-6)
    centre = mid + BOX_DOWN * scale * down
    side = BOX_SIDE * scale
    opening = float(np.hypot(*(lm[LIP_GAP[1]] - lm[LIP_GAP[0]]))) / max(scale, 1e-6)
    origin = centre - side / 2.0
    points = ((lm[list(MASK_POINTS)] - origin) / max(side, 1e-6)).astype(np.float32)
    return FaceObservation(
        (float(centre[0]), float(centre[1])), side, opening, points, faces, ambiguous
    )


def face_size(landmarks: np.ndarray) -> float:
    lm = np.asarray(landmarks)[:, :2]
    return float(np.prod(lm.max(axis=0) - lm.min(axis=0)))


class FaceTracker:
    """MediaPipe Face Mesh in video mode; ``track(rgb)`` per frame, in order. Offline: the
    models ship inside the mediapipe wheel."""

    def __init__(self, max_faces: int = 3, video: bool = True) -> None:
        from models.mediapipe_compat import import_mediapipe, started

        mp = import_mediapipe()

        self._mesh: Any = started(
            lambda: mp.solutions.face_mesh.FaceMesh(
                static_image_mode=not video,
                max_num_faces=max_faces,
                refine_landmarks=False,
                min_detection_confidence=0.5,
                min_tracking_confidence=0.5,
            )
        )

    def landmarks(self, rgb: np.ndarray) -> list[np.ndarray]:
        """Every face's (468, 2) landmarks in pixels, largest first."""
        height, width = rgb.shape[:2]
        result = self._mesh.process(np.ascontiguousarray(rgb))
        faces = [
            np.array([[p.x * width, p.y * height] for p in face.landmark], np.float32)
            for face in result.multi_face_landmarks or ()
        ]
        return sorted(faces, key=face_size, reverse=True)

    def track(self, rgb: np.ndarray) -> FaceObservation | None:
        faces = self.landmarks(rgb)
        if not faces:
            return None
        ambiguous = len(faces) > 1 and face_size(faces[1]) >= EQUAL_FACES * face_size(faces[0])
        return observe(faces[0], len(faces), ambiguous)

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Track:
    """Per 25 fps frame, after smoothing. Frames with ``valid`` False are left out."""

    centres: np.ndarray  # (N, 2) float64, pixels of the tracked frame
    sides: np.ndarray  # (N,) float64
    opening: np.ndarray  # (N,) float64, NaN where not valid
    seen: np.ndarray  # (N,) bool: a face was found in this very frame
    valid: np.ndarray  # (N,) bool: seen, or inside an interpolated short gap
    long_gaps: tuple[tuple[int, int], ...]  # [start, end) frame ranges left out

    @property
    def interpolated(self) -> int:
        return int((self.valid & ~self.seen).sum())

    def boxes(self, scale: float, width: int, height: int) -> np.ndarray:
        """(N, 4) int64 squares in a frame ``scale`` times the tracked one, kept inside it;
        rows of invalid frames are zeros."""
        out = np.zeros((len(self.sides), 4), np.int64)
        for i in np.flatnonzero(self.valid):
            side = round(min(float(self.sides[i]) * scale, width, height))
            x0 = round(float(self.centres[i, 0]) * scale - side / 2)
            y0 = round(float(self.centres[i, 1]) * scale - side / 2)
            x0 = min(max(x0, 0), width - side)
            y0 = min(max(y0, 0), height - side)
            out[i] = (x0, y0, x0 + side, y0 + side)
        return out


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) ranges where ``flags`` is True."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def smooth_track(
    observations: Sequence[FaceObservation | None],
    max_gap: int = MAX_GAP_FRAMES,
    sigma_centre: float = 1.5,
    sigma_side: float = 4.0,
) -> Track:
    n = len(observations)
    seen = np.array([o is not None for o in observations], bool)
    centres = np.full((n, 2), np.nan)
    sides = np.full(n, np.nan)
    opening = np.full(n, np.nan)
    for i, o in enumerate(observations):
        if o is not None:
            centres[i], sides[i], opening[i] = o.centre, o.side, o.opening
    valid = seen.copy()
    long_gaps: list[tuple[int, int]] = []
    for start, end in _runs(~seen):
        inside = start > 0 and end < n
        if inside and end - start <= max_gap:
            valid[start:end] = True
            # Linear between the frames either side of the gap.
            w = (np.arange(start, end) - (start - 1)) / (end - (start - 1))
            centres[start:end] = centres[start - 1] * (1 - w[:, None]) + centres[end] * w[:, None]
            for arr in (sides, opening):
                arr[start:end] = arr[start - 1] * (1 - w) + arr[end] * w
        else:
            long_gaps.append((start, end))
    for start, end in _runs(valid):
        # Each stretch on its own: smoothing across a cut would drag boxes between shots.
        centres[start:end] = gaussian_filter1d(
            centres[start:end], sigma_centre, axis=0, mode="nearest"
        )
        sides[start:end] = gaussian_filter1d(sides[start:end], sigma_side, mode="nearest")
    return Track(centres, sides, opening, seen, valid, tuple(long_gaps))


def landmark_mask(points: Sequence[np.ndarray], size: int, border: int = 12) -> np.ndarray:
    """(size, size) float32 feather mask in [0, 1] covering the lips and jaw of every
    ``points`` set (box units), widened for speech, kept ``border`` px inside the crop."""
    canvas = np.zeros((size, size), np.uint8)
    for p in points:
        hull = cv2.convexHull(np.round(np.asarray(p) * size).astype(np.int32))
        cv2.fillConvexPoly(canvas, hull, 255)
    # Room for the mouth to open wider than anywhere in the sample, then a soft edge.
    grow = max(3, size // 16)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1,) * 2)
    grown = np.asarray(cv2.dilate(canvas, kernel), np.float32) / 255.0
    inner = np.zeros_like(grown)
    inner[border + grow : size - border - grow, border + grow : size - border - grow] = 1.0
    soft = cv2.GaussianBlur(np.minimum(grown, inner), (0, 0), sigmaX=grow / 1.5)
    return np.clip(soft, 0.0, 1.0).astype(np.float32)
