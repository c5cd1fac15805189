"""Encode once: one video and one Opus encoder per session and codec, shared by every output.

aiortc's default gives every viewer its own encoder, so each extra viewer of a session costs
a full video encode per frame (2 to 4 ms at 512x512 on one core) and makes the viewers'
send times jitter as their encodes queue up on the same cores. Here the session owns one
:class:`EncodedStream` per codec (:class:`EncodeStage`). While anyone subscribes, it turns
each published AV frame into :class:`EncodedFrame` packets (the picture as one VP8 or H.264
access unit, its 40 ms of audio as two 20 ms Opus packets) on its own bus, next to the
session's AV frame bus. Outputs only subscribe; a viewer's tracks only packetise.

Pictures: the session's frame path commits each picture with :meth:`EncodedStream.commit` as
soon as it is composited, in frame order, some 20 ms before the frame is due; the encode
runs in the stream's own thread meanwhile, so at publication the packets are ready and go
out at once. A frame whose picture was late is committed at its publication with the
previous picture, which encodes to a small frame. A publisher that commits nothing gets its
pictures encoded at publication.

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
import logging
import time
from collections.abc import Callable

import numpy as np

from streamer.pipeline.codecs import (
    KEYFRAME_MIN_GAP_S,
    OPUS_SAMPLES,
    OPUS_SECONDS,
    AudioEncoder,
    EncodedFrame,
    VideoCodec,
    VideoEncoder,
)
from streamer.pipeline.frames import AVFrame, FrameBus, Subscription

log = logging.getLogger(__name__)

Picture = concurrent.futures.Future[tuple[bytes | None, bool]]

__all__ = ["EncodeStage", "EncodedFrame", "EncodedStream", "VideoCodec"]


class EncodedStream:
    """A session's frames in one codec, encoded once while anyone subscribes.

    Audio is encoded at publication, on the event loop (about 0.4 ms a frame): it must
    follow an interrupt to the frame, and a thread hop would add jitter to every packet. The
    frame's second 20 ms packet goes out 20 ms after the first. Pictures go out the Opus
    look-ahead (6.5 ms) after their frame's audio: the delay with which a receiver plays
    the audio, which the timestamps cannot carry (RTCP maps each stream by send times).
    """

    def __init__(self, session_id: str, source: FrameBus[AVFrame], codec: VideoCodec) -> None:
        self.session_id = session_id
        self.codec = codec
        self.bus: FrameBus[EncodedFrame] = FrameBus()
        self.frames = 0
        self._source = source
        self._video = VideoEncoder(codec)
        self._audio = AudioEncoder()
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"encode-{session_id}"
        )
        self._pictures: dict[int, Picture | None] = {}  # committed ahead, by frame index
        self._next_index = 0
        # Pictures in frame order: (index, encode, when to send it).
        self._pending: collections.deque[tuple[int, Picture, float]] = collections.deque()
        self._flush_at: asyncio.TimerHandle | None = None
        self._in_thread = 0
        self._keyframe_wanted = True
        self._last_keyframe = -1e9
        self._input: Subscription[AVFrame] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._later: tuple[asyncio.TimerHandle, EncodedFrame] | None = None
        self._closed = False

    @property
    def encode_ms(self) -> float:
        return self._video.encode_ms

    @property
    def viewers(self) -> int:
        return self.bus.subscribers

    @property
    def running(self) -> bool:
        return self._task is not None

    @property
    def next_index(self) -> int:
        return self._next_index

    def subscribe(self) -> Subscription[EncodedFrame]:
        """A viewer's queues: 3 pictures (a drop costs it a key frame), 5 s of audio."""
        return self.attach(Subscription(video_depth=3))

    def attach(
        self, sub: Subscription[EncodedFrame], keyframe: bool = True
    ) -> Subscription[EncodedFrame]:
        """Add a subscriber of one's own kind (one that sends as it is offered, say). It
        gets a key frame at once unless ``keyframe`` is False: a subscriber that asks for
        its own when it can send (a viewer whose connection is still coming up), so that
        the rate limit does not hold that one back for a key frame nobody received."""
        if self._closed:
            raise ConnectionError(f"session {self.session_id} is closed")
        self.bus.attach(sub)
        if keyframe:
            self.request_keyframe()
        if self._task is None:
            log.info("session %s: encoding %s + Opus once", self.session_id, self.codec)
            # Starting afresh: the first picture is a key frame, however recent the last one
            # made for viewers who have since left; unless this subscriber asks for its own
            # later, which the limit must then not hold back for one nobody received.
            self._last_keyframe = -1e9
            self._keyframe_wanted = keyframe
            self._loop = asyncio.get_running_loop()
            self._input = self._source.subscribe(video_depth=1)
            self._task = asyncio.ensure_future(self._run(self._input))
            self._task.set_name(f"encoder:{self.session_id}:{self.codec}")
        return sub

    def unsubscribe(self, sub: Subscription[EncodedFrame]) -> None:
        """Drop a subscriber; the last one gone, encoding stops until the next one comes."""
        self.bus.unsubscribe(sub)
        if not self.bus.subscribers:
            self._stop()

    def request_keyframe(self) -> None:
        self._keyframe_wanted = True

    def _take_keyframe(self) -> bool:
        now = time.monotonic()
        if not self._keyframe_wanted or now - self._last_keyframe < KEYFRAME_MIN_GAP_S:
            return False
        self._keyframe_wanted = False
        self._last_keyframe = now
        return True

    def commit(self, index: int, rgb: np.ndarray) -> None:
        """Frame ``index`` will show ``rgb``: start encoding it (call in frame order).

        When the encoder thread is already three pictures behind (a stalled machine), the
        frame goes without a new picture: skipping inputs keeps the video stream decodable,
        where dropping encoded pictures would not.
        """
        self._next_index = index + 1
        if self._in_thread >= 3:
            self._pictures[index] = None
            return
        self._in_thread += 1
        future = self._thread.submit(self._video.encode, rgb, self._take_keyframe())
        future.add_done_callback(self._encoded)
        self._pictures[index] = future

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

    def _picture(self, frame: AVFrame) -> Picture | None:
        """The picture committed for ``frame``, or its own picture encoded now."""
        if frame.index in self._pictures:
            picture = self._pictures.pop(frame.index)
        else:
            self.commit(frame.index, frame.video)
            picture = self._pictures.pop(frame.index)
        for index in [i for i in self._pictures if i < frame.index]:
            del self._pictures[index]  # frames this encoder never saw published
        return picture

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
                picture = self._picture(frame)
                if picture is not None:
                    send_at = frame.published_at + self._audio.delay_s
                    self._pending.append((frame.index, picture, send_at))
                    self._flush()
        except ConnectionError:  # the session's bus closed: so do its viewers
            self.bus.close()
        except Exception:
            log.exception("session %s: the encoder failed; its viewers stop", self.session_id)
            self.bus.close()
        # Cancelled by _stop (the last viewer left), the bus stays open: a viewer who joins
        # before this task has wound down must not lose its subscription.

    def _stop(self) -> None:
        """Stop encoding (nobody subscribes); the task is awaited by :meth:`aclose`."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        if self._later is not None:
            self._later[0].cancel()
            self._later = None
        if self._input is not None:
            self._source.unsubscribe(self._input)
            self._input = None
        if self._task is not None:
            self._task.cancel()
            self._stopped.add(self._task)
            self._task.add_done_callback(self._stopped.discard)
            self._task = None
        self._pending.clear()
        self._pictures.clear()

    async def aclose(self) -> None:
        """Stop encoding and end every subscriber. Idempotent."""
        self._closed = True
        self._stop()
        if self._stopped:
            await asyncio.gather(*self._stopped, return_exceptions=True)
        self.bus.close()
        self._thread.shutdown(wait=False, cancel_futures=True)


class EncodeStage:
    """A session's encoders, one per codec, made on first request and closed with it."""

    def __init__(
        self, session_id: str, source: FrameBus[AVFrame], codec: Callable[[], VideoCodec]
    ) -> None:
        self._session_id = session_id
        self._source = source
        self._codec = codec  # the session's own codec, for requests that name none
        self._streams: dict[VideoCodec, EncodedStream] = {}
        self._closed = False

    def encoded(self, codec: VideoCodec | None = None) -> EncodedStream:
        codec = codec or self._codec()
        stream = self._streams.get(codec)
        if stream is None:
            if self._closed:
                raise ConnectionError(f"session {self._session_id} is closed")
            stream = EncodedStream(self._session_id, self._source, codec)
            self._streams[codec] = stream
        return stream

    def running(self) -> list[EncodedStream]:
        """The encoders at work now (those with a subscriber)."""
        return [s for s in self._streams.values() if s.running]

    async def aclose(self) -> None:
        self._closed = True
        for stream in self._streams.values():
            await stream.aclose()
