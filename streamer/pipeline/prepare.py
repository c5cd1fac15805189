"""Frame preparation: what frame ``k`` plays and what its generator sees, from the timeline.

Preparing frame ``k`` commits its mel window's samples (later writes go after them), takes
its 40 ms of audio to play, and names the utterances in that audio: the one with the most
samples is the frame's ``utterance_id``. A window of digital silence gets no mel at all, so
the renderer can reuse the idle mouth. What the generator hears passes the voice gate first
(:mod:`streamer.pipeline.gate`): room tone far under the voice reaches it as silence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from models.audio import (
    SAMPLE_RATE,
    SAMPLES_PER_VIDEO_FRAME,
    WindowConfig,
    window_mel,
    window_range,
)
from streamer.pipeline.gate import history_range, voice_gate
from streamer.pipeline.timeline import Timeline, frame_range


@dataclass(eq=False)
class PreparedFrame:
    """Frame ``index``'s audio and mel window, taken from the timeline."""

    index: int
    audio: np.ndarray  # int16 (640,)
    mel: np.ndarray | None  # None: digital silence (the idle mouth)
    counts: dict[str, int] = field(default_factory=dict)  # utterance id -> its samples here
    utterance_id: str | None = None
    # When the frame's audio entered the session (loop time): all of it, and live streams'.
    audio_in_at: float | None = None
    live_in_at: float | None = None

    def silence(self) -> None:
        """Play nothing after all (an interrupt): silent audio, no utterance, idle mouth."""
        self.audio = np.zeros(SAMPLES_PER_VIDEO_FRAME, np.int16)
        self.mel = None
        self.counts, self.utterance_id = {}, None
        self.audio_in_at = self.live_in_at = None


def prepare_frame(
    timeline: Timeline,
    k: int,
    window: WindowConfig,
    is_live: Callable[[str], bool] = lambda _: False,
) -> PreparedFrame:
    """Take frame ``k`` from ``timeline``; ``is_live`` names live-stream utterances."""
    lo, hi = window_range(k, window)
    timeline.commit(hi)
    a0, a1 = frame_range(k)
    pcm = timeline.samples(a0, a1)
    timeline.hear(a1)
    audio = np.clip(np.rint(pcm * 32767.0), -32768, 32767).astype(np.int16)
    frame = PreparedFrame(k, audio, None)
    for span in timeline.spans(a0, a1):
        s0, s1 = max(a0, span.start), min(a1, span.end)
        frame.counts[span.utterance_id] = frame.counts.get(span.utterance_id, 0) + (s1 - s0)
        # A span written at once plays from its start on: its later samples "arrive" as
        # they would have in real time, so a whole file does not count as late.
        arrived = span.arrived_at + (s0 - span.start) / SAMPLE_RATE
        frame.audio_in_at = _earliest(frame.audio_in_at, arrived)
        if is_live(span.utterance_id):
            frame.live_in_at = _earliest(frame.live_in_at, arrived)
    samples = voice_gate(timeline.samples(lo, hi), timeline.samples(*history_range(lo)))
    frame.mel = window_mel(samples, k, window) if samples.any() else None
    if frame.counts:
        frame.utterance_id = max(frame.counts, key=lambda u: frame.counts[u])
    return frame


def _earliest(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)
