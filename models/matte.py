"""The person's alpha matte: which pixels of each base frame are the person, for a transparent
avatar (a session with ``"background": "transparent"``, ``avatarcast render --transparent``).

Stored in the avatar package as ``matte/000000.png`` ... (8-bit grey, one per base frame, 255 =
the person). ``avatar create`` writes it; a package made before mattes existed gets one on its
first transparent use (computed, then written into the package so it is computed once). The
shipped default avatar carries its own, rebuilt by::

    python -m models.matte models/default

Segmentation is MediaPipe's selfie segmentation, whose two models ship inside the mediapipe
wheel (nothing is downloaded). Its output is a soft probability at 256 px that is blotchy where
the background resembles the clothes and blurred along hair. So the matte is the mean of both
models (general and landscape) on the frame and its mirror image, which removes most blotches,
then made decisive by a smoothstep and re-aligned to the picture's own edges by a guided filter
(He et al. 2010), and finally feathered by half a pixel so the edge is never a hard step.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import cv2
import numpy as np

MATTE_DIR = "matte"
log = logging.getLogger(__name__)


class MatteError(ValueError):
    """A matte that cannot be read (corrupt, wrong size) or computed (no mediapipe)."""


def segment(frames: np.ndarray) -> np.ndarray:
    """Raw person probability (N, H, W) float32 in [0, 1] of RGB frames (N, H, W, 3)."""
    try:
        from models.mediapipe_compat import import_mediapipe, started

        mp = import_mediapipe()
    except ImportError as exc:
        raise MatteError(
            f"computing an alpha matte needs mediapipe ({exc}): "
            "pip install 'avatarcast[eval]', or run `python -m models.matte PACKAGE` where it is"
        ) from None
    out = np.zeros(frames.shape[:3], np.float32)
    segmentation = mp.solutions.selfie_segmentation
    for selection in (0, 1):  # general (256x256) and landscape (144x256)
        with (
            default_float_environment(),
            started(partial(segmentation.SelfieSegmentation, model_selection=selection)) as s,
        ):
            for i, rgb in enumerate(frames):
                out[i] += s.process(np.ascontiguousarray(rgb)).segmentation_mask
                mirrored = np.ascontiguousarray(rgb[:, ::-1])
                out[i] += s.process(mirrored).segmentation_mask[:, ::-1]
    return out / 4.0


@contextlib.contextmanager
def default_float_environment() -> Iterator[None]:
    """The C default floating-point environment on this thread while the block runs.

    The ONNX backend sets denormals-as-zero on the threads that create and run its sessions
    (``session.set_denormal_as_zero``, for speed), and threads inherit it from their creator.
    Under it MediaPipe's selfie segmentation graph fails to open (TFLite's AllocateTensors
    fails), so the graph and its threads are made in the default environment, restored after.
    Where the C library offers no ``fesetenv`` (not glibc), nothing changes.
    """
    name = ctypes.util.find_library("m")
    libm = ctypes.CDLL(name) if name else None
    if libm is None or not hasattr(libm, "fegetenv") or sys.platform != "linux":
        yield
        return
    saved = ctypes.create_string_buffer(256)  # larger than any fenv_t
    if libm.fegetenv(saved) != 0:
        yield
        return
    libm.fesetenv(ctypes.c_void_p(-1))  # glibc's FE_DFL_ENV
    try:
        yield
    finally:
        libm.fesetenv(saved)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Edge-preserving smoothing of ``src`` (H, W) that follows the colour edges of ``guide``
    (H, W, 3), both float32 in [0, 1] (He et al.'s colour guided filter): a soft mask snaps to
    the hair and shoulder outlines, even where person and background differ only in hue."""
    size = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, cv2.CV_32F, size, borderType=cv2.BORDER_REFLECT)

    mean_i = np.stack([box(guide[..., c]) for c in range(3)], -1)
    mean_p = box(src)
    cov_ip = np.stack([box(guide[..., c] * src) for c in range(3)], -1) - mean_i * mean_p[..., None]
    sigma = np.empty((*src.shape, 3, 3), np.float32)
    for r in range(3):
        for c in range(r, 3):
            v = box(guide[..., r] * guide[..., c]) - mean_i[..., r] * mean_i[..., c]
            sigma[..., r, c] = sigma[..., c, r] = v
    sigma += eps * np.eye(3, dtype=np.float32)
    a = np.linalg.solve(sigma, cov_ip[..., None])[..., 0]
    b = mean_p - (a * mean_i).sum(-1)
    mean_a = np.stack([box(a[..., c]) for c in range(3)], -1)
    return (mean_a * guide).sum(-1) + box(b)


