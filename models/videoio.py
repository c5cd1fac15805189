"""Reading a person's video: streamed PyAV decoding resampled to 25 fps, upright, bounded size.

Frames are decoded one at a time and dropped once used, so memory does not grow with the
length of the video. Resampling follows the timestamps, not the frame count, which makes
30/60 fps, 24 fps and variable frame rates all come out as one frame per 40 ms: output frame
``k`` shows the source frame nearest to ``k / 25`` s after the first one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from models.audio import FPS


class VideoError(ValueError):
    """The file cannot be used as a video; the message says why."""


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int  # upright (after rotation)
    height: int
    rotation: int  # clockwise degrees applied to the coded frames: 0, 90, 180 or 270
    duration_s: float  # best estimate; 0 when the container does not say
    source_fps: float  # average; 0 when unknown
    has_audio: bool

    @property
    def frames_25(self) -> int:
        """About how many frames at 25 fps (for progress; the real count may differ by one)."""
        return max(0, round(self.duration_s * FPS))


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise VideoError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise VideoError(f"{path} is empty")
    try:
        return av.open(str(path), "r", metadata_errors="replace")
    except av.FFmpegError as exc:
        raise VideoError(f"{path} is not a video PyAV can read ({type(exc).__name__})") from None


def display_rotation(frame_rotation: float) -> int:
    """Clockwise degrees that make a frame upright from PyAV's ``VideoFrame.rotation`` (the
    display matrix's counter-clockwise angle), as ffmpeg's autorotate does."""
    return round(-float(frame_rotation) / 90.0) * 90 % 360


def rotate(image: np.ndarray, clockwise: int) -> np.ndarray:
    if clockwise == 90:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if clockwise == 180:
        return cv2.rotate(image, cv2.ROTATE_180)
    if clockwise == 270:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image


def probe(path: Path | str) -> VideoInfo:
    """Check that ``path`` has a decodable video stream and describe it (decodes one frame)."""
    p = Path(path)
    container = _open(p)
    try:
        if not container.streams.video:
            raise VideoError(f"{p} has no video stream")
        if container.format.name == "image2" or container.format.name.endswith("_pipe"):
            raise VideoError(f"{p} is a still image, not a video: make a photo avatar with --image")
        stream = container.streams.video[0]
        try:
            first = next(container.decode(stream))
        except (StopIteration, av.FFmpegError):
            raise VideoError(f"{p} has a video stream but no decodable frame") from None
        turn = display_rotation(getattr(first, "rotation", 0) or 0)
        width, height = first.width, first.height
        if turn in (90, 270):
            width, height = height, width
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        rate = stream.average_rate
        return VideoInfo(
            path=p,
            width=width,
            height=height,
            rotation=turn,
            duration_s=max(0.0, duration),
            source_fps=float(rate) if rate else 0.0,
            has_audio=bool(container.streams.audio),
        )
    finally:
        container.close()


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) with the longer side at most ``max_side``, both even (for encoders)."""
    scale = min(1.0, max_side / max(width, height))
    return (max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2))


def iter_frames(
    path: Path | str, max_side: int, max_frames: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(k, rgb)`` for k = 0, 1, ...: upright uint8 RGB frames at 25 fps, scaled so that
    the longer side is at most ``max_side``. Holds at most two decoded frames at a time."""
    p = Path(path)
    info = probe(p)
    out_w, out_h = scaled_size(info.width, info.height, max_side)
    # Coded frames are scaled before rotation, so a quarter turn swaps the target size.
    coded_w, coded_h = (out_h, out_w) if info.rotation in (90, 270) else (out_w, out_h)
    container = _open(p)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fallback_dt = 1.0 / (info.source_fps or FPS)

        def convert(frame: av.VideoFrame) -> np.ndarray:
            rgb = frame.to_ndarray(format="rgb24", width=coded_w, height=coded_h)
            return rotate(rgb, info.rotation)

        def shown_until() -> Iterator[tuple[av.VideoFrame, float]]:
            """Each decoded frame with the time up to which it is shown: every output instant
            nearer to it than to the next frame shows it."""
            start: float | None = None
            held: av.VideoFrame | None = None
            held_t = 0.0
            last_t = -math.inf
            for frame in _decode(container, stream):
                t = float(frame.time) if frame.time is not None else last_t + fallback_dt
                if t <= last_t:  # a repeated or out-of-order timestamp: keep time moving
                    t = last_t + 1e-6
                last_t = t
                if start is None:
                    start = t
                t -= start
                if held is not None:
                    yield held, 0.5 * (held_t + t)
                held, held_t = frame, t
            if held is not None:
                yield held, held_t + 0.5 * fallback_dt

        k = 0
        for frame, until in shown_until():
            rgb: np.ndarray | None = None  # converted once, only if some output shows it
            while k / FPS < until:
                if rgb is None:
                    rgb = convert(frame)
                yield k, rgb
                k += 1
                if max_frames is not None and k >= max_frames:
                    return
    finally:
        container.close()


def _decode(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> Iterator[av.VideoFrame]:
    """Decoded frames; a few corrupt packets are skipped as ffmpeg does."""
    failures = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
            frames = packet.decode()
        except StopIteration:
            return
        except av.error.EOFError:
            return
        except av.FFmpegError:
            failures += 1
            if failures > 32:
                raise VideoError(
                    f"{container.name} is corrupt (too many undecodable packets)"
                ) from None
            continue
        yield from frames


class CropWriter:
    """Square crops (a video twin's mouth crops) as a near-lossless H.264 stream (25 fps)."""

    def __init__(self, path: Path, side: int) -> None:
        self._container = av.open(str(path), "w", format="mp4")
        stream = self._container.add_stream("libx264", rate=FPS)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv444p"
        stream.codec_context.time_base = Fraction(1, FPS)
        stream.options = {"crf": "12", "preset": "veryfast"}
        self._stream = stream
        self._count = 0

    def write(self, rgb: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = self._count
        frame.time_base = Fraction(1, FPS)
        self._count += 1
        self._container.mux(self._stream.encode(frame))

    def __enter__(self) -> CropWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()


def read_crops(path: Path | str) -> Iterator[np.ndarray]:
    """The crops a :class:`CropWriter` wrote (RGB uint8), in order."""
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")
