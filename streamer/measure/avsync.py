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

import cv2
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


THUMB = 16  # pixels a side of the thumbnail that identifies a picture


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """A picture reduced to THUMB x THUMB grey levels (one row): what the A/V alignment
    follows, robust to a codec's noise."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA).reshape(-1)


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


STEP_S = 0.005  # the grid both measures are resampled on


Series = tuple[np.ndarray, np.ndarray]  # (times, values): one measure of a stream


def _sorted(series: Series) -> Series:
    times, values = (np.asarray(a, np.float64) for a in series)
    order = np.argsort(times)
    return times[order], values[order]


def coarse_shift_s(ref: Series, other: Series) -> float | None:
    """How much later ``other`` shows ``ref``'s signal, in seconds, to the grid's step: the
    peak of their full cross-correlation. The two may run on unrelated clocks (a receiver's
    sender-report time against the server's publication time)."""
    from scipy.signal import correlate

    (rt, rv), (ot, ov) = _sorted(ref), _sorted(other)
    if len(rt) < 10 or len(ot) < 10:
        return None
    a = np.interp(np.arange(rt[0], rt[-1], STEP_S), rt, rv)
    b = np.interp(np.arange(ot[0], ot[-1], STEP_S), ot, ov)
    xc = correlate(b - b.mean(), a - a.mean(), mode="full", method="fft")
    lag = int(np.argmax(xc)) - (len(a) - 1)
    return float(ot[0] - rt[0] + lag * STEP_S)


def _covered(times: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Whether each of ``at`` lies within 1.5 sample spacings of a sample of ``times``
    (sorted): a frame that never arrived leaves a gap that interpolation must not fill."""
    reach = 1.5 * float(np.median(np.diff(times)))
    i = np.clip(np.searchsorted(times, at), 1, len(times) - 1)
    nearest = np.minimum(np.abs(at - times[i - 1]), np.abs(times[i] - at))
    return np.asarray(nearest <= reach)


def _correlations(
    ref: Series,
    other: Series,
    around_s: float,
    shifts_ms: np.ndarray,
) -> np.ndarray | None:
    """Pearson correlation of ``ref`` with ``other`` moved back by ``around_s`` + each shift,
    over ``ref``'s span that every shift keeps inside ``other``'s, leaving out the gaps of
    either (frames lost on the way); values may have several columns (each correlated alone,
    their correlations weighted by their variance)."""
    (rt, rv), (ot, ov) = _sorted(ref), _sorted(other)
    if len(rt) < 10 or len(ot) < 10:
        return None
    rv, ov = rv.reshape(len(rt), -1), ov.reshape(len(ot), -1)
    lo, hi = shifts_ms[0] / 1000.0, shifts_ms[-1] / 1000.0
    grid = np.arange(rt[0], rt[-1], STEP_S)
    grid = grid[(grid + around_s + lo >= ot[0]) & (grid + around_s + hi <= ot[-1])]
    grid = grid[_covered(rt, grid)]
    if len(grid) < 200:
        return None
    moved = [grid + around_s + d / 1000.0 for d in shifts_ms]
    kept = [_covered(ot, at) for at in moved]
    if min(int(k.sum()) for k in kept) < 200:
        return None
    total, weight = np.zeros(len(shifts_ms)), 0.0
    for c in range(rv.shape[1]):
        whole = np.interp(grid, rt, rv[:, c])
        power = float(np.var(whole))
        if power <= 0:
            continue
        for i, (at, keep) in enumerate(zip(moved, kept, strict=True)):
            a = whole[keep] - whole[keep].mean()
            b = np.interp(at[keep], ot, ov[:, c])
            b = b - b.mean()
            norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
            total[i] += power * (float((a * b).sum()) / norm if norm > 0 else 0.0)
        weight += power
    return total / weight if weight > 0 else None


def alignment(
    ref: Series,
    other: Series,
    around_s: float = 0.0,
    max_ms: float = 400.0,
) -> tuple[float, float] | None:
    """(shift in ms, its correlation): how much later ``other`` (times, values) shows the same
    signal as ``ref``, within ``around_s`` +- ``max_ms``; both resampled linearly, 1 ms
    shifts, the best refined between its neighbours. None where too little overlaps.

    Both sides are the same frames seen in two places (published, and at a receiver), so the
    whole course of a measure lines up, not only its onsets: pictures repeated by a busy
    session are repeated on both sides and shift nothing."""
    shifts = np.arange(-max_ms, max_ms + 1.0, 1.0)
    corr = _correlations(ref, other, around_s, shifts)
    if corr is None:
        return None
    best = int(np.argmax(corr))
    found = float(shifts[best])
    if 0 < best < len(shifts) - 1:  # the parabola's vertex through the best three
        y0, y1, y2 = corr[best - 1 : best + 2]
        bend = y0 - 2.0 * y1 + y2
        if bend < 0:
            found += 0.5 * (y0 - y2) / bend
    return float(around_s * 1000.0 + found), float(corr[best])


def principal(published: Series, received: Series, k: int = 4) -> tuple[Series, Series]:
    """Both sides' pictures (one row of thumbnail pixels each) reduced to the ``k`` directions
    in which the published ones vary most: head sway, blinks, the mouth opening."""
    (pt, pv), (rt, rv) = published, received
    pv, rv = np.asarray(pv, np.float64), np.asarray(rv, np.float64)
    if len(pv) < k or len(rv) == 0:
        return published, received
    mean = pv.mean(axis=0)
    _, _, axes = np.linalg.svd(pv - mean, full_matrices=False)
    basis = axes[:k].T
    return (pt, (pv - mean) @ basis), (rt, (rv - mean) @ basis)


def av_offset_by_alignment(
    published: tuple[Series, Series], received: tuple[Series, Series], min_corr: float = 0.6
) -> dict[str, float | None]:
    """The A/V offset at a receiver in ms (``offset``), from the (video, audio) measures of
    the frames published and of the same frames received: how much later the receiver places
    the pictures than the voice, against how the session paired them. Positive: the
    receiver's mouth is late. Video is a thumbnail per picture, audio a level per 20 ms.

    Also each stream's ``*_shift`` (which includes the offset between the two clocks, which
    the difference cancels) and ``*_corr``; a stream correlating under ``min_corr`` is not
    the same signal and gives no figure. The voice is found anywhere (the clocks may be
    unrelated), the pictures within 400 ms of it."""
    out: dict[str, float | None] = dict.fromkeys(
        ("offset", "video_shift", "audio_shift", "video_corr", "audio_corr")
    )
    coarse = coarse_shift_s(published[1], received[1])
    if coarse is None:
        return out
    audio = alignment(published[1], received[1], coarse, max_ms=3000.0 * STEP_S)
    if audio is None:
        return out
    out["audio_shift"], out["audio_corr"] = audio
    video = alignment(*principal(published[0], received[0]), audio[0] / 1000.0)
    if video is not None:
        out["video_shift"], out["video_corr"] = video
    if video is not None and min(audio[1], video[1]) >= min_corr:
        out["offset"] = video[0] - audio[0]
    return out


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
    thumbs: list[np.ndarray] = field(default_factory=list)
    audio_rms: list[tuple[float, float]] = field(default_factory=list)  # two 20 ms halves
    silent: list[bool] = field(default_factory=list)
    audio_in: list[float | None] = field(default_factory=list)

    def add(self, frame: AVFrame) -> None:
        self.times.append(float(frame.published_at))
        self.mouth.append(self.region.openness(frame.video))
        self.thumbs.append(thumbnail(frame.video))
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

    def series(self, lo: float, hi: float) -> tuple[Series, Series]:
        """((times, picture thumbnails), (times, voice level per 20 ms)) of the frames
        published in [lo, hi), on the publication clock."""
        times = np.asarray(self.times)
        keep = (times >= lo) & (times < hi)
        v_times = times[keep]
        halves = np.asarray(self.audio_rms).reshape(-1, 2)[keep]
        a_times = np.stack([v_times, v_times + 0.02], axis=1).reshape(-1)
        thumbs = np.asarray(self.thumbs, np.float32).reshape(len(times), -1)[keep]
        return (v_times, thumbs), (a_times, halves.reshape(-1))

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
