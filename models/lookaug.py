"""Appearance augmentation of the generator's crops at batch time: the camera, not the face.

The built-in generator learns from the teacher's renders of one photo: sharp, evenly lit, at
one scale, never compressed. A real avatar's frames are none of these. A phone video holds a
face smaller than the crop (so the crop is upscaled and soft), H.264 has smeared its detail,
and the light changes while the person talks. Given such a crop, a generator that has only
seen clean ones draws a blotchy patch, even on the very face it was trained on (a video twin
of the default face, made by ``tests/talking_video.py``, scored r -0.35 on its held-out tail).

So, for a share of the training samples, the target crop (and with it the masked input) and
the reference crop pass through the same random camera: a colour cast, a gamma and a contrast
(the light), a softening by down- and up-scaling (a small face), sensor noise and JPEG
compression. Reference and target share one camera, as a person's frames do, but the light of
the reference is drawn a little apart, as it is when the reference comes from another moment of
the video. The generator then takes texture and light from its inputs instead of from memory.
"""

from __future__ import annotations

import cv2
import numpy as np

GAIN = 0.12  # per-channel colour gain, +-
CONTRAST = 0.2  # +-, about mid-grey
GAMMA = 0.3  # log-uniform within exp(+-GAMMA)
LIGHT_DRIFT = 0.04  # extra +- gain on the reference's channels
MIN_SCALE = 0.4  # the face as small as 0.4 of the crop before upscaling
SOFTEN_SHARE = 0.6
NOISE_SHARE, MAX_NOISE = 0.3, 4.0  # sensor noise, sigma in grey levels
JPEG_SHARE, JPEG_QUALITY = 0.5, (30, 90)


def _light(x: np.ndarray, gain: np.ndarray, contrast: float, gamma: float) -> np.ndarray:
    """x (S, S, 3) float in [0, 1] under another light."""
    y = np.power(x, gamma) * gain
    return np.clip((y - 0.5) * contrast + 0.5, 0.0, 1.0)


def _soften(x: np.ndarray, scale: float) -> np.ndarray:
    size = x.shape[0]
    small = max(8, round(size * scale))
    down = cv2.resize(x, (small, small), interpolation=cv2.INTER_AREA)
    return cv2.resize(down, (size, size), interpolation=cv2.INTER_LINEAR)


def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, quality])
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else None
    return x if decoded is None else np.asarray(decoded, np.uint8)


class Camera:
    """One random camera and light, applied alike to a person's crops."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.gain = 1.0 + rng.uniform(-GAIN, GAIN, 3)
        self.contrast = 1.0 + rng.uniform(-CONTRAST, CONTRAST)
        self.gamma = float(np.exp(rng.uniform(-GAMMA, GAMMA)))
        self.scale = rng.uniform(MIN_SCALE, 1.0) if rng.random() < SOFTEN_SHARE else 1.0
        self.noise = rng.uniform(1.0, MAX_NOISE) if rng.random() < NOISE_SHARE else 0.0
        self.quality = int(rng.integers(*JPEG_QUALITY)) if rng.random() < JPEG_SHARE else 0

    def __call__(self, crop: np.ndarray, drift: float = 0.0) -> np.ndarray:
        """``crop`` (S, S, 3) uint8 through this camera; ``drift`` moves its light a little."""
        gain = self.gain * (1.0 + self.rng.uniform(-drift, drift, 3))
        x = _light(crop.astype(np.float32) / 255.0, gain, self.contrast, self.gamma)
        if self.scale < 1.0:
            x = _soften(x, self.scale)
        if self.noise:
            x = x + self.rng.normal(0.0, self.noise / 255.0, x.shape)
        out = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        return _jpeg(out, self.quality) if self.quality else out


def through_cameras(
    target: np.ndarray, reference: np.ndarray, rng: np.random.Generator, share: float
) -> tuple[np.ndarray, np.ndarray]:
    """(target, reference) (B, S, S, 3) uint8, each pair seen through its own random camera
    with probability ``share``; new arrays, the inputs are left alone."""
    target, reference = target.copy(), reference.copy()
    for i in np.flatnonzero(rng.random(len(target)) < share):
        camera = Camera(rng)
        target[i] = camera(target[i])
        reference[i] = camera(reference[i], drift=LIGHT_DRIFT)
    return target, reference


__all__ = ["Camera", "through_cameras"]
