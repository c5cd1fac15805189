"""The teacher face: any face photo whose mouth, eyelids and head are animated by warping.

The default is ``skimage.data.astronaut()``, who smiles with her upper teeth showing; any
other frontal photo works from its MediaPipe Face Mesh landmarks. Every frame is built from
the photo alone with backward maps (``cv2.remap``):

* the lips are two sheets.  The upper sheet (upper lip, philtrum) and the lower sheet (lower
  lip, chin, jaw) are displaced so that their inner edges sit where the mouth parameters put
  them; a photo's own teeth are skipped over, so at ``open == 0`` the lips meet.
* between the two inner edges lies the interior (:mod:`models.synth.interior`): the person's
  own upper teeth where the photo shows them, otherwise drawn teeth lit like the face, over a
  dark cavity with a hint of tongue below them.
* the lower sheet moves nearly rigidly a little below the lip, so the jaw and chin drop.
* a blink slides the upper eyelid skin down over the eye; head motion is one similarity warp of
  the whole frame, applied last.

Coordinates are pixels of the photo; ``x`` right, ``y`` down.  Every length below is given for
the default face (eye corners 149.7 px apart) and scales with the face in the photo.  The
default's landmarks are computed once (``assets/face_landmarks.npy``), so rendering it needs
no MediaPipe.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from models.synth import interior
from models.synth.eyes import (
    LEFT_LOWER_LID,
    LEFT_UPPER_LID,
    RIGHT_LOWER_LID,
    RIGHT_UPPER_LID,
    make_eye,
    render_eye,
)
from models.synth.geometry import curve, similarity, smooth_fall, window
from models.synth.motion import idle_track

FRAME_SIZE = (512, 512)
CROP_SIZE = 160
ASSETS = Path(__file__).with_name("assets")
LANDMARKS_FILE = ASSETS / "face_landmarks.npy"
# Region of astronaut() (y0, y1, x0, x1) upscaled to the frame: brow to chin is ~214 px.
PHOTO_CROP = (36, 244, 116, 324)

# Face Mesh indices of the inner lip contours (corner to corner).
UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
EYE_OUTER = (33, 263)
CHIN = 152
NOSE_TIP = 1

# The default face's outer eye-corner distance: every pixel length below is for that size.
REFERENCE_EYE_PX = 149.7
# Mouth geometry in pixels (the default face's mouth is ~106 px wide).
MAX_GAP = 36.0  # lip gap at the centre when open == 1
UPPER_SHARE = 0.3  # part of the gap made by the upper lip rising; the jaw makes the rest
CONTACT = 0.45  # where in the photo's gap the lips meet when closed (0 upper .. 1 lower)
UPPER_REACH = 26.0  # the upper lip's displacement fades out this far above its edge
JAW_RIGID = 25.0  # below the lower lip edge the lower sheet becomes a rigid jaw over this
SPREAD_PX = 5.0  # corner shift at width == +1
PUCKER_PX = 8.0  # corner shift at width == -1
PRESS_PX = 2.5  # lip thinning at press == 1
# Beyond the mouth corners every displacement fades out over this many pixels, which keeps
# all change inside the generator's mask and crop.
SIDE_FALL = 15.0
# A photo whose lips part by less than this at the centre shows no teeth to reuse: its mouth
# opens along a drawn profile and shows drawn teeth.
OWN_GAP_PX = 6.0


def load_photo() -> np.ndarray:
    """The default face photo as uint8 RGB (512, 512, 3)."""
    from skimage import data  # only needed here; rendering reuses the loaded array

    y0, y1, x0, x1 = PHOTO_CROP
    crop = np.ascontiguousarray(data.astronaut()[y0:y1, x0:x1])
    return cv2.resize(crop, FRAME_SIZE, interpolation=cv2.INTER_CUBIC)


def compute_landmarks(image: np.ndarray) -> np.ndarray:
    """(478, 3) float32 Face Mesh landmarks in pixels (needs mediapipe)."""
    from models.mediapipe_compat import import_mediapipe, native_stderr_quiet

    mp = import_mediapipe()
    h, w = image.shape[:2]
    # One call on one picture: its graph is built, and the first face logged, with it quiet.
    with (
        mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, refine_landmarks=True, max_num_faces=1
        ) as mesh,
        native_stderr_quiet(),
    ):
        result = mesh.process(np.ascontiguousarray(image))
    if not result.multi_face_landmarks:
        raise RuntimeError("no face found in the teacher photo")
    points = result.multi_face_landmarks[0].landmark
    return np.array([[p.x * w, p.y * h, p.z * w] for p in points], dtype=np.float32)


def face_scale(landmarks: np.ndarray) -> float:
    """The face's size relative to the default's, from the outer eye corners."""
    a, b = (np.asarray(landmarks, np.float64)[i, :2] for i in EYE_OUTER)
    return float(np.hypot(*(b - a))) / REFERENCE_EYE_PX


class TeacherFace:
    """Renders a face photo with a given mouth state, blink and head pose.

    ``photo`` is uint8 RGB of any size; ``landmarks`` its (468+, 2+) Face Mesh points in
    pixels. With neither, the default face.
    """

    crop_size = CROP_SIZE

    def __init__(self, photo: np.ndarray | None = None, landmarks: np.ndarray | None = None):
        self.photo = load_photo() if photo is None else np.ascontiguousarray(photo)
        if landmarks is None:
            landmarks = (
                np.load(LANDMARKS_FILE)
                if LANDMARKS_FILE.exists() and photo is None
                else compute_landmarks(self.photo)
            )
        self.landmarks = np.asarray(landmarks, np.float32)
        lm = self.landmarks
        self.frame_size = (int(self.photo.shape[1]), int(self.photo.shape[0]))
        self.scale = face_scale(lm)
        self.head_centre = (float(lm[NOSE_TIP, 0]), float(lm[NOSE_TIP, 1]))
        self._setup_mouth(lm)
        self._eyes = (
            make_eye(self.photo, lm, LEFT_UPPER_LID, LEFT_LOWER_LID),
            make_eye(self.photo, lm, RIGHT_UPPER_LID, RIGHT_LOWER_LID),
        )

    # -- geometry ---------------------------------------------------------------------------

    def _setup_mouth(self, lm: np.ndarray) -> None:
        s = self.scale
        up = lm[list(UPPER_INNER), :2]
        lo = lm[list(LOWER_INNER), :2]
        self.corner_l, self.corner_r = float(up[0, 0]), float(up[-1, 0])
        self.mouth_cx = 0.5 * (self.corner_l + self.corner_r)
        self.half_width = 0.5 * (self.corner_r - self.corner_l)
        self.chin_y = float(lm[CHIN, 1])
        cx = self.mouth_cx
        width, height = self.frame_size
        self.x0 = max(int(cx - 125 * s), 0)
        self.x1 = min(int(cx + 125 * s), width)
        self.y0 = max(int(up[:, 1].min() - (UPPER_REACH + 20) * s), 0)
        self.y1 = min(int(self.chin_y + 50 * s), height)
        xs = np.arange(self.x0, self.x1, dtype=np.float32)
        ys = np.arange(self.y0, self.y1, dtype=np.float32)
        self._xs = xs
        self._X, self._Y = np.meshgrid(xs, ys)
        # The photo's gap: true edges (for the teeth) and safe edges a pixel into the lips (the
        # lips are sampled from there, so no tooth pixel is ever stretched onto a lip).
        self._gap_top = curve(up, xs)
        self._gap_bot = np.maximum(curve(lo, xs), self._gap_top)
        gap = self._gap_bot - self._gap_top
        u = xs - cx
        self.own_teeth = float(gap.max()) >= OWN_GAP_PX * s
        if self.own_teeth:
            self._gap_shape = gap / max(float(gap.max()), 1.0)
        else:
            # Closed lips: the mouth opens along a lens between the corners.
            lens = np.clip(1.0 - (u / max(self.half_width, 1.0)) ** 2, 0.0, 1.0)
            self._gap_shape = np.sqrt(lens).astype(np.float32)
        margin = 1.2 * np.sqrt(self._gap_shape) * s
        self._src_top = self._gap_top - margin
        self._src_bot = self._gap_bot + margin
        self._contact = self._gap_top + CONTACT * gap
        self.mouth_cy = float(np.interp(cx, xs, self._contact))
        # Horizontal field of a corner shift of 1 px: linear across the mouth, fading outside
        # it and away from the mouth line.
        fall = SIDE_FALL * s
        across = np.clip(u / self.half_width, -1.0, 1.0) * window(u, self.half_width, fall)
        along = window(ys - self.mouth_cy, 6.0 * s, 32.0 * s)
        self._hfield = (along[:, None] * across[None, :]).astype(np.float32)
        self._hrow = across.astype(np.float32)
        self._corner_win = window(u, self.half_width, fall)
        self._jaw_win = window(u, self.half_width - 13.0 * s, fall + 13.0 * s)
        # Depth falloff of the lower sheet: the chin moves with the jaw, the neck stays.
        self._jaw_depth = smooth_fall(ys - (self.chin_y - 16.0 * s), 28.0 * s)[:, None]
        self._interior = interior.Interior(
            self.photo, xs, self.y0, self._gap_top, self._gap_bot, self._gap_shape,
            self._contact, self.own_teeth, s, interior.face_white(self.photo, lm),
        )  # fmt: skip

    # -- mouth --------------------------------------------------------------------------------

    def _shape_at(self, src_x: np.ndarray, round_: float) -> np.ndarray:
        """Opening profile across the mouth (1 at the centre, 0 at the corners)."""
        narrow = 1.0 - 0.3 * round_
        probe = self.mouth_cx + (src_x - self.mouth_cx) / narrow
        shape = np.interp(probe, self._xs, self._gap_shape).astype(np.float32)
        return np.power(shape, 0.8 - 0.35 * round_, dtype=np.float32)

    def _render_mouth(self, out: np.ndarray, params: np.ndarray) -> None:
        s = self.scale
        open_, width, round_, press = (float(v) for v in params)
        open_ = min(max(open_, 0.0), 1.0)
        width = min(max(width, -1.0), 1.0)
        round_ = min(max(round_, 0.0), 1.0)
        press = min(max(press, 0.0), 1.0)
        xs = self._xs
        corner = s * (SPREAD_PX * max(width, 0.0) - PUCKER_PX * max(-width, 0.0) - 3.0 * round_)
        src_x_row = xs - corner * self._hrow
        contact = np.interp(src_x_row, xs, self._contact).astype(np.float32)
        src_top = np.interp(src_x_row, xs, self._src_top).astype(np.float32)
        src_bot = np.interp(src_x_row, xs, self._src_bot).astype(np.float32)
        gap = open_ * MAX_GAP * s * self._shape_at(src_x_row, round_)
        lift = UPPER_SHARE * gap
        if self.own_teeth:  # the lip rises no higher than the photo's, over its own teeth
            lift = np.minimum(lift, contact - self._gap_top + 0.5)
        drop = 3.0 * s * open_ * self._corner_win
        top = contact + drop - lift  # output edge of the upper lip
        bot = top + gap  # output edge of the lower lip
        du = top - src_top  # output minus source at the upper edge
        dl = bot - src_bot
        centre = int(np.argmax(self._gap_shape))
        jaw = float(dl[centre]) * self._jaw_win

        # Only rows that can hold both sheets or the interior need the full mix: above them
        # the upper sheet alone shows, below them the lower sheet.
        h = self._Y.shape[0]
        r0 = max(int(np.floor(float(top.min()))) - 2 - self.y0, 0)
        r1 = min(int(np.ceil(float(bot.max()))) + 3 - self.y0, h)
        sx = self._X - corner * self._hfield

        ys_up = self._Y[:r1]
        t_up = top[None, :] - ys_up
        fall_up = smooth_fall(t_up, UPPER_REACH * s)
        sy_up = ys_up - du[None, :] * fall_up
        press_px = press * PRESS_PX * s
        if press > 0.0:
            sy_up -= press_px * np.clip(t_up / (8.0 * s), 0.0, 1.0) * fall_up * self._corner_win
        ys_lo = self._Y[r0:]
        t_lo = ys_lo - bot[None, :]
        rigid = 1.0 - smooth_fall(t_lo, JAW_RIGID * s)
        d_lo = (dl[None, :] + (jaw - dl)[None, :] * rigid) * self._jaw_depth[r0:]
        sy_lo = ys_lo - d_lo
        if press > 0.0:
            sy_lo += (
                press_px
                * np.clip(t_lo / (8.0 * s), 0.0, 1.0)
                * smooth_fall(t_lo, 30.0 * s)
                * self._corner_win
            )

        upper = cv2.remap(
            self.photo, sx[:r1], sy_up, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        lower = cv2.remap(
            self.photo, sx[r0:], sy_lo, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        y0 = self.y0
        region = out[y0 : y0 + h, self.x0 : self.x1]
        region[:r0] = upper[:r0]
        region[r1:] = lower[r1 - r0 :]

        yb = self._Y[r0:r1]
        a_up = np.clip(t_up[r0:] + 0.5, 0.0, 1.0)[..., None]
        a_lo = np.clip(t_lo[: r1 - r0] + 0.5, 0.0, 1.0)[..., None]
        band = upper[r0:].astype(np.float32) * a_up + lower[: r1 - r0].astype(np.float32) * a_lo
        if float(gap.max()) > 0.05:
            a_in = np.clip(1.0 - a_up - a_lo, 0.0, 1.0)
            band += self._interior.render(yb, r0, top, bot, gap) * a_in
        # Where the lips touch they meet in a faint dark line, deeper when pressed.
        closed = np.clip(1.0 - gap / 3.0, 0.0, 1.0) * np.sqrt(self._gap_shape)
        line = (0.25 + 0.2 * press) * closed[None, :] * np.exp(-(((yb - top[None, :]) / 1.3) ** 2))
        band *= (1.0 - line)[..., None]
        region[r0:r1] = np.clip(band + 0.5, 0, 255).astype(np.uint8)

    # -- public -------------------------------------------------------------------------------

    def render(
        self,
        params: np.ndarray,
        blink: float = 0.0,
        head: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0),
    ) -> np.ndarray:
        """uint8 RGB frame the size of the photo for mouth ``params`` (open, width, round,
        press), ``blink`` (0 open .. 1 closed) and ``head`` (dx px, dy px, rot degrees, scale)."""
        out = self.photo.copy()
        self._render_mouth(out, np.asarray(params, dtype=np.float32).reshape(4))
        blink = min(max(float(blink), 0.0), 1.0)
        if blink > 0.0:
            for eye in self._eyes:
                render_eye(self.photo, out, eye, blink)
        if tuple(head) != (0.0, 0.0, 0.0, 1.0):
            m = similarity(head, self.head_centre)
            out = cv2.warpAffine(
                out,
                m,
                self.frame_size,
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            )
        return out

    @property
    def teeth_gap(self) -> tuple[np.ndarray, np.ndarray]:
        """The photo's gap between the lips, for each column from ``x0`` on: its top and
        bottom edges (y). Where it is open, the photo shows its own teeth."""
        return self._gap_top, self._gap_bot

    @property
    def box_side(self) -> int:
        """Side of the mouth box in photo pixels: the crop size at the default face's scale."""
        width, height = self.frame_size
        return min(round(CROP_SIZE * self.scale), width, height)

    def box_centre(self) -> tuple[float, float]:
        """Centre of the mouth box without head motion: the lips sit in its upper part so the
        box also holds the chin at the widest opening."""
        s = self.scale
        return (self.mouth_cx, 0.5 * (self.mouth_cy - 35.0 * s + self.chin_y + 10.0 * s))

    def mouth_box(
        self, head: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    ) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) square of ``box_side`` around mouth, jaw and chin after head
        motion."""
        cx, cy = self.box_centre()
        m = similarity(head, self.head_centre)
        px = m[0, 0] * cx + m[0, 1] * cy + m[0, 2]
        py = m[1, 0] * cx + m[1, 1] * cy + m[1, 2]
        side = self.box_side
        width, height = self.frame_size
        x0 = min(max(round(px - side / 2), 0), width - side)
        y0 = min(max(round(py - side / 2), 0), height - side)
        return (x0, y0, x0 + side, y0 + side)

    def crop(self, frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """The ``crop_size`` square of ``frame`` at ``box`` (resized when the face is not at
        the default's scale)."""
        x0, y0, x1, y1 = box
        out = frame[y0:y1, x0:x1]
        if x1 - x0 != CROP_SIZE:
            shrink = x1 - x0 > CROP_SIZE
            interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
            out = cv2.resize(out, (CROP_SIZE, CROP_SIZE), interpolation=interp)
        return np.ascontiguousarray(out)

    def feather_mask(self) -> np.ndarray:
        """float32 (160, 160) in [0, 1]: 1 over the lips, jaw and chin the generator redraws,
        falling smoothly to 0 at least 12 px inside the crop border.

        Every displacement of the mouth warp fades out before the crop's outer 20 px (the box
        is placed for that), so a rounded square covers all change with the softest edge.
        """
        idx = np.arange(CROP_SIZE, dtype=np.float32)
        border = np.minimum(idx, CROP_SIZE - 1 - idx)
        ramp = 1.0 - smooth_fall(border - 12.0, 14.0)
        mask = ramp[:, None] * ramp[None, :]
        return np.asarray(mask, dtype=np.float32)

    def idle_track(
        self, n: int, rng: np.random.Generator, fps: float = 25.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Natural idle motion for ``n`` frames: blink (n,) in [0, 1] and head (n, 4)."""
        return idle_track(n, rng, fps)


__all__ = ["CROP_SIZE", "FRAME_SIZE", "LANDMARKS_FILE", "TeacherFace", "face_scale", "idle_track"]
