"""Audio ingest: any file PyAV can decode, streamed in chunks as 16 kHz mono float32."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from models.audio import SAMPLE_RATE

CHUNK = SAMPLE_RATE // 2  # samples per yielded chunk: few Python calls, little memory


class AudioDecodeError(ValueError):
    """The file cannot be used as audio; the message says why and is shown to the user."""


def clean(samples: np.ndarray) -> np.ndarray:
    """float32 mono in [-1, 1]: NaN, inf and overshoot from broken files would poison the mel."""
    x = np.nan_to_num(np.asarray(samples, np.float32).reshape(-1), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(x, -1.0, 1.0, out=x)


def decode_audio(path: Path | str, chunk: int = CHUNK) -> Iterator[np.ndarray]:
    """Yield the first audio stream of ``path`` resampled to 16 kHz mono, ``chunk`` samples at
    a time (the last chunk may be shorter). Never holds more than about one chunk.

    Raises :class:`AudioDecodeError` for missing, empty, corrupt and non-audio files.
    Packets that fail to decode are skipped (as ffmpeg does) once some audio has come out.
    """
    p = Path(path)
    _check_file(p)
    try:
        container = av.open(str(p), "r", metadata_errors="replace")
    except av.FFmpegError as exc:
        raise AudioDecodeError(f"{p} is not a readable audio file ({_reason(exc)})") from None
    try:
        if not container.streams.audio:
            raise AudioDecodeError(f"{p} has no audio stream")
        produced = 0
        for block in _rechunk(_decoded(container, p), chunk):
            produced += len(block)
            yield block
        if produced == 0:
            raise AudioDecodeError(f"{p} contains no decodable audio")
    finally:
        container.close()


def _check_file(p: Path) -> None:
    if not p.exists():
        raise AudioDecodeError(f"audio file {p} does not exist")
    if p.is_dir():
        raise AudioDecodeError(f"{p} is a directory, not an audio file")
    if not os.access(p, os.R_OK):
        raise AudioDecodeError(f"audio file {p} is not readable (permissions)")
    if p.stat().st_size == 0:
        raise AudioDecodeError(f"audio file {p} is empty")


def _decoded(container: av.container.InputContainer, p: Path) -> Iterator[np.ndarray]:
    """16 kHz mono pieces of the first audio stream, in order, as they decode."""
    stream = container.streams.audio[0]
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    produced = False
    failures = 0
    packets = container.demux(stream)
    while True:
        try:
            decoded = list(next(packets).decode())
        except StopIteration:
            break
        except av.FFmpegError as exc:
            failures += 1
            if not produced and failures > 8:
                raise AudioDecodeError(f"{p} is corrupt ({_reason(exc)})") from None
            if isinstance(exc, av.error.EOFError):
                break
            continue
        for frame in decoded:
            for out in resampler.resample(frame):
                produced = True
                yield clean(out.to_ndarray())
    for out in resampler.resample(None):
        yield clean(out.to_ndarray())


def _rechunk(pieces: Iterator[np.ndarray], chunk: int) -> Iterator[np.ndarray]:
    """The same samples in blocks of ``chunk`` (the last one shorter), holding about one."""
    pending: list[np.ndarray] = []
    pending_len = 0
    for pcm in pieces:
        pending.append(pcm)
        pending_len += len(pcm)
        while pending_len >= chunk:
            block = np.concatenate(pending)
            yield block[:chunk]
            rest = block[chunk:]
            pending, pending_len = ([rest] if len(rest) else []), len(rest)
    if pending_len:
        block = np.concatenate(pending)
        for start in range(0, len(block), chunk):
            yield block[start : start + chunk]


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).splitlines()[0] if text else type(exc).__name__
