from dataclasses import dataclass

import numpy as np
import pytest

from models.synth.clip import Clip, default_assets, render_clip, teacher
from models.synth.face import CROP_SIZE, LANDMARKS_FILE, TeacherFace, idle_track
from models.synth.phonemes import Phone

STILL = (0.0, 0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def face() -> TeacherFace:
    return teacher()


def mouth_region(face: TeacherFace, frame: np.ndarray) -> np.ndarray:
    """The photo's own teeth area (where the smile shows teeth)."""
    cx, cy = int(face.mouth_cx), int(face.mouth_cy)
    return frame[cy - 8 : cy + 10, cx - 30 : cx + 30].astype(np.float32)


def test_landmark_asset_is_small_and_complete() -> None:
    lm = np.load(LANDMARKS_FILE)
    assert lm.shape == (478, 3)
    assert LANDMARKS_FILE.stat().st_size < 20_000


def test_render_shape_and_face_size(face: TeacherFace) -> None:
    frame = face.render(np.zeros(4, np.float32))
    assert frame.shape == (512, 512, 3) and frame.dtype == np.uint8
    brow_to_chin = face.landmarks[152, 1] - face.landmarks[9, 1]
    assert brow_to_chin >= 200


def test_closed_mouth_hides_the_teeth(face: TeacherFace) -> None:
    closed = face.render(np.zeros(4, np.float32))

    def teeth_fraction(img: np.ndarray) -> float:
        """Share of bright, not pink pixels where the photo shows its teeth."""
        top, bottom = face.teeth_gap
        cols = np.flatnonzero(bottom - top > 6)
        pix = np.concatenate(
            [img[int(top[i]) + 2 : int(bottom[i]) - 1, face.x0 + i] for i in cols]
        ).astype(np.float32)
        bright = pix.mean(axis=1) > 190
        neutral = pix[:, 0] - pix[:, 2] < 30  # lips are pink, teeth are not
        return float((bright & neutral).mean())

    assert teeth_fraction(face.photo) > 0.1
    assert teeth_fraction(closed) < 0.2 * teeth_fraction(face.photo)


def test_open_mouth_shows_teeth_and_dark_interior(face: TeacherFace) -> None:
    wide = face.render(np.array([1.0, 0.0, 0.0, 0.0], np.float32))
    cx, cy = int(face.mouth_cx), int(face.mouth_cy)
    column = wide[cy - 15 : cy + 40, cx].astype(np.float32).mean(axis=1)
    assert column.max() > 180  # teeth
    assert column.min() < 60  # cavity


def test_opening_grows_with_the_parameter_and_moves_the_chin(face: TeacherFace) -> None:
    base = face.render(np.zeros(4, np.float32)).astype(np.float32)
    diffs = [
        np.abs(face.render(np.array([o, 0, 0, 0], np.float32)).astype(np.float32) - base).sum()
        for o in (0.25, 0.5, 1.0)
    ]
    assert diffs[0] < diffs[1] < diffs[2]
    wide = face.render(np.array([1.0, 0, 0, 0], np.float32)).astype(np.float32)
    chin = int(face.chin_y) - 12
    cx = int(face.mouth_cx)
    assert (
        np.abs(
            wide[chin - 5 : chin + 5, cx - 20 : cx + 20]
            - base[chin - 5 : chin + 5, cx - 20 : cx + 20]
        ).mean()
        > 3
    )


def test_width_round_press_change_the_mouth(face: TeacherFace) -> None:
    half = face.render(np.array([0.4, 0.0, 0.0, 0.0], np.float32)).astype(np.float32)
    for params in ([0.4, 0.9, 0.0, 0.0], [0.4, -0.9, 0.9, 0.0]):
        other = face.render(np.array(params, np.float32)).astype(np.float32)
        assert np.abs(other - half).mean() > 0.1
    closed = face.render(np.zeros(4, np.float32)).astype(np.float32)
    pressed = face.render(np.array([0, 0, 0, 1], np.float32)).astype(np.float32)
    assert np.abs(pressed - closed).max() > 10


def test_only_the_face_changes_without_head_motion(face: TeacherFace) -> None:
    frame = face.render(np.array([1.0, 1.0, 0.0, 0.0], np.float32))
    assert np.array_equal(frame[:100], face.photo[:100])  # hair/background untouched
    assert np.array_equal(frame[430:], face.photo[430:])


def test_blink_closes_the_eyes(face: TeacherFace) -> None:
    open_eyes = face.render(np.zeros(4, np.float32)).astype(np.float32)
    shut = face.render(np.zeros(4, np.float32), blink=1.0).astype(np.float32)
    x, y = face.landmarks[468, :2].astype(int)  # left iris centre
    iris = open_eyes[y - 2 : y + 3, x - 2 : x + 3].mean()
    lid = shut[y - 2 : y + 3, x - 2 : x + 3].mean()
    assert lid > iris + 40  # skin covers the dark iris


def test_head_motion_and_box(face: TeacherFace) -> None:
    head = (4.0, -3.0, 1.0, 1.01)
    moved = face.render(np.zeros(4, np.float32), head=head)
    still = face.render(np.zeros(4, np.float32))
    assert not np.array_equal(moved, still)
    b0, b1 = face.mouth_box(STILL), face.mouth_box(head)
    assert b0[2] - b0[0] == b0[3] - b0[1] == CROP_SIZE
    assert b1[2] - b1[0] == CROP_SIZE and abs(b1[0] - b0[0] - 4) <= 3


def test_box_holds_mouth_and_chin_in_all_states(face: TeacherFace) -> None:
    x0, y0, x1, y1 = face.mouth_box()
    mask = face.feather_mask()
    base = face.render(np.zeros(4, np.float32)).astype(np.int16)
    for params in ([1, 0, 0, 0], [1, 1, 0, 0], [0.5, -1, 1, 0], [0, 0, 0, 1]):
        frame = face.render(np.array(params, np.float32)).astype(np.int16)
        changed = np.abs(frame - base).max(axis=2) > 8
        ys, xs = np.nonzero(changed)
        assert ys.min() >= y0 and ys.max() < y1 and xs.min() >= x0 and xs.max() < x1, params
        # Whatever changes lies where the generator's output is pasted.
        assert mask[ys - y0, xs - x0].min() > 0.25, params
    assert face.chin_y + 20 < y1


def test_feather_mask(face: TeacherFace) -> None:
    mask = face.feather_mask()
    assert mask.shape == (CROP_SIZE, CROP_SIZE) and mask.dtype == np.float32
    assert mask.min() >= 0 and mask.max() == pytest.approx(1.0)
    assert np.all(mask[:12] == 0) and np.all(mask[-12:] == 0)
    assert np.all(mask[:, :12] == 0) and np.all(mask[:, -12:] == 0)
    assert np.abs(np.diff(mask, axis=0)).max() < 0.12  # no hard edge
    assert np.abs(np.diff(mask, axis=1)).max() < 0.12
    # The lips sit where the mask is full.
    x0, y0, _, _ = face.mouth_box()
    assert mask[int(face.mouth_cy) - y0, int(face.mouth_cx) - x0] == pytest.approx(1.0)


def test_idle_track() -> None:
    rng = np.random.default_rng(0)
    blink, head = idle_track(750, rng)  # 30 s
    assert blink.shape == (750,) and head.shape == (750, 4)
    starts = np.flatnonzero((blink[1:] > 0) & (blink[:-1] == 0))
    assert 4 <= len(starts) <= 15
    assert np.all(np.diff(starts) >= 50)
    assert blink.max() == pytest.approx(1.0)
    assert np.abs(head[:, :2]).max() < 5 and np.abs(head[:, 2]).max() < 2
    assert np.abs(head[:, 3] - 1).max() < 0.02
    assert np.abs(np.diff(head[:, 1])).max() < 1.0  # slow motion


@dataclass(frozen=True)
class FakeSpeech:
    samples: np.ndarray
    phones: tuple[Phone, ...]


def test_render_clip() -> None:
    phones = (
        Phone("sil", 0, 0.2),
        Phone("P", 0.2, 0.28),
        Phone("AA", 0.28, 0.5),
        Phone("sil", 0.5, 0.61),
    )
    speech = FakeSpeech(np.zeros(9760, np.float32), phones)  # 0.61 s -> 16 frames
    clip = render_clip(speech, np.random.default_rng(0))
    assert isinstance(clip, Clip)
    assert clip.frames is not None and clip.frames.shape == (16, 512, 512, 3)
    assert clip.crops.shape == (16, 160, 160, 3) and clip.params.shape == (16, 4)
    assert clip.boxes.shape == (16, 4)
    x0, y0, x1, y1 = clip.boxes[9]
    np.testing.assert_array_equal(clip.crops[9], clip.frames[9][y0:y1, x0:x1])
    assert clip.params[:, 0].max() > 0.5 and clip.params[0, 0] == 0
    still = render_clip(speech, np.random.default_rng(0), idle=False, keep_frames=False)
    assert still.frames is None and np.all(still.boxes == still.boxes[0])


def test_default_assets() -> None:
    assets = default_assets()
    frames = assets["frames"]
    assert frames.shape == (4, 512, 512, 3) and frames.dtype == np.uint8
    face = teacher()
    np.testing.assert_array_equal(frames[0], face.render(np.zeros(4, np.float32)))
    eye = face.landmarks[468, :2].astype(int)
    levels = [frames[k][eye[1] - 2 : eye[1] + 3, eye[0] - 2 : eye[0] + 3].mean() for k in range(4)]
    assert levels[0] < levels[3]
    assert assets["mask"].shape == (160, 160) and assets["reference"].shape == (160, 160, 3)
    x0, y0, x1, y1 = assets["box"]
    assert (x1 - x0, y1 - y0) == (160, 160)
    assert assets["boxes"].shape == (4, 4)


def test_face_mesh_sees_the_mouth(face: TeacherFace) -> None:
    mp = pytest.importorskip("mediapipe")
    opens = [0.0, 0.0, 0.2, 0.4, 0.6, 0.9]
    gaps = []
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, refine_landmarks=True, max_num_faces=1
    ) as mesh:
        for i, o in enumerate(opens):
            frame = face.render(np.array([o, 0.3 * (i % 3 - 1), 0, 0], np.float32))
            lm = mesh.process(frame).multi_face_landmarks[0].landmark
            pts = np.array([[p.x * 512, p.y * 512] for p in lm])
            gaps.append(np.linalg.norm(pts[13] - pts[14]) / np.linalg.norm(pts[10] - pts[152]))
    assert max(gaps[:2]) < 0.01
    assert np.corrcoef(opens, gaps)[0, 1] > 0.9
