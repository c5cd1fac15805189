"""What shows between the parted lips: upper teeth over a dark cavity with a hint of tongue.

A photo that shows its teeth lends them (they are fixed to the skull, so they stay where the
photo has them). A photo with closed lips has none to lend: teeth are drawn behind the upper
lip, as wide as the mouth opening, coloured and lit like the face so they never glow.
"""

from __future__ import annotations

import numpy as np

CAVITY_RGB = np.array([40.0, 14.0, 16.0], dtype=np.float32)
TONGUE_RGB = np.array([128.0, 58.0, 60.0], dtype=np.float32)
TEETH_RGB = np.array([218.0, 210.0, 194.0], dtype=np.float32)
# Drawn upper incisors show this far below the closed lip line (default scale, where the mouth
# is about 100 px, some 50 mm, wide): about 3 mm, the incisor display of a relaxed adult mouth.
# Longer teeth filled every small opening with a pale band that reads as closed lips, to a
# viewer and to face landmarks alike; the dark cavity below the teeth is what shows it open.
TEETH_PX = 6.0
# Tooth boundaries as a share of the half mouth width from the centre: central incisors,
# lateral incisors, canines.
TOOTH_EDGES = (0.0, 0.34, 0.6, 0.84)
# The V between two teeth: the share of a tooth's length it takes, and its half-width (px at
# the default scale). The adapted generator mostly blurs this one into a band; one 0.5 deep
# and 1.6 px wide survived it on photos, but a short video twin's mouth then no longer shut
# (docs/benchmarks.md).
NOTCH, NOTCH_PX = 0.35, 1.1
SHADES = (1.0, 1.0, 0.96, 0.96, 0.92, 0.92, 0.84)  # centrals .. the teeth past the canines
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
TEETH_LUMA = float(TEETH_RGB @ LUMA)
WHITE_SHARE = 0.85  # drawn teeth are this bright against the face's white (face_white)
SKIN_RGB = np.array([170.0, 140.0, 120.0], np.float32)  # the tint where no skin is sampled


class Interior:
    """The interior of one face's mouth, over the mouth region's grid (columns ``xs``)."""

    def __init__(
        self,
        photo: np.ndarray,
        xs: np.ndarray,
        y0: int,
        gap_top: np.ndarray,
        gap_bot: np.ndarray,
        gap_shape: np.ndarray,
        contact: np.ndarray,
        own_teeth: bool,
        scale: float,
        white: float = TEETH_LUMA,
    ) -> None:
        self._photo = photo
        self._x0, self._x1 = int(xs[0]), int(xs[-1]) + 1
        self._y0 = y0
        self._gap_top = gap_top
        self._gap_bot = gap_bot
        self._shape = gap_shape
        self._s = scale
        self._own = own_teeth
        self._teeth_cols = (gap_shape > 0.02).astype(np.float32)
        # A black-and-white photo gets a grey interior: a red mouth would be the only colour.
        grey = _greyness(photo[y0 : y0 + 1 + int(np.max(gap_bot) - y0), self._x0 : self._x1])
        self._cavity = _toward_grey(CAVITY_RGB, grey)
        self._tongue = _toward_grey(TONGUE_RGB, grey)
        if not own_teeth:
            centre = float(xs[int(np.argmax(gap_shape))])
            half = 0.5 * float(np.sum(gap_shape > 0.02))
            length = TEETH_PX * scale * np.sqrt(gap_shape)
            self._drawn_bottom = contact + length * (1.0 - _notches(xs, centre, half, scale))
            colour = _teeth_colour(photo, xs, contact, gap_shape, white)
            self._drawn_rgb = _toward_grey(colour, grey)
            self._seams = _seams(xs, centre, half, scale) * _tooth_shade(xs, centre, half)

    def render(
        self, Y: np.ndarray, r0: int, top: np.ndarray, bot: np.ndarray, gap: np.ndarray
    ) -> np.ndarray:
        """RGB (rows, cols, 3) float32 for the grid rows ``Y`` starting at region row ``r0``;
        ``top``/``bot`` are the lip edges and ``gap`` their distance per column."""
        s = self._s
        rows = Y.shape[0]
        if self._own:
            y = self._y0 + r0
            teeth_rgb = self._photo[y : y + rows, self._x0 : self._x1].astype(np.float32)
            # Teeth stay where the photo has them; their lower rows fade so the cut is soft.
            teeth = (
                np.clip((self._gap_bot[None, :] - 2.5 * s - Y) / (2.0 * s), 0.0, 1.0)
                * np.clip(Y - self._gap_top[None, :] + 1.0, 0.0, 1.0)
                * self._teeth_cols[None, :]
            )[..., None]
        else:
            edge = np.clip((self._drawn_bottom[None, :] - Y) / (1.5 * s), 0.0, 1.0)
            # Lower rows of the incisors catch less light; seams darken between teeth.
            fade = 0.9 + 0.1 * np.clip((self._drawn_bottom[None, :] - Y) / (4.0 * s), 0.0, 1.0)
            teeth_rgb = self._drawn_rgb[None, :, :] * (fade * self._seams[None, :])[..., None]
            teeth = (edge * self._teeth_cols[None, :])[..., None]
        depth = (Y - top[None, :]) / np.maximum(gap[None, :], 1.0)
        # The tongue rises from the floor of the mouth; it shows only when the jaw is low.
        tongue = np.clip((depth - 0.6) / 0.25, 0.0, 1.0) * np.clip(
            (gap - 16.0 * s) / (14.0 * s), 0.0, 0.8
        )
        cavity = self._cavity + tongue[..., None] * (self._tongue - self._cavity)
        # The lips shade the teeth and cavity just inside them; the corners are darkest.
        shade = (
            (0.65 + 0.35 * np.clip((Y - top[None, :]) / (3.0 * s), 0.0, 1.0))
            * (0.7 + 0.3 * np.clip((bot[None, :] - Y) / (3.0 * s), 0.0, 1.0))
            * (0.6 + 0.4 * np.sqrt(self._shape))[None, :]
        )
        mix = teeth_rgb * teeth + cavity * (1.0 - teeth)
        return np.asarray(mix * shade[..., None], dtype=np.float32)


