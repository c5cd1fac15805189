"""``avatar create NAME --image FILE``: a photo avatar, adapted to its face, then checked.

1. The photo is read (any format, alpha, EXIF rotation, huge sizes: :mod:`models.photo`), its
   face found and checked (one face, frontal, large enough).
2. The face is aligned to the default's place in a 512x512 frame (eyes, nose, chin), so idle
   motion and the mouth box fit as they do for the default.
3. The teacher animates this very face (:class:`models.synth.face.TeacherFace`): the base frame
   is its closed, neutral mouth (a smiling photo's open lips are closed), blink frames close its
   eyes, and the reference crop shows its half-open mouth with its own teeth or drawn ones.
4. The generator is fine-tuned on the teacher's animation of the face with many training
   voices (:mod:`models.adapt`), within a time budget, and exported to ONNX.
5. The self-check (:mod:`models.selfcheck`) measures the new package on held-out voices and
   sentences before it is put in place; a mouth that does not follow speech is refused.

Nothing is written under the avatar's name until all of that has worked: the package is
built and checked in a hidden staging folder and renamed into place at the end.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.adapt import AdaptConfig, adapt_note, adapted_model
from models.avatar import TEACHER_LANDMARKS, TEACHER_PHOTO, AvatarError, write_avatar
from models.matte import compute_matte
from models.selfcheck import Checker, install_checked
from models.synth.clip import BLINK_LEVELS, REFERENCE_PARAMS
from models.synth.face import LANDMARKS_FILE, TeacherFace

PHOTO_SIZE = 512
ALIGN_POINTS = (33, 263, 1, 152)  # outer eye corners, nose tip, chin
KNOWN_GAIN = 16.0  # fill_outside: a coarse pixel 1/16 photo counts as known
FILL_LINE = 1.0 / 6.0  # frame_box: an edge line goes while more of it than this is fill
KEEP_MARGIN = 12.0  # framed_face: pixels (at the default's scale) kept around the jaw's reach

Progress = Callable[[str, int, int], None]
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1 and y1 exclusive


class PhotoAvatarError(AvatarError):
    """The photo cannot become an avatar; the message says why and what to do."""


def align(rgb: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The photo warped so its face sits where the default's does in a 512x512 frame, and
    where in that frame the photo's own pixels are (the rest is filled from them)."""
    teacher = np.load(LANDMARKS_FILE)[:, :2].astype(np.float32)
    points = list(ALIGN_POINTS)
    matrix, _ = cv2.estimateAffinePartial2D(
        np.asarray(landmarks, np.float32)[points, :2], teacher[points]
    )
    if matrix is None:
        raise PhotoAvatarError("the face cannot be aligned: use a frontal photo")
    # Shrinking a large photo: area-average first so the face keeps detail without aliasing.
    zoom = float(np.hypot(matrix[0, 0], matrix[0, 1]))
    interp = cv2.INTER_AREA if zoom < 1.0 else cv2.INTER_CUBIC
    size = (PHOTO_SIZE, PHOTO_SIZE)
    warped = cv2.warpAffine(rgb, matrix, size, flags=interp, borderMode=cv2.BORDER_REPLICATE)
    inside = cv2.warpAffine(
        np.ones(rgb.shape[:2], np.float32), matrix, size, flags=cv2.INTER_LINEAR
    )
    return fill_outside(warped, inside), inside >= 0.999


