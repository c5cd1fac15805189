"""Audio/video sync measured on frames: mouth openness, voice and mouth onsets, their lags.

The live bench reads lip sync without knowing what was said: the test speech has sharp voice
onsets, the mouth region's grey-level spread rises when the lips open, and each voice onset is
paired with the nearest mouth onset. :class:`Published` keeps these measures for the frames a
session published (no pictures kept), so a long run costs little memory; a
:class:`FrameTap` fills one from the session's frame bus.
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass, field

import numpy as np

from models.audio import SAMPLES_PER_VIDEO_FRAME
from models.avatar import Avatar
from streamer.pipeline.frames import AVFrame, FrameBus


@dataclass(frozen=True)
class MouthRegion:
    """The lower-middle part of the avatar's mouth box, where the lips open."""

    rows: slice
    cols: slice

    @classmethod
    def of(cls, avatar: Avatar) -> MouthRegion:
        x0, y0, x1, y1 = (int(v) for v in avatar.boxes[0])
        w, h = x1 - x0, y1 - y0
        return cls(
            slice(y0 + int(0.45 * h), y0 + int(0.85 * h)),
            slice(x0 + int(0.25 * w), x0 + int(0.75 * w)),
        )

    def openness(self, rgb: np.ndarray) -> float:
        """Grey-level spread in the mouth region: open lips show dark and bright together."""
        grey = rgb[self.rows, self.cols].astype(np.float32).mean(axis=2)
        return float(grey.std())


def rms(samples: np.ndarray) -> float:
    x = samples.astype(np.float32)
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0


def onsets(times: np.ndarray, values: np.ndarray) -> list[float]:
    """Times where a signal rises through the middle of its low and high levels."""
    if len(values) < 4:
        return []
    low, high = np.percentile(values, 10), np.percentile(values, 90)
    if high - low <= 1e-6:
        return []
    mid = (low + high) / 2
    above = values > mid
    out = []
    for i in range(1, len(above)):
        if above[i] and not above[i - 1]:  # interpolated between the two samples
            share = (mid - values[i - 1]) / (values[i] - values[i - 1])
            out.append(float(times[i - 1] + share * (times[i] - times[i - 1])))
    return out


def activity(values: np.ndarray) -> np.ndarray:
    """Distance from the resting level (the median: the test speech is mostly pauses), so a
    mouth that opens shows as a rise whichever way the region's measure moves."""
    return np.abs(values - np.median(values)) if len(values) else values


def paired_lag_ms(voice: list[float], mouth: list[float], window_s: float = 0.4) -> list[float]:
    """For each voice onset, the nearest mouth onset within ``window_s``: mouth minus voice."""
    lags = []
    for a in voice:
        near = [v - a for v in mouth if -window_s / 2 <= v - a <= window_s]
        if near:
            lags.append(min(near, key=abs) * 1000.0)
    return lags


def p95(values: list[float]) -> float | None:
    return float(np.percentile(np.asarray(values), 95)) if values else None


def median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def rounded(value: float | None, digits: int = 1) -> float | None:
    """A figure as the bench reports it: rounded, or None when it was not measured."""
    return None if value is None else round(value, digits)


@dataclass
class Published:
    """What one session published, reduced to measures (no pictures kept)."""

    region: MouthRegion
    times: list[float] = field(default_factory=list)
    mouth: list[float] = field(default_factory=list)
    audio_rms: list[tuple[float, float]] = field(default_factory=list)  # two 20 ms halves
    silent: list[bool] = field(default_factory=list)
    audio_in: list[float | None] = field(default_factory=list)

    def add(self, frame: AVFrame) -> None:
        self.times.append(float(frame.published_at))
        self.mouth.append(self.region.openness(frame.video))
        half = SAMPLES_PER_VIDEO_FRAME // 2
        self.audio_rms.append((rms(frame.audio[:half]), rms(frame.audio[half:])))
        self.silent.append(not frame.audio.any() and frame.utterance_id is None)
        self.audio_in.append(frame.audio_in_at)

    def since(self, t: float) -> int:
        return int(np.searchsorted(np.asarray(self.times), t))

    def av_lag_ms(self, lo: float, hi: float) -> float | None:
        """Mouth onsets minus voice onsets on the publication clock, within [lo, hi)."""
        times = np.asarray(self.times)
        keep = (times >= lo) & (times < hi)
        if keep.sum() < 10:
            return None
        v_times = times[keep]
        mouth = np.asarray(self.mouth)[keep]
        halves = np.asarray(self.audio_rms)[keep]
        a_times = np.stack([v_times, v_times + 0.02], axis=1).reshape(-1)
        return median(
            paired_lag_ms(onsets(a_times, halves.reshape(-1)), onsets(v_times, activity(mouth)))
        )

    def onset_latency_ms(self, lo: float) -> list[float]:
        """Voice onset entering the session -> its mouth onset published."""
        start = self.since(lo)
        times = np.asarray(self.times[start:])
        if len(times) < 10:
            return []
        voice = np.asarray([a + b for a, b in self.audio_rms[start:]])
        mouth = np.asarray(self.mouth[start:])
        arrivals = self.audio_in[start:]
        out = []
        mouth_on = onsets(times, activity(mouth))
        for i, t in enumerate(times):
            if i == 0 or not (voice[i] > 0 and voice[i - 1] == 0):
                continue
            entered = arrivals[i]
            later = [m for m in mouth_on if t - 0.2 <= m <= t + 0.4]
            if entered is not None and later:
                out.append((later[0] - entered) * 1000.0)
        return out

    def latencies_ms(self, lo: float) -> list[float]:
        """Each frame's audio entering the session -> that frame published, from ``lo`` on."""
        return [
            (t - x) * 1000.0
            for x, t in zip(self.audio_in, self.times, strict=True)
            if x is not None and t >= lo
        ]


class FrameTap:
    """A subscription to a session's frame bus that records measures of every frame."""

    def __init__(self, bus: FrameBus[AVFrame], region: MouthRegion) -> None:
        self.data = Published(region)
        self._bus = bus
        # Every frame's video is kept until read; audio is read from the same frame.
        self._sub = bus.subscribe(video_depth=10_000, audio_depth=1)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                frame = await self._sub.next_video()
            except ConnectionError:
                return
            self.data.add(frame)

    async def aclose(self) -> None:
        self._bus.unsubscribe(self._sub)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
