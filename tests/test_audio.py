"""The one mel definition: whole-file and streamed results must be identical."""

import numpy as np
import pytest

from models import audio


def _signal(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * audio.SAMPLE_RATE)) / audio.SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (t % 0.5 < 0.25)
    return (tone + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.mark.parametrize("max_chunk", [1, 37, 640, 5000])
def test_stream_matches_whole_file_exactly(max_chunk: int) -> None:
    x = _signal(1.3)
    rng = np.random.default_rng(max_chunk)
    stream = audio.MelStream()
    parts, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, max_chunk + 1))
        parts.append(stream.push(x[i : i + n]))
        i += n
    parts.append(stream.flush())
    streamed = np.concatenate(parts)
    assert np.array_equal(streamed, audio.log_mel_padded(x))
    assert np.array_equal(streamed[: audio.n_frames(len(x))], audio.log_mel(x))


def test_frame_count_and_lookahead() -> None:
    stream = audio.MelStream()
    # Frame 0 is centred on sample 0 and needs WIN // 2 samples of the future.
    assert len(stream.push(np.zeros(audio.WIN // 2 - 1))) == 0
    assert len(stream.push(np.zeros(1))) == 1
    assert audio.log_mel_padded(np.zeros(640)).shape == (4, audio.N_MELS)


def test_mel_tracks_energy_and_pitch() -> None:
    x = _signal(1.0)
    mel = audio.log_mel(x)
    loud = mel[5:20].max(axis=1).mean()  # the 220 Hz tone is on for the first 250 ms
    quiet = mel[30:45].max(axis=1).mean()
    assert loud > quiet + 1.0
    assert int(np.argmax(mel[10])) < audio.N_MELS // 4  # a low tone lands in the low bands


def test_windows_cover_each_video_frame() -> None:
    cfg = audio.WindowConfig()
    mel = np.arange(40 * audio.N_MELS, dtype=np.float32).reshape(40, audio.N_MELS)
    w = audio.windows(mel, 10, cfg)
    assert w.shape == (10, cfg.length, audio.N_MELS)
    # Frame 3's centre is mel frame 14, at position `past` in its window.
    assert np.array_equal(w[3, cfg.past], mel[14])
    # Before the start and after the end the window is silence.
    assert np.array_equal(w[0, 0], audio.silence_mel())
    assert np.array_equal(w[9, -1], audio.silence_mel())
