"""The file that ``avatarcast render`` writes: H.264 + AAC in MP4, or with the person's alpha
VP9 + Opus in WebM, or ProRes 4444 + PCM in QuickTime (see :mod:`streamer.render`)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np

from models.audio import FPS, SAMPLE_RATE
from models.compositor import unpack

ALPHA_SUFFIXES = (".webm", ".mov")  # outputs that carry the person's alpha


class FileMuxer:
    """H.264 + AAC in MP4, both tracks stamped in their own sample counts from 0; with
    ``alpha``, from side-by-side colour and alpha pictures: VP9 with alpha + Opus in WebM,
    or ProRes 4444 with alpha + 16-bit PCM in QuickTime (``mov``), which editors take and the
    C2PA SDK signs."""

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        crf: int,
        preset: str,
        alpha: bool = False,
        mov: bool = False,
    ) -> None:
        self._alpha = alpha
        container = "mov" if mov else "webm" if alpha else "mp4"
        self._container = av.open(str(path), "w", format=container)
        codec, pix_fmt, audio_codec = "libx264", "yuv420p", "aac"
        # VP9: constant quality (b=0) with libvpx's fast settings: a render, not an archive.
        options: dict[str, object] = {"crf": str(crf), "preset": preset}
        if mov:
            codec, pix_fmt, audio_codec = "prores_ks", "yuva444p10le", "pcm_s16le"
            options = {"profile": "4444", "vendor": "apl0", "alpha_bits": "8"}
        elif alpha:
            codec, pix_fmt, audio_codec = "libvpx-vp9", "yuva420p", "libopus"
            options = {"crf": str(crf + 10), "b": "0", "deadline": "good", "cpu-used": "5"}
        video = cast(av.VideoStream, self._container.add_stream(codec, rate=FPS))
        video.width, video.height = width, height
        video.pix_fmt = pix_fmt
        video.codec_context.time_base = Fraction(1, FPS)
        video.options = options
        rate = 48_000 if audio_codec == "libopus" else SAMPLE_RATE
        audio = cast(av.AudioStream, self._container.add_stream(audio_codec, rate=rate))
        audio.layout = "mono"
        if audio_codec != "pcm_s16le":
            audio.bit_rate = 64_000
        self._video, self._audio = video, audio
        self.frames = 0
        self.samples = 0

    def write_audio(self, samples: np.ndarray) -> None:
        if not len(samples):
            return
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self.samples
        frame.time_base = Fraction(1, SAMPLE_RATE)
        self.samples += len(samples)
        self._container.mux(self._audio.encode(frame))

    def write_video(self, rgb: np.ndarray) -> None:
        if self._alpha:
            frame = av.VideoFrame.from_ndarray(unpack(rgb), format="rgba")
        else:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = self.frames
        frame.time_base = Fraction(1, FPS)
        self.frames += 1
        self._container.mux(self._video.encode(frame))

    def close(self) -> None:
        self._container.mux(self._video.encode(None))
        self._container.mux(self._audio.encode(None))
        self._container.close()

    def abort(self) -> None:
        self._container.close()
