"""A user's photo for ``avatarcast avatar create --image``: read it robustly, check its face.

:func:`read_photo` decodes with Pillow rather than OpenCV because OpenCV decodes a truncated
JPEG with grey rows and only a libjpeg warning, drops alpha (a cut-out's transparent areas turn
black) and cannot read an image's size without decoding it. The size is checked on the header,
before any pixel is decoded. A large JPEG is decoded by libjpeg at 1/2, 1/4 or 1/8 scale and
resized as decoded; other formats are decoded whole and reduced in bands of rows, so the peak
is the decoded image plus 100-250 MB (measured: 100 MP grey JPEG +140 MB, RGB JPEG +260 MB,
RGBA PNG +520 MB). Transparent areas are laid over a neutral mid-grey, which keeps the face
detector's contrast and looks like a studio backdrop, where black would look like a hole
around the head; a colour from the border would be undefined for a fully transparent border.

:func:`pick_face` and :func:`check_face` judge the Face Mesh landmarks of the photo: one face,
large enough, turned at most :data:`MAX_YAW_DEG` to the side, with mouth and chin in the photo.
A rolled (tilted) face is fine: create aligns it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageFile

from models.avatar import AvatarError
from models.tracking import EQUAL_FACES, EYE_OUTER, JAW, LIPS_OUTER, face_size, observe

MAX_SIDE = 4096  # long side of what read_photo returns
MAX_PIXELS = 200_000_000  # 200 MP phone photos pass; bigger is a scan or a bomb
BACKGROUND = (128, 128, 128)  # behind transparent areas
# The formats photos come in. Others Pillow knows (EPS runs Ghostscript, for one) are refused.
PHOTO_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF")
FRAME_LINE_PX = 3  # the widest edge line (a frame, a scan's margin) taken off a photo
BAND_PIXELS = 1 << 22  # pixels flattened at a time when reducing a large decoded image

NOSE_TIP, CHIN, FOREHEAD = 1, 152, 10
MIN_FACE_PX = 80  # face height, forehead to chin; the mouth box is then ~50 px, 1/3 of the crop
SMALL_FACE_PX = 160  # mouth box side: smaller boxes are upscaled into the 160 px crop
# Depth of the nose tip in front of the outer eye corners, in half eye-corner distances:
# measured on the teacher's Face Mesh landmarks (models/synth/assets), typical of adults.
NOSE_DEPTH = 0.88
WARN_YAW_DEG = 20.0
MAX_YAW_DEG = 35.0  # beyond this the far cheek and mouth corner are hidden or foreshortened

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# 16-bit grey; "I" (32-bit) is how older Pillow holds it, so its levels are read as 16-bit too.
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class PhotoError(AvatarError):
    """The photo cannot be read or its face cannot become an avatar; the one-line message
    says why and what to do."""


# --- reading ---------------------------------------------------------------------------------


def read_photo(path: Path | str) -> np.ndarray:
    """The photo at ``path`` as uint8 RGB (H, W, 3), upright, long side at most MAX_SIDE."""
    path = Path(path)
    _check_file(path)
    with _open(path) as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise PhotoError(
                f"{path} is {width}x{height} px ({width * height / 1e6:.0f} MP), more than "
                f"{MAX_PIXELS / 1e6:.0f} MP: scale it down (a face photo needs a few MP)"
            )
        orientation = _orientation(image)
        # libjpeg decodes straight to 1/2, 1/4 or 1/8 scale, never below MAX_SIDE.
        long_side = max(width, height)
        if long_side > MAX_SIDE:
            image.draft(None, (width * MAX_SIDE // long_side, height * MAX_SIDE // long_side))
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise PhotoError(
                f"{path} is damaged or incomplete ({_reason(exc)}): copy or export it again"
            ) from None
        if image.mode in ("L", "RGB") and "transparency" not in image.info:
            # Most JPEGs: resized as decoded, so only the small result is ever RGB.
            rgb = _flatten(_fit(image), 1)
        else:
            rgb = _fit_array(_flatten(image, max(1, max(image.size) // MAX_SIDE)))
    return _upright(rgb, orientation)


def without_frame_lines(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` less the thin even lines some photos carry along their edges (a frame, a scan's
    margin). Alignment fills the padding beyond a photo from the pixels near its edge
    (:func:`models.photo_avatar.fill_outside`), so such a line would tint it; when edge
    pixels were repeated, a one-pixel grey line became a grey wedge beside the person."""
    top, bottom, left, right = 0, rgb.shape[0], 0, rgb.shape[1]
    for _ in range(2):  # a frame's sides cross at the corners: the second pass sees them clean
        top += _frame_run(rgb[top:bottom, left:right])
        bottom -= _frame_run(rgb[top:bottom, left:right][::-1])
        left += _frame_run(rgb[top:bottom, left:right].transpose(1, 0, 2))
        right -= _frame_run(rgb[top:bottom, left:right].transpose(1, 0, 2)[::-1])
    if (top, left, bottom, right) == (0, 0, *rgb.shape[:2]):
        return rgb
    return np.ascontiguousarray(rgb[top:bottom, left:right])


