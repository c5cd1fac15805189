"""Writing an avatar package all or nothing: its files go to a hidden staging folder, which
then takes the package's place by rename.

A full disk or a read-only home fails the writing with an ``OSError`` before the rename, so
the package that was there (if any) is untouched and no half-written one is left behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np


def replace_package(staged: Path, target: Path) -> None:
    """Put the package built at ``staged`` (a sibling of ``target`` on its file system) at
    ``target`` by rename, so a reader sees the old package or the new one, never half (nor
    none: the old one is put back if the new one cannot be moved in)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    try:
        os.replace(staged, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_image(path: Path, image: np.ndarray) -> None:
    """A PNG, or a quality-95 JPEG for ``.jpg``; an ``OSError`` when it cannot be written
    (OpenCV only says that it failed, not why)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), image, params):
        raise OSError(f"cannot write {path} (a full disk, or no permission?)")