def refine(rgb: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """The stored matte (H, W) uint8 from a frame and its raw person probability."""
    p = np.clip((probability - 0.3) / 0.4, 0.0, 1.0)
    p = p * p * (3.0 - 2.0 * p)  # smoothstep: decisive, yet soft along real edges
    guide = rgb.astype(np.float32) / 255.0
    radius = max(2, round(min(rgb.shape[:2]) / 96))
    # OpenCV's contrib build (mediapipe's dependency, so present wherever mattes are made)
    # has the same filter in C++: 34 ms a 512x512 frame against 204 ms here, within 0.03
    # (mean 0.002) of this one's result. A video twin's hundreds of base frames take
    # seconds instead of a minute.
    fast = getattr(getattr(cv2, "ximgproc", None), "guidedFilter", None)
    smooth = fast if fast is not None else guided_filter
    alpha = np.clip(smooth(guide, p.astype(np.float32), radius, 1e-3), 0.0, 1.0)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.6)
    return np.clip(np.rint(alpha * 255.0), 0, 255).astype(np.uint8)


def compute_matte(frames: np.ndarray) -> np.ndarray:
    """The matte (N, H, W) uint8 of RGB base frames (N, H, W, 3); needs mediapipe."""
    probability = segment(frames)
    return np.stack([refine(rgb, p) for rgb, p in zip(frames, probability, strict=True)])


def read_matte(root: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The package's matte (N, H, W) uint8 for base frames of ``shape`` (N, H, W, ...), or
    None when the package has none (it predates mattes)."""
    folder = Path(root) / MATTE_DIR
    if not folder.is_dir():
        return None
    count, height, width = shape[:3]
    paths = sorted(folder.glob("*.png"))
    if len(paths) != count:
        raise MatteError(
            f"{folder} has {len(paths)} mattes for {count} base frames: "
            f"rebuild it with `python -m models.matte {root}`"
        )
    matte = np.empty((count, height, width), np.uint8)
    for i, path in enumerate(paths):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None or image.shape != (height, width):
            raise MatteError(
                f"matte {path} is corrupt or not {width}x{height}: "
                f"rebuild it with `python -m models.matte {root}`"
            )
        matte[i] = image
    return matte


def write_matte(root: Path, matte: np.ndarray) -> Path:
    """Write ``matte/`` into the package at ``root``, replacing any there; built in a
    temporary sibling and renamed, so a reader never sees half a matte."""
    folder = Path(root) / MATTE_DIR
    staging = Path(tempfile.mkdtemp(prefix=".matte.", dir=root))
    try:
        for i, alpha in enumerate(matte):
            if not cv2.imwrite(str(staging / f"{i:06d}.png"), np.asarray(alpha, np.uint8)):
                raise MatteError(f"cannot write {staging / f'{i:06d}.png'}")
        os.chmod(staging, 0o755)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


class Matte:
    """One package's matte, read (or computed and stored) on first use and then kept.

    Sessions share one :class:`~models.avatar.Avatar`, so they share this cache; ``get`` blocks
    (file reads, perhaps a segmentation), so servers call it from an executor first.
    """

    def __init__(self, root: Path, frames: np.ndarray) -> None:
        self._root = Path(root)
        self._frames = frames
        self._matte: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._matte is not None

    def get(self) -> np.ndarray:
        """(N, H, W) uint8, one per base frame, read-only."""
        with self._lock:
            if self._matte is None:
                matte = read_matte(self._root, self._frames.shape)
                if matte is None:
                    matte = compute_matte(self._frames)
                    self._store(matte)
                matte.setflags(write=False)
                self._matte = matte
            return self._matte

    def _store(self, matte: np.ndarray) -> None:
        try:
            write_matte(self._root, matte)
        except OSError as exc:  # a read-only install: keep it in memory, compute it next run
            log.warning("cannot store the matte in %s (%s): kept in memory", self._root, exc)


def main(argv: list[str] | None = None) -> int:
    """``python -m models.matte PACKAGE...``: (re)compute and store packages' mattes."""
    parser = argparse.ArgumentParser(prog="python -m models.matte", description=main.__doc__)
    parser.add_argument("packages", nargs="+", type=Path, help="avatar package directories")
    args = parser.parse_args(argv)
    from models.avatar import AvatarError, read_avatar

    for root in args.packages:
        try:
            avatar = read_avatar(root)
            folder = write_matte(root, compute_matte(np.asarray(avatar.frames)))
        except (AvatarError, MatteError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{folder}: {len(avatar.frames)} mattes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
