"""A session's figures, as ``GET /v1/sessions/{id}`` reports them.

Two latencies, because they mean different things:

- ``speech_to_mouth_ms``: for live streams only (WebSocket PCM, the microphone), from a
  sample entering the session to the frame carrying it leaving it.
- ``first_audible_ms``: for queued speech (text, audio files), from the request to the
  first audible frame of the utterance. Text is synthesised and written seconds ahead of
  its playing, so "speech to mouth" would be that buffer, not a lag anyone hears.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WINDOW = 250  # figures are over the last this many values


def _recent() -> collections.deque[float]:
    return collections.deque(maxlen=WINDOW)


@dataclass
class SessionStats:
    frames: int = 0
    generated: int = 0
    dropped: int = 0
    intervals_ms: collections.deque[float] = field(default_factory=_recent)
    latency_ms: collections.deque[float] = field(default_factory=_recent)  # live streams
    first_audible_ms: collections.deque[float] = field(default_factory=_recent)  # queued
    lead_ms: float = 0.0  # how long before its due time a frame is prepared now (adaptive)

    def record(
        self, fresh: bool, interval: float | None, latency: float | None, audible: list[float]
    ) -> None:
        """One published frame: fresh or a repeated picture, its interval after the previous
        one, its live stream's latency and the queued utterances it made audible (ms)."""
        self.frames += 1
        if fresh:
            self.generated += 1
        else:
            self.dropped += 1
        if interval is not None:
            self.intervals_ms.append(interval)
        if latency is not None:
            self.latency_ms.append(latency)
        self.first_audible_ms.extend(audible)

    def figures(self) -> dict[str, Any]:
        """The frame and latency figures of the session's JSON."""
        intervals = self.intervals_ms
        fps = 1000.0 / float(np.mean(intervals)) if intervals else 0.0
        return {
            "frames": self.frames,
            "frames_generated": self.generated,
            "frames_dropped": self.dropped,
            "fps": round(fps, 2),
            "frame_interval_ms_p95": _round(percentile(intervals, 95)),
            "speech_to_mouth_ms_p50": _round(percentile(self.latency_ms, 50)),
            "speech_to_mouth_ms_p95": _round(percentile(self.latency_ms, 95)),
            "first_audible_ms_p50": _round(percentile(self.first_audible_ms, 50)),
            "first_audible_ms_p95": _round(percentile(self.first_audible_ms, 95)),
            "frame_lead_ms": self.lead_ms,
        }


def percentile(values: collections.deque[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if values else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
