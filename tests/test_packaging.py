"""`pip install` carries everything the server needs: the default avatar, the pages, the assets."""

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_carries_default_avatar_pages_and_assets(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("avatarcast-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "models/default/manifest.json",
        "models/default/ownership.json",  # whose face it is (docs/security.md)
        "models/default/generator.onnx",
        "models/default/mask.png",
        "models/default/reference.png",
        "models/default/frames/000000.png",
        "models/synth/assets/face_landmarks.npy",
        "streamer/web/index.html",
        "streamer/web/view.html",
        "streamer/web/obs.html",
        "streamer/web/whep.js",
    ):
        assert needed in names, needed


def test_every_package_is_listed_for_the_wheel() -> None:
    """setuptools' package list is explicit (the pages live outside the import tree), so a new
    subpackage left off it would be missing from an installed server while the editable
    install of the tests still found it."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("models", "streamer")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