def _frame_run(rgb: np.ndarray) -> int:
    """How many of the first rows of ``rgb`` are a frame line: up to ``FRAME_LINE_PX`` rows of
    one even colour, then a row unlike it (a plain background runs on, and is kept)."""
    if min(rgb.shape[:2]) < 16:
        return 0
    rows = rgb[: FRAME_LINE_PX + 1].astype(np.float32)
    colour = rows[0].mean(axis=0)
    run = 0
    while run <= FRAME_LINE_PX and np.percentile(np.abs(rows[run] - colour), 98) <= 10.0:
        run += 1
    if run > FRAME_LINE_PX or float(np.abs(rows[run] - colour).mean()) < 12.0:
        return 0
    return run


def _check_file(path: Path) -> None:
    if not path.exists():
        raise PhotoError(f"{path} does not exist: check the path of the photo")
    if not path.is_file():
        raise PhotoError(f"{path} is not a file: give the path of a photo")
    if path.stat().st_size == 0:
        raise PhotoError(f"{path} is empty (0 bytes): copy or export the photo again")


@contextmanager
def _open(path: Path) -> Iterator[ImageFile.ImageFile]:
    """Pillow's lazy open (the header only) with its own bomb guard off, because it warns on
    ordinary 108 MP phone photos and refuses 200 MP ones; read_photo checks MAX_PIXELS on the
    header instead. The guard is process-wide: another thread opening an image in these
    microseconds goes unguarded, which create (one photo, one thread) accepts."""
    Image.init()
    formats = [f for f in PHOTO_FORMATS if f in Image.OPEN]
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        image = Image.open(path, formats=formats)
    except PermissionError:
        raise PhotoError(f"{path} cannot be read (permission denied)") from None
    except Image.UnidentifiedImageError:
        raise PhotoError(
            f"{path} is not a photo that can be read: use a JPEG, PNG or WebP "
            "(export HEIC photos as JPEG)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise PhotoError(
            f"{path} is damaged or incomplete ({_reason(exc)}): copy or export it again"
        ) from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    with image:
        yield image


