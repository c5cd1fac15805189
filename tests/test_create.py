"""`avatarcast avatar create`: video decoding, tracking, bad input, and create -> render."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from models.avatar import load_avatar, read_avatar
from models.ownership import read_ownership
from models.tracking import MAX_GAP_FRAMES, FaceObservation, landmark_mask, smooth_track
from models.videoio import display_rotation, iter_frames, probe
from streamer.cli import main
from tests.conftest import write_video
from tests.talking_video import HEIGHT, RATE, WIDTH

CONSENT = ("--consent", "I, the person in these test pictures, consent to being an avatar.")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AVATARCAST_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def numbered(i: int) -> np.ndarray:
    """A 64x48 frame whose grey level encodes its index (survives H.264 well)."""
    return np.full((48, 64, 3), (i * 8) % 256, np.uint8)


# --- decoding ---------------------------------------------------------------------------------


def test_30fps_resampled_to_25(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.mp4", numbered, 30, rate=30)
    out = list(iter_frames(path, 640))
    assert [k for k, _ in out] == list(range(25))
    # Output frame k shows the source frame nearest to k / 25 s.
    levels = [int(f.mean()) for _, f in out]
    expected = [(round(k * 30 / 25) * 8) % 256 for k in range(25)]
    assert np.abs(np.array(levels) - np.array(expected)).max() <= 3


def test_variable_frame_rate(tmp_path: Path) -> None:
    times = [0.0, 0.01, 0.02, 0.5, 0.52, 0.9, 0.95, 1.0]
    path = write_video(tmp_path / "vfr.mp4", numbered, len(times), times=times)
    out = list(iter_frames(path, 640))
    assert 25 <= len(out) <= 28  # the last frame lasts about one average frame period
    levels = [int(f.mean()) // 8 for _, f in out]
    # Between 0.02 s and 0.5 s the source shows frame 2 until the midpoint 0.26 s.
    assert levels[3] == 2 and levels[6] == 2 and levels[7] == 3


def test_scaled_and_even(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.mp4", numbered, 3)
    frames = [f for _, f in iter_frames(path, 33)]
    assert frames[0].shape == (24, 32, 3)
    assert probe(path).has_audio


def test_display_rotation() -> None:
    assert display_rotation(0) == 0
    assert display_rotation(-90) == 90  # the usual phone portrait recording
    assert display_rotation(90) == 270
    assert display_rotation(180) == 180


# --- tracking ---------------------------------------------------------------------------------


def obs(x: float) -> FaceObservation:
    return FaceObservation((x, 100.0), 80.0, 0.1, np.zeros((37, 2), np.float32), 1, False)


def test_short_gaps_interpolated_long_gaps_left_out() -> None:
    seq: list[FaceObservation | None] = [obs(float(i)) for i in range(40)]
    for i in range(10, 14):
        seq[i] = None
    for i in range(20, 20 + MAX_GAP_FRAMES + 5):
        seq[i] = None
    track = smooth_track(seq)
    assert track.valid[10:14].all() and track.interpolated == 4
    assert track.long_gaps == ((20, 20 + MAX_GAP_FRAMES + 5),)
    assert not track.valid[20 : 20 + MAX_GAP_FRAMES + 5].any()
    assert abs(track.centres[12, 0] - 12.0) < 0.5  # linear across the gap
    boxes = track.boxes(2.0, 400, 400)
    assert (boxes[track.valid, 2] - boxes[track.valid, 0] == 160).all()


def test_landmark_mask_is_soft_and_inside() -> None:
    points = np.array([[0.3, 0.3], [0.7, 0.3], [0.7, 0.8], [0.3, 0.8]], np.float32)
    mask = landmark_mask([points], 160)
    assert mask.shape == (160, 160) and mask[80, 80] > 0.99
    assert mask[:12].max() < 0.01 and mask[:, -12:].max() < 0.01


# --- bad input ---------------------------------------------------------------------------------


def teacher_frame(i: int) -> np.ndarray:
    from models.synth.face import load_photo

    return load_photo()


def leftovers(home: Path) -> list[Path]:
    root = home / "avatars"
    return sorted(root.iterdir()) if root.is_dir() else []


def run_create(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["avatar", "create", *args, *CONSENT])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_inputs(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    assert "not a video" in run_create(capsys, "a", "--video", str(text))
    silent = write_video(tmp_path / "silent.mp4", numbered, 10, audio=False)
    assert "no audio track" in run_create(capsys, "a", "--video", str(silent))
    photo = tmp_path / "me.jpg"
    cv2.imwrite(str(photo), np.full((64, 64, 3), 128, np.uint8))
    assert "still image, not a video: make a photo avatar with --image" in run_create(
        capsys, "a", "--video", str(photo)
    )
    short = write_video(tmp_path / "short.mp4", teacher_frame, 30)
    assert "at least 5 s" in run_create(capsys, "a", "--video", str(short))
    blank = write_video(tmp_path / "blank.mp4", numbered, 180)
    assert "no face" in run_create(capsys, "a", "--video", str(blank))
    assert "invalid avatar name" in run_create(capsys, "../evil", "--video", str(blank))
    assert "built-in" in run_create(capsys, "default", "--video", str(blank))
    assert leftovers(home) == []


def test_equal_faces_refused(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def two(i: int) -> np.ndarray:
        face = cv2.resize(teacher_frame(i), (256, 256))
        return np.hstack([face, face])

    path = write_video(tmp_path / "two.mp4", two, 160)
    assert "several faces" in run_create(capsys, "pair", "--video", str(path))
    assert leftovers(home) == []


def test_photo_avatar(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from models.synth.face import load_photo

    photo = tmp_path / "me.jpg"
    big = cv2.copyMakeBorder(load_photo(), 100, 300, 200, 50, cv2.BORDER_REPLICATE)
    cv2.imwrite(str(photo), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    made = main(
        ["avatar", "create", "me", "--image", str(photo), "--steps", "0", "--no-check", *CONSENT]
    )
    assert made == 0
    summary = capsys.readouterr().err
    assert "face size" in summary and "frame: 512x512 px (the photo's own framing" in summary
    avatar = load_avatar("me", home)
    assert avatar.manifest.kind == "photo" and avatar.manifest.frame_size == (512, 512)
    assert avatar.manifest.blink_frames == (1, 2, 3)
    # The blink frames differ from the neutral one at the eyes only, never in the mouth box.
    y0 = int(avatar.boxes[0, 1])
    assert np.array_equal(avatar.frames[3][y0:], avatar.frames[0][y0:])
    assert not np.array_equal(avatar.frames[3], avatar.frames[0])
    err = run_create(capsys, "me", "--image", str(photo))
    assert "already exists" in err
    record = read_ownership(home / "avatars" / "me", home)  # whose face: tests/test_ownership.py
    assert record is not None and record.owner == "local" and record.source_file == "me.jpg"


def test_progress_lines_without_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from models.progress_lines import LINE_EVERY_S, ProgressLines

    now = [0.0]
    lines = ProgressLines(clock=lambda: now[0])
    for step in range(0, 101):
        now[0] = step * LINE_EVERY_S / 4  # a line every fourth step
        lines.update("adapting the model", step, 100)
    lines.update("self-check", 0, 6)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "adapting the model: started"
    assert out[1] == "adapting the model: 4/100 (4 %, about 240 s left)"
    assert out[-2] == "adapting the model: 100/100, done in 250 s"
    assert out[-1] == "self-check: started"
    assert len(out) == 1 + 25 + 1  # not a line per step: one each 10 s and at the end
    frames = ProgressLines(clock=lambda: now[0], unit="frames")  # a total not known
    frames.update("render", 1, 0)
    now[0] += LINE_EVERY_S
    frames.update("render", 250, 0)
    assert capsys.readouterr().out.splitlines() == ["render: started", "render: 250 frames"]


# --- end to end --------------------------------------------------------------------------------


@pytest.mark.slow
def test_create_then_render(
    home: Path, talking_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = probe(talking_video)
    assert (info.width, info.height, round(info.source_fps)) == (WIDTH, HEIGHT, RATE)
    args = ["twin", "--video", str(talking_video), "--steps", "0", "--no-check", *CONSENT]
    made = main(["avatar", "create", *args])
    assert made == 0
    out, summary = capsys.readouterr()
    assert "frames used" in summary and "face size" in summary
    assert f"frame: {WIDTH}x{HEIGHT} px (the video's" in summary
    # stderr is no terminal here: progress comes as lines on stdout, each stage's start and end.
    assert "tracking: started" in out and "cutting: started" in out and "done in" in out
    avatar = read_avatar(home / "avatars" / "twin")
    assert avatar.manifest.kind == "video" and avatar.manifest.frame_size == (WIDTH, HEIGHT)
    assert 50 <= len(avatar.frames) <= 100
    # The idle loop comes from the silent lead-in (the first 3 s).
    track = np.load(home / "avatars" / "twin" / "person" / "track.npz")
    assert track["valid"].mean() > 0.95 and track["silent"][: len(avatar.frames)].mean() > 0.9
    # The boxes follow the moving head: the mouth sits inside them in every loop frame.
    sides = avatar.boxes[:, 2] - avatar.boxes[:, 0]
    assert 100 < np.median(sides) < 160
    out = tmp_path / "twin.mp4"
    assert main(["render", "--avatar", "twin", "--text", "Hello there.", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("render: started\n")  # no terminal: lines
    with av.open(str(out)) as container:
        frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    assert not [p for p in (home / "avatars").iterdir() if p.name.startswith(".")]
