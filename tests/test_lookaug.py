"""Appearance augmentation of the generator's training crops (models.lookaug)."""

from __future__ import annotations

import cv2
import numpy as np

from models.lookaug import Camera, through_cameras


def _crops(n: int, seed: int = 0) -> np.ndarray:
    """Textured crops: a gradient, stripes and a dark mouth-like ellipse."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:160, 0:160]
    out = np.empty((n, 160, 160, 3), np.uint8)
    for i in range(n):
        base = np.stack([180 - yy * 0.3, 140 + 20 * np.sin(xx / 3.0), 120 + 0 * xx], -1)
        img = np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)
        cv2.ellipse(img, (80, 105), (30, 8 + i % 10), 0, 0, 360, (60, 20, 25), -1)
        out[i] = img
    return out


def _detail(x: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def test_no_share_leaves_the_crops_and_never_writes_the_inputs() -> None:
    target, reference = _crops(8), _crops(8, seed=1)
    t0, r0 = target.copy(), reference.copy()
    same_t, same_r = through_cameras(target, reference, np.random.default_rng(0), share=0.0)
    assert np.array_equal(same_t, t0) and np.array_equal(same_r, r0)
    out_t, out_r = through_cameras(target, reference, np.random.default_rng(0), share=1.0)
    assert np.array_equal(target, t0) and np.array_equal(reference, r0)
    assert out_t.dtype == np.uint8 and out_t.shape == target.shape
    assert all(not np.array_equal(a, b) for a, b in zip(out_t, t0, strict=True))
    assert all(not np.array_equal(a, b) for a, b in zip(out_r, r0, strict=True))


def test_target_and_reference_share_one_camera() -> None:
    """The same crop as target and reference comes out nearly alike (one light, one blur);
    different pairs get different cameras."""
    crop = _crops(1)
    rng = np.random.default_rng(4)
    means = []
    for _ in range(20):
        t, r = through_cameras(crop, crop, rng, share=1.0)
        mt, mr = t[0].reshape(-1, 3).mean(0), r[0].reshape(-1, 3).mean(0)
        assert np.abs(mt - mr).max() < 12, (mt, mr)  # the reference's light drifts only a little
        means.append(mt)
    assert np.ptp(np.array(means), axis=0).min() > 15  # while the cameras differ widely


def test_a_small_face_softens_and_a_seed_repeats() -> None:
    crop = _crops(1)[0]
    softened = []
    for seed in range(30):
        camera = Camera(np.random.default_rng(seed))
        if camera.scale < 0.6:
            softened.append(_detail(camera(crop)) / _detail(crop))
    assert softened and max(softened) < 0.5
    a = through_cameras(_crops(4), _crops(4), np.random.default_rng(9), 1.0)
    b = through_cameras(_crops(4), _crops(4), np.random.default_rng(9), 1.0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
