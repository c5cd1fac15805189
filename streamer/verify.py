"""``avatarcast verify FILE``: does a video carry avatarcast's invisible mark, and what does
it say? Also prints the file's C2PA manifest, when it has one.

The video is decoded with PyAV and read in windows of ``WINDOW`` frames (2 s at 25 fps; a
shorter file is one window). Each window that decodes to a payload with a valid CRC and a
confidence above :data:`~streamer.pipeline.watermark.MIN_CONFIDENCE` counts as marked; the
answer is the payload most windows agree on. The avatar is named when its hash matches an
installed avatar; the session is its 16-bit hash, which the server logs when a session starts
("frames marked ... session=xxxx") and a render prints.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import av
import numpy as np

from streamer.pipeline.watermark import Payload, Reader, Reading

WINDOW = 50
EXIT_USAGE = 2


class UnreadableVideo(ValueError):
    """The file is not a video PyAV can decode."""


@dataclass(frozen=True)
class Verdict:
    """What the file says, over all its windows."""

    frames: int
    windows: list[Reading]
    payload: Payload | None  # the payload most marked windows agree on

    @property
    def marked_windows(self) -> int:
        return sum(1 for w in self.windows if w.payload == self.payload and w.marked)

    @property
    def confidence(self) -> float:
        """The mean confidence of the windows that agree (of all windows when unmarked)."""
        agree = [w.confidence for w in self.windows if w.marked and w.payload == self.payload]
        pool = agree or [w.confidence for w in self.windows]
        return float(np.mean(pool)) if pool else 0.0


def lumas(path: Path) -> Iterator[np.ndarray]:
    """The luma plane of every video frame of ``path``."""
    try:
        container = av.open(str(path), metadata_errors="replace")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise UnreadableVideo(f"{path}: not a video PyAV can read ({exc})") from None
    with container:
        if not container.streams.video:
            raise UnreadableVideo(f"{path}: has no video stream")
        try:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="gray")
        except av.error.FFmpegError as exc:
            raise UnreadableVideo(f"{path}: the video cannot be decoded ({exc})") from None


def read_windows(frames: Iterator[np.ndarray], window: int = WINDOW) -> list[Reading]:
    """One reading per ``window`` frames; a last partial window counts when it is at least
    half a window or the only one."""
    readings: list[Reading] = []
    reader = Reader()
    for luma in frames:
        reader.add(luma)
        if reader.frames == window:
            readings.append(reader.read())
            reader = Reader()
    if reader.frames and (reader.frames * 2 >= window or not readings):
        readings.append(reader.read())
    return readings


def verify(path: Path, window: int = WINDOW) -> Verdict:
    readings = read_windows(lumas(path), window)
    frames = sum(r.frames for r in readings)
    if not frames:
        raise UnreadableVideo(f"{path}: the video has no frames")
    found = collections.Counter(r.payload for r in readings if r.payload is not None)
    payload = found.most_common(1)[0][0] if found else None
    return Verdict(frames, readings, payload)


def describe(verdict: Verdict, avatars: Sequence[str]) -> dict[str, Any]:
    """The verdict as JSON: ``marked``, and what the mark says."""
    out: dict[str, Any] = {
        "marked": verdict.payload is not None,
        "frames": verdict.frames,
        "windows": len(verdict.windows),
        "marked_windows": verdict.marked_windows,
        "confidence": round(verdict.confidence, 2),
    }
    payload = verdict.payload
    if payload is not None:
        names = [n for n in avatars if Payload.avatar_id(n) == payload.avatar]
        hour = datetime.fromtimestamp(payload.hour_utc(), UTC)
        out["mark"] = {
            "avatar": names[0] if names else None,
            "avatar_id": f"{payload.avatar:04x}",
            "session_id": f"{payload.session:04x}",
            "hour_utc": hour.strftime("%Y-%m-%dT%H:00Z"),
        }
    return out


def _avatars() -> list[str]:
    from models.avatar import list_avatars
    from streamer.config import Settings

    try:
        return list_avatars(Settings.from_env().home)
    except Exception:  # an unreadable home folder must not stop a verification
        return []


def _manifest(path: Path) -> dict[str, Any] | None:
    from streamer.credentials import CredentialsError, read

    try:
        return read(path)
    except CredentialsError as exc:
        return {"error": str(exc)}


def _print_text(path: Path, result: dict[str, Any], manifest: dict[str, Any] | None) -> None:
    windows = (
        f"{result['marked_windows']}/{result['windows']} windows of 2 s, "
        f"confidence {result['confidence']:.2f} (unmarked video: about 0.8)"
    )
    if result["marked"]:
        mark = result["mark"]
        avatar = mark["avatar"] or f"unknown (id {mark['avatar_id']})"
        print(f"{path}: carries the avatarcast mark ({windows})")
        print(f"  avatar: {avatar}")
        print(f"  session: {mark['session_id']} (16-bit hash of the session or render id)")
        print(f"  made in the hour starting {mark['hour_utc']}")
    else:
        print(f"{path}: no avatarcast mark found ({windows})")
    if manifest is None:
        print("C2PA: no manifest")
    else:
        print("C2PA manifest (--json for the whole store):")
        print(json.dumps(summary(manifest), indent=2))


def summary(store: dict[str, Any]) -> dict[str, Any]:
    """The active manifest without its hash bookkeeping, and whether it validated."""
    active = store.get("manifests", {}).get(store.get("active_manifest", ""), {})
    if not active:
        return store
    assertions = {
        a.get("label"): a.get("data")
        for a in active.get("assertions", [])
        if not str(a.get("label", "")).startswith("c2pa.hash")
    }
    return {
        "title": active.get("title"),
        "claim_generator": active.get("claim_generator_info"),
        "signature": active.get("signature_info"),
        "assertions": assertions,
        "validation_state": store.get("validation_state"),
        "validation_status": [s.get("code") for s in store.get("validation_status") or []],
    }


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # The CLI's contract: a one-line error, exit status 2.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(
        prog="avatarcast verify",
        description="say whether a video carries avatarcast's invisible mark and what it "
        "encodes (avatar, session, time); print its C2PA manifest if it has one",
    )
    parser.add_argument("file", help="a video file (any format PyAV decodes)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    path = Path(args.file)
    if not path.is_file():
        print(f"avatarcast verify: error: {path} is not a file", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = describe(verify(path), _avatars())
    except UnreadableVideo as exc:
        print(f"avatarcast verify: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    manifest = _manifest(path)
    if args.json:
        print(json.dumps({**result, "c2pa": manifest}))
    else:
        _print_text(path, result, manifest)
    return 0
