"""Offline rendering: audio (or text) in, a lip-synced MP4 out, through the server's path.

Everything streams: decode -> the live session's frame path on a virtual clock (timeline,
mel windows, generator in batches, compositor) -> encoder, so memory stays flat however
long the audio is. The audio track is the decoded 16 kHz signal
itself, zero-padded to the end of the last video frame, and both tracks start at pts 0:
video frame k shows the mouth for samples [640k, 640k + 640).

A transparent render (``transparent=True``, or an output ending in .webm or .mov) writes the
person's alpha: WebM with VP9 (yuva420p, libvpx-vp9) and Opus audio, or QuickTime with ProRes
4444 (yuva444p10le) and 16-bit PCM, the editors' format, which also carries the C2PA manifest.

A render is marked like a session (:mod:`streamer.pipeline.provenance`), under its own random
id, optionally labelled, and its finished file gets a signed C2PA manifest
(:mod:`streamer.provenance`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from models.audio import SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME, window_range
from models.avatar import Avatar
from models.compositor import Compositor
from models.media import clean, decode_audio
from streamer.engine.base import Backend
from streamer.pipeline.canvas import Canvas
from streamer.pipeline.clock import VirtualClock
from streamer.pipeline.frames import FRAME_SECONDS, FrameBus
from streamer.pipeline.path import FramePath
from streamer.pipeline.prepare import PreparedFrame, prepare_frame
from streamer.pipeline.provenance import Provenance
from streamer.pipeline.render import FrameRenderer
from streamer.pipeline.timeline import Timeline
from streamer.render_file import ALPHA_SUFFIXES, FileMuxer

T = TypeVar("T")
BATCH = 8  # frames per generator call: amortises per-call overhead, adds 320 ms of buffering


class RenderError(ValueError):
    """The input cannot become a video (e.g. no samples at all): a user-facing error."""


@dataclass(frozen=True)
class RenderResult:
    path: Path
    frames: int
    samples: int
    seconds: float  # wall-clock time the render took
    mark_id: str | None = None  # the id the mark and the C2PA manifest carry

    @property
    def duration_s(self) -> float:
        return self.samples / SAMPLE_RATE

    @property
    def ms_per_frame(self) -> float:
        return 1000.0 * self.seconds / max(1, self.frames)


def generate_frames(
    avatar: Avatar,
    backend: Backend,
    samples: Iterable[np.ndarray],
    *,
    batch_size: int = BATCH,
    idle: bool = True,
    seed: int = 0,
    transparent: bool = False,
    provenance: Provenance | None = None,
) -> Iterator[np.ndarray]:
    """RGB frames (H, W, 3) uint8, one per 40 ms of ``samples`` (16 kHz mono float chunks),
    ceil(n / 640) in all; a bare array counts as one chunk. ``idle=False`` keeps the head
    still and the eyes open (for eval). ``transparent`` frames are colour and alpha side by
    side (H, 2W, 3; see :mod:`models.compositor`).

    The frames come from the live session's frame path (timeline, frame preparation,
    rendering with the idle-mouth cache) on a virtual clock, so what eval measures is what
    the server runs. The clock keeps ``batch_size`` frames in flight, which the backend
    generates in one call. With ``provenance`` the frames are labelled and marked as a
    session's are (eval measures the unmarked pictures).
    """
    if isinstance(samples, np.ndarray):  # one whole signal rather than chunks
        samples = [samples]
    loop = asyncio.new_event_loop()
    compositor = Compositor(avatar, idle=idle, seed=seed, transparent=transparent)
    run = _OfflineRun(avatar, backend, iter(samples), batch_size, compositor, provenance)
    try:
        while (frame := loop.run_until_complete(run.next())) is not None:
            yield frame
    finally:
        loop.run_until_complete(run.aclose())
        loop.close()


class _Batches:
    """The backend as the frame path's generator: requests wait until ``size`` of them (or
    the clock waiting on one) make a batch, then one ``infer`` call serves them all."""

    def __init__(self, backend: Backend, size: int) -> None:
        self._backend = backend
        self._size = size
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, _Then, _Result]] = []

    async def submit(
        self,
        reference: np.ndarray,
        masked: np.ndarray,
        mel: np.ndarray,
        deadline: float,
        *,
        then: _Then = None,
        executor: Executor | None = None,
    ) -> np.ndarray:
        future: _Result = asyncio.get_running_loop().create_future()
        self._pending.append((reference, masked, mel, then, future))
        if len(self._pending) >= self._size:
            self.flush()
        return await future

    def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            mouths = self._backend.infer(
                np.stack([r for r, *_ in batch]),
                np.stack([m for _, m, *_ in batch]),
                np.stack([w for _, _, w, *_ in batch]),
            )
        except Exception as exc:
            for *_, future in batch:
                future.set_exception(exc)
            return
        for (_, _, _, then, future), mouth in zip(batch, mouths, strict=True):
            if not future.cancelled():
                future.set_result(then(mouth) if then is not None else mouth)


_Then = Callable[[np.ndarray], np.ndarray] | None
_Result = asyncio.Future[np.ndarray]


class _Inline(Executor):
    """Compositing in the caller's thread: offline there is nothing else to overlap with."""

    def submit(self, fn: Callable[..., T], /, *args: object, **kwargs: object) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


