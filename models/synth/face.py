"""The teacher face: one real photo whose mouth, eyelids and head are animated by warping.

The photo (``skimage.data.astronaut()``) smiles with her upper teeth showing.  Every frame is
built from that photo alone with backward maps (``cv2.remap``):

* the lips are two sheets.  The upper sheet (upper lip, philtrum) and the lower sheet (lower
  lip, chin, jaw) are displaced so that their inner edges sit where the mouth parameters put
  them; the photo's own teeth are skipped over, so at ``open == 0`` the lips meet.
* between the two inner edges lies the interior: the photo's upper teeth where they are (they
  are fixed to the skull, not to the lips) and a dark cavity with a hint of tongue below them.
* the lower sheet moves nearly rigidly a little below the lip, so the jaw and chin drop.
* a blink slides the upper eyelid skin down over the eye; head motion is one similarity warp of
  the whole frame, applied last.

Coordinates are pixels of the 512x512 frame; ``x`` right, ``y`` down.  Geometry comes from
MediaPipe Face Mesh landmarks computed once (``assets/face_landmarks.npy``), so rendering needs
no MediaPipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

FRAME_SIZE = (512, 512)
CROP_SIZE = 160
ASSETS = Path(__file__).with_name("assets")
LANDMARKS_FILE = ASSETS / "face_landmarks.npy"
# Region of astronaut() (y0, y1, x0, x1) upscaled to the frame: brow to chin is ~214 px.
PHOTO_CROP = (36, 244, 116, 324)

# Face Mesh indices of the inner lip contours (corner to corner) and the eyelids.
UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
LEFT_UPPER_LID = (33, 246, 161, 160, 159, 158, 157, 173, 133)
LEFT_LOWER_LID = (33, 7, 163, 144, 145, 153, 154, 155, 133)
RIGHT_UPPER_LID = (362, 398, 384, 385, 386, 387, 388, 466, 263)
RIGHT_LOWER_LID = (362, 382, 381, 380, 374, 373, 390, 249, 263)
CHIN = 152
NOSE_TIP = 1

# Mouth geometry in pixels (the face's mouth is ~106 px wide).
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

CAVITY_RGB = np.array([40.0, 14.0, 16.0], dtype=np.float32)
TONGUE_RGB = np.array([128.0, 58.0, 60.0], dtype=np.float32)


def load_photo() -> np.ndarray:
    """The default face photo as uint8 RGB (512, 512, 3)."""
    from skimage import data  # only needed here; rendering reuses the loaded array

    y0, y1, x0, x1 = PHOTO_CROP
    crop = np.ascontiguousarray(data.astronaut()[y0:y1, x0:x1])
    return cv2.resize(crop, FRAME_SIZE, interpolation=cv2.INTER_CUBIC)


def compute_landmarks(image: np.ndarray) -> np.ndarray:
    """(478, 3) float32 Face Mesh landmarks in pixels (needs mediapipe)."""
    import mediapipe as mp

    h, w = image.shape[:2]
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, refine_landmarks=True, max_num_faces=1
    ) as mesh:
        result = mesh.process(np.ascontiguousarray(image))
    if not result.multi_face_landmarks:
        raise RuntimeError("no face found in the teacher photo")
    points = result.multi_face_landmarks[0].landmark
    return np.array([[p.x * w, p.y * h, p.z * w] for p in points], dtype=np.float32)


def build_assets() -> Path:
    """Recompute the landmark asset from the photo (run once; needs mediapipe)."""
    ASSETS.mkdir(parents=True, exist_ok=True)
    np.save(LANDMARKS_FILE, compute_landmarks(load_photo()))
    return LANDMARKS_FILE


def _smooth_fall(t: np.ndarray, length: float) -> np.ndarray:
    """1 at t <= 0, falling to 0 at t >= length with zero slope at both ends."""
    s = np.clip(t / length, 0.0, 1.0)
    return np.asarray(0.5 * (1.0 + np.cos(np.pi * s)), dtype=np.float32)


def _window(u: np.ndarray, flat: float, fall: float) -> np.ndarray:
    """1 for |u| <= flat, smoothly 0 by |u| >= flat + fall."""
    return _smooth_fall(np.abs(u) - flat, fall)


def _curve(points: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """y of a polyline through ``points`` (x, y) at ``xs``, constant beyond its ends."""
    order = np.argsort(points[:, 0])
    return np.interp(xs, points[order, 0], points[order, 1]).astype(np.float32)


def similarity(head: tuple[float, float, float, float], centre: tuple[float, float]) -> np.ndarray:
    """2x3 matrix of head motion (dx, dy, rot_deg, scale) about ``centre``."""
    dx, dy, rot, scale = head
    m = cv2.getRotationMatrix2D(centre, float(rot), float(scale))
    m[0, 2] += dx
    m[1, 2] += dy
    return m


@dataclass(frozen=True)
class _Eye:
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


def _make_eye(
    photo: np.ndarray, lm: np.ndarray, upper_ids: tuple[int, ...], lower_ids: tuple[int, ...]
) -> _Eye:
    up = lm[list(upper_ids), :2]
    lo = lm[list(lower_ids), :2]
    xl, xr = float(up[:, 0].min()), float(up[:, 0].max())
    x0, x1 = int(xl) - 6, int(xr) + 7
    y0, y1 = int(up[:, 1].min()) - 14, int(lo[:, 1].max()) + 6
    xs = np.arange(x0, x1, dtype=np.float32)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    upper = _curve(up, xs)
    lower = np.maximum(_curve(lo, xs), upper)
    inside = ((xs > xl) & (xs < xr)).astype(np.float32)
    # Lid skin: the photo a few pixels above the lash line, smoothed along the lid so the
    # closing lid carries no stretched lash or crease texture.
    cols = np.arange(x0, x1)
    rows = [np.clip(np.round(upper - d).astype(int), 0, photo.shape[0] - 1) for d in (9, 12, 15)]
    skin = np.mean([photo[r, cols] for r in rows], axis=0).astype(np.float32)
    skin = cv2.GaussianBlur(skin[None], (0, 0), sigmaX=4.0)[0]
    lash_line = photo[np.round(upper).astype(int), cols].astype(np.float32).min(axis=0)
    lash = 0.5 * lash_line + 0.3 * skin.mean(axis=0)
    return _Eye(x0, y0, xs, ys, upper, lower, inside, skin, lash.astype(np.float32))


class TeacherFace:
    """Renders the default face with a given mouth state, blink and head pose."""

    frame_size = FRAME_SIZE
    crop_size = CROP_SIZE

    def __init__(self, photo: np.ndarray | None = None, landmarks: np.ndarray | None = None):
        self.photo = load_photo() if photo is None else photo
        if landmarks is None:
            landmarks = (
                np.load(LANDMARKS_FILE)
                if LANDMARKS_FILE.exists()
                else compute_landmarks(self.photo)
            )
        self.landmarks = landmarks.astype(np.float32)
        lm = self.landmarks
        self.head_centre = (float(lm[NOSE_TIP, 0]), float(lm[NOSE_TIP, 1]))
        self._setup_mouth(lm)
        self._eyes = (
            _make_eye(self.photo, lm, LEFT_UPPER_LID, LEFT_LOWER_LID),
            _make_eye(self.photo, lm, RIGHT_UPPER_LID, RIGHT_LOWER_LID),
        )

    # -- geometry ---------------------------------------------------------------------------

    def _setup_mouth(self, lm: np.ndarray) -> None:
        up = lm[list(UPPER_INNER), :2]
        lo = lm[list(LOWER_INNER), :2]
        self.corner_l, self.corner_r = float(up[0, 0]), float(up[-1, 0])
        self.mouth_cx = 0.5 * (self.corner_l + self.corner_r)
        self.half_width = 0.5 * (self.corner_r - self.corner_l)
        self.chin_y = float(lm[CHIN, 1])
        cx = self.mouth_cx
        self.x0 = int(cx - 125)
        self.x1 = int(cx + 125)
        self.y0 = int(up[:, 1].min() - UPPER_REACH - 20)
        self.y1 = int(self.chin_y + 50)
        xs = np.arange(self.x0, self.x1, dtype=np.float32)
        ys = np.arange(self.y0, self.y1, dtype=np.float32)
        self._xs = xs
        self._X, self._Y = np.meshgrid(xs, ys)
        # The photo's gap: true edges (for the teeth) and safe edges a pixel into the lips (the
        # lips are sampled from there, so no tooth pixel is ever stretched onto a lip).
        self._gap_top = _curve(up, xs)
        self._gap_bot = np.maximum(_curve(lo, xs), self._gap_top)
        gap = self._gap_bot - self._gap_top
        self._gap_shape = gap / max(float(gap.max()), 1.0)
        margin = 1.2 * np.sqrt(self._gap_shape)
        self._src_top = self._gap_top - margin
        self._src_bot = self._gap_bot + margin
        self._contact = self._gap_top + CONTACT * gap
        u = xs - cx
        self.mouth_cy = float(np.interp(cx, xs, self._contact))
        # Horizontal field of a corner shift of 1 px: linear across the mouth, fading outside
        # it and away from the mouth line.
        across = np.clip(u / self.half_width, -1.0, 1.0) * _window(u, self.half_width, SIDE_FALL)
        along = _window(ys - self.mouth_cy, 6.0, 32.0)
        self._hfield = (along[:, None] * across[None, :]).astype(np.float32)
        self._hrow = across.astype(np.float32)
        self._corner_win = _window(u, self.half_width, SIDE_FALL)
        self._jaw_win = _window(u, self.half_width - 13.0, SIDE_FALL + 13.0)
        # Depth falloff of the lower sheet: the chin moves with the jaw, the neck stays.
        self._jaw_depth = _smooth_fall(ys - (self.chin_y - 16.0), 28.0)[:, None]
        self._teeth_cols = (self._gap_shape > 0.02).astype(np.float32)

    # -- mouth --------------------------------------------------------------------------------

    def _shape_at(self, src_x: np.ndarray, round_: float) -> np.ndarray:
        """Opening profile across the mouth (1 at the centre, 0 at the corners)."""
        narrow = 1.0 - 0.3 * round_
        probe = self.mouth_cx + (src_x - self.mouth_cx) / narrow
        shape = np.interp(probe, self._xs, self._gap_shape).astype(np.float32)
        return np.power(shape, 0.8 - 0.35 * round_, dtype=np.float32)

    def _render_mouth(self, out: np.ndarray, params: np.ndarray) -> None:
        open_, width, round_, press = (float(v) for v in params)
        open_ = min(max(open_, 0.0), 1.0)
        width = min(max(width, -1.0), 1.0)
        round_ = min(max(round_, 0.0), 1.0)
        press = min(max(press, 0.0), 1.0)
        xs = self._xs
        corner = SPREAD_PX * max(width, 0.0) - PUCKER_PX * max(-width, 0.0) - 3.0 * round_
        src_x_row = xs - corner * self._hrow
        contact = np.interp(src_x_row, xs, self._contact).astype(np.float32)
        src_top = np.interp(src_x_row, xs, self._src_top).astype(np.float32)
        src_bot = np.interp(src_x_row, xs, self._src_bot).astype(np.float32)
        gap = open_ * MAX_GAP * self._shape_at(src_x_row, round_)
        lift = np.minimum(UPPER_SHARE * gap, contact - self._gap_top + 0.5)
        drop = 3.0 * open_ * self._corner_win
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
        fall_up = _smooth_fall(t_up, UPPER_REACH)
        sy_up = ys_up - du[None, :] * fall_up
        if press > 0.0:
            sy_up -= press * PRESS_PX * np.clip(t_up / 8.0, 0.0, 1.0) * fall_up * self._corner_win
        ys_lo = self._Y[r0:]
        t_lo = ys_lo - bot[None, :]
        rigid = 1.0 - _smooth_fall(t_lo, JAW_RIGID)
        d_lo = (dl[None, :] + (jaw - dl)[None, :] * rigid) * self._jaw_depth[r0:]
        sy_lo = ys_lo - d_lo
        if press > 0.0:
            sy_lo += (
                press
                * PRESS_PX
                * np.clip(t_lo / 8.0, 0.0, 1.0)
                * _smooth_fall(t_lo, 30.0)
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
            band += self._interior(yb, r0, top, bot, gap) * a_in
        # Where the lips touch they meet in a faint dark line, deeper when pressed.
        closed = np.clip(1.0 - gap / 3.0, 0.0, 1.0) * np.sqrt(self._gap_shape)
        line = (0.25 + 0.2 * press) * closed[None, :] * np.exp(-(((yb - top[None, :]) / 1.3) ** 2))
        band *= (1.0 - line)[..., None]
        region[r0:r1] = np.clip(band + 0.5, 0, 255).astype(np.uint8)

    def _interior(
        self, Y: np.ndarray, r0: int, top: np.ndarray, bot: np.ndarray, gap: np.ndarray
    ) -> np.ndarray:
        """RGB of the open mouth: the photo's upper teeth over a dark cavity and tongue."""
        rows = Y.shape[0]
        teeth_rgb = self.photo[self.y0 + r0 : self.y0 + r0 + rows, self.x0 : self.x1]
        # Teeth stay where the photo has them; their lower rows fade so the cut is soft.
        teeth = (
            np.clip((self._gap_bot[None, :] - 2.5 - Y) / 2.0, 0.0, 1.0)
            * np.clip(Y - self._gap_top[None, :] + 1.0, 0.0, 1.0)
            * self._teeth_cols[None, :]
        )[..., None]
        depth = (Y - top[None, :]) / np.maximum(gap[None, :], 1.0)
        # The tongue rises from the floor of the mouth; it shows only when the jaw is low.
        tongue = np.clip((depth - 0.6) / 0.25, 0.0, 1.0) * np.clip((gap - 16.0) / 14.0, 0.0, 0.8)
        cavity = CAVITY_RGB + tongue[..., None] * (TONGUE_RGB - CAVITY_RGB)
        # The lips shade the teeth and cavity just inside them; the corners are darkest.
        shade = (
            (0.65 + 0.35 * np.clip((Y - top[None, :]) / 3.0, 0.0, 1.0))
            * (0.7 + 0.3 * np.clip((bot[None, :] - Y) / 3.0, 0.0, 1.0))
            * (0.6 + 0.4 * np.sqrt(self._gap_shape))[None, :]
        )
        mix = teeth_rgb * teeth + cavity * (1.0 - teeth)
        return np.asarray(mix * shade[..., None], dtype=np.float32)

    # -- eyes -------------------------------------------------------------------------------

    def _render_eye(self, out: np.ndarray, eye: _Eye, blink: float) -> None:
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
        base = self.photo[eye.y0 : eye.y0 + h, eye.x0 : eye.x0 + w].astype(np.float32)
        mixed = base + (lid - base) * covered[..., None]
        out[eye.y0 : eye.y0 + h, eye.x0 : eye.x0 + w] = np.clip(mixed + 0.5, 0, 255).astype(
            np.uint8
        )

    # -- public -------------------------------------------------------------------------------

    def render(
        self,
        params: np.ndarray,
        blink: float = 0.0,
        head: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0),
    ) -> np.ndarray:
        """uint8 RGB (512, 512, 3) frame for mouth ``params`` (open, width, round, press),
        ``blink`` (0 open .. 1 closed) and ``head`` (dx px, dy px, rot degrees, scale)."""
        out = self.photo.copy()
        self._render_mouth(out, np.asarray(params, dtype=np.float32).reshape(4))
        blink = min(max(float(blink), 0.0), 1.0)
        if blink > 0.0:
            for eye in self._eyes:
                self._render_eye(out, eye, blink)
        if tuple(head) != (0.0, 0.0, 0.0, 1.0):
            m = similarity(head, self.head_centre)
            out = cv2.warpAffine(
                out,
                m,
                (FRAME_SIZE[0], FRAME_SIZE[1]),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            )
        return out

    def box_centre(self) -> tuple[float, float]:
        """Centre of the mouth box without head motion: the lips sit in its upper part so the
        box also holds the chin at the widest opening."""
        return (self.mouth_cx, 0.5 * (self.mouth_cy - 35.0 + self.chin_y + 10.0))

    def mouth_box(
        self, head: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    ) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) CROP_SIZE square around mouth, jaw and chin after head motion."""
        cx, cy = self.box_centre()
        m = similarity(head, self.head_centre)
        px = m[0, 0] * cx + m[0, 1] * cy + m[0, 2]
        py = m[1, 0] * cx + m[1, 1] * cy + m[1, 2]
        x0 = round(px - CROP_SIZE / 2)
        y0 = round(py - CROP_SIZE / 2)
        x0 = min(max(x0, 0), FRAME_SIZE[0] - CROP_SIZE)
        y0 = min(max(y0, 0), FRAME_SIZE[1] - CROP_SIZE)
        return (x0, y0, x0 + CROP_SIZE, y0 + CROP_SIZE)

    def feather_mask(self) -> np.ndarray:
        """float32 (160, 160) in [0, 1]: 1 over the lips, jaw and chin the generator redraws,
        falling smoothly to 0 at least 12 px inside the crop border.

        Every displacement of the mouth warp fades out before the crop's outer 20 px (the box
        is placed for that), so a rounded square covers all change with the softest edge.
        """
        idx = np.arange(CROP_SIZE, dtype=np.float32)
        border = np.minimum(idx, CROP_SIZE - 1 - idx)
        ramp = 1.0 - _smooth_fall(border - 12.0, 14.0)
        mask = ramp[:, None] * ramp[None, :]
        return np.asarray(mask, dtype=np.float32)

    def idle_track(
        self, n: int, rng: np.random.Generator, fps: float = 25.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Natural idle motion for ``n`` frames: blink (n,) in [0, 1] and head (n, 4)."""
        return idle_track(n, rng, fps)