def frame_box(photo: np.ndarray, keep: Box) -> Box:
    """The part of the aligned 512x512 frame an avatar keeps, where ``photo`` (H, W bool) is
    the photo's own pixels and the rest is filled from them. A tight or tilted portrait is not
    padded out to the default's framing with colours smeared from its edge: starting from the
    photo's extent, the side whose edge line is most fill goes, one line at a time, while that
    line is more than ``FILL_LINE`` fill (a pixel of fill weighs as much as five of photo). No
    side moves into ``keep`` (where the teacher moves the jaw and the compositor pastes the
    mouth). The sides are even, for the video encoders. A photo that covers the frame keeps
    all of it."""
    height, width = photo.shape
    ys, xs = np.nonzero(photo)
    if not len(xs):
        return (0, 0, width, height)
    x0, y0 = max(min(int(xs.min()), keep[0]), 0), max(min(int(ys.min()), keep[1]), 0)
    x1, y1 = (
        min(max(int(xs.max()) + 1, keep[2]), width),
        min(max(int(ys.max()) + 1, keep[3]), height),
    )
    fill = ~photo
    while True:
        lines = {
            "top": fill[y0, x0:x1].mean() if y0 < keep[1] else 0.0,
            "bottom": fill[y1 - 1, x0:x1].mean() if y1 > keep[3] else 0.0,
            "left": fill[y0:y1, x0].mean() if x0 < keep[0] else 0.0,
            "right": fill[y0:y1, x1 - 1].mean() if x1 > keep[2] else 0.0,
        }
        side = max(lines, key=lambda k: lines[k])
        if lines[side] <= FILL_LINE:
            break
        x0, y0 = x0 + (side == "left"), y0 + (side == "top")
        x1, y1 = x1 - (side == "right"), y1 - (side == "bottom")
    if (x1 - x0) % 2:
        x1, x0 = (x1 + 1, x0) if x1 < width else (x1, x0 - 1)
    if (y1 - y0) % 2:
        y1, y0 = (y1 + 1, y0) if y1 < height else (y1, y0 - 1)
    return (x0, y0, x1, y1)


