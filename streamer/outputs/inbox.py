"""The hand-off from the event loop to an output's muxing thread, never blocking the loop.

The loop puts each encoded picture and each AV frame's audio here as it is published; the
thread takes them in order. When the thread cannot keep up (a stalled network, a slow
disk), pictures are dropped first: the queue of pictures is short (1 s), and a dropped
picture marks the stream as broken until the next key frame, since the pictures after it
would not decode. Audio waits longer (5 s) and is only lost when the thread has stopped
sending altogether.
"""

from __future__ import annotations

import collections
import threading

from streamer.pipeline.codecs import EncodedFrame
from streamer.pipeline.frames import FPS, AVFrame

VIDEO_DEPTH = FPS  # 1 s of pictures
AUDIO_DEPTH = 5 * FPS  # 5 s of audio


class Inbox:
    """Two bounded queues, one condition; ``get`` hands out the older head first."""

    def __init__(self, video_depth: int = VIDEO_DEPTH, audio_depth: int = AUDIO_DEPTH) -> None:
        self._video: collections.deque[EncodedFrame] = collections.deque()
        self._audio: collections.deque[AVFrame] = collections.deque()
        self._video_depth = video_depth
        self._audio_depth = audio_depth
        self._ready = threading.Condition()
        self.video_lost = False  # a picture was dropped: wait for a key frame
        self.video_dropped = 0
        self.audio_dropped = 0
        self.closed = False

    def put_video(self, frame: EncodedFrame) -> None:
        with self._ready:
            if len(self._video) >= self._video_depth:
                self._video.popleft()
                self.video_dropped += 1
                self.video_lost = True
            self._video.append(frame)
            self._ready.notify()

    def put_audio(self, frame: AVFrame) -> None:
        with self._ready:
            if len(self._audio) >= self._audio_depth:
                self._audio.popleft()
                self.audio_dropped += 1
            self._audio.append(frame)
            self._ready.notify()

    def lose_video(self) -> None:
        """A picture was lost before it got here (the encoder's queue for this output)."""
        with self._ready:
            self.video_lost = True

    def get(self, timeout: float) -> EncodedFrame | AVFrame | None:
        """The next item (pictures and audio merged by frame index), or None on timeout or
        once closed."""
        with self._ready:
            if not self._video and not self._audio and not self.closed:
                self._ready.wait(timeout)
            if self.closed:
                return None
            if self._video and (not self._audio or self._video[0].index <= self._audio[0].index):
                return self._video.popleft()
            if self._audio:
                return self._audio.popleft()
            return None

    def take_loss(self) -> bool:
        """Whether a picture was lost since the last call."""
        with self._ready:
            lost, self.video_lost = self.video_lost, False
            return lost

    def clear(self) -> None:
        with self._ready:
            self._video.clear()
            self._audio.clear()
            self.video_lost = False

    def close(self) -> None:
        with self._ready:
            self.closed = True
            self._video.clear()
            self._audio.clear()
            self._ready.notify_all()
