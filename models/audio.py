"""The one mel-spectrogram definition, shared by training and the server.

Frame ``i`` is centred on sample ``i * HOP`` and covers samples
``[i * HOP - WIN // 2, i * HOP + WIN // 2)``; samples before the start are zeros.
A frame is therefore complete once sample ``i * HOP + WIN // 2`` has arrived, which is
the whole look-ahead of the features (12.5 ms).  :func:`log_mel` on a whole signal and
:class:`MelStream` fed the same signal in chunks of any size give identical arrays: both
compute every frame with the same float64 arithmetic and round to float32 at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16_000
HOP = 160  # 10 ms: 4 mel frames per 40 ms video frame
WIN = 400  # 25 ms analysis window
N_FFT = 512
N_MELS = 80
F_MIN = 55.0
F_MAX = 7_600.0
LOG_FLOOR = 1e-5
MEL_PER_VIDEO_FRAME = 4
FPS = 25
SAMPLES_PER_VIDEO_FRAME = SAMPLE_RATE // FPS  # 640


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@lru_cache(maxsize=1)
def mel_basis() -> np.ndarray:
    """Triangular HTK-style filters, shape (N_MELS, N_FFT // 2 + 1), float64."""
    bins = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    low, high = _hz_to_mel(np.array(F_MIN)), _hz_to_mel(np.array(F_MAX))
    edges = _mel_to_hz(np.linspace(low, high, N_MELS + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters *= 2.0 / (upper - lower)  # equal area per filter
    return filters


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    return np.hanning(WIN + 1)[:-1]  # periodic Hann


def _frames_to_mel(frames: np.ndarray) -> np.ndarray:
    """(n, WIN) float64 samples -> (n, N_MELS) float32 log-mel."""
    spectrum = np.fft.rfft(frames * _window(), n=N_FFT, axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    # Row by row so that the result never depends on how many frames share one call.
    mel = np.stack([mel_basis() @ row for row in power]) if len(power) else np.zeros((0, N_MELS))
    return np.log10(np.maximum(mel, LOG_FLOOR)).astype(np.float32)


def n_frames(n_samples: int) -> int:
    """Number of complete mel frames for a signal of ``n_samples`` samples."""
    if n_samples < WIN // 2:
        return 0
    return (n_samples - WIN // 2) // HOP + 1


def log_mel(samples: np.ndarray) -> np.ndarray:
    """Log-mel of a whole 16 kHz mono signal: (n_frames(len), N_MELS) float32."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    count = n_frames(len(x))
    if count == 0:
        return np.zeros((0, N_MELS), np.float32)
    padded = np.concatenate([np.zeros(WIN // 2), x])
    idx = np.arange(count)[:, None] * HOP + np.arange(WIN)[None, :]
    return _frames_to_mel(padded[idx])


def log_mel_padded(samples: np.ndarray) -> np.ndarray:
    """Log-mel of a finished signal, zero-padded at the end so every sample is covered.

    Gives ``ceil(len / HOP)`` frames (at least one): the frames a stream would emit
    after :meth:`MelStream.flush`.
    """
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    total = max(1, -(-len(x) // HOP))
    need = (total - 1) * HOP + WIN // 2
    return log_mel(np.concatenate([x, np.zeros(max(0, need - len(x)))]))


class MelStream:
    """Incremental :func:`log_mel`: push samples in chunks of any size, get new frames."""

    def __init__(self) -> None:
        self._buffer = np.zeros(WIN // 2, np.float64)  # the implicit left padding
        self._emitted = 0
        self._received = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add samples; return the mel frames that became complete, (k, N_MELS)."""
        x = np.asarray(samples, dtype=np.float64).reshape(-1)
        self._received += len(x)
        self._buffer = np.concatenate([self._buffer, x])
        count = n_frames(self._received) - self._emitted
        if count <= 0:
            return np.zeros((0, N_MELS), np.float32)
        idx = np.arange(count)[:, None] * HOP + np.arange(WIN)[None, :]
        out = _frames_to_mel(self._buffer[idx])
        self._emitted += count
        self._buffer = self._buffer[count * HOP :]
        return out

    def flush(self) -> np.ndarray:
        """End of signal: pad with zeros so the last samples get frames too."""
        total = max(1, -(-self._received // HOP))
        missing = total - self._emitted
        if missing <= 0:
            return np.zeros((0, N_MELS), np.float32)
        pad = (total - 1) * HOP + WIN // 2 - self._received
        return self.push(np.zeros(max(0, pad)))


@dataclass(frozen=True)
class WindowConfig:
    """Which mel frames the generator sees for one video frame.

    Video frame ``k`` spans ``[40k, 40k + 40)`` ms; its centre is mel frame ``4k + 2``.
    The window holds ``past`` frames before the centre, the centre, and ``future`` after:
    with the defaults 17 + 1 + 6 = 24 frames = 240 ms, of which 60 ms (+12.5 ms analysis
    half-window) lie in the future: the only latency the generator adds.
    """

    past: int = 17
    future: int = 6

    @property
    def length(self) -> int:
        return self.past + 1 + self.future

    def centre(self, video_frame: int) -> int:
        return video_frame * MEL_PER_VIDEO_FRAME + MEL_PER_VIDEO_FRAME // 2

    def mel_frames_needed(self, video_frame: int) -> int:
        """Mel frames that must exist before ``video_frame`` can be generated."""
        return self.centre(video_frame) + self.future + 1


def silence_mel() -> np.ndarray:
    """The mel frame of digital silence (the value used to pad windows)."""
    return np.full(N_MELS, np.log10(LOG_FLOOR), np.float32)


def window(mel: np.ndarray, video_frame: int, cfg: WindowConfig) -> np.ndarray:
    """The (cfg.length, N_MELS) window for one video frame, silence-padded at the edges."""
    c = cfg.centre(video_frame)
    lo, hi = c - cfg.past, c + cfg.future + 1
    out = np.empty((cfg.length, N_MELS), np.float32)
    out[:] = silence_mel()
    src_lo, src_hi = max(lo, 0), min(hi, len(mel))
    if src_hi > src_lo:
        out[src_lo - lo : src_hi - lo] = mel[src_lo:src_hi]
    return out


def windows(mel: np.ndarray, n_video_frames: int, cfg: WindowConfig) -> np.ndarray:
    """Windows for video frames 0..n-1: (n, cfg.length, N_MELS) float32."""
    return (
        np.stack([window(mel, k, cfg) for k in range(n_video_frames)])
        if n_video_frames
        else (np.zeros((0, cfg.length, N_MELS), np.float32))
    )


# --- streaming: per-frame windows from audio as it arrives ---------------------------------


def window_range(k: int, cfg: WindowConfig) -> tuple[int, int]:
    """The sample range ``[lo, hi)`` whose mel frames make video frame k's window."""
    first = cfg.centre(k) - cfg.past
    last = cfg.centre(k) + cfg.future
    return HOP * first - WIN // 2, HOP * last + WIN // 2


def window_mel(samples: np.ndarray, k: int, cfg: WindowConfig) -> np.ndarray:
    """Frame k's (cfg.length, N_MELS) window from the samples of :func:`window_range`; equal
    to ``models.audio.window(log_mel(signal), k, cfg)`` because mel frame i covers samples
    ``[HOP*i - WIN/2, HOP*i + WIN/2)`` in both (and frames before 0 are silence padding)."""
    x = np.asarray(samples, np.float64)
    idx = np.arange(cfg.length)[:, None] * HOP + np.arange(WIN)[None, :]
    mel = _frames_to_mel(x[idx])
    before = max(0, -(cfg.centre(k) - cfg.past))
    mel[:before] = silence_mel()
    return mel


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
