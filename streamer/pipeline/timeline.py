"""A session's playout buffer: 16 kHz samples indexed by absolute session sample number.

Sample ``n`` plays at ``t0 + n / 16000`` on the session's clock. Speech is written ahead of
the clock by a fixed latency budget and read, a frame at a time, by the clock: what has not
been written when the clock reads it is silence, and stays silence (later writes go after the
read position), so playback never waits for late audio and never drifts.

The generator's audio window looks 60 ms (+12.5 ms of analysis window) into the future, so
the clock *commits* samples ahead of the ones it plays; :meth:`Timeline.commit` moves that
read position. :meth:`Timeline.cut` drops everything from a position on (an interrupt) and
hides what came before it from later windows, so the very next frame is true idle.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from models.audio import SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME

# Samples kept behind the read position: a window and the voice gate's look back
# (streamer.pipeline.gate.REFERENCE_S) before it.
HISTORY = 5 * SAMPLE_RATE
# A live stream's piece later than this (against the stream's own schedule) is taken as the
# stream resuming after a pause, not as a late piece: it gets the whole latency budget again.
RESUME = SAMPLE_RATE * 3 // 10


class TimelineFull(RuntimeError):
    """Writing would buffer more audio ahead of the clock than the session allows."""


@dataclass(frozen=True)
class Span:
    """Samples ``[start, end)`` of one utterance, written at ``arrived_at`` (the clock's time)."""

    start: int
    end: int
    utterance_id: str
    arrived_at: float


class Timeline:
    """A ring buffer of float32 samples plus the utterance spans written into it."""

    def __init__(self, max_ahead_s: float = 60.0) -> None:
        self.max_ahead = int(max_ahead_s * SAMPLE_RATE)
        self._capacity = self.max_ahead + 2 * HISTORY
        self._data = np.zeros(self._capacity, np.float32)
        self.write_pos = 0  # end of the written audio
        self.read_pos = 0  # samples before this are committed: never written again ...
        self.heard_pos = 0  # ... except by a live stream's next piece, up to this: played
        self.floor = 0  # samples before this read as silence (history hidden by a cut)
        self._spans: collections.deque[Span] = collections.deque()

    def ahead(self, now_pos: int) -> int:
        """Samples written beyond the one playing now."""
        return max(0, self.write_pos - now_pos)

    def write(
        self,
        samples: np.ndarray,
        *,
        now_pos: int,
        latency: int,
        utterance_id: str,
        arrived_at: float,
        contiguous: bool = False,
    ) -> int:
        """Write after what is already there, never before ``now_pos + latency`` nor into the
        committed past; returns the absolute position of the piece's first sample.

        ``contiguous``: the next piece of a live stream. It goes right after the stream's
        previous piece whenever that has not been played yet, even if it came late and the
        windows of a few frames were taken without it: their mouths saw a little less of the
        future, but the voice has no gap, where a gap would leave the rest of the stream that
        much later for good. A piece later still starts at the first sample not yet played:
        every sample it brings plays (none was accepted to be thrown away), and the silence
        that played in its place is the delay the stream now carries, which the feeder's
        catch-up gives back from its pauses. Only a piece more than ``RESUME`` behind its
        schedule (the client paused) starts over a whole latency budget ahead."""
        x = np.asarray(samples, np.float32).reshape(-1)
        late = now_pos + latency - self.write_pos  # how far behind its own schedule it came
        playing = max(self.heard_pos, now_pos)  # samples before this have been played
        if contiguous and self.write_pos >= playing:
            start = self.write_pos
        elif contiguous and late <= RESUME:
            start = playing  # later still: after the silence that played in its place
        else:  # a new utterance, or a stream resuming after a pause: the full budget
            start = max(self.write_pos, self.read_pos, now_pos + latency)
        end = start + len(x)
        if end - min(now_pos, self.read_pos) > self.max_ahead:
            raise TimelineFull(
                f"more than {self.max_ahead / SAMPLE_RATE:.0f} s of audio would be buffered"
            )
        if not len(x):
            return start
        self._fill(self.write_pos, start, None)  # a gap is silence (the slots may hold old data)
        self._fill(start, end, x)
        self.write_pos = end
        self._spans.append(Span(start, end, utterance_id, arrived_at))
        return start

    def commit(self, upto: int) -> None:
        """The clock has read everything before ``upto`` for its windows (what was not
        written reads as silence): only a live stream's next piece may still go there."""
        if upto <= self.read_pos:
            return
        self.read_pos = upto
        horizon = self.read_pos - HISTORY
        while self._spans and self._spans[0].end <= horizon:
            self._spans.popleft()

    def hear(self, upto: int) -> None:
        """The clock has taken the samples before ``upto`` to play: final for every writer."""
        self.heard_pos = max(self.heard_pos, upto)

    def samples(self, lo: int, hi: int) -> np.ndarray:
        """Samples ``[lo, hi)``; silence outside ``[floor, write_pos)``."""
        out = np.zeros(hi - lo, np.float32)
        a, b = max(lo, self.floor, 0), min(hi, self.write_pos)
        if b > a:
            if a < self.read_pos - HISTORY:
                raise ValueError("samples older than the kept history were requested")
            out[a - lo : b - lo] = self._slice(a, b)
        return out

    def spans(self, lo: int, hi: int) -> list[Span]:
        return [s for s in self._spans if s.start < hi and s.end > lo and s.end > self.floor]

    def cut(self, pos: int) -> None:
        """Drop all audio from ``pos`` on and hide the history before it from later reads."""
        if self.write_pos > pos:
            self._fill(pos, self.write_pos, None)
        self.write_pos = min(self.write_pos, pos)
        self.read_pos = min(self.read_pos, pos)
        self.heard_pos = min(self.heard_pos, pos)
        self.floor = max(self.floor, pos)
        kept: collections.deque[Span] = collections.deque()
        for span in self._spans:
            if span.start >= pos:
                continue
            kept.append(
                span
                if span.end <= pos
                else Span(span.start, pos, span.utterance_id, span.arrived_at)
            )
        self._spans = kept

    def _fill(self, lo: int, hi: int, values: np.ndarray | None) -> None:
        if hi <= lo:
            return
        a = lo % self._capacity
        n = hi - lo
        first = min(n, self._capacity - a)
        if values is None:
            self._data[a : a + first] = 0.0
            self._data[: n - first] = 0.0
        else:
            self._data[a : a + first] = values[:first]
            self._data[: n - first] = values[first:]

    def _slice(self, lo: int, hi: int) -> np.ndarray:
        a = lo % self._capacity
        n = hi - lo
        first = min(n, self._capacity - a)
        if first == n:
            return self._data[a : a + n]
        return np.concatenate([self._data[a:], self._data[: n - first]])


def frame_range(k: int) -> tuple[int, int]:
    return k * SAMPLES_PER_VIDEO_FRAME, (k + 1) * SAMPLES_PER_VIDEO_FRAME
