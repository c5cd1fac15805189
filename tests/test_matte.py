"""The alpha matte: stored in the package, read lazily, computed for packages without one, and
moved by the compositor with the idle motion so that alpha follows the head."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.avatar import default_avatar_dir, read_avatar
from models.compositor import Compositor, pack, unmix_edges, unpack
from models.matte import MATTE_DIR, Matte, MatteError, read_matte, write_matte
from tests.conftest import SIZE, make_stand_in_avatar

needs_default = pytest.mark.skipif(
    not (default_avatar_dir() / "manifest.json").is_file(),
    reason="the default avatar is not built: python -m models.recipe",
)
needs_mediapipe = pytest.mark.skipif(
    importlib.util.find_spec("mediapipe") is None, reason="mediapipe is not installed"
)


def disc_matte(count: int = 4, radius: int = 150) -> np.ndarray:
    """A person-like alpha: an opaque disc with a soft edge, transparent corners."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    r = np.hypot(xx - SIZE / 2, yy - SIZE / 2)
    alpha = np.clip((radius - r) / 4.0 + 0.5, 0.0, 1.0)
    return np.repeat((alpha * 255).astype(np.uint8)[None], count, axis=0)


def test_old_package_reads_without_a_matte(tmp_path: Path) -> None:
    avatar = read_avatar(make_stand_in_avatar(tmp_path / "standin"))
    assert avatar.matte is not None and not avatar.matte.loaded
    assert not (tmp_path / "standin" / MATTE_DIR).exists()
    assert read_matte(tmp_path / "standin", avatar.frames.shape) is None


def test_matte_round_trip(tmp_path: Path) -> None:
    root = make_stand_in_avatar(tmp_path / "standin")
    matte = disc_matte()
    write_matte(root, matte)
    avatar = read_avatar(root)
    assert avatar.matte is not None
    got = avatar.matte.get()
    np.testing.assert_array_equal(got, matte)
    assert not got.flags.writeable
    assert avatar.matte.get() is got  # read once, then kept


def test_corrupt_matte_says_so(tmp_path: Path) -> None:
    root = make_stand_in_avatar(tmp_path / "standin")
    write_matte(root, disc_matte())
    (root / MATTE_DIR / "000002.png").write_bytes(b"not a png")
    avatar = read_avatar(root)  # loading the package never reads the matte
    assert avatar.matte is not None
    with pytest.raises(MatteError, match=r"000002\.png is corrupt.*python -m models\.matte"):
        avatar.matte.get()
    (root / MATTE_DIR / "000002.png").unlink()
    with pytest.raises(MatteError, match="3 mattes for 4 base frames"):
        Matte(root, avatar.frames).get()


@needs_default
def test_default_ships_a_matte_of_the_person() -> None:
    avatar = read_avatar(default_avatar_dir())
    assert avatar.matte is not None
    matte = avatar.matte.get()
    assert matte.shape == avatar.frames.shape[:3]
    for alpha in matte:
        assert alpha[:8, :8].max() == 0 and alpha[:8, -8:].max() == 0  # background corners
        assert alpha[200:300, 200:300].min() == 255  # the face
        assert alpha[-10:, 150:350].min() > 200  # the shoulders reach the bottom edge


@needs_default
@needs_mediapipe
def test_a_package_without_a_matte_gets_one_on_first_use(tmp_path: Path) -> None:
    root = tmp_path / "default"
    shutil.copytree(default_avatar_dir(), root, ignore=shutil.ignore_patterns(MATTE_DIR, "*.pt"))
    avatar = read_avatar(root)
    assert avatar.matte is not None and not (root / MATTE_DIR).exists()
    computed = avatar.matte.get()
    assert (root / MATTE_DIR).is_dir()  # cached in the package: computed once
    np.testing.assert_array_equal(read_avatar(root).matte.get(), computed)  # type: ignore[union-attr]
    shipped = read_matte(default_avatar_dir(), avatar.frames.shape)
    assert shipped is not None
    both = ((computed > 127) & (shipped > 127)).sum()
    either = ((computed > 127) | (shipped > 127)).sum()
    assert both / either > 0.99