def fill_outside(image: np.ndarray, inside: np.ndarray, feather: int = 6) -> np.ndarray:
    """``image`` (H, W, 3 uint8) where ``inside`` (H, W, 0..1) says it shows the photo, and
    elsewhere a smooth continuation of the photo's colours: where a small or tilted photo
    does not reach the frame's edge. Repeating its edge pixels instead drew streaks (every
    edge pixel stretched into a line) over up to a third of each frame.

    The fill is a push-pull: the photo's pixels are averaged down a pyramid, weighted by how
    much of each is photo, and the coarse levels fill the holes of the finer ones on the way
    back up, so a gap of any width gets the colours of the photo around it, blurred more the
    farther it is. A coarse pixel counts as known once ``1 / KNOWN_GAIN`` of it is photo: with
    plain averages the frame's mean colour (a grey-beige on most photos) reached within a few
    pixels of the edge and filled wide gaps. The photo's edge is feathered over ``feather``
    pixels."""
    if inside.min() >= 0.999:
        return image
    weight = np.clip(inside, 0.0, 1.0).astype(np.float32)
    weight[weight < 0.999] = 0.0  # interpolated edge pixels are part repeated border
    colour = image.astype(np.float32) * weight[..., None]
    levels = [(colour, weight)]
    while min(levels[-1][1].shape) > 4:
        c, w = levels[-1]
        levels.append((cv2.pyrDown(c), cv2.pyrDown(w)))
    c, w = levels[-1]
    fill = c.sum(axis=(0, 1)) / max(float(w.sum()), 1e-6) * np.ones_like(c)
    for c, w in reversed(levels):
        fill = cv2.resize(fill, w.shape[::-1], interpolation=cv2.INTER_LINEAR)
        known = np.clip(w * KNOWN_GAIN, 0.0, 1.0)[..., None]
        own = c / np.maximum(w, 1e-6)[..., None]
        fill = known * own + (1.0 - known) * fill
    keep = cv2.GaussianBlur(
        cv2.erode(weight, np.ones((3, 3), np.uint8), iterations=feather // 2), (0, 0), feather / 2.0
    )
    keep = np.where(weight > 0, np.maximum(keep, 0.0), 0.0)[..., None]
    out = keep * image.astype(np.float32) + (1.0 - keep) * fill
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def prepare_face(path: Path) -> tuple[np.ndarray, np.ndarray, float, list[str], np.ndarray]:
    """(aligned RGB, its landmarks, face size in the source, warnings, where the aligned frame
    shows the photo's own pixels) for a photo file."""
    from models.photo import check_face, pick_face, read_photo, without_frame_lines
    from models.tracking import FaceTracker, observe

    rgb = without_frame_lines(read_photo(path))
    with FaceTracker(max_faces=3, video=False) as tracker:
        face = pick_face(tracker.landmarks(rgb))
        warnings = check_face(face, rgb.shape)
        source_px = observe(face).side
        aligned, photo = align(rgb, face)
        again = tracker.landmarks(aligned)
    if not again:
        raise PhotoAvatarError(f"the face in {path} is lost once aligned: use a frontal photo")
    return aligned, again[0], source_px, warnings, photo


def keep_box(face: TeacherFace) -> Box:
    """Where the teacher moves the jaw and the compositor pastes the mouth (head motion
    included): what a photo avatar's frame must hold, even past the photo's edge."""
    mouth = face.mouth_box()
    margin = KEEP_MARGIN * face.scale
    return (
        int(min(face.x0, mouth[0]) - margin),
        int(min(face.y0, mouth[1]) - margin),
        int(np.ceil(max(face.x1, mouth[2]) + margin)),
        int(np.ceil(max(face.y1, mouth[3]) + margin)),
    )


def framed_face(aligned: np.ndarray, landmarks: np.ndarray, photo: np.ndarray) -> TeacherFace:
    """The teacher's face on the part of the aligned frame the avatar keeps (:func:`frame_box`)."""
    whole = TeacherFace(aligned, landmarks)
    x0, y0, x1, y1 = frame_box(photo, keep_box(whole))
    if (x0, y0, x1, y1) == (0, 0, *aligned.shape[1::-1]):
        return whole
    shifted = np.asarray(landmarks, np.float32).copy()
    shifted[:, :2] -= (x0, y0)
    return TeacherFace(np.ascontiguousarray(aligned[y0:y1, x0:x1]), shifted)


def create_photo_avatar(
    name: str,
    path: Path,
    target: Path,
    progress: Progress,
    adapt: AdaptConfig | None = None,
    check: Checker | None = None,
) -> dict[str, Any]:
    """Build, adapt, check and install the package; returns what the summary reports."""
    started = time.perf_counter()
    aligned, landmarks, source_px, warnings, photo = prepare_face(path)
    face = framed_face(aligned, landmarks, photo)
    closed = np.zeros(4, np.float32)
    frames = [face.render(closed)] + [face.render(closed, blink=b) for b in BLINK_LEVELS]
    box = face.mouth_box()
    reference = face.crop(face.render(np.asarray(REFERENCE_PARAMS, np.float32)), box)
    cfg = adapt or AdaptConfig()
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.create-", dir=root))
    try:
        model, checkpoint, figures = adapted_model(face, cfg, work, progress)
        cv2.imwrite(str(work / "photo.png"), cv2.cvtColor(face.photo, cv2.COLOR_RGB2BGR))
        np.save(work / "landmarks.npy", face.landmarks)
        staged = write_avatar(
            work / name,
            name=name,
            kind="photo",
            frames=frames,
            boxes=np.repeat(np.asarray(box, np.int64)[None], len(frames), axis=0),
            mask=face.feather_mask(),
            reference=reference,
            model=model,
            checkpoint=checkpoint,
            blink_frames=tuple(range(1, len(frames))),
            extras={TEACHER_PHOTO: work / "photo.png", TEACHER_LANDMARKS: work / "landmarks.npy"},
            matte=compute_matte(np.asarray(frames)),
        )
        notes = [adapt_note(figures)]
        verdict = install_checked(staged, target, check, path)
        if verdict is not None:
            warnings += verdict.warnings
            notes += verdict.lines()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "face_px": source_px,
        "frame_size": face.frame_size,
        "frames": len(frames),
        "warnings": warnings,
        "notes": notes,
        "seconds": time.perf_counter() - started,
        "check": verdict.figures if verdict is not None else None,
    }
