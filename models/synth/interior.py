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
SKIN_LUMA = 150.0  # skin brightness at which drawn teeth take their base colour


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
            self._drawn_bottom = contact + TEETH_PX * scale * np.sqrt(gap_shape)
            self._drawn_rgb = _toward_grey(_teeth_colour(photo, xs, contact, gap_shape), grey)
            centre = float(xs[int(np.argmax(gap_shape))])
            half = 0.5 * float(np.sum(gap_shape > 0.02))
            self._seams = _seams(xs, centre, half, scale)

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


def _teeth_colour(
    photo: np.ndarray, xs: np.ndarray, contact: np.ndarray, shape: np.ndarray
) -> np.ndarray:
    """(cols, 3) colour of drawn teeth: off-white, as bright as the skin below the lower lip
    and with a little of its colour cast, so the teeth sit in the photo's light."""
    centre = int(np.argmax(shape))
    cols = np.flatnonzero(shape > 0.3)
    y = int(contact[centre])
    h, w = photo.shape[:2]
    span = max(int(0.5 * len(cols)), 4)
    x0 = int(xs[cols[0]]) if len(cols) else int(xs[centre]) - span
    x1 = int(xs[cols[-1]]) + 1 if len(cols) else int(xs[centre]) + span
    patch = photo[min(y + span // 2, h - 1) : min(y + span, h), max(x0, 0) : min(x1, w)]
    skin = (
        np.median(patch.reshape(-1, 3).astype(np.float32), axis=0)
        if patch.size
        else np.full(3, SKIN_LUMA, np.float32)
    )
    luma = float(skin @ np.array([0.299, 0.587, 0.114], np.float32))
    light = float(np.clip(luma / SKIN_LUMA, 0.5, 1.1))
    tint = skin / max(float(skin.mean()), 1.0)
    rgb = TEETH_RGB * light * (0.85 + 0.15 * tint)
    return np.asarray(np.tile(np.clip(rgb, 0, 255), (len(xs), 1)), np.float32)


def _seams(xs: np.ndarray, centre: float, half: float, scale: float) -> np.ndarray:
    """(cols,) brightness factor with faint dark lines where neighbouring teeth meet."""
    out = np.ones(len(xs), np.float32)
    for k, edge in enumerate(TOOTH_EDGES):
        depth = 0.2 if k == 0 else 0.13
        for side in (-1.0, 1.0) if k else (1.0,):
            x = centre + side * edge * half
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
    luma = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.asarray(rgb + grey * (np.asarray(luma)[..., None] - rgb), np.float32)
