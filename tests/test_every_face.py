"""Every face: the teacher and `avatar create` on real faces no model here was trained on.

The faces (tests/fixtures/faces, with their sources and licences) are held out: the shipped
generator learned the default face only. Each create here adapts briefly (tens of steps, not
the default 700) so the suite stays fast; the full figures come from `avatarcast eval` and are
in docs/benchmarks.md. Held-out voices and sentences measure every avatar
(streamer/measure/eval.py).
"""

from __future__ import annotations

import subprocess
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from models.adapt import AdaptConfig
from models.avatar import load_avatar

pytest.importorskip("mediapipe")

FACES = Path(__file__).parent / "fixtures" / "faces"
SHORT = AdaptConfig(utterances=6, steps=70)
CASES = 3


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AVATARCAST_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def evaluate(name: str) -> dict[str, Any]:
    from streamer.measure.eval import run_eval

    result = run_eval(name, "onnx-cpu", n_cases=CASES, progress=lambda _: None)
    return {**result["lipsync"], **result["image"]}


def apertures(face: Any, opens: tuple[float, ...]) -> list[float]:
    from models.lipsync import ApertureMeter

    with ApertureMeter() as meter:
        return [meter.measure(face.render(np.array([o, 0, 0, 0], np.float32))) for o in opens]


# --- the teacher ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ouster.png", "grace-hopper.jpg", "curie.png", "denis.png"])
def test_the_teacher_closes_and_opens_any_mouth(name: str) -> None:
    """A smiling photo's lips close; any mouth opens wider with the parameter, showing teeth
    (the photo's own, or drawn ones lit like the face) over a dark interior. A small opening
    already reads as open: drawn teeth that filled it read as closed lips, a step the
    generator could not follow."""
    from models.photo_avatar import prepare_face
    from models.synth.face import TeacherFace

    aligned, landmarks, *_ = prepare_face(FACES / name)
    face = TeacherFace(aligned, landmarks)
    closed, _, small, half, wide = apertures(face, (0.0, 0.2, 0.3, 0.5, 1.0))
    assert closed < 0.02
    assert small > 0.025, (closed, small, half, wide)
    assert closed < small < half < wide and wide > 0.15
    crop = face.crop(face.render(np.array([1.0, 0, 0, 0], np.float32)), face.mouth_box())
    luma = crop.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert (luma < 50).mean() > 0.02  # the cavity
    skin = float(np.median(luma))
    assert (luma > skin + 30).mean() > 0.005  # the teeth are brighter than the skin


