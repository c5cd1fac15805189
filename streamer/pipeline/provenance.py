"""What every generated picture carries before anyone sees it: the invisible mark
(:mod:`streamer.pipeline.watermark`) and, when on, the visible "AI-generated" label.

Applied once per picture, by the renderer right after compositing: the AV frames, encode
once, and so WebRTC, RTMP/SRT, WHIP, recordings and ``avatarcast render`` all carry what was
applied here, and nothing downstream can forget it. The label is drawn first, so the mark
is measured on (and survives in) the picture as it is shown.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import cv2
import numpy as np

from streamer.pipeline.watermark import Marker, Payload

log = logging.getLogger(__name__)

LABEL = "AI-generated"


def draw_label(rgb: np.ndarray, text: str = LABEL) -> np.ndarray:
    """A small, legible label in the bottom-right corner: white on a dark box, its size
    proportional to the picture (about 13 px tall text at 512 px)."""
    height, width = rgb.shape[:2]
    scale = max(0.35, min(width, height) / 1000.0)
    thickness = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(3, th // 3)
    x1, y1 = width - pad * 2, height - pad * 2
    x0, y0 = x1 - tw - 2 * pad, y1 - th - base - 2 * pad
    box = rgb[max(0, y0) : y1, max(0, x0) : x1]
    box[...] = (box.astype(np.uint16) * 2 // 5).astype(np.uint8)  # darkened, not opaque
    cv2.putText(
        rgb,
        text,
        (x0 + pad, y1 - pad - base),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        thickness,
        cv2.LINE_AA,
    )
    return rgb


class Provenance:
    """One session's (or one render's) marking: its payload, and whether the label shows.

    ``label`` is ``None`` until decided: a session created without saying turns it on when
    it gets an RTMP or SRT output (:meth:`output_added`); an explicit ``False`` stays off.
    """

    def __init__(
        self, avatar: str, session: str, *, label: bool | None = None, when: float | None = None
    ) -> None:
        self.session = session
        self.started = time.time() if when is None else when
        self.label = label
        self.marker = Marker(Payload.make(avatar, session, self.started))
        log.info(
            "session %s: frames marked avatar=%04x session=%04x hour=%d",
            session,
            self.payload.avatar,
            self.payload.session,
            self.payload.hour,
        )

    @property
    def payload(self) -> Payload:
        return self.marker.payload

    def describe(self) -> dict[str, Any]:
        """What the mark carries, for a C2PA manifest or a session's description."""
        payload = self.payload
        return {
            "session": self.session,
            "avatar_id": f"{payload.avatar:04x}",
            "session_id": f"{payload.session:04x}",
            "hour": payload.hour,
        }

    def switch(self, avatar: str) -> None:
        """The session now shows ``avatar``: later pictures say so."""
        self.marker = Marker(Payload.make(avatar, self.session, self.started))

    def output_added(self, kind: str) -> None:
        """A live push to a platform labels the picture unless the session said not to."""
        if self.label is None and kind in ("rtmp", "srt"):
            self.label = True

    def apply(self, picture: np.ndarray, *, transparent: bool = False) -> np.ndarray:
        """Label (when on) and mark a freshly composited picture, in place; returns it.
        A transparent picture is colour and alpha side by side: only the colour is touched."""
        if not transparent:
            return self._apply(picture)
        width = picture.shape[1] // 2
        colour = np.ascontiguousarray(picture[:, :width])
        picture[:, :width] = self._apply(colour)
        return picture

    def _apply(self, rgb: np.ndarray) -> np.ndarray:
        if self.label:
            draw_label(rgb)
        return self.marker.mark(rgb)