def _upright(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Turned and mirrored as EXIF Orientation says (phones store the sensor's rows)."""
    if orientation in (5, 6, 7, 8):  # stored a quarter turn away
        rgb = np.asarray(cv2.transpose(rgb))
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    flip = {2: 1, 3: -1, 4: 0}.get(orientation)  # cv2.flip: 1 mirrors, 0 upside down, -1 both
    return rgb if flip is None else np.asarray(cv2.flip(rgb, flip))


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a damaged EXIF block must not refuse an intact photo: keep it as is
        return 1
    return value if isinstance(value, int) else 1


def _fitted(width: int, height: int) -> tuple[int, int]:
    scale = MAX_SIDE / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _fit(image: Image.Image) -> Image.Image:
    if max(image.size) <= MAX_SIDE:
        return image
    return image.resize(_fitted(*image.size), Image.Resampling.LANCZOS, reducing_gap=2.0)


def _fit_array(rgb: np.ndarray) -> np.ndarray:
    height, width = rgb.shape[:2]
    if max(width, height) <= MAX_SIDE:
        return rgb
    return np.asarray(cv2.resize(rgb, _fitted(width, height), interpolation=cv2.INTER_AREA))


def _flatten(image: Image.Image, factor: int) -> np.ndarray:
    """RGB, ``factor`` times smaller, transparency over BACKGROUND. Band by band, so that no
    full-size converted copy sits next to the decoded image, and transparency is resolved
    before averaging (averaging straight alpha darkens the edges of a cut-out)."""
    width, height = image.size
    alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    out = np.empty((-(-height // factor), -(-width // factor), 3), np.uint8)
    rows = max(1, BAND_PIXELS // (width * factor)) * factor
    for top in range(0, height, rows):
        band = _rgb(image.crop((0, top, width, min(top + rows, height))), alpha)
        if factor > 1:
            band = band.reduce(factor)
        out[top // factor : top // factor + band.height] = np.asarray(band)
    return out


def _rgb(band: Image.Image, alpha: bool) -> Image.Image:
    if band.mode in _SIXTEEN_BIT:
        # Pillow's own conversion clips 16-bit values at 255 instead of scaling them.
        levels = np.asarray(band, dtype=np.float32)
        band = Image.fromarray(np.clip(levels / 257.0 + 0.5, 0, 255).astype(np.uint8))
    if not alpha:
        return band.convert("RGB")
    backdrop = Image.new("RGBA", band.size, (*BACKGROUND, 255))
    return Image.alpha_composite(backdrop, band.convert("RGBA")).convert("RGB")


# --- the face --------------------------------------------------------------------------------


def pick_face(faces: Sequence[np.ndarray]) -> np.ndarray:
    """The landmarks of the one face to animate among the photo's faces."""
    if not faces:
        raise PhotoError(
            "no face found in the photo: use a sharp, well-lit photo of one face "
            "looking at the camera and filling a good part of the picture"
        )
    ordered = sorted(faces, key=face_size, reverse=True)
    largest = face_size(ordered[0])
    similar = sum(face_size(f) >= EQUAL_FACES * largest for f in ordered)
    if similar > 1:
        raise PhotoError(
            f"the photo shows {similar} faces of about the same size: "
            "crop it to the one person to animate"
        )
    return ordered[0]


def face_height(landmarks: np.ndarray) -> float:
    """Forehead-to-chin distance in pixels: unchanged by roll and by turning to the side."""
    lm = np.asarray(landmarks, np.float64)[:, :2]
    return float(np.hypot(*(lm[CHIN] - lm[FOREHEAD])))


def yaw_degrees(landmarks: np.ndarray) -> float:
    """How far the head is turned to the side, from the nose tip's place between the outer
    eye corners: the tip is NOSE_DEPTH half-spans in front of them, so turning by yaw shifts
    it by NOSE_DEPTH * tan(yaw) half-spans along the eye line (any roll cancels out).
    Positive: the nose is towards landmark 263's side."""
    lm = np.asarray(landmarks, np.float64)[:, :2]
    left, right = lm[EYE_OUTER[0]], lm[EYE_OUTER[1]]
    half = 0.5 * (right - left)
    span = float(np.hypot(*half))
    if span < 1e-6:
        return 90.0
    shift = float(np.dot(lm[NOSE_TIP] - (left + half), half)) / span**2
    return math.degrees(math.atan2(shift, NOSE_DEPTH))


def check_face(landmarks: np.ndarray, image_shape: Sequence[int]) -> list[str]:
    """Warnings about the face with these (468+, 2) pixel landmarks in an image of
    ``image_shape`` (H, W, ...); PhotoError when it cannot make an avatar."""
    lm = np.asarray(landmarks, np.float64)[:, :2]
    height, width = int(image_shape[0]), int(image_shape[1])
    tall = face_height(lm)
    if tall < MIN_FACE_PX:
        raise PhotoError(
            f"the face is {tall:.0f} px tall (forehead to chin), under {MIN_FACE_PX} px: "
            "use a closer or higher-resolution photo"
        )
    inside = (lm[:, 0] >= 0) & (lm[:, 0] < width) & (lm[:, 1] >= 0) & (lm[:, 1] < height)
    if not inside[[*LIPS_OUTER, CHIN]].all():
        raise PhotoError(
            "the mouth or chin is cut off by the edge of the photo: "
            "use one that shows the whole face"
        )
    yaw = abs(yaw_degrees(lm))
    if yaw > MAX_YAW_DEG:
        raise PhotoError(
            f"the face is turned about {yaw:.0f}° to the side (at most {MAX_YAW_DEG:.0f}°): "
            "use a photo looking at the camera"
        )
    warnings: list[str] = []
    if yaw > WARN_YAW_DEG:
        warnings.append(
            f"the face is turned about {yaw:.0f}° to the side: a frontal photo looks better"
        )
    side = observe(lm).side
    if side < SMALL_FACE_PX:
        warnings.append(
            f"the face is small ({side:.0f} px mouth box, under {SMALL_FACE_PX} px): "
            "a closer photo gives a sharper mouth"
        )
    if not inside[list(JAW)].all():
        warnings.append("the jaw touches the edge of the photo: the lower face may look cut")
    return warnings


__all__ = [
    "MAX_PIXELS",
    "MAX_SIDE",
    "PhotoError",
    "check_face",
    "face_height",
    "pick_face",
    "read_photo",
    "yaw_degrees",
]
