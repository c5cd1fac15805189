"""Encode once per session: one video and one Opus encoder shared by all its WebRTC viewers.

aiortc's default gives every viewer its own encoder, so each extra viewer of a session costs
a full video encode per frame (2 to 4 ms at 512x512 on one core) and makes the viewers'
send times jitter as their encodes queue up on the same cores. Here one encoder per session
turns each published AV frame into an :class:`EncodedFrame` (the video frame as one VP8 or
H.264 access unit, its 40 ms of audio as two 20 ms Opus packets) and fans it out on its own
:class:`FrameBus`. A viewer's tracks only packetise what they receive (aiortc's ``pack``).

Joining and losing pictures: a viewer forwards video only from a key frame on. The encoder
makes one when a viewer subscribes, when a receiver asks (RTCP PLI/FIR) and when a slow
viewer's short video queue had to drop a frame, so a late picture costs that viewer one key
frame and nobody else anything. Audio never depends on that: every Opus packet decodes on
its own.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import fractions
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import av
import cv2
import numpy as np

from models.audio import SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from streamer.pipeline.frames import FPS, AVFrame, FrameBus, Subscription

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


def _video_context(codec: VideoCodec, width: int, height: int) -> av.VideoCodecContext:
    ctx = av.CodecContext.create("libvpx" if codec == "vp8" else "libx264", "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = fractions.Fraction(1, FPS)
    ctx.framerate = fractions.Fraction(FPS)
    ctx.bit_rate = VIDEO_BITRATE
    ctx.thread_count = 1
    # Key frames only on request (a joining viewer, PLI), never on a fixed schedule.
    ctx.gop_size = 100_000
    if codec == "vp8":
        rate = str(VIDEO_BITRATE)
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

    def __init__(self, codec: VideoCodec) -> None:
        self.codec = codec
        self._ctx: av.VideoCodecContext | None = None
        self._frames = 0
        self.encode_ms = 0.0

    def encode(self, rgb: np.ndarray, keyframe: bool) -> tuple[bytes | None, bool]:
        """One picture -> (its access unit, whether it is a key frame)."""
        started = time.perf_counter()
        height, width = rgb.shape[:2]
        if self._ctx is None or (self._ctx.width, self._ctx.height) != (width, height):
            self._ctx = _video_context(self.codec, width, height)
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


Picture = concurrent.futures.Future[tuple[bytes | None, bool]]


class SessionEncoder:
    """Encodes a session's frames once and publishes the packets to its viewers.

    Pictures: a session that has a ``picture_sink`` hands each picture over with
    :meth:`commit` as soon as it is composited, in frame order, some 20 ms before the frame
    is due; the encode runs in this encoder's own thread meanwhile, so at publication the
    packets are ready and go out at once. A frame whose picture was late is committed at its
    publication with the previous picture, which encodes to a small frame, so the viewers'
    video keeps its cadence. A publisher without ``picture_sink`` gets its pictures encoded
    at publication.

    Audio is encoded at publication, on the event loop (about 0.4 ms a frame): it must
    follow an interrupt to the frame, and a thread hop would add jitter to every packet. The
    frame's second 20 ms packet goes out 20 ms after the first. Pictures go out the Opus
    look-ahead (6.5 ms) after their frame's audio: the delay with which a receiver plays
    the audio, which the timestamps cannot carry (RTCP maps each stream by send times).
    """

    def __init__(self, session: Any, codec: VideoCodec) -> None:
        self.session_id: str = session.id
        self.codec = codec
        self.bus: FrameBus[EncodedFrame] = FrameBus()
        self._session = session
        self._source: FrameBus[AVFrame] = session.bus
        self._early = hasattr(session, "picture_sink")
        self._video = VideoEncoder(codec)
        self._audio = AudioEncoder()
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"encode-{self.session_id}"
        )
        # Pictures in frame order: (index, encode, when to send it).
        self._pending: collections.deque[tuple[int, Picture, float]] = collections.deque()
        self._flush_at: asyncio.TimerHandle | None = None
        self._in_thread = 0
        self._keyframe_wanted = True
        self._last_keyframe = -1e9
        self._input: Subscription[AVFrame] | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._later: tuple[asyncio.TimerHandle, EncodedFrame] | None = None
        self.frames = 0

    @property
    def encode_ms(self) -> float:
        return self._video.encode_ms

    @property
    def viewers(self) -> int:
        return self.bus.subscribers

    def subscribe(self) -> Subscription[EncodedFrame]:
        """A viewer's queues: 3 pictures (a drop costs it a key frame), 5 s of audio."""
        sub = self.bus.subscribe(video_depth=3)
        self.request_keyframe()
        if self._task is None:
            log.info(
                "session %s: encoding %s + Opus once for its viewers", self.session_id, self.codec
            )
            self._loop = asyncio.get_running_loop()
            self._input = self._source.subscribe(video_depth=1)
            self._task = asyncio.ensure_future(self._run(self._input))
            self._task.set_name(f"encoder:{self.session_id}")
            if self._early:
                self._session.picture_sink = self
        return sub

    def unsubscribe(self, sub: Subscription[EncodedFrame]) -> None:
        self.bus.unsubscribe(sub)

    def request_keyframe(self) -> None:
        self._keyframe_wanted = True

    def _take_keyframe(self) -> bool:
        now = time.monotonic()
        if not self._keyframe_wanted or now - self._last_keyframe < KEYFRAME_MIN_GAP_S:
            return False
        self._keyframe_wanted = False
        self._last_keyframe = now
        return True

    def commit(self, index: int, rgb: np.ndarray) -> Picture | None:
        """Frame ``index`` will show ``rgb``: start encoding it (call in frame order).

        Returns None, and the frame goes without a new picture, when the encoder thread is
        already three pictures behind (a stalled machine): skipping inputs keeps the video
        stream decodable, where dropping encoded pictures would not.
        """
        if self._in_thread >= 3:
            return None
        self._in_thread += 1
        future = self._thread.submit(self._video.encode, rgb, self._take_keyframe())
        future.add_done_callback(self._encoded)
        return future

    def _encoded(self, _: Picture) -> None:  # in the encoder thread
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._flush, True)

    def _flush(self, finished: bool = False) -> None:
        """Publish, in frame order, every picture whose encode has finished and whose time
        has come (its frame's publication plus the audio codec's delay, so that a receiver
        shows each picture with the sound decoded for it)."""
        if finished:
            self._in_thread -= 1
        loop = self._loop
        while self._pending and self._pending[0][1].done():
            index, future, send_at = self._pending[0]
            if loop is not None and send_at > loop.time():
                if self._flush_at is None:
                    self._flush_at = loop.call_at(send_at, self._flush_timer)
                return
            self._pending.popleft()
            if future.cancelled() or future.exception() is not None:
                if not future.cancelled():
                    log.error(
                        "session %s: encoding frame %d failed",
                        self.session_id,
                        index,
                        exc_info=future.exception(),
                    )
                self.request_keyframe()  # the stream may have lost a reference
                continue
            data, keyframe = future.result()
            if data is not None:
                self.bus.publish(EncodedFrame(index, (), data, keyframe), audio=False)

    def _flush_timer(self) -> None:
        self._flush_at = None
        self._flush()

    def _send_later(self) -> None:
        """Publish the pending second half of the last frame's audio (now, if not yet sent)."""
        if self._later is not None:
            (handle, later), self._later = self._later, None
            handle.cancel()
            self.bus.publish(later, video=False)

    async def _run(self, source: Subscription[AVFrame]) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await source.next_audio()
                self.frames += 1
                audio = self._audio.encode(frame)
                self._send_later()  # a backlog: the previous frame's second half goes first
                self.bus.publish(EncodedFrame(frame.index, audio[:1], None, False), video=False)
                if len(audio) > 1:
                    later = EncodedFrame(frame.index, audio[1:], None, False, OPUS_SAMPLES)
                    handle = loop.call_at(frame.published_at + OPUS_SECONDS, self._send_later)
                    self._later = (handle, later)
                picture = frame.encoded_video
                if picture is None and not self._early:
                    picture = self.commit(frame.index, frame.video)
                if picture is not None:
                    send_at = frame.published_at + self._audio.delay_s
                    self._pending.append((frame.index, picture, send_at))
                    self._flush()
        except ConnectionError:  # the session's bus closed
            pass
        except Exception:
            log.exception("session %s: the encoder failed; its viewers stop", self.session_id)
        finally:
            self.bus.close()

    async def aclose(self) -> None:
        if self._flush_at is not None:
            self._flush_at.cancel()
        if self._early and getattr(self._session, "picture_sink", None) is self:
            self._session.picture_sink = None
        if self._input is not None:
            self._source.unsubscribe(self._input)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.bus.close()
        self._thread.shutdown(wait=False, cancel_futures=True)