def _blink_shape(fps: float) -> np.ndarray:
    """Lid closure over one ~200 ms blink: a fast close and a slower opening."""
    t = np.arange(round(0.2 * fps) + 1, dtype=np.float64) / fps
    close, reopen = 0.08, 0.14
    shape = np.where(t < close, t / close, 1.0 - (t - close) / reopen)
    return np.clip(shape, 0.0, 1.0)[1:]


def idle_track(
    n: int, rng: np.random.Generator, fps: float = 25.0
) -> tuple[np.ndarray, np.ndarray]:
    """Blinks every 2-6 s (~200 ms each), breathing-like vertical motion, slight head sway."""
    blink = np.zeros(n, dtype=np.float32)
    shape = _blink_shape(fps)
    k = int(rng.uniform(0.5, 3.0) * fps)
    while k < n:
        end = min(n, k + shape.size)
        blink[k:end] = shape[: end - k]
        k += int(rng.uniform(2.0, 6.0) * fps)
    t = np.arange(n, dtype=np.float64) / fps

    def sway(amplitude: float, low: float, high: float) -> np.ndarray:
        # Two incommensurate slow sines with random phases: smooth and never periodic-looking.
        f1, f2 = rng.uniform(low, high, size=2)
        p1, p2 = rng.uniform(0, 2 * np.pi, size=2)
        return amplitude * (
            0.65 * np.sin(2 * np.pi * f1 * t + p1) + 0.35 * np.sin(2 * np.pi * f2 * t + p2)
        )

    breathing = 1.2 * np.sin(2 * np.pi * rng.uniform(0.2, 0.3) * t + rng.uniform(0, 2 * np.pi))
    head = np.stack(
        [
            sway(2.0, 0.05, 0.2),
            sway(1.0, 0.05, 0.2) + breathing,
            sway(0.8, 0.04, 0.15),
            1.0 + sway(0.006, 0.03, 0.1),
        ],
        axis=1,
    ).astype(np.float32)
    return blink, head