@needs_default
@needs_mediapipe
def test_a_matte_is_computed_after_the_onnx_backend_ran_on_this_thread() -> None:
    """The ONNX backend sets denormals-as-zero on the threads that use it; MediaPipe's
    segmentation must still open (it failed to in the full suite, after backend tests)."""
    from models.matte import compute_matte
    from streamer.engine.onnx import OnnxBackend

    avatar = read_avatar(default_avatar_dir())
    backend = OnnxBackend(avatar.model_path, threads=1)
    backend.infer(
        *(
            np.zeros((1, *backend.input_shapes[n]), np.float32)
            for n in ("reference", "masked", "mel")
        )
    )
    alpha = compute_matte(np.asarray(avatar.frames[:1]))
    assert alpha.shape == (1, *avatar.frames.shape[1:3])
    assert alpha[0, 0, 0] < 30 and alpha[0, alpha.shape[1] // 2, alpha.shape[2] // 2] > 200


def centroid(alpha: np.ndarray) -> np.ndarray:
    weights = alpha.astype(np.float64)
    yy, xx = np.mgrid[0 : alpha.shape[0], 0 : alpha.shape[1]]
    return np.array([(xx * weights).sum(), (yy * weights).sum()]) / weights.sum()


def test_alpha_follows_the_idle_warp(tmp_path: Path) -> None:
    root = make_stand_in_avatar(tmp_path / "standin")
    # Off centre, so that the idle rotation and scale move its centroid too.
    matte = np.roll(disc_matte(radius=90), (60, -40), axis=(1, 2))
    write_matte(root, matte)
    avatar = read_avatar(root)
    compositor = Compositor(avatar, transparent=True)
    still = unpack(compositor.still(0))
    assert still.shape == (SIZE, SIZE, 4)
    start = centroid(still[..., 3])
    moved = 0.0
    for k in range(0, 250, 10):
        frame = compositor.compose(k, None)
        assert frame.shape == (SIZE, 2 * SIZE, 3)
        pose = compositor.pose(k)
        matrix = cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), pose.rotation_deg, pose.scale)
        matrix[:, 2] += np.array([pose.dx, pose.dy])
        expected = matrix @ np.array([*start, 1.0])
        got = centroid(unpack(frame)[..., 3])
        assert np.abs(got - expected).max() < 0.1, (k, got, expected)
        moved = max(moved, float(np.abs(expected - start).max()))
    assert moved > 1.0  # the head did move over those ten seconds


def test_edge_colours_come_from_the_person() -> None:
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[:, :32] = (200, 120, 90)  # the person
    rgb[:, 32:] = (240, 240, 240)  # a light backdrop
    alpha = np.zeros((64, 64), np.uint8)
    alpha[:, :30] = 255
    alpha[:, 30:34] = (192, 128, 64, 0)  # the soft edge, over the backdrop's pixels too
    out = unmix_edges(rgb, alpha)
    np.testing.assert_array_equal(out[:, :28], rgb[:, :28])  # opaque: untouched
    assert np.abs(out[:, 32:34].astype(int) - (200, 120, 90)).max() < 30  # no light halo
    packed = pack(out, alpha)
    assert packed.shape == (64, 128, 3)
    np.testing.assert_array_equal(unpack(packed)[..., 3], alpha)


def test_opencvs_guided_filter_matches_ours() -> None:
    """Mattes use OpenCV's C++ guided filter where the contrib build has it; it must give what
    the numpy one (the fallback) gives."""
    from models.matte import guided_filter

    fast = getattr(getattr(cv2, "ximgproc", None), "guidedFilter", None)
    if fast is None:
        pytest.skip("this OpenCV build has no ximgproc: mattes use the numpy filter")
    rng = np.random.default_rng(1)
    guide = rng.random((96, 128, 3), dtype=np.float32)
    src = cv2.GaussianBlur((rng.random((96, 128)) > 0.5).astype(np.float32), (0, 0), 4)
    ours, theirs = guided_filter(guide, src, 3, 1e-3), fast(guide, src, 3, 1e-3)
    assert np.abs(ours - theirs).mean() < 0.01 and np.abs(ours - theirs).max() < 0.1
