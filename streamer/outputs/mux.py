"""One container of a session's media, written with PyAV: FLV for RTMP, fragmented MP4 for
a recording. The muxing code is the same for both; only the format and its flags differ.

Video is the session's shared H.264 encode (encode once): its access units are remuxed as
they are, never decoded or encoded again. The container starts at a key frame, whose
parameter sets PyAV copies into the header (``add_mux_stream`` extracts them from the first
packet). Audio is AAC, encoded here from the AV frames' 16 kHz PCM, resampled to 48 kHz
stereo (what live platforms ask for; the AAC header carries the rate, so FLV takes it), with
FFmpeg's ``fast`` AAC coder: half the CPU of its default ``twoloop`` (0.57 against 1.21 ms
per frame here), and at 128 kbps the encoder's author rates it as good or better: "at higher
bitrates [twoloop] sounds worse than the fast coder and needs quite a lot more CPU" (FFmpeg
commit fcb681ac, 2018).

Timestamps are the session clock's: frame ``k`` is at ``(k - origin + 1) × 40 ms``, video and
audio alike, where ``origin`` is the first frame the output ever sent. The one frame of lead
keeps every timestamp positive: the AAC encoder stamps its priming (1024 samples) before its
first input, and FLV has no negative times. A
reconnection starts a new container at a later key frame with later timestamps, so a
receiver sees one clock, monotonic across reconnections.

Everything here blocks (network, disk): it runs in the output's own thread (a recording),
or in a child process of its own (an RTMP push, :mod:`.rtmp_child`), which is why this module
imports no more than PyAV, numpy and the audio constants.
"""

from __future__ import annotations

import contextlib
import fractions
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import av
import numpy as np

from models.audio import FPS, SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME

if TYPE_CHECKING:
    from streamer.pipeline.codecs import EncodedFrame
    from streamer.pipeline.frames import AVFrame

AAC_RATE = 48_000
AAC_BITRATE = 128_000
AAC_OPTIONS = {"aac_coder": "fast"}
VIDEO_TIME_BASE = fractions.Fraction(1, FPS)
PCM_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
LEAD_FRAMES = 1
# At most this much is held to interleave audio with video: a stalled stream must not hold
# the other one back for FFmpeg's default 10 s.
MAX_INTERLEAVE_US = "1000000"


class MuxError(RuntimeError):
    """The container cannot go on (its reason is the output's ``last_error``)."""


class Sink(Protocol):
    """A file-like destination PyAV can write a container into (a pipe to a process)."""

    def write(self, data: bytes) -> int: ...


@dataclass(frozen=True)
class Target:
    """Where a container goes: a URL or path, its format and its muxer options."""

    url: str | Sink  # a URL or path, or what FFmpeg's bytes are handed to
    format: str
    options: dict[str, str] = field(default_factory=dict)


FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}


class Container(Protocol):
    """What an output's thread feeds, one connection long: a :class:`Muxer` in the thread,
    or a connection of a muxing child process (:mod:`.rtmp_link`)."""

    size: tuple[int, int]

    def video(self, frame: EncodedFrame) -> None: ...

    def audio(self, frame: AVFrame) -> None: ...

    def ready(self, stop: threading.Event) -> bool:
        """Wait until the header has gone out (True), or a stop (False); MuxError else."""
        ...

    def close(self) -> None: ...


class Muxer:
    """One container, from a key frame on: feed it video and audio in (roughly) frame order.

    Opening it connects (RTMP) or creates the file; :meth:`close` writes the trailer.
    """

    def __init__(self, target: Target, origin: int, size: tuple[int, int]) -> None:
        self.target = target
        self.origin = origin
        self.size = size  # (width, height)
        self.video_frames = 0
        self.audio_frames = 0
        self._audio_from: int | None = None  # the first frame whose audio goes in
        try:
            self._container = av.open(
                target.url,
                "w",
                format=target.format,
                options={"max_interleave_delta": MAX_INTERLEAVE_US, **target.options},
            )
        except (av.FFmpegError, OSError) as exc:
            raise MuxError(describe_error(exc)) from exc
        width, height = size
        self._video = self._container.add_mux_stream("h264", rate=FPS, width=width, height=height)
        self._video.time_base = VIDEO_TIME_BASE
        audio = self._container.add_stream("aac", rate=AAC_RATE, layout="stereo")
        audio.codec_context.bit_rate = AAC_BITRATE
        audio.codec_context.options = AAC_OPTIONS
        self._audio = audio

    def video(self, frame: EncodedFrame) -> None:
        """Mux one access unit; the first must be a key frame (its SPS/PPS make the header)."""
        if frame.video is not None:
            self.video_unit(frame.index, frame.video, frame.keyframe)

    def audio(self, frame: AVFrame) -> None:
        """Encode and mux one frame's 40 ms of audio."""
        self.audio_pcm(frame.index, frame.audio)

    def ready(self, stop: threading.Event) -> bool:
        """The header went out with the first picture (:meth:`video` returned)."""
        return self._audio_from is not None

    def video_unit(self, index: int, data: bytes, keyframe: bool) -> None:
        """:meth:`video` from its parts (what a muxing child process receives)."""
        if self._audio_from is None:
            if not keyframe:
                raise MuxError("internal: a container must start at a key frame")
            self._audio_from = index
        packet = av.Packet(data)
        packet.stream = self._video
        packet.time_base = VIDEO_TIME_BASE
        packet.pts = packet.dts = index - self.origin + LEAD_FRAMES
        packet.duration = 1
        packet.is_keyframe = keyframe
        self._mux(packet)
        self.video_frames += 1

    def audio_pcm(self, index: int, samples: np.ndarray) -> None:
        """Frame ``index``'s 640 samples (int16, 16 kHz), dropped before the first picture,
        so the container's two tracks start together."""
        if self._audio_from is None or index < self._audio_from:
            return
        pcm = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        pcm.sample_rate = SAMPLE_RATE
        pcm.time_base = PCM_TIME_BASE
        pcm.pts = (index - self.origin + LEAD_FRAMES) * SAMPLES_PER_VIDEO_FRAME
        try:
            packets = self._audio.encode(pcm)
        except av.FFmpegError as exc:
            raise MuxError(describe_error(exc)) from exc
        for packet in packets:
            self._mux(packet)
        self.audio_frames += 1

    def _mux(self, packet: av.Packet) -> None:
        try:
            self._container.mux(packet)
        except (av.FFmpegError, OSError) as exc:
            raise MuxError(describe_error(exc)) from exc

    def close(self) -> None:
        """Write the trailer after the audio encoder's last packets; a broken link only
        loses what it could not send anyway."""
        with contextlib.suppress(av.FFmpegError, OSError):
            if self._audio_from is not None:
                for packet in self._audio.encode(None):
                    self._container.mux(packet)
        with contextlib.suppress(av.FFmpegError, OSError):
            self._container.close()


def describe_error(exc: BaseException) -> str:
    """FFmpeg's errors as a user reads them: the reason, without the C function names."""
    if isinstance(exc, av.FFmpegError):
        return exc.strerror or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
