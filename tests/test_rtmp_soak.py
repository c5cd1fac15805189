"""The RTMP soak's measures on a stream whose timing is known: fps, audio gaps and lips against
voice as the player reads them (the soak itself is ``avatarcast bench --rtmp-soak``)."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.measure import bench
from streamer.measure.rtmpreader import Segment, lips_figures


def speaking(mouth_late_s: float, seconds: float = 12.0, missing: int = -1) -> Segment:
    """Voice on for 0.5 s every 1.2 s; the mouth open over the same spans, ``mouth_late_s``
    later; 25 fps pictures (one ``missing``) and 1024-sample AAC frames at 48 kHz."""
    segment = Segment()
    period, on = 1.2, 0.5
    for k in range(round(seconds * 25)):
        t = 5.0 + k * 0.04
        if k != missing:
            opened = ((t - 5.0 - mouth_late_s) % period) < on and t - 5.0 >= mouth_late_s
            segment.video.append((100.0 + k * 0.04, t, 30.0 if opened else 10.0))
    for k in range(round(seconds / 0.02)):
        t = 5.0 + k * 0.02
        segment.loudness.append((t, 0.3 if ((t - 5.0) % period) < on else 0.0))
    frame_s = 1024 / 48_000
    segment.audio = [(5.0 + k * frame_s, frame_s) for k in range(round(seconds / frame_s))]
    return segment


def test_a_continuous_stream_at_25_fps() -> None:
    figures = speaking(0.0).figures()
    assert figures["fps"] == pytest.approx(25.0, abs=0.01)
    assert figures["fps_wall"] == pytest.approx(25.0, abs=0.01)
    assert figures["frames_missing_ratio"] == 0.0 and figures["video_gap_ms_max"] == 40.0
    assert figures["audio_gap_ms_max"] == pytest.approx(0.0, abs=1e-6)
    gappy = speaking(0.0, missing=50)
    gappy.audio.pop(100)  # one AAC frame lost
    figures = gappy.figures()
    assert figures["video_gap_ms_max"] == 80.0 and figures["frames_missing_ratio"] > 0
    assert figures["audio_gap_ms_max"] == pytest.approx(1024 / 48, abs=0.01)


@pytest.mark.parametrize("late_s", [0.0, 0.04, -0.04])
def test_lips_against_voice_on_the_stream_clock(late_s: float) -> None:
    lags = speaking(late_s).lip_lags_ms()
    assert len(lags) >= 8
    assert np.median(lags) == pytest.approx(late_s * 1000.0, abs=21.0)  # within a frame
    figures = lips_figures([speaking(late_s), Segment()], skip_s=2.0)
    assert figures["voice_onsets_paired"] < len(lags)  # each segment's first 2 s left out
    assert figures["lips_lag_ms_median"] == pytest.approx(late_s * 1000.0, abs=21.0)


def test_lips_are_not_measured_without_speech() -> None:
    silent = speaking(0.0)
    silent.loudness = [(t, 0.0) for t, _ in silent.loudness]
    assert silent.lip_lags_ms() == []
    assert lips_figures([silent], 0.0)["lips_lag_ms_median"] is None


def test_the_soak_takes_seconds() -> None:
    assert bench.build_parser().parse_args(["--rtmp-soak", "30"]).rtmp_soak == 30.0
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--rtmp-soak", "2"])
