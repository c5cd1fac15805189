"""The codecs of encode once: VP8/H.264 pictures and Opus audio, tuned for a live link.

A session's video is encoded by one :class:`VideoEncoder` per codec and its audio by one
:class:`AudioEncoder`, whatever the number of viewers (:mod:`streamer.pipeline.encode`).
"""

from __future__ import annotations

import fractions
import logging
import time
from dataclasses import dataclass
from typing import Literal

import av
import cv2
import numpy as np

from models.audio import SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from streamer.pipeline.frames import FPS, AVFrame

log = logging.getLogger(__name__)

VideoCodec = Literal["vp8", "h264"]
VIDEO_BITRATE = 1_200_000
AUDIO_BITRATE = 32_000
# Two 20 ms Opus packets per AV frame, the second sent 20 ms after the first, as a live
# capture would send them. Each RTCP sender report holds the NTP time of the last packet sent
# with its RTP timestamp, so a packet sent ahead of its time would map the audio early
# against the video (by 20 ms, two packets sent together). One 40 ms packet would map right
# too, but receivers that buffer a fixed number of packets (aiortc) would then buffer twice
# the time.
OPUS_SAMPLES = SAMPLES_PER_VIDEO_FRAME // 2
OPUS_SECONDS = OPUS_SAMPLES / SAMPLE_RATE
# A receiver that keeps asking for key frames (loss, many joins) gets at most this many a second.
KEYFRAME_MIN_GAP_S = 0.25


@dataclass(frozen=True)
class EncodedFrame:
    """AV frame ``index`` encoded: what every viewer of the session sends."""

    index: int
    audio: tuple[bytes, ...]  # Opus packets of 20 ms each, in order
    video: bytes | None  # one access unit; None when the encoder skipped this picture
    keyframe: bool
    audio_offset: int = 0  # where ``audio`` starts in the frame, in samples


def _video_context(
    codec: VideoCodec, width: int, height: int, bitrate: int = VIDEO_BITRATE
) -> av.VideoCodecContext:
    ctx = av.CodecContext.create("libvpx" if codec == "vp8" else "libx264", "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = fractions.Fraction(1, FPS)
    ctx.framerate = fractions.Fraction(FPS)
    ctx.bit_rate = bitrate
    ctx.thread_count = 1
    # Key frames only on request (a joining viewer, PLI), never on a fixed schedule.
    ctx.gop_size = 100_000
    if codec == "vp8":
        rate = str(bitrate)
        ctx.options = {
            "deadline": "realtime",
            # The fastest real-time setting: half the time of 8 here (1.7 against 3.7 ms a
            # 512x512 frame) for 0.4 dB less PSNR around the mouth at this bit rate.
            "cpu-used": "16",
            "lag-in-frames": "0",
            "static-thresh": "1",
            "partitions": "0",
            "qmin": "2",
            "qmax": "56",
            # Constant bit rate with a 1 s buffer: steady packets for a live link.
            "minrate": rate,
            "maxrate": rate,
            "bufsize": rate,
            "undershoot-pct": "100",
            "overshoot-pct": "15",
        }
    else:
        ctx.profile = "Baseline"  # what every WebRTC H.264 decoder takes (packetization-mode 1)
        ctx.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "level": "3.1" if width * height <= 1280 * 720 else "4.2",
            # Parameter sets in every key frame: a viewer can start at any of them.
            "x264-params": "repeat-headers=1:scenecut=0",
        }
    return ctx


def _opus_context() -> av.AudioCodecContext:
    ctx = av.CodecContext.create("libopus", "w")
    # libopus takes 16 kHz directly; the RTP clock stays 48 kHz (aiortc's pack converts).
    ctx.sample_rate = SAMPLE_RATE
    ctx.layout = "mono"
    ctx.format = "s16"
    ctx.time_base = fractions.Fraction(1, SAMPLE_RATE)
    ctx.bit_rate = AUDIO_BITRATE
    ctx.options = {"application": "voip", "frame_duration": "20"}
    return ctx


class VideoEncoder:
    """The session's video codec; used from one thread at a time (the encoder's own)."""

    def __init__(self, codec: VideoCodec, bitrate: int = VIDEO_BITRATE) -> None:
        self.codec = codec
        self.bitrate = bitrate  # the session's default; the watermark measure halves it
        self._ctx: av.VideoCodecContext | None = None
        self._frames = 0
        self.encode_ms = 0.0

    def encode(self, rgb: np.ndarray, keyframe: bool) -> tuple[bytes | None, bool]:
        """One picture -> (its access unit, whether it is a key frame)."""
        started = time.perf_counter()
        height, width = rgb.shape[:2]
        if self._ctx is None or (self._ctx.width, self._ctx.height) != (width, height):
            self._ctx = _video_context(self.codec, width, height, self.bitrate)
        # OpenCV's RGB -> I420 (BT.601, limited range, as swscale's) is ~15x faster here.
        i420 = np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), np.uint8)
        picture = av.VideoFrame.from_ndarray(i420, format="yuv420p")
        picture.pts = self._frames
        self._frames += 1
        if keyframe:
            picture.pict_type = av.video.frame.PictureType.I
        packets = self._ctx.encode(picture)
        self.encode_ms = (time.perf_counter() - started) * 1000.0
        if not packets:
            return None, False
        return b"".join(bytes(p) for p in packets), any(p.is_keyframe for p in packets)


class AudioEncoder:
    """Opus for the session's audio: two 20 ms packets per AV frame (about 0.4 ms)."""

    def __init__(self) -> None:
        self._ctx = _opus_context()
        # The encoder's look-ahead: a receiver plays each sample this much after its packet's
        # timestamp says (6.5 ms for libopus). Read from the first packet, whose timestamp
        # libavcodec moves back by it.
        self.delay_s = 0.0

    def encode(self, frame: AVFrame) -> tuple[bytes, ...]:
        packets: list[bytes] = []
        for i in range(0, SAMPLES_PER_VIDEO_FRAME, OPUS_SAMPLES):
            chunk = av.AudioFrame.from_ndarray(
                frame.audio[i : i + OPUS_SAMPLES].reshape(1, -1), format="s16", layout="mono"
            )
            chunk.sample_rate = SAMPLE_RATE
            chunk.pts = frame.index * SAMPLES_PER_VIDEO_FRAME + i
            chunk.time_base = fractions.Fraction(1, SAMPLE_RATE)
            for packet in self._ctx.encode(chunk):
                if not self.delay_s and packet.pts is not None and packet.pts < chunk.pts:
                    self.delay_s = (chunk.pts - packet.pts) / SAMPLE_RATE
                packets.append(bytes(packet))
        return tuple(packets)
