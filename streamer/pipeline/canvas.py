"""A session's picture size, fixed for its life, and fitting any avatar's frames into it.

Every output of a session is made for one picture size: an H.264 or VP8 stream in an MP4
recording or an RTMP push cannot change size mid-stream, and a WebRTC viewer's decoder
copes but flickers. H.264's 4:2:0 also needs even sides. So a session's size is chosen once,
when it is created: the ``width``/``height`` it was asked for (one of them alone keeps the
avatar's aspect), else its first avatar's frame size rounded up to even. Pictures of another
size (an avatar switched by ``PATCH``, an avatar of odd size) are fitted into it here: scaled
to fit with their aspect kept, centred, and padded with black (in a transparent picture's
alpha half, with transparent). An avatar one pixel short of the size (an odd side rounded up)
is padded, not scaled, so its face stays sharp.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def even_up(n: int) -> int:
    return n + (n % 2)


@dataclass(frozen=True)
class Canvas:
    """The size of a session's pictures (the colour picture's; a transparent picture is
    twice as wide, colour and alpha side by side)."""

    width: int
    height: int

    @classmethod
    def choose(cls, frame: tuple[int, int], width: int | None, height: int | None) -> Canvas:
        """The size for a session whose first avatar's frames are ``frame`` (width, height):
        the size asked for, one side alone taking the other from the avatar's aspect, else
        the avatar's own size; each side rounded up to even."""
        fw, fh = frame
        if width is None and height is None:
            width, height = fw, fh
        elif height is None:
            assert width is not None
            height = max(2, round(width * fh / fw))
        elif width is None:
            width = max(2, round(height * fw / fh))
        return cls(even_up(width), even_up(height))

    def fit(self, picture: np.ndarray, transparent: bool = False) -> np.ndarray:
        """``picture`` at this size: the same array when it already is, else a new one."""
        if not transparent:
            return self._fit(picture)
        if picture.shape[:2] == (self.height, 2 * self.width):
            return picture
        half = picture.shape[1] // 2
        return np.hstack([self._fit(picture[:, :half]), self._fit(picture[:, half:])])

    def _fit(self, picture: np.ndarray) -> np.ndarray:
        h, w = picture.shape[:2]
        width, height = self.width, self.height
        if (h, w) == (height, width):
            return picture
        if not (0 <= width - w <= 1 and 0 <= height - h <= 1):  # not only an odd side
            scale = min(width / w, height / h)
            w, h = min(width, max(1, round(w * scale))), min(height, max(1, round(h * scale)))
            shrink = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            picture = cv2.resize(picture, (w, h), interpolation=shrink)
        out = np.zeros((height, width, *picture.shape[2:]), picture.dtype)
        top, left = (height - h) // 2, (width - w) // 2
        out[top : top + h, left : left + w] = picture
        return out
