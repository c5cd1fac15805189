"""Streaming mel windows: push audio as it arrives, get the generator's input per video frame."""

from __future__ import annotations

import numpy as np

from models.audio import (
    N_MELS,
    SAMPLES_PER_VIDEO_FRAME,
    MelStream,
    WindowConfig,
    silence_mel,
)


class MelWindower:
    """Equal to ``windows(log_mel_padded(x), ceil(len(x) / 640), cfg)`` on the whole signal,
    computed incrementally: a window comes out as soon as its future mel frames exist, and
    only the mel frames later windows still need are kept."""

    def __init__(self, cfg: WindowConfig | None = None) -> None:
        self.cfg = cfg or WindowConfig()
        self._stream = MelStream()
        self._mel = np.zeros((0, N_MELS), np.float32)
        self._offset = 0  # absolute index of self._mel[0]
        self._next = 0  # next video frame to emit
        self._samples = 0
        self._silence = silence_mel()

    @property
    def frames_emitted(self) -> int:
        return self._next

    @property
    def samples_received(self) -> int:
        return self._samples

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Windows (k, cfg.length, N_MELS) for the video frames that became complete."""
        x = np.asarray(samples, np.float32).reshape(-1)
        self._samples += len(x)
        self._append(self._stream.push(x))
        return self._emit(final=False)

    def flush(self) -> np.ndarray:
        """End of the signal: the windows of every remaining video frame, silence-padded."""
        self._append(self._stream.flush())
        return self._emit(final=True)

    def _append(self, mel: np.ndarray) -> None:
        if len(mel):
            self._mel = np.concatenate([self._mel, mel])

    def _emit(self, final: bool) -> np.ndarray:
        cfg = self.cfg
        available = self._offset + len(self._mel)
        total = -(-self._samples // SAMPLES_PER_VIDEO_FRAME)
        out: list[np.ndarray] = []
        while self._next < total if final else cfg.mel_frames_needed(self._next) <= available:
            out.append(self._window(self._next))
            self._next += 1
        keep_from = cfg.centre(self._next) - cfg.past - self._offset
        if keep_from > 0:
            self._mel = self._mel[keep_from:]
            self._offset += keep_from
        if not out:
            return np.zeros((0, cfg.length, N_MELS), np.float32)
        return np.stack(out)

    def _window(self, k: int) -> np.ndarray:
        cfg = self.cfg
        lo = cfg.centre(k) - cfg.past - self._offset
        hi = lo + cfg.length
        window = np.empty((cfg.length, N_MELS), np.float32)
        window[:] = self._silence
        src_lo, src_hi = max(lo, 0), min(hi, len(self._mel))
        if src_hi > src_lo:
            window[src_lo - lo : src_hi - lo] = self._mel[src_lo:src_hi]
        return window
