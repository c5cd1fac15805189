"""``avatarcast avatar create``: an avatar package from a person's video or photo.

The two paths are :mod:`models.video_avatar` (a video twin) and :mod:`models.photo_avatar`
(one photo). Both animate the person's own face with the teacher, adapt the generator to it,
end with a self-check on held-out voices and sentences (:mod:`models.selfcheck`), and build
the package in a hidden staging folder that is renamed into place only when all of that has
worked: a failure leaves nothing behind.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.adapt import AdaptConfig
from models.audio import FPS
from models.avatar import (
    DEFAULT_NAME,
    AvatarError,
    avatar_dir,
    check_name,
)
from models.ownership import LOCAL_OWNER, check_statement, seal
from models.progress_lines import ProgressLines
from models.selfcheck import Checker, SelfCheck

Progress = Callable[[str, int, int], None]  # (stage, done, total)


class CreateError(AvatarError):
    """The input cannot become an avatar; the message says why and what to do."""


@dataclass(frozen=True)
class CreateReport:
    name: str
    path: Path
    kind: str
    frames_total: int
    frames_used: int
    face_px: float  # median mouth-box side in source pixels
    loop: tuple[int, int]  # [start, end) frames of the idle loop
    interpolated: int
    left_out: tuple[tuple[int, int], ...]
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())
    check: dict[str, Any] | None = None  # the self-check's eval figures
    frame_size: tuple[int, int] | None = None  # (width, height) of the avatar's pictures

    @property
    def frames_per_s(self) -> float:
        return self.frames_total / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        lines = [f"created avatar {self.name!r} ({self.kind}) in {self.path}"]
        if self.frame_size is not None:
            framing = "the photo's own framing" if self.kind == "photo" else "the video's"
            width, height = self.frame_size
            lines.append(f"  frame: {width}x{height} px ({framing}; sessions stream this size)")
        if self.kind == "video":
            lines += [
                f"  frames used: {self.frames_used} of {self.frames_total} "
                f"({self.frames_used / FPS:.1f} s at {FPS} fps), "
                f"{self.interpolated} interpolated",
                f"  face size: {self.face_px:.0f} px (median mouth box side in the video)",
                f"  idle loop: {self.loop[0] / FPS:.2f}-{self.loop[1] / FPS:.2f} s",
                f"  took {self.seconds:.1f} s ({self.frames_per_s:.1f} frames/s)",
            ]
        else:
            lines.append(f"  face size: {self.face_px:.0f} px")
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def create_avatar(
    name: str,
    video: Path | str | None = None,
    image: Path | str | None = None,
    progress: Progress | None = None,
    *,
    home: Path,
    quiet: bool = False,
    adapt: AdaptConfig | None = None,
    check: Checker | None = None,
    consent: str | None = None,
    owner: str = LOCAL_OWNER,
) -> CreateReport:
    """Build avatar ``name`` from a video or a photo under the server's ``home``; prints a
    summary unless ``quiet``.

    ``check`` measures the built package before it is installed (the CLI passes
    :func:`streamer.measure.selfcheck.self_check`); without one nothing is measured.
    ``consent`` (the person's statement) and ``owner`` (an API key's id, or ``local``) are
    signed into the package (:mod:`models.ownership`); the CLI always gives a consent. A
    package made without one has no record, and only admin keys may use it."""
    check_name(name)
    statement = None if consent is None else check_statement(consent)
    if name == DEFAULT_NAME:
        raise CreateError("'default' is the built-in avatar: choose another name")
    target = avatar_dir(name, home)
    if target.exists():
        raise CreateError(
            f"avatar {name!r} already exists: delete it first (avatarcast avatar delete {name})"
        )
    if (video is None) == (image is None):
        raise CreateError("give exactly one of --video or --image")
    bar: _Bar | ProgressLines | None = None
    if progress is None and not quiet:
        bar = _Bar() if sys.stderr.isatty() else ProgressLines()
    report_to = progress or _call(bar)
    checker = None if check is None else _reported(check, report_to)
    try:
        if video is not None:
            from models.video_avatar import create_video_avatar

            report = create_video_avatar(name, Path(video), target, report_to, adapt, checker)
        else:
            report = _create_from_image(name, Path(image or ""), target, report_to, adapt, checker)
    finally:
        if bar is not None:
            bar.close()
    if statement is not None:
        _seal(target, owner, Path(video or image or ""), statement, home)
    if not quiet:
        print(report.summary(), file=sys.stderr)
    return report


def _seal(package: Path, owner: str, source: Path, statement: str, home: Path) -> None:
    """Sign the record in; a package whose record cannot be written is not left behind."""
    try:
        seal(package, owner=owner, source=source, statement=statement, home=home)
    except BaseException:
        shutil.rmtree(package, ignore_errors=True)
        raise


# --- photo ----------------------------------------------------------------------------------


def _create_from_image(
    name: str,
    path: Path,
    target: Path,
    progress: Progress,
    adapt: AdaptConfig | None,
    check: Checker | None,
) -> CreateReport:
    from models.photo_avatar import create_photo_avatar

    made = create_photo_avatar(name, path, target, progress, adapt, check)
    return CreateReport(
        name=name,
        path=target,
        kind="photo",
        frames_total=1,
        frames_used=1,
        face_px=made["face_px"],
        loop=(0, made["frames"]),
        interpolated=0,
        left_out=(),
        warnings=tuple(made["warnings"]),
        seconds=made["seconds"],
        notes=tuple(made["notes"]),
        check=made["check"],
        frame_size=made["frame_size"],
    )


# --- progress -------------------------------------------------------------------------------


class _Bar:
    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar: tqdm[None] | None = None
        self._stage = ""

    def update(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self.close()
            unit = "step" if stage.startswith("adapt") else "frame"
            self._bar = self._tqdm(total=total, desc=stage, unit=unit, file=sys.stderr)
            self._stage = stage
        if self._bar is not None:
            self._bar.total = max(total, done)
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _reported(check: Checker, progress: Progress) -> Checker:
    """``check`` as a stage of its own in the progress (its cases take some 15 s)."""

    def run(avatar: Any) -> SelfCheck:
        progress("self-check", 0, 1)
        verdict = check(avatar)
        progress("self-check", 1, 1)
        return verdict

    return run


def _call(bar: _Bar | ProgressLines | None) -> Progress:
    if bar is None:
        return lambda stage, done, total: None
    return bar.update


__all__ = ["CreateError", "CreateReport", "create_avatar"]