class _OfflineRun:
    """The frame path on a virtual clock, fed from an iterator as far as its windows need."""

    def __init__(
        self,
        avatar: Avatar,
        backend: Backend,
        source: Iterator[np.ndarray],
        batch_size: int,
        compositor: Compositor,
        provenance: Provenance | None = None,
    ) -> None:
        self._source = source
        self._window = avatar.window
        self._batch = batch_size
        self._timeline = Timeline(max_ahead_s=30.0)
        self._rest = np.zeros(0, np.float32)  # read from the source, not yet written
        self._total = 0
        self._ended = False
        self._published = 0
        batches = _Batches(backend, batch_size)
        renderer = FrameRenderer(avatar, batches, _Inline(), compositor, provenance=provenance)
        self._path = FramePath(self._prepare, renderer, FrameBus(), flush=batches.flush)
        self._clock = VirtualClock(lead_s=(batch_size - 1) * FRAME_SECONDS)

    def _prepare(self, k: int) -> PreparedFrame:
        return prepare_frame(self._timeline, k, self._window)

    def _fill(self) -> None:
        """Write the samples every window this tick may take (the clock prepares up to
        ``batch_size`` frames past the one it publishes)."""
        need = window_range(self._published + self._batch, self._window)[1]
        while self._timeline.write_pos < need:
            if not len(self._rest):
                chunk = next(self._source, None)
                if chunk is None:
                    self._ended = True
                    return
                self._rest = clean(chunk)
                self._total += len(self._rest)
                continue
            piece, self._rest = self._rest[:SAMPLE_RATE], self._rest[SAMPLE_RATE:]
            self._timeline.write(
                piece,
                now_pos=self._published * SAMPLES_PER_VIDEO_FRAME,
                latency=0,
                utterance_id="offline",
                arrived_at=self._clock.now(),
            )

    async def next(self) -> np.ndarray | None:
        self._fill()
        if self._ended and self._published >= -(-self._total // SAMPLES_PER_VIDEO_FRAME):
            return None
        frame = await self._clock.tick(self._path)
        self._published += 1
        return frame.video

    async def aclose(self) -> None:
        await self._path.aclose()


def render_samples(
    samples: Iterable[np.ndarray],
    out_path: Path | str,
    avatar: Avatar,
    backend: Backend,
    *,
    batch_size: int = BATCH,
    crf: int = 20,
    preset: str = "veryfast",
    progress: Callable[[int], None] | None = None,
    transparent: bool = False,
    label: bool = False,
    signing: Path | None = None,
) -> RenderResult:
    """Render 16 kHz mono float chunks to ``out_path`` (written to a temporary name first, so a
    failed render never leaves a half file behind). ``progress(frames_done)`` is called per frame.
    ``transparent`` (implied by a .webm output) writes the person over a transparent background.
    Every frame is marked, and labelled with ``label``; with ``signing`` (the avatarcast home
    that holds, or gets, the C2PA chain) the file carries a signed C2PA manifest.
    """
    out = Path(out_path)
    suffix = out.suffix.lower()
    transparent = transparent or suffix in ALPHA_SUFFIXES
    if transparent and suffix not in ALPHA_SUFFIXES:
        raise RenderError(
            f"output {out} must end in .webm (VP9) or .mov (ProRes 4444) for a transparent render"
        )
    if suffix not in (".mp4", ".m4v", *ALPHA_SUFFIXES):
        raise RenderError(
            f"output {out} must end in .mp4 (or .webm or .mov for a transparent render)"
        )
    if not out.parent.is_dir():
        raise RenderError(f"output folder {out.parent} does not exist")
    started = time.perf_counter()
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.partial{out.suffix}")
    canvas = Canvas.choose(avatar.manifest.frame_size, None, None)  # odd sides padded to even
    mov = suffix == ".mov"
    muxer = FileMuxer(tmp, canvas.width, canvas.height, crf, preset, alpha=transparent, mov=mov)
    mark_id = secrets.token_hex(8)
    provenance = Provenance(avatar.name, mark_id, label=label)

    def tee(chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        # Audio goes to the encoder as it is read, a few frames ahead of the video it matches.
        for chunk in chunks:
            pcm = clean(chunk)
            muxer.write_audio(pcm)
            yield pcm

    try:
        frames = generate_frames(
            avatar,
            backend,
            tee(samples),
            batch_size=batch_size,
            transparent=transparent,
            provenance=provenance,
        )
        for rgb in frames:
            muxer.write_video(canvas.fit(rgb, transparent))
            if progress is not None:
                progress(muxer.frames)
        if muxer.samples == 0:
            raise RenderError("the audio has no samples: nothing to render")
        received = muxer.samples
        # Pad to the end of the last frame so both tracks last exactly frames * 40 ms.
        muxer.write_audio(
            np.zeros(muxer.frames * SAMPLES_PER_VIDEO_FRAME - muxer.samples, np.float32)
        )
        muxer.close()
        if signing is not None and suffix != ".webm":  # the C2PA SDK does not take WebM
            from streamer.credentials import sign_in_place

            mark = provenance.describe()
            mime = "video/quicktime" if mov else "video/mp4"
            sign_in_place(tmp, out.name, avatar.name, avatar.path, mark, signing, mime)
        os.replace(tmp, out)
    except BaseException:
        muxer.abort()
        tmp.unlink(missing_ok=True)
        raise
    return RenderResult(out, muxer.frames, received, time.perf_counter() - started, mark_id)


def text_samples(text: str) -> Iterator[np.ndarray]:
    """The built-in TTS, sentence by sentence (bounded memory for long texts)."""
    if not text.strip():
        raise RenderError("the text is empty: give some words to say")
    try:
        from streamer.tts import TextToSpeech
    except ImportError as exc:
        raise RenderError(f"the built-in TTS is not available here ({exc})") from None
    yield from TextToSpeech().stream(text)


def render(
    out_path: Path | str,
    avatar: Avatar,
    backend: Backend,
    *,
    audio: Path | str | None = None,
    text: str | None = None,
    batch_size: int = BATCH,
    progress: Callable[[int], None] | None = None,
    transparent: bool = False,
    label: bool = False,
    signing: Path | None = None,
) -> RenderResult:
    """Render an audio file (any format PyAV decodes) or a text through the built-in TTS."""
    if (audio is None) == (text is None):
        raise RenderError("give exactly one of an audio file or a text")
    samples = decode_audio(audio) if audio is not None else text_samples(text or "")
    return render_samples(
        samples,
        out_path,
        avatar,
        backend,
        batch_size=batch_size,
        progress=progress,
        transparent=transparent,
        label=label,
        signing=signing,
    )
