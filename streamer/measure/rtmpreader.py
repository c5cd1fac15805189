"""An RTMP player for the soak: PyAV pulls the stream from nginx, decodes it and keeps measures.

Each connection is a :class:`Segment`: for every decoded picture its arrival, its timestamp
and the mouth's openness (:class:`~streamer.measure.avsync.MouthRegion`), for the decoded
AAC its 20 ms loudness and the span of each frame. Lips against voice is then read on the
stream's own timestamps, as a player syncs them: voice onsets paired with mouth onsets
(:func:`~streamer.measure.avsync.paired_lag_ms`). When the stream drops (nginx restarted)
the reader connects again, as a player would, and starts a new segment.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np

from streamer.measure.avsync import MouthRegion, activity, median, onsets, paired_lag_ms, rounded
from streamer.pipeline.frames import FPS

CHUNK_S = 0.02  # loudness is measured on 20 ms of audio, as the live bench does
RETRY_S = 0.2
OPEN_TIMEOUT_S = 5.0


@dataclass
class Segment:
    """What one connection of the reader brought."""

    video: list[tuple[float, float, float]] = field(default_factory=list)  # arrival, pts, mouth
    loudness: list[tuple[float, float]] = field(default_factory=list)  # 20 ms chunk pts, rms
    audio: list[tuple[float, float]] = field(default_factory=list)  # frame start s, length s

    def figures(self) -> dict[str, Any]:
        """Frames per second on the stream's clock and the wall's, the longest picture and
        audio gaps, and how much of the stream's time the audio covers."""
        if len(self.video) < 2:
            return {"frames": len(self.video)}
        arrival = np.asarray([a for a, _, _ in self.video])
        pts = np.asarray([p for _, p, _ in self.video])
        span = float(pts[-1] - pts[0])
        ends = [s + n for s, n in self.audio]
        audio_gaps = [b[0] - e for e, b in zip(ends, self.audio[1:], strict=False)]
        return {
            "frames": len(self.video),
            "seconds": round(span, 2),
            "fps": round((len(pts) - 1) / span, 3) if span > 0 else None,
            "fps_wall": round((len(pts) - 1) / float(arrival[-1] - arrival[0]), 3),
            "frames_missing_ratio": round(max(0.0, 1 - len(pts) / (span * FPS + 1)), 4),
            "video_gap_ms_max": round(float(np.diff(pts).max()) * 1000.0, 1),
            "audio_gap_ms_max": round(max(audio_gaps, default=0.0) * 1000.0, 2),
            "audio_s": round(sum(n for _, n in self.audio), 2),
        }

    def lip_lags_ms(self, lo: float = -np.inf, hi: float = np.inf) -> list[float]:
        """Mouth onset minus voice onset, each voice onset paired with the nearest mouth
        onset, for stream times in [lo, hi)."""
        video = [(p, m) for _, p, m in self.video if lo <= p < hi]
        voice = [(p, r) for p, r in self.loudness if lo <= p < hi]
        if len(video) < 10 or len(voice) < 10:
            return []
        v_at, mouth = (np.asarray(x) for x in zip(*video, strict=True))
        a_at, loud = (np.asarray(x) for x in zip(*voice, strict=True))
        return paired_lag_ms(onsets(a_at, loud), onsets(v_at, activity(mouth)))


def lips_figures(segments: list[Segment], skip_s: float) -> dict[str, Any]:
    """Lips against voice over every segment, leaving out each one's first ``skip_s``."""
    lags = []
    for segment in segments:
        if segment.video:
            lags += segment.lip_lags_ms(segment.video[0][1] + skip_s)
    return {
        "lips_lag_ms_median": rounded(median(lags)),
        "lips_lag_ms_p10_p90": [round(float(x), 1) for x in np.percentile(lags, [10, 90])]
        if lags
        else None,
        "voice_onsets_paired": len(lags),
    }


class RtmpReader:
    """Plays ``url`` in a thread until :meth:`stop`, connecting again whenever it drops."""

    def __init__(self, url: str, region: MouthRegion) -> None:
        self.url = url
        self.region = region
        self.segments: list[Segment] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtmp-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(OPEN_TIMEOUT_S * 3)

    def first_frame_after(self, t: float) -> float | None:
        """The arrival (``time.monotonic()``) of the first picture after ``t``, if any yet."""
        for segment in reversed(self.segments):
            later = [a for a, _, _ in segment.video if a > t]
            if later:
                return later[0]
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._play(Segment())
            except (av.FFmpegError, OSError) as exc:
                self.errors.append(str(exc))
            self._stop.wait(RETRY_S)

    def _play(self, segment: Segment) -> None:
        with av.open(self.url, timeout=OPEN_TIMEOUT_S) as container:
            self.segments.append(segment)
            for packet in container.demux():
                if self._stop.is_set():
                    return
                if packet.pts is None or packet.time_base is None:
                    continue
                for frame in packet.decode():
                    self._take(segment, frame)

    def _take(self, segment: Segment, frame: Any) -> None:
        when = float(frame.pts * frame.time_base)
        if isinstance(frame, av.VideoFrame):
            mouth = self.region.openness(frame.to_ndarray(format="rgb24"))
            segment.video.append((time.monotonic(), when, mouth))
        elif isinstance(frame, av.AudioFrame):
            samples = frame.to_ndarray().astype(np.float32)
            segment.audio.append((when, frame.samples / frame.sample_rate))
            step = round(CHUNK_S * frame.sample_rate)
            for i in range(0, frame.samples - step + 1, step):
                chunk = samples[:, i : i + step]
                loud = float(np.sqrt(np.mean(chunk * chunk)))
                segment.loudness.append((when + i / frame.sample_rate, loud))
