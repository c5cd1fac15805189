"""The host's microphone as a WebRTC uplink: its audio, at 16 kHz, becomes a live utterance."""

from __future__ import annotations

import logging
from typing import Protocol

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from models.audio import SAMPLE_RATE

log = logging.getLogger(__name__)


class LiveStreamLike(Protocol):
    def push(self, samples16k: np.ndarray) -> None: ...

    def end(self) -> None: ...


class Speakable(Protocol):
    id: str

    def open_stream(self) -> LiveStreamLike: ...


def to_16k_mono(resampler: av.AudioResampler, frame: av.AudioFrame) -> np.ndarray:
    """A received audio frame (Opus decodes to 48 kHz stereo s16) as 16 kHz mono float32."""
    parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    if not parts:
        return np.zeros(0, np.float32)
    return (np.concatenate(parts).astype(np.float32) / 32768.0).astype(np.float32)


async def forward_microphone(session: Speakable, track: MediaStreamTrack) -> None:
    """Push the track's audio into a live stream of ``session`` until the track ends.

    The resampler keeps its state across frames (no clicks at frame edges); the stream is
    ended however this returns, so the utterance finishes and the avatar goes idle.
    """
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    stream = session.open_stream()
    try:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, av.AudioFrame)
            samples = to_16k_mono(resampler, frame)
            if samples.size:
                try:
                    stream.push(samples)
                except ValueError as exc:  # over the session's buffer budget: drop this bit
                    log.warning("session %s: microphone audio dropped: %s", session.id, exc)
    finally:
        stream.end()
        log.info("session %s: microphone uplink ended", session.id)
