"""The avatar package: one person's base frames, mouth boxes, mask and generator weights.

A package is a directory::

    manifest.json      name, format, kind, fps, frame_size, crop_size, window, model, created, idle
    frames/000000.png  base frames (RGB; .png or .jpg); a photo avatar has the neutral frame 0 and
                       blink frames, a video avatar its idle loop (played forwards and backwards)
    boxes.npy          (N, 4) int crop boxes (x0, y0, x1, y1) per base frame, square
    mask.png           feather mask at crop size, 8-bit (255 = replaced by the generator)
    reference.png      a reference mouth crop for the generator (crop size)
    generator.onnx     the runtime model
    checkpoint.pt      optional: the torch checkpoint it was exported from
    person/            optional (video avatars): the person's own material for ``avatar train``
    teacher/           optional: photo.png (the person's own still, in frame coordinates) and
                       landmarks.npy, from which the teacher animates this face
    matte/000000.png   optional: the person's alpha per base frame (see models.matte)

``default`` ships inside this package (``models/default``); all others live in
``HOME/avatars/NAME``; ``HOME`` (``Settings.home``, from ``$AVATARCAST_HOME``, default
``~/.avatarcast``) is passed in, never looked up here. Loading needs no torch nor mediapipe.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from models.audio import FPS, WindowConfig
from models.matte import Matte, write_matte
from models.package_io import replace_package as replace_package
from models.package_io import write_image as _write_png

FORMAT = 1
DEFAULT_NAME = "default"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
MODEL_FILE = "generator.onnx"
CHECKPOINT_FILE = "checkpoint.pt"
# The person's own still (aligned as the frames are) and its Face Mesh landmarks: what the
# teacher animates for adaptation and eval.
TEACHER_PHOTO = "teacher/photo.png"
TEACHER_LANDMARKS = "teacher/landmarks.npy"
Kind = Literal["photo", "video"]
# Where the feather mask exceeds this, the generator draws the pixel: its input is blanked
# there (in training and at run time alike) and the image figures are measured there.
MASK_CUT = 0.05
DEFAULT_WINDOW = WindowConfig()


class AvatarError(ValueError):
    """A missing, malformed or misnamed avatar: a user error with a message that says why."""


@dataclass(frozen=True)
class Manifest:
    name: str
    kind: Kind
    frame_size: tuple[int, int]  # (width, height)
    crop_size: int = 160
    window: WindowConfig = DEFAULT_WINDOW
    fps: int = FPS
    model: str = MODEL_FILE
    created: str = ""
    blink_frames: tuple[int, ...] = ()
    format: int = FORMAT

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "name": self.name,
            "format": self.format,
            "kind": self.kind,
            "fps": self.fps,
            "frame_size": list(self.frame_size),
            "crop_size": self.crop_size,
            "window": {"past": self.window.past, "future": self.window.future},
            "model": self.model,
            "created": self.created,
        }
        if self.kind == "photo":
            data["idle"] = {"blink_frames": list(self.blink_frames)}
        return data

    @classmethod
    def from_json(cls, data: object) -> Manifest:
        if not isinstance(data, dict):
            raise AvatarError("manifest.json is not a JSON object")
        try:
            if int(data["format"]) != FORMAT:
                raise AvatarError(
                    f"avatar format {data['format']} is not supported (this version reads {FORMAT})"
                )
            kind = str(data["kind"])
            if kind not in ("photo", "video"):
                raise AvatarError(f"avatar kind {kind!r} is neither 'photo' nor 'video'")
            width, height = (int(v) for v in data["frame_size"])
            window = data.get("window", {"past": 17, "future": 6})
            idle = data.get("idle", {}) or {}
            return cls(
                name=str(data["name"]),
                kind="photo" if kind == "photo" else "video",
                frame_size=(width, height),
                crop_size=int(data.get("crop_size", 160)),
                window=WindowConfig(past=int(window["past"]), future=int(window["future"])),
                fps=int(data.get("fps", FPS)),
                model=str(data.get("model", MODEL_FILE)),
                created=str(data.get("created", "")),
                blink_frames=tuple(int(i) for i in idle.get("blink_frames", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, AvatarError):
                raise
            raise AvatarError(f"manifest.json is malformed: {exc!r}") from None


@dataclass(frozen=True, eq=False)
class Avatar:
    """A loaded package; arrays are read-only so that sessions can share one instance."""

    path: Path
    manifest: Manifest
    frames: np.ndarray  # (N, H, W, 3) uint8 RGB
    boxes: np.ndarray  # (N, 4) int64 (x0, y0, x1, y1)
    mask: np.ndarray  # (crop, crop) float32 in [0, 1]
    reference: np.ndarray  # (crop, crop, 3) uint8 RGB
    matte: Matte | None = None  # the person's alpha, loaded on first use (transparent output)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model

    @property
    def checkpoint_path(self) -> Path | None:
        path = self.path / CHECKPOINT_FILE
        return path if path.is_file() else None

    @property
    def window(self) -> WindowConfig:
        return self.manifest.window

    @property
    def crop_size(self) -> int:
        return self.manifest.crop_size


def keep_mask(mask: np.ndarray) -> np.ndarray:
    """1.0 where the frame shows through the generator's input (the mask at most MASK_CUT)."""
    return (mask <= MASK_CUT).astype(np.float32)


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise AvatarError(
            f"invalid avatar name {name!r}: use 1-64 characters a-z, 0-9, '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def avatars_root(home: Path) -> Path:
    """Where the packages other than ``default`` live under the server's ``home``."""
    return home / "avatars"


def default_avatar_dir() -> Path:
    return Path(__file__).resolve().parent / "default"


def avatar_dir(name: str, home: Path) -> Path:
    """Where the package called ``name`` lives (whether or not it exists)."""
    check_name(name)
    return default_avatar_dir() if name == DEFAULT_NAME else avatars_root(home) / name


def _read_png(path: Path, flags: int) -> np.ndarray:
    if not path.is_file():
        raise AvatarError(f"avatar file {path} is missing")
    image = cv2.imread(str(path), flags)
    if image is None:
        raise AvatarError(f"avatar image {path} cannot be read (corrupt?)")
    return image


def read_avatar(path: Path | str) -> Avatar:
    """Load a package from a directory, checking that its parts agree with each other."""
    root = Path(path)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise AvatarError(f"{root} is not an avatar package (no manifest.json)")
    try:
        manifest = Manifest.from_json(json.loads(manifest_path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AvatarError(f"{manifest_path} cannot be read: {exc}") from None
    width, height = manifest.frame_size
    crop = manifest.crop_size
    frames = _read_frames(root, manifest)
    try:
        boxes = np.load(root / "boxes.npy", allow_pickle=False).astype(np.int64)
    except (OSError, ValueError) as exc:
        raise AvatarError(f"{root / 'boxes.npy'} cannot be read: {exc}") from None
    if boxes.shape != (len(frames), 4):
        raise AvatarError(f"boxes.npy has shape {boxes.shape}, expected ({len(frames)}, 4)")
    _check_boxes(boxes, width, height)
    mask = _read_png(root / "mask.png", cv2.IMREAD_GRAYSCALE)
    reference = cv2.cvtColor(_read_png(root / "reference.png", cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if mask.shape != (crop, crop) or reference.shape[:2] != (crop, crop):
        raise AvatarError(f"mask.png and reference.png must be {crop}x{crop}")
    for index in manifest.blink_frames:
        if not 0 < index < len(frames):
            raise AvatarError(f"blink frame {index} does not exist")
    if not (root / manifest.model).is_file():
        raise AvatarError(
            f"avatar {manifest.name!r} has no {manifest.model}: "
            f"run `avatarcast avatar train {manifest.name}` and `avatarcast export`"
        )
    mask_f = mask.astype(np.float32) / 255.0
    for array in (frames, boxes, reference, mask_f):
        array.setflags(write=False)
    return Avatar(root, manifest, frames, boxes, mask_f, reference, Matte(root, frames))


def _read_frames(root: Path, manifest: Manifest) -> np.ndarray:
    """The base frames (N, H, W, 3) RGB, each checked against the manifest's frame size."""
    width, height = manifest.frame_size
    frame_paths = sorted((root / "frames").glob("*.png")) or sorted((root / "frames").glob("*.jpg"))
    if not frame_paths:
        raise AvatarError(f"avatar {manifest.name!r} has no base frames in {root / 'frames'}")
    frames = np.empty((len(frame_paths), height, width, 3), np.uint8)
    for i, frame_path in enumerate(frame_paths):
        bgr = _read_png(frame_path, cv2.IMREAD_COLOR)
        if bgr.shape[:2] != (height, width):
            raise AvatarError(
                f"{frame_path} is {bgr.shape[1]}x{bgr.shape[0]}, not {width}x{height}"
            )
        frames[i] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return frames


def _check_boxes(boxes: np.ndarray, width: int, height: int) -> None:
    x0, y0, x1, y1 = boxes.T
    if (x0 < 0).any() or (y0 < 0).any() or (x1 > width).any() or (y1 > height).any():
        raise AvatarError("a mouth box lies outside the frame")
    if ((x1 - x0) < 8).any() or ((x1 - x0) != (y1 - y0)).any():
        raise AvatarError("mouth boxes must be squares of at least 8 px")


def load_avatar(name: str, home: Path) -> Avatar:
    """Load an avatar by name: ``default`` from the package, others from ``home``."""
    root = avatar_dir(name, home)
    if not root.is_dir():
        if name == DEFAULT_NAME:
            raise AvatarError(
                "the built-in default avatar is not built: run `python -m models.recipe`"
            )
        raise AvatarError(
            f"no avatar named {name!r} in {avatars_root(home)}: see `avatarcast avatar list`"
        )
    return read_avatar(root)


def list_avatars(home: Path) -> list[str]:
    """Names of the installed avatars, ``default`` first when it is built."""
    names = [DEFAULT_NAME] if (default_avatar_dir() / "manifest.json").is_file() else []
    root = avatars_root(home)
    if root.is_dir():
        names += sorted(
            p.name
            for p in root.iterdir()
            if NAME_PATTERN.fullmatch(p.name)
            and p.name != DEFAULT_NAME
            and (p / "manifest.json").is_file()
        )
    return names


def delete_avatar(name: str, home: Path) -> None:
    check_name(name)
    if name == DEFAULT_NAME:
        raise AvatarError("the built-in default avatar cannot be deleted")
    root = avatar_dir(name, home)
    if not (root / "manifest.json").is_file():
        raise AvatarError(f"no avatar named {name!r} in {avatars_root(home)}")
    shutil.rmtree(root)


def write_avatar(
    directory: Path | str,
    *,
    name: str,
    kind: Kind,
    frames: Sequence[np.ndarray] | np.ndarray,
    boxes: np.ndarray,
    mask: np.ndarray,
    reference: np.ndarray,
    model: Path | str | bytes,
    checkpoint: Path | str | None = None,
    window: WindowConfig = DEFAULT_WINDOW,
    blink_frames: Sequence[int] = (),
    fps: int = FPS,
    frame_format: Literal["png", "jpg"] = "png",
    extras: Mapping[str, Path | str] | None = None,
    matte: np.ndarray | None = None,
) -> Path:
    """Write a package atomically: build it in a temporary sibling, then rename into place.

    ``frames`` are RGB uint8; ``mask`` is float in [0, 1] or uint8; ``model`` is an ONNX file
    path or its bytes.  An existing package at ``directory`` is replaced.  ``frame_format``
    "jpg" stores base frames as quality-95 JPEG (a video avatar's loop: ~10x smaller than PNG).
    ``extras`` maps relative names in the package to files copied there (e.g. ``person/``).
    ``matte`` (N, H, W) uint8: the person's alpha per frame (:mod:`models.matte`).
    """
    check_name(name)
    target = Path(directory)
    frame_list = [np.asarray(f) for f in frames]
    if not frame_list:
        raise AvatarError("an avatar needs at least one base frame")
    height, width = frame_list[0].shape[:2]
    if any(f.shape != (height, width, 3) or f.dtype != np.uint8 for f in frame_list):
        raise AvatarError("base frames must all be uint8 RGB of one size")
    crop = int(reference.shape[0])
    box_array = np.asarray(boxes, np.int64).reshape(len(frame_list), 4)
    _check_boxes(box_array, width, height)
    mask_u8 = mask if mask.dtype == np.uint8 else np.clip(np.rint(mask * 255.0), 0, 255)
    if mask_u8.shape != (crop, crop) or reference.shape != (crop, crop, 3):
        raise AvatarError("mask and reference must be square crops of one size")
    manifest = Manifest(
        name=name,
        kind=kind,
        frame_size=(width, height),
        crop_size=crop,
        window=window,
        fps=fps,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        blink_frames=tuple(int(i) for i in blink_frames) if kind == "photo" else (),
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        (staging / "frames").mkdir()
        for i, frame in enumerate(frame_list):
            _write_png(
                staging / "frames" / f"{i:06d}.{frame_format}",
                cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
            )
        np.save(staging / "boxes.npy", box_array)
        _write_png(staging / "mask.png", mask_u8.astype(np.uint8))
        _write_png(staging / "reference.png", cv2.cvtColor(reference, cv2.COLOR_RGB2BGR))
        if isinstance(model, bytes):
            (staging / MODEL_FILE).write_bytes(model)
        else:
            shutil.copyfile(model, staging / MODEL_FILE)
        if checkpoint is not None:
            shutil.copyfile(checkpoint, staging / CHECKPOINT_FILE)
        if matte is not None:
            write_matte(staging, matte)
        for relative, source in (extras or {}).items():
            destination = staging / relative
            if not destination.resolve().is_relative_to(staging.resolve()):
                raise AvatarError(f"extra file {relative!r} lies outside the package")
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
        (staging / "manifest.json").write_text(
            json.dumps(manifest.to_json(), indent=2) + "\n", encoding="utf-8"
        )
        os.chmod(staging, 0o755)
        replace_package(staging, target)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):  # a full disk, a read-only home: the user's to fix
            why = f"{exc.strerror or exc} ({target.parent})"
            raise AvatarError(f"cannot write avatar {name!r}: {why}; nothing changed") from exc
        raise
    return target
