"""Teacher video clips: speech with phone timings rendered into frames and mouth crops."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

from models.audio import SAMPLES_PER_VIDEO_FRAME
from models.synth.face import TeacherFace
from models.synth.phonemes import Phone
from models.synth.visemes import mouth_track

NO_MOTION = (0.0, 0.0, 0.0, 1.0)
# Mouth parameters of the generator's reference crop: half open, upper teeth showing.
REFERENCE_PARAMS = (0.5, 0.1, 0.0, 0.0)
BLINK_LEVELS = (0.35, 0.7, 1.0)


class SpeechLike(Protocol):
    """What rendering needs of a ``models.synth.speech.Speech``."""

    @property
    def samples(self) -> np.ndarray: ...

    @property
    def phones(self) -> Sequence[Phone]: ...


@dataclass(frozen=True)
class Clip:
    """A rendered utterance: one row per 40 ms video frame.

    ``frames`` is None when the clip was rendered with ``keep_frames=False`` (training only
    needs the crops, and full frames cost 0.75 MB each).
    """

    frames: np.ndarray | None  # (n, 512, 512, 3) uint8 RGB
    crops: np.ndarray  # (n, 160, 160, 3) uint8 RGB at boxes
    params: np.ndarray  # (n, 4) float32 open, width, round, press
    boxes: np.ndarray  # (n, 4) int32 x0, y0, x1, y1
    blink: np.ndarray  # (n,) float32
    head: np.ndarray  # (n, 4) float32 dx, dy, rot_deg, scale


@lru_cache(maxsize=1)
def teacher() -> TeacherFace:
    """The shared default teacher face (loading it costs ~0.1 s)."""
    return TeacherFace()


def teacher_photo(avatar: Any) -> np.ndarray | None:
    """The person's own still of an avatar package (RGB), if it keeps one."""
    import cv2

    from models.avatar import TEACHER_PHOTO

    path = avatar.path / TEACHER_PHOTO
    if not path.is_file():
        return None
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def avatar_teacher(avatar: Any) -> TeacherFace | None:
    """The teacher of an avatar's own face: the default's, or one built from the package's
    ``teacher/`` still and landmarks; None for a package without them."""
    from models.avatar import DEFAULT_NAME, TEACHER_LANDMARKS

    if avatar.name == DEFAULT_NAME:
        return teacher()
    photo = teacher_photo(avatar)
    landmarks = avatar.path / TEACHER_LANDMARKS
    if photo is None or not landmarks.is_file():
        return None
    return TeacherFace(photo, np.load(landmarks))


def n_frames(n_samples: int) -> int:
    return math.ceil(n_samples / SAMPLES_PER_VIDEO_FRAME)


def render_clip(
    speech: SpeechLike,
    rng: np.random.Generator,
    idle: bool = True,
    keep_frames: bool = True,
    face: TeacherFace | None = None,
) -> Clip:
    """Render ``speech`` (anything with ``samples`` at 16 kHz and ``phones``) on the teacher.

    With ``idle`` the face blinks and the head sways as in :func:`face.idle_track`; without it
    the head is still and the eyes open, so only the mouth moves.
    """
    face = face or teacher()
    n = n_frames(len(speech.samples))
    params = mouth_track(tuple(speech.phones), n)
    if idle:
        blink, head = face.idle_track(n, rng)
    else:
        blink = np.zeros(n, dtype=np.float32)
        head = np.tile(np.asarray(NO_MOTION, dtype=np.float32), (n, 1))
    size = face.crop_size
    crops = np.empty((n, size, size, 3), dtype=np.uint8)
    boxes = np.empty((n, 4), dtype=np.int32)
    width, height = face.frame_size
    frames = np.empty((n, height, width, 3), dtype=np.uint8) if keep_frames else None
    for k in range(n):
        pose = (float(head[k, 0]), float(head[k, 1]), float(head[k, 2]), float(head[k, 3]))
        frame = face.render(params[k], blink=float(blink[k]), head=pose)
        box = face.mouth_box(pose)
        crops[k] = face.crop(frame, box)
        boxes[k] = box
        if frames is not None:
            frames[k] = frame
    return Clip(frames, crops, params, boxes, blink, head)


def default_assets(face: TeacherFace | None = None) -> dict[str, Any]:
    """Everything the default avatar package needs from the teacher.

    ``frames`` (4, 512, 512, 3) uint8: frame 0 closed neutral mouth, eyes open, no head motion;
    frames 1..3 the same with the eyes progressively closed (a blink).  ``box`` (x0, y0, x1, y1)
    the mouth box and ``boxes`` (4, 4) the same per frame; ``mask`` (160, 160) float32 feather
    mask; ``reference`` (160, 160, 3) uint8 crop with the mouth half open showing teeth.
    """
    face = face or teacher()
    closed = np.zeros(4, dtype=np.float32)
    frames = np.stack([face.render(closed, blink=b) for b in (0.0, *BLINK_LEVELS)])
    box = face.mouth_box(NO_MOTION)
    reference = face.crop(face.render(np.asarray(REFERENCE_PARAMS, dtype=np.float32)), box)
    return {
        "frames": frames,
        "box": box,
        "boxes": np.tile(np.asarray(box, dtype=np.int32), (len(frames), 1)),
        "mask": face.feather_mask(),
        "reference": np.ascontiguousarray(reference),
        "blink_frames": [1, 2, 3],
    }
