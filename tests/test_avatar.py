"""The avatar package format, with a stand-in package that the render and CLI tests share.

The stand-in generator is a tiny torch module exported to ONNX with the real input and output
names and shapes; its mouth brightness follows the audio energy, so tests can see the audio
drive the picture.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from models.audio import WindowConfig
from models.avatar import (
    DEFAULT_NAME,
    AvatarError,
    avatar_dir,
    check_name,
    delete_avatar,
    list_avatars,
    load_avatar,
    read_avatar,
    write_avatar,
)

SIZE = 512
CROP = 160
BOX = (176, 300, 336, 460)


def stand_in_generator(path: Path) -> Path:
    """Export a tiny generator: brightness of the masked region rises with the mel energy."""
    torch = pytest.importorskip("torch")
    nn: Any = torch.nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(6, 3, 3, padding=1)
            self.gain = nn.Linear(1, 3)

        def forward(self, reference: Any, masked: Any, mel: Any) -> Any:
            energy = (mel.mean(dim=(1, 2)).unsqueeze(1) + 5.0) / 5.0  # silence (-5) -> 0
            bias = self.gain(energy).unsqueeze(-1).unsqueeze(-1)
            return torch.sigmoid(self.conv(torch.cat([reference, masked], dim=1)) + bias)

    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():
        model.conv.weight.mul_(0.1)
        model.gain.weight.fill_(2.0)
        model.gain.bias.fill_(-1.0)
    args = (torch.rand(1, 3, CROP, CROP), torch.rand(1, 3, CROP, CROP), torch.rand(1, 24, 80))
    with warnings.catch_warnings():  # the legacy exporter needs no onnxscript; it warns
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=["reference", "masked", "mel"],
            output_names=["mouth"],
            dynamic_axes={n: {0: "batch"} for n in ("reference", "masked", "mel", "mouth")},
            opset_version=17,
            dynamo=False,
        )
    return path


def stand_in_assets() -> dict[str, np.ndarray]:
    """A smooth synthetic face-like picture, blink frames with darker eyes, a feather mask."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    base = np.stack(
        [120 + 80 * np.sin(xx / 90.0), 100 + 60 * np.cos(yy / 70.0), 90 + 0.2 * xx], axis=-1
    )
    frame0 = np.clip(base, 0, 255).astype(np.uint8)
    frames = [frame0]
    for closed in (0.3, 0.6, 1.0):
        blink = frame0.copy()
        cv2.ellipse(blink, (200, 200), (30, 12), 0, 0, 360, (40, 30, 30), -1)
        frames.append(cv2.addWeighted(frame0, 1 - closed, blink, closed, 0))
    r = np.hypot(*np.mgrid[-1 : 1 : CROP * 1j, -1 : 1 : CROP * 1j])
    mask = np.clip((0.8 - r) / 0.3, 0.0, 1.0).astype(np.float32)
    x0, y0, x1, y1 = BOX
    return {
        "frames": np.stack(frames),
        "boxes": np.array([BOX] * 4),
        "mask": mask,
        "reference": frame0[y0:y1, x0:x1].copy(),
    }


def make_stand_in_avatar(directory: Path, name: str = "standin") -> Path:
    directory.parent.mkdir(parents=True, exist_ok=True)
    model = stand_in_generator(directory.parent / f".{name}-generator.onnx")
    assets = stand_in_assets()
    return write_avatar(
        directory,
        name=name,
        kind="photo",
        frames=assets["frames"],
        boxes=assets["boxes"],
        mask=assets["mask"],
        reference=assets["reference"],
        model=model,
        blink_frames=(1, 2, 3),
    )


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AVATARCAST_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_write_and_read_round_trip(tmp_path: Path) -> None:
    path = make_stand_in_avatar(tmp_path / "pkg")
    avatar = read_avatar(path)
    assets = stand_in_assets()
    assert avatar.name == "standin"
    assert avatar.manifest.kind == "photo"
    assert avatar.manifest.frame_size == (SIZE, SIZE)
    assert avatar.window == WindowConfig(17, 6)
    np.testing.assert_array_equal(avatar.frames, assets["frames"])  # PNG is lossless
    np.testing.assert_array_equal(avatar.boxes, assets["boxes"])
    assert np.abs(avatar.mask - assets["mask"]).max() <= 0.5 / 255 + 1e-6
    assert avatar.model_path.is_file() and avatar.checkpoint_path is None
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["idle"] == {"blink_frames": [1, 2, 3]}
    assert manifest["window"] == {"past": 17, "future": 6} and manifest["crop_size"] == CROP
    with pytest.raises(ValueError):
        avatar.frames[0, 0, 0, 0] = 1  # shared between sessions: read-only


def test_write_replaces_atomically_and_leaves_no_temp(tmp_path: Path) -> None:
    make_stand_in_avatar(tmp_path / "pkg")
    make_stand_in_avatar(tmp_path / "pkg")
    names = {p.name for p in tmp_path.iterdir()}
    assert "pkg" in names and not [n for n in names if n.startswith(".pkg")]


@pytest.mark.parametrize("name", ["", "A", "-x", "a b", "../x", "x" * 65, "default/"])
def test_bad_names_are_rejected(name: str) -> None:
    with pytest.raises(AvatarError):
        check_name(name)


def test_list_load_delete(home: Path, tmp_path: Path) -> None:
    make_stand_in_avatar(avatar_dir("alice", home), "alice")
    assert "alice" in list_avatars(home)
    assert load_avatar("alice", home).name == "alice"
    delete_avatar("alice", home)
    assert "alice" not in list_avatars(home)
    with pytest.raises(AvatarError, match="no avatar named"):
        load_avatar("alice", home)
    with pytest.raises(AvatarError, match="cannot be deleted"):
        delete_avatar(DEFAULT_NAME, home)


@pytest.mark.parametrize("part", ["manifest.json", "mask.png", "boxes.npy", "generator.onnx"])
def test_missing_or_corrupt_parts_give_clear_errors(tmp_path: Path, part: str) -> None:
    path = make_stand_in_avatar(tmp_path / "pkg")
    (path / part).unlink()
    with pytest.raises(AvatarError):
        read_avatar(path)
    (path / part).write_bytes(b"garbage")
    if part != "generator.onnx":  # the backend, not the package reader, parses the model
        with pytest.raises(AvatarError):
            read_avatar(path)
