"""A user's photo for `avatarcast avatar create --image`: formats, damage, size, and its face."""

from __future__ import annotations

import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image, ImageOps
from skimage import data

from models.photo import (
    BACKGROUND,
    MAX_SIDE,
    PhotoError,
    check_face,
    pick_face,
    read_photo,
    without_frame_lines,
    yaw_degrees,
)
from models.synth.face import LANDMARKS_FILE
from models.tracking import FaceTracker

FACE_CROP = (slice(20, 320), slice(110, 360))  # the astronaut's head and shoulders
FACES = Path(__file__).parent / "fixtures" / "faces"


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.asarray(data.astronaut())


@pytest.fixture(scope="module")
def tracker() -> Iterator[FaceTracker]:
    with FaceTracker(video=False) as face_tracker:
        yield face_tracker


def write(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def refused(path: Path | str) -> str:
    with pytest.raises(PhotoError) as info:
        read_photo(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    return message


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares its size and holds no pixels: what a bomb's header looks like."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b""))
    return path


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


# --- reading ----------------------------------------------------------------------------------


def test_jpeg_and_webp_read_as_rgb(tmp_path: Path, astronaut: np.ndarray) -> None:
    jpeg = read_photo(write(tmp_path / "a.jpg", astronaut))
    assert jpeg.dtype == np.uint8 and jpeg.shape == (512, 512, 3)
    assert mean_error(jpeg, astronaut) < 4  # RGB, not BGR
    Image.fromarray(astronaut).save(tmp_path / "a.webp", quality=90)
    assert mean_error(read_photo(tmp_path / "a.webp"), astronaut) < 4


def test_not_a_photo(tmp_path: Path) -> None:
    assert "does not exist" in refused(tmp_path / "missing.jpg")
    assert "not a file" in refused(tmp_path)
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert "empty" in refused(tmp_path / "empty.jpg")
    (tmp_path / "notes.jpg").write_text("not a photo at all")
    assert "not a photo" in refused(tmp_path / "notes.jpg")


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_truncated_refused(tmp_path: Path, astronaut: np.ndarray, suffix: str) -> None:
    # OpenCV shows a JPEG cut in half with grey rows and only a libjpeg warning.
    whole = tmp_path / f"whole{suffix}"
    Image.fromarray(astronaut).save(whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert "damaged or incomplete" in refused(cut)


def test_transparent_areas_become_grey(tmp_path: Path) -> None:
    rgba = np.zeros((64, 64, 4), np.uint8)  # transparent black, as editors store it
    rgba[16:48, 16:48] = (200, 40, 20, 255)
    rgba[0, 0] = (255, 0, 0, 128)
    Image.fromarray(rgba).save(tmp_path / "cutout.png")
    rgb = read_photo(tmp_path / "cutout.png")
    assert tuple(rgb[60, 60]) == BACKGROUND
    assert tuple(rgb[32, 32]) == (200, 40, 20)
    assert np.abs(rgb[0, 0].astype(int) - (191, 64, 64)).max() <= 1


def test_large_cutout_has_no_dark_edges(tmp_path: Path) -> None:
    # Columns alternate opaque red and transparent black; halved, each pixel is half red
    # over the grey. Averaging before compositing would give (128, 64, 64) instead.
    rgba = np.zeros((4, 2 * MAX_SIDE + 8, 4), np.uint8)
    rgba[:, ::2] = (255, 0, 0, 255)
    Image.fromarray(rgba).save(tmp_path / "stripes.png")
    rgb = read_photo(tmp_path / "stripes.png")
    assert rgb.shape[1] == MAX_SIDE
    assert np.abs(rgb[:, 8:-8].astype(int) - (191, 64, 64)).max() <= 2


def test_sixteen_bit_and_grey(tmp_path: Path, astronaut: np.ndarray) -> None:
    ramp = np.tile(np.array([0, 32896, 65535], np.uint16), (4, 1))
    cv2.imwrite(str(tmp_path / "grey16.png"), ramp)
    assert read_photo(tmp_path / "grey16.png")[0].tolist() == [[0] * 3, [128] * 3, [255] * 3]
    colour = (astronaut.astype(np.uint16) * 257)[:, :, ::-1]
    cv2.imwrite(str(tmp_path / "colour16.png"), colour)
    assert mean_error(read_photo(tmp_path / "colour16.png"), astronaut) < 1
    grey = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "grey.jpg"), grey)
    rgb = read_photo(tmp_path / "grey.jpg")
    assert rgb.shape == (512, 512, 3) and mean_error(rgb[:, :, 1], grey) < 4


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(tmp_path: Path, astronaut: np.ndarray, orientation: int) -> None:
    # Phones store the sensor's rows and say in EXIF how to show them; Pillow's
    # exif_transpose is the reference for all eight values.
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    Image.fromarray(astronaut[:, :400]).save(tmp_path / "phone.jpg", exif=exif)
    with Image.open(tmp_path / "phone.jpg") as stored:
        upright = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
    assert upright.shape == ((512, 400, 3) if orientation < 5 else (400, 512, 3))
    assert np.array_equal(read_photo(tmp_path / "phone.jpg"), upright)


def test_too_many_pixels_refused_from_the_header(tmp_path: Path) -> None:
    message = refused(png_header_only(tmp_path / "bomb.png", 20000, 20000))
    assert "400 MP" in message and "scale it down" in message
    # 120 MP passes the size check (then this one has no pixels), with no warning from
    # Pillow's own guard and that guard left as it was.
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "incomplete" in refused(png_header_only(tmp_path / "big.png", 12000, 10000))
    assert limit == Image.MAX_IMAGE_PIXELS


# The peak is read from VmHWM, which starts afresh at exec: getrusage's ru_maxrss would carry
# the forking parent's peak (a pytest process that has loaded torch is gigabytes).
MEASURE = """
import sys, psutil
from models.photo import read_photo
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
before = psutil.Process().memory_info().rss
rgb = read_photo(sys.argv[1])
print(rgb.shape[0], rgb.shape[1], rgb[0, 0, 0], rgb[2048, 2048, 0], (hwm() - before) >> 20)
"""


def test_huge_photo_reduced_in_bounded_memory(tmp_path: Path) -> None:
    grey = np.full((10_000, 10_000), 60, np.uint8)  # 100 MP
    grey[4000:6000, 4000:6000] = 220
    cv2.imwrite(str(tmp_path / "huge.jpg"), grey)
    del grey
    # A fresh process, so that the peak is this read's and not the test session's.
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tmp_path / "huge.jpg")],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    height, width, corner, centre, grown_mb = (int(v) for v in result.stdout.split())
    assert (height, width) == (MAX_SIDE, MAX_SIDE)
    assert abs(corner - 60) <= 2 and abs(centre - 220) <= 2
    # Decoded whole and made RGB, this is 300 MB in OpenCV and 500 MB in Pillow (4 bytes a
    # pixel); libjpeg's 1/2 scale decode and the band-wise conversion keep it near 140 MB.
    assert grown_mb < 200, grown_mb


