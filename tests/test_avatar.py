"""The avatar package format, on the stand-in package (tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

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
)
from tests.conftest import CROP, SIZE, make_stand_in_avatar, stand_in_assets


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
