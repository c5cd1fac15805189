"""The voice gate: room tone far under the voice reaches the generator as silence."""

from __future__ import annotations

import numpy as np
import pytest

from models.audio import SAMPLE_RATE, WindowConfig, window_range
from streamer.pipeline.gate import BELOW_DB, REFERENCE_S, hop_levels, voice_gate
from streamer.pipeline.prepare import prepare_frame
from streamer.pipeline.timeline import Timeline


def noise(seconds: float, dbfs: float, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE))
    return (x * 10 ** (dbfs / 20)).astype(np.float32)


def voice(seconds: float, dbfs: float) -> np.ndarray:
    """A voiced sound: 140 Hz and its harmonics, at ``dbfs`` rms."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    x = sum(np.sin(2 * np.pi * 140 * h * t) / h for h in range(1, 12))
    x = x / np.sqrt(np.mean(x**2))
    return (x * 10 ** (dbfs / 20)).astype(np.float32)


def test_hop_levels_read_dbfs() -> None:
    levels = hop_levels(voice(0.5, -20.0))
    assert np.allclose(levels, -20.0, atol=0.5)


def test_room_tone_after_the_voice_is_silenced() -> None:
    history = voice(1.0, -20.0)
    tone = noise(0.3, -20.0 - BELOW_DB - 15, seed=1)
    assert not voice_gate(tone, history).any()
    # Nothing louder to compare with: the same room tone passes.
    assert np.array_equal(voice_gate(tone, np.zeros(0, np.float32)), tone)
    assert np.array_equal(voice_gate(tone, np.zeros(SAMPLE_RATE, np.float32)), tone)


def test_the_voice_and_what_is_near_it_pass() -> None:
    window = np.concatenate([voice(0.2, -20.0), noise(0.2, -70.0, seed=2)])
    gated = voice_gate(window, np.zeros(0, np.float32))
    speech = slice(0, int(0.2 * SAMPLE_RATE))
    assert np.array_equal(gated[speech], window[speech])  # untouched, not rescaled
    assert not gated[int(0.25 * SAMPLE_RATE) :].any()  # past the 30 ms hold: silence
    # Quiet speech 20 dB under the loudest (an unvoiced consonant) is kept.
    soft = np.concatenate([voice(0.2, -20.0), noise(0.2, -40.0, seed=3)])
    assert np.array_equal(voice_gate(soft, np.zeros(0, np.float32)), soft)


@pytest.mark.parametrize("gain_db", [-30.0, 0.0, 12.0])
def test_the_gate_is_the_same_at_any_level(gain_db: float) -> None:
    window = np.concatenate([voice(0.15, -20.0), noise(0.15, -62.0, seed=4)])
    history = voice(0.5, -22.0)
    g = np.float32(10 ** (gain_db / 20))
    assert np.allclose(voice_gate(window * g, history * g), voice_gate(window, history) * g)


def test_a_frame_of_room_tone_after_speech_gets_the_idle_mouth() -> None:
    """Through the frame path: the same room tone gets a mel where nothing louder came in the
    last REFERENCE_S seconds, and the idle mouth (no mel) right after the voice."""
    cfg = WindowConfig()
    tone = noise(2.0, -55.0, seed=5)

    def mel_of_last_frame(before: np.ndarray) -> np.ndarray | None:
        timeline = Timeline()
        audio = np.concatenate([before, tone])
        timeline.write(audio, now_pos=0, latency=0, utterance_id="u", arrived_at=0.0)
        k = len(audio) // 640 - 4  # a window wholly inside the room tone
        assert window_range(k, cfg)[0] > len(before)
        frames = [prepare_frame(timeline, i, cfg) for i in range(k + 1)]
        return frames[-1].mel

    assert mel_of_last_frame(np.zeros(SAMPLE_RATE, np.float32)) is not None
    assert mel_of_last_frame(voice(1.0, -20.0)) is None
    # Long after the voice (past the look back), the room tone is heard again.
    late = np.concatenate([voice(1.0, -20.0), noise(REFERENCE_S + 0.5, -55.0, seed=6)])
    assert mel_of_last_frame(late) is not None