def test_mediapipe_leaves_the_console_to_the_progress_bar() -> None:
    """MediaPipe's C++ side wrote two warnings per graph to the standard error, a dozen graphs
    per ``avatar create``, between the lines of its progress bar, and one at the first face."""
    code = (
        "import cv2\n"
        "from models.lipsync import ApertureMeter\n"
        "from models.matte import segment\n"
        "from models.synth.face import compute_landmarks\n"
        "from models.tracking import FaceTracker\n"
        f"rgb = cv2.imread({str(FACES / 'grace-hopper.jpg')!r})[:, :, ::-1].copy()\n"
        "assert FaceTracker().landmarks(rgb)\n"
        "compute_landmarks(rgb)\n"
        "with ApertureMeter() as meter:\n"
        "    assert meter.measure(rgb) >= 0\n"
        "segment(rgb[None, :256, :256].copy())\n"
        "print('measured')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "measured"
    # 12 lines before. A graph's thread may still write one or two after its first call has
    # returned, when the descriptor is back; those cannot be caught this way.
    assert len(done.stderr.strip().splitlines()) <= 3, done.stderr
    # The first face a process finds wrote one more, at the start of every create.
    assert "NORM_RECT" not in done.stderr, done.stderr


def test_drawn_teeth_for_closed_lips() -> None:
    from models.photo_avatar import prepare_face
    from models.synth.face import TeacherFace

    grace = TeacherFace(*prepare_face(FACES / "grace-hopper.jpg")[:2])
    ouster = TeacherFace(*prepare_face(FACES / "ouster.png")[:2])
    assert not grace.own_teeth and ouster.own_teeth


def test_drawn_teeth_keep_their_white_under_a_beard_or_dark_skin() -> None:
    """Drawn teeth take their brightness from the face's white, not from the skin below the
    lip: a beard or darker skin there leaves them as bright, and they show as separate teeth
    (the V between two biting edges), not as one band."""
    from models.photo_avatar import prepare_face
    from models.synth.face import TeacherFace
    from models.synth.interior import LUMA, TEETH_PX

    photo, landmarks = prepare_face(FACES / "grace-hopper.jpg")[:2]
    face = TeacherFace(photo, landmarks)
    chin = photo.copy()
    lower_lip_y = int(landmarks[17, 1])  # the lower lip's lowest point, mid-mouth
    chin[lower_lip_y + 2 :] = (chin[lower_lip_y + 2 :] * 0.4).astype(np.uint8)
    darker = TeacherFace(chin, landmarks)

    def teeth(f: TeacherFace) -> np.ndarray:
        """The drawn teeth's row a pixel under the lip line, across the middle of the mouth."""
        frame = f.render(np.array([0.6, 0, 0, 0], np.float32)).astype(np.float32) @ LUMA
        row = round(f.mouth_cy + 2 * f.scale)
        half = int(0.5 * f.half_width)
        return frame[row, int(f.mouth_cx) - half : int(f.mouth_cx) + half]

    light, dark = teeth(face), teeth(darker)
    assert np.median(dark) > 0.9 * np.median(light) and np.median(light) > 150
    # Separate teeth: near the biting edge (0.7 of the drawn length) the dark cavity shows
    # between two teeth, not a seam's slight shade.
    edge = round(face.mouth_cy + 0.7 * TEETH_PX * face.scale)
    frame = face.render(np.array([0.6, 0, 0, 0], np.float32)).astype(np.float32) @ LUMA
    half = int(0.6 * face.half_width)
    bite = frame[edge, int(face.mouth_cx) - half : int(face.mouth_cx) + half]
    bright = np.flatnonzero(bite > 0.6 * bite.max())
    # Runs of darker pixels between two bright ones, as dark as the cavity.
    notches = [b > a + 1 and bite[a + 1 : b].min() < 0.4 * bite.max() for a, b in pairwise(bright)]
    assert sum(notches) >= 2, bite.round()


# --- create from photos --------------------------------------------------------------------


@pytest.mark.slow
def test_photo_with_teeth_showing(home: Path) -> None:
    """Ousterhout smiles with his teeth showing: the avatar's resting mouth is closed, and
    the adapted model lip-syncs on held-out voices, checked by create itself."""
    from models.create import create_avatar
    from streamer.measure.selfcheck import self_check

    report = create_avatar(
        "ouster", home=home, image=FACES / "ouster.png", quiet=True, adapt=SHORT, check=self_check
    )
    assert report.check is not None
    figures = {**report.check["lipsync"], **report.check["image"]}
    # Measured with adaptation seeds 0-2: r 0.901-0.911, p/b/m 94.7-97.4 % (6 cases), SSIM 0.92
    # (before create held the hearing: p/b/m 84-90 %).
    assert figures["r"] >= 0.75, figures  # the bars for a new photo
    assert figures["bilabial_closed"] >= 0.85, figures
    assert figures["ssim"] >= 0.8, figures  # no patch, no smear against the teacher
    avatar = load_avatar("ouster", home)
    from models.lipsync import ApertureMeter

    with ApertureMeter() as meter:
        assert meter.measure(np.asarray(avatar.frames[0])) < 0.02  # the smile is closed
    assert any("self-check" in n for n in report.notes)


@pytest.mark.slow
def test_small_greyscale_face(home: Path) -> None:
    """Marie Curie: a 256 px greyscale scan, face about 90 px tall."""
    from models.create import create_avatar

    report = create_avatar("curie", home=home, image=FACES / "curie.png", quiet=True, adapt=SHORT)
    assert any("small" in w for w in report.warnings)
    figures = evaluate("curie")
    # The hardest held-out face (pale, low contrast, upscaled 2x): r 0.848-0.877 with
    # adaptation seeds 0-2 (3 cases); a broken mouth scores 0.2-0.3.
    assert figures["r"] >= 0.75, figures
    assert figures["ssim"] >= 0.8, figures


@pytest.mark.slow
def test_landscape_photo_with_the_face_off_centre(home: Path, tmp_path: Path) -> None:
    """A 1280x720 picture whose face sits in its right third, next to text."""
    from models.create import create_avatar

    face = cv2.imread(str(FACES / "qt-puzzle.jpg"))
    canvas = np.full((720, 1280, 3), (40, 90, 160), np.uint8)
    canvas[200:624, 800:1224] = face
    cv2.putText(canvas, "On air soon", (60, 360), cv2.FONT_HERSHEY_SIMPLEX, 3, (255,) * 3, 6)
    path = tmp_path / "wide.webp"
    cv2.imwrite(str(path), canvas)
    create_avatar("wide", home=home, image=path, quiet=True, adapt=SHORT)
    avatar = load_avatar("wide", home)
    assert avatar.manifest.frame_size == (512, 512)
    figures = evaluate("wide")
    # Measured with adaptation seeds 0-2: r 0.893-0.910, SSIM 0.852-0.856 (3 cases).
    assert figures["r"] >= 0.75, figures
    assert figures["ssim"] >= 0.8, figures


# --- a video twin ---------------------------------------------------------------------------


@pytest.mark.slow
def test_video_twin_of_a_new_face(home: Path, tmp_path: Path) -> None:
    """Denis talks for 10 s (the teacher animating his photo, with held-out voices, moving,
    relit, as a portrait phone video); create adapts to his own frames and speech."""
    from models.create import create_avatar
    from tests.talking_video import make_talking_video

    video = make_talking_video(tmp_path / "denis.mp4", 10.0, photo=FACES / "denis.png")
    report = create_avatar("denis", home=home, video=video, quiet=True, adapt=SHORT)
    assert report.kind == "video"
    # The note carries the judge's figures: the default model follows a new face's voice with
    # r about 0.6 on the video's held-out end, the adapted one about 0.9.
    assert report.notes[0].startswith("adapted to this face"), report.notes
    figures = evaluate("denis")
    # The bars for a video twin. Measured r 0.828-0.878, p/b/m 100 %, stillness
    # 0.014-0.107 over the videos of seeds 3-5 and 8-10 (docs/benchmarks.md); the default model
    # kept in its place scores 0.09-0.61, its lips closed on 8-58 % of p/b/m.
    assert figures["r"] >= 0.8, (figures, report.notes)
    assert figures["bilabial_closed"] >= 0.85, (figures, report.notes)
    assert figures["stillness"] <= 0.25, (figures, report.notes)


# --- bad input ----------------------------------------------------------------------------


def test_a_cartoon_face_gives_a_clear_answer(home: Path, tmp_path: Path) -> None:
    """A drawn face is either refused with one line or becomes a working avatar."""
    from models.avatar import AvatarError
    from models.create import create_avatar

    img = np.full((480, 480, 3), 235, np.uint8)
    cv2.circle(img, (240, 240), 150, (120, 190, 250), -1)
    for x in (185, 295):
        cv2.circle(img, (x, 200), 22, (255, 255, 255), -1)
        cv2.circle(img, (x, 205), 10, (30, 30, 30), -1)
    cv2.ellipse(img, (240, 320), (60, 25), 0, 0, 180, (40, 40, 160), 8)
    path = tmp_path / "cartoon.png"
    cv2.imwrite(str(path), img)
    try:
        create_avatar("toon", home=home, image=path, quiet=True, adapt=AdaptConfig(steps=0))
    except AvatarError as exc:
        assert "\n" not in str(exc) and "face" in str(exc)
        assert not (home / "avatars" / "toon").exists()
    else:
        assert load_avatar("toon", home).manifest.kind == "photo"


@pytest.mark.slow
def test_a_face_that_leaves_the_frame_half_the_time(home: Path, tmp_path: Path) -> None:
    """Every other second the person is out of the picture: the avatar is made from the
    seconds with a face (the summary says how much was left out), or refused in one line."""
    from models.avatar import AvatarError
    from models.create import create_avatar
    from models.photo_avatar import prepare_face
    from tests.conftest import write_video

    aligned = prepare_face(FACES / "denis.png")[0]
    empty = np.full_like(aligned, 90)

    def frame(i: int) -> np.ndarray:
        return aligned if (i // 30) % 2 == 0 else empty

    video = write_video(tmp_path / "away.mp4", frame, 30 * 12)
    try:
        report = create_avatar(
            "away", home=home, video=video, quiet=True, adapt=AdaptConfig(steps=0)
        )
    except AvatarError as exc:
        assert "\n" not in str(exc)
        assert not (home / "avatars" / "away").exists()
    else:
        assert report.left_out and any("face lost" in w for w in report.warnings)
        assert 0.4 < report.frames_used / report.frames_total < 0.6
        assert load_avatar("away", home).manifest.kind == "video"