# --- the face ---------------------------------------------------------------------------------


def landmarks_of(tracker: FaceTracker, rgb: np.ndarray) -> np.ndarray:
    return pick_face(tracker.landmarks(rgb))


def test_astronaut_passes(tmp_path: Path, astronaut: np.ndarray, tracker: FaceTracker) -> None:
    rgb = read_photo(write(tmp_path / "a.jpg", astronaut))
    notes = check_face(landmarks_of(tracker, rgb), rgb.shape)
    assert len(notes) == 1 and "small" in notes[0]  # a 103 px tall face
    closer = cv2.resize(astronaut[FACE_CROP], None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    assert check_face(landmarks_of(tracker, closer), closer.shape) == []


def test_no_face(tracker: FaceTracker) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    with pytest.raises(PhotoError, match="no face found"):
        landmarks_of(tracker, noise)


def test_two_faces_of_one_size(astronaut: np.ndarray, tracker: FaceTracker) -> None:
    head = astronaut[FACE_CROP]
    with pytest.raises(PhotoError, match="2 faces of about the same size"):
        landmarks_of(tracker, np.hstack([head, head]))
    smaller = cv2.resize(head, (180, 216), interpolation=cv2.INTER_AREA)
    pair = np.hstack([head, np.pad(smaller, ((42, 42), (0, 0), (0, 0)), constant_values=128)])
    chosen = landmarks_of(tracker, pair)
    assert chosen[:, 0].max() < head.shape[1]  # the larger face, on the left


def test_tiny_face_refused(astronaut: np.ndarray, tracker: FaceTracker) -> None:
    # Face Mesh finds a face this small only when it fills the picture (a thumbnail); a
    # 50 px face pasted into a 640x480 frame is not found at all, and is "no face".
    thumbnail = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    with pytest.raises(PhotoError, match="under 80 px"):
        check_face(landmarks_of(tracker, thumbnail), thumbnail.shape)


def test_cut_off_face(astronaut: np.ndarray, tracker: FaceTracker) -> None:
    lm = landmarks_of(tracker, astronaut)
    above_chin = np.ascontiguousarray(astronaut[: int(lm[152, 1]) - 10])
    with pytest.raises(PhotoError, match="cut off"):
        check_face(landmarks_of(tracker, above_chin), above_chin.shape)
    # Only the side of the jaw outside: usable, with a warning.
    shifted = lm - (lm[132, 0] + 1.0, 0.0)
    assert any("jaw" in w for w in check_face(shifted, astronaut.shape))


def turned(yaw: float, roll: float = 0.0) -> np.ndarray:
    """The astronaut's Face Mesh landmarks, with depth, turned by ``yaw`` about the vertical
    axis and then rolled, projected onto a 512 px image."""
    points = np.load(LANDMARKS_FILE).astype(np.float64)
    centre = points.mean(axis=0)
    x, y, z = (points - centre).T
    a, b = np.radians(yaw), np.radians(roll)
    x = x * np.cos(a) - z * np.sin(a)
    x, y = x * np.cos(b) - y * np.sin(b), x * np.sin(b) + y * np.cos(b)
    return np.stack([x, y], axis=1) + centre[:2]


def test_turned_face() -> None:
    # The photo itself is turned about 2 degrees.
    for yaw in (-40, -25, -10, 10, 25, 40):
        assert abs(yaw_degrees(turned(yaw)) - yaw) < 4
        assert abs(yaw_degrees(turned(yaw, roll=60)) - yaw_degrees(turned(yaw))) < 1e-6
    assert not any("turned" in w for w in check_face(turned(10), (512, 512)))
    assert any("turned about" in w for w in check_face(turned(-27, roll=30), (512, 512)))
    with pytest.raises(PhotoError, match="turned about"):
        check_face(turned(42), (512, 512))


def test_rolled_face_is_fine() -> None:
    assert check_face(turned(0, roll=50), (512, 512)) == []


def test_frame_lines_come_off_before_alignment() -> None:
    """Ousterhout's photo has a one-pixel grey line along its right and bottom edges; the
    alignment extended it into a grey wedge beside him in every frame of his avatar."""
    from models.photo_avatar import prepare_face

    photo = read_photo(FACES / "ouster.png")
    assert (photo[:, -1] == 128).all() and (photo[-1] == 128).all()
    assert without_frame_lines(photo).shape == (180, 141, 3)
    aligned = prepare_face(FACES / "ouster.png")[0]
    grey = np.abs(aligned.astype(np.int16) - 128).max(axis=2) <= 2
    assert grey.mean() < 0.01, grey.mean()

    grace = read_photo(FACES / "grace-hopper.jpg")
    assert without_frame_lines(grace) is grace  # no frame: the photo as it is
    framed = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    framed[:2] = 250  # two rows of a light frame on top, three dark columns on the right
    framed[:, -3:] = 20
    assert without_frame_lines(framed).shape == (58, 77, 3)
    framed[2:, :5] = 20  # wider than a frame line: part of the picture
    assert without_frame_lines(framed).shape == (58, 77, 3)
    assert without_frame_lines(np.full((40, 40, 3), 90, np.uint8)).shape == (40, 40, 3)


def test_padding_beside_a_small_photo_is_smooth(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ousterhout's photo ends short of the aligned frame on two sides (37 % of it). Its edge
    pixels, repeated, drew streaks there (every edge pixel stretched into a line); the
    padding now continues the photo's colours smoothly."""
    import models.photo_avatar as photo_avatar

    seen: dict[str, np.ndarray] = {}
    fill = photo_avatar.fill_outside

    def spy(image: np.ndarray, inside: np.ndarray) -> np.ndarray:
        seen["inside"] = inside
        return fill(image, inside)

    monkeypatch.setattr(photo_avatar, "fill_outside", spy)
    aligned = photo_avatar.prepare_face(FACES / "ouster.png")[0]
    outside = (seen["inside"] < 0.01)[:-1, :-1]
    assert outside.mean() > 0.3
    grey = aligned.astype(np.float32).mean(axis=2)
    steps = np.maximum(np.abs(np.diff(grey, axis=0))[:, :-1], np.abs(np.diff(grey, axis=1))[:-1])
    # Streaks: 99 % of steps under 28.7 grey levels between neighbours; now under 3.4.
    assert np.percentile(steps[outside], 99) < 8.0
    inside = (seen["inside"] > 0.999)[:-1, :-1]
    assert np.percentile(steps[inside], 99) > 20.0  # the photo itself is left as it was
    # The padding continues the nearest photo colours (the leaves, the shirt), not the frame's
    # mean: 6-48 px out, 19.5 grey levels from the nearest photo pixel; plain averages gave 42.
    photo = (seen["inside"] > 0.999).astype(np.uint8)
    dist, label = cv2.distanceTransformWithLabels(
        1 - photo, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    ys, xs = np.nonzero(photo)  # label k is the k-th photo pixel in row order
    nearest = aligned[ys[label - 1], xs[label - 1]].astype(np.float32)
    band = (dist > 6) & (dist < 48)
    assert np.abs(aligned.astype(np.float32) - nearest).mean(axis=2)[band].mean() < 28.0
    untouched = np.ones((40, 40, 3), np.uint8)
    assert photo_avatar.fill_outside(untouched, np.ones((40, 40), np.float32)) is untouched


def test_a_tight_tilted_portrait_keeps_its_own_framing() -> None:
    """Denis Bitouzé's photo is a tight portrait with his head tilted 14 degrees. Aligned to the
    default's framing it covered 44 % of the 512x512 frame, and the avatar showed the rest:
    colours smeared out from the photo's edge around his head. The avatar now keeps the part
    of the frame that is photo, around everything the mouth needs."""
    from models.photo_avatar import (
        FILL_LINE,
        TeacherFace,
        frame_box,
        framed_face,
        keep_box,
        prepare_face,
    )

    aligned, landmarks, _, _, photo = prepare_face(FACES / "denis.png")
    assert photo.mean() < 0.5
    keep = keep_box(TeacherFace(aligned, landmarks))
    x0, y0, x1, y1 = box = frame_box(photo, keep)
    assert (x1 - x0) % 2 == 0 and (y1 - y0) % 2 == 0
    assert x0 <= keep[0] and y0 <= keep[1] and x1 >= keep[2] and y1 >= keep[3]
    # His photo ends at his collar, tilted: under the chin, the jaw's reach is fill (10 %).
    # The jaw holds the sides and the bottom; the top line is nearly all photo (at most a
    # sixth fill); most of the photo is kept.
    fill = ~photo
    assert fill[y0:y1, x0:x1].mean() < 0.15
    assert keep[0] - x0 <= 1 and x1 - keep[2] <= 1 and y1 - keep[3] <= 1
    assert fill[y0, x0:x1].mean() <= FILL_LINE
    assert photo[y0:y1, x0:x1].sum() > 0.7 * photo.sum()
    face = framed_face(aligned, landmarks, photo)
    assert face.frame_size == (x1 - x0, y1 - y0)
    assert np.array_equal(face.photo, aligned[y0:y1, x0:x1]), box
    # The face's landmarks moved with the frame: the mouth box holds the same pixels.
    whole = TeacherFace(aligned, landmarks)
    mx0, my0, mx1, my1 = face.mouth_box()
    wx0, wy0, wx1, wy1 = whole.mouth_box()
    assert np.array_equal(face.photo[my0:my1, mx0:mx1], aligned[wy0:wy1, wx0:wx1])


def test_the_frame_box_of_a_photo_that_covers_the_frame_or_not() -> None:
    from models.photo_avatar import frame_box

    keep = (180, 200, 340, 400)
    assert frame_box(np.ones((512, 512), bool), keep) == (0, 0, 512, 512)
    # A photo turned 20 degrees: the upright rectangle inside it, less than 2 % fill at the
    # corners (1.3 %), two thirds of the photo (the most an upright rectangle can hold of a
    # 330x420 one turned 20 degrees is 70 %).
    tilted = np.zeros((512, 512), np.uint8)
    corners = cv2.boxPoints(((256.0, 240.0), (330.0, 420.0), 20.0))
    cv2.fillConvexPoly(tilted, np.round(corners).astype(np.int32), 1)
    photo = tilted.astype(bool)
    x0, y0, x1, y1 = frame_box(photo, keep)
    assert 1.0 - photo[y0:y1, x0:x1].mean() < 0.02
    assert photo[y0:y1, x0:x1].sum() > 0.6 * photo.sum()
    # A photo that ends above the chin: the frame still holds the jaw's reach, filled, and
    # keeps the photo's sides rather than trading five of its pixels for one of fill.
    short = np.zeros((512, 512), bool)
    short[:350, 100:420] = True
    assert frame_box(short, keep) == (100, 0, 420, 400)
