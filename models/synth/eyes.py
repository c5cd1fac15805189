"""The teacher's eyelids: a blink slides the upper lid's skin down over the eye."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from models.synth.geometry import curve

# Face Mesh indices of the eyelids, corner to corner.
LEFT_UPPER_LID = (33, 246, 161, 160, 159, 158, 157, 173, 133)
LEFT_LOWER_LID = (33, 7, 163, 144, 145, 153, 154, 155, 133)
RIGHT_UPPER_LID = (362, 398, 384, 385, 386, 387, 388, 466, 263)
RIGHT_LOWER_LID = (362, 382, 381, 380, 374, 373, 390, 249, 263)


@dataclass(frozen=True)
class Eye:
    """Precomputed grid and lid curves of one eye region."""

    x0: int
    y0: int
    xs: np.ndarray  # (w,) column x
    ys: np.ndarray  # (h, 1) row y
    upper: np.ndarray  # (w,) upper lid edge y per column
    lower: np.ndarray  # (w,) lower lid edge y per column
    inside: np.ndarray  # (w,) 1 between the eye corners, 0 outside
    skin: np.ndarray  # (w, 3) colour of the lid skin above each column
    lash: np.ndarray  # (3,) colour of the lash line


def make_eye(
    photo: np.ndarray, lm: np.ndarray, upper_ids: tuple[int, ...], lower_ids: tuple[int, ...]
) -> Eye:
    up = lm[list(upper_ids), :2]
    lo = lm[list(lower_ids), :2]
    xl, xr = float(up[:, 0].min()), float(up[:, 0].max())
    x0, x1 = int(xl) - 6, int(xr) + 7
    y0, y1 = int(up[:, 1].min()) - 14, int(lo[:, 1].max()) + 6
    xs = np.arange(x0, x1, dtype=np.float32)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    upper = curve(up, xs)
    lower = np.maximum(curve(lo, xs), upper)
    inside = ((xs > xl) & (xs < xr)).astype(np.float32)
    # Lid skin: the photo a few pixels above the lash line, smoothed along the lid so the
    # closing lid carries no stretched lash or crease texture.
    cols = np.arange(x0, x1)
    rows = [np.clip(np.round(upper - d).astype(int), 0, photo.shape[0] - 1) for d in (9, 12, 15)]
    skin = np.mean([photo[r, cols] for r in rows], axis=0).astype(np.float32)
    skin = cv2.GaussianBlur(skin[None], (0, 0), sigmaX=4.0)[0]
    lash_line = photo[np.round(upper).astype(int), cols].astype(np.float32).min(axis=0)
    lash = 0.5 * lash_line + 0.3 * skin.mean(axis=0)
    return Eye(x0, y0, xs, ys, upper, lower, inside, skin, lash.astype(np.float32))


def render_eye(photo: np.ndarray, out: np.ndarray, eye: Eye, blink: float) -> None:
    """Close ``eye`` of ``photo`` by ``blink`` (0 open .. 1 shut), writing into ``out``."""
    opening = eye.lower - eye.upper
    edge = eye.upper + blink * (opening + np.sqrt(opening / max(float(opening.max()), 1.0)))
    edge = eye.upper + (edge - eye.upper) * eye.inside
    ys = eye.ys
    # The lid slides down as skin from above the crease; its lashes ride on its edge.
    covered = np.clip(edge[None, :] - ys + 0.5, 0.0, 1.0) * np.clip(
        ys - eye.upper[None, :] + 0.5, 0.0, 1.0
    )
    span = np.maximum(edge - eye.upper, 1.0)[None, :]
    shade = 0.88 + 0.12 * np.clip((edge[None, :] - ys) / span, 0.0, 1.0)
    lid = eye.skin[None, :, :] * shade[..., None]
    lashes = np.exp(-(((ys - edge[None, :] + 0.8) / 1.1) ** 2)) * (edge > eye.upper + 1.0)
    lid = lid + (eye.lash[None, None, :] - lid) * (0.7 * lashes)[..., None]
    h, w = covered.shape
    base = photo[eye.y0 : eye.y0 + h, eye.x0 : eye.x0 + w].astype(np.float32)
    mixed = base + (lid - base) * covered[..., None]
    out[eye.y0 : eye.y0 + h, eye.x0 : eye.x0 + w] = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
