"""`pip install` carries everything the server needs: the default avatar, the pages, the assets."""

import subprocess
import sys
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