def face_white(photo: np.ndarray, landmarks: np.ndarray) -> float:
    """The luma of what is white in the face's light: the 99th percentile over the face's
    landmark box (the eyes' whites, the highlights on forehead and nose)."""
    h, w = photo.shape[:2]
    x0, y0 = np.clip(np.floor(landmarks[:, :2].min(axis=0)).astype(int), 0, (w - 1, h - 1))
    x1, y1 = np.clip(np.ceil(landmarks[:, :2].max(axis=0)).astype(int) + 1, 1, (w, h))
    region = photo[y0:y1, x0:x1].reshape(-1, 3).astype(np.float32)
    return float(np.percentile(region @ LUMA, 99)) if len(region) else TEETH_LUMA


def _teeth_colour(
    photo: np.ndarray, xs: np.ndarray, contact: np.ndarray, shape: np.ndarray, white: float
) -> np.ndarray:
    """(cols, 3) colour of drawn teeth: off-white, a little under the face's ``white``
    (:func:`face_white`), with a little of the colour cast of the skin below the lower lip,
    so the teeth sit in the photo's light. (Their brightness once followed that skin: dark
    skin, or a beard there, made them grey.)"""
    centre = int(np.argmax(shape))
    cols = np.flatnonzero(shape > 0.3)
    y = int(contact[centre])
    h, w = photo.shape[:2]
    span = max(int(0.5 * len(cols)), 4)
    x0 = int(xs[cols[0]]) if len(cols) else int(xs[centre]) - span
    x1 = int(xs[cols[-1]]) + 1 if len(cols) else int(xs[centre]) + span
    patch = photo[min(y + span // 2, h - 1) : min(y + span, h), max(x0, 0) : min(x1, w)]
    skin = np.median(patch.reshape(-1, 3).astype(np.float32), axis=0) if patch.size else SKIN_RGB
    light = float(np.clip(WHITE_SHARE * white / TEETH_LUMA, 0.45, 1.05))
    tint = skin / max(float(skin.mean()), 1.0)
    rgb = TEETH_RGB * light * (0.85 + 0.15 * tint)
    return np.asarray(np.tile(np.clip(rgb, 0, 255), (len(xs), 1)), np.float32)


def _tooth_edges(centre: float, half: float) -> list[float]:
    """Columns where neighbouring drawn teeth meet, the middle one first."""
    return [centre + side * edge * half for edge in TOOTH_EDGES for side in (-1.0, 1.0)][1:]


def _notches(xs: np.ndarray, centre: float, half: float, scale: float) -> np.ndarray:
    """(cols,) share of a tooth's length lost where two teeth meet: their rounded biting
    edges leave a small V there, which is what shows teeth rather than a white band."""
    out = np.zeros(len(xs), np.float32)
    for x in _tooth_edges(centre, half):
        out = np.maximum(out, NOTCH * np.exp(-(((xs - x) / (NOTCH_PX * scale)) ** 2)))
    return out


def _tooth_shade(xs: np.ndarray, centre: float, half: float) -> np.ndarray:
    """(cols,) brightness of each tooth: the front incisors catch the most light; the
    laterals, the canines and the teeth behind them, turned away and in the corners'
    shadow, less."""
    d = np.abs(xs - centre) / max(half, 1.0)
    e = TOOTH_EDGES
    return np.interp(
        d, [0.0, e[1], e[1] + 0.06, e[2], e[2] + 0.06, e[3], e[3] + 0.06], SHADES
    ).astype(np.float32)


def _seams(xs: np.ndarray, centre: float, half: float, scale: float) -> np.ndarray:
    """(cols,) brightness factor with faint dark lines where neighbouring teeth meet."""
    out = np.ones(len(xs), np.float32)
    for k, x in enumerate(_tooth_edges(centre, half)):
        depth = 0.2 if k == 0 else 0.13
        out *= 1.0 - depth * np.exp(-(((xs - x) / (0.7 * scale)) ** 2))
    return out


def _greyness(region: np.ndarray) -> float:
    """1 for a black-and-white image region, 0 for an ordinary colour one."""
    rgb = region.reshape(-1, 3).astype(np.float32)
    if not len(rgb):
        return 0.0
    chroma = float(np.mean(rgb.max(axis=1) - rgb.min(axis=1)))
    return float(np.clip((12.0 - chroma) / 8.0, 0.0, 1.0))


def _toward_grey(rgb: np.ndarray, grey: float) -> np.ndarray:
    """Colours (..., 3) moved toward their own luma by ``grey`` (0 none, 1 all the way)."""
    luma = rgb @ LUMA
    return np.asarray(rgb + grey * (np.asarray(luma)[..., None] - rgb), np.float32)
