"""Detail transfer (models/detail.py): the person's own texture, and a photo's teeth."""

from __future__ import annotations

import cv2
import numpy as np

from models.detail import LUMA, Reference, transfer_detail
from models.synth.clip import REFERENCE_PARAMS
from models.synth.face import TeacherFace


def _energy(image: np.ndarray) -> float:
    grey = np.asarray(image, np.float32) @ LUMA
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def test_the_reference_gives_a_soft_mouth_its_teeth_back() -> None:
    """The generator draws the teeth as one soft band. Where the mouth is open as the
    reference has it, the reference's detail (the teeth's edges and seams) goes in, and the
    result is nearer the truth; a closed mouth takes the base's skin, as before."""
    face = TeacherFace()
    box = face.mouth_box()
    opened = face.crop(face.render(np.asarray(REFERENCE_PARAMS, np.float32)), box)
    closed = face.crop(face.render(np.zeros(4, np.float32)), box)
    truth = opened.astype(np.float32)
    soft = cv2.GaussianBlur(truth, (0, 0), 1.6)  # what an L1-trained generator draws
    base = closed.astype(np.float32)
    reference = Reference(opened)

    before = transfer_detail(soft, base)
    after = transfer_detail(soft, base, reference)
    mouth = np.abs(truth - base).max(axis=2) > 40  # where the open mouth is not the skin
    assert mouth.mean() > 0.02
    error_before = float(np.abs(before - truth)[mouth].mean())
    error_after = float(np.abs(after - truth)[mouth].mean())
    assert error_after < 0.8 * error_before, (error_before, error_after)
    assert _energy(after[mouth.any(axis=1)]) > 1.5 * _energy(before[mouth.any(axis=1)])

    # A closed mouth is the base, so the reference gives next to nothing: at the mouth under a
    # grey level (where the reference shows teeth, its closed lips do not agree with them), a
    # tenth of a level on average (along the chin's shadow, a few levels of the same skin).
    soft_closed = cv2.GaussianBlur(base, (0, 0), 1.6)
    with_reference = transfer_detail(soft_closed, base, reference)
    moved = np.abs(with_reference - transfer_detail(soft_closed, base)).max(axis=2)
    assert float(moved[mouth].max()) < 1.0 and float(moved.mean()) < 0.2
