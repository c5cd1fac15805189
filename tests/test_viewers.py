"""``avatarcast bench --viewers``: its figures on known arrivals, and one small run of the
real thing (3 viewers in 2 audience processes of a session of the default avatar) that proves
the plumbing. Timings belong to the bench itself; the run only checks what it reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamer.measure import bench, viewers


def test_viewers_spread_evenly_over_processes() -> None:
    assert viewers._spread(3, 2) == [2, 1]
    assert viewers._spread(100, 25) == [25, 25, 25, 25]
    assert viewers._spread(51, 25) == [17, 17, 17]
    assert viewers._spread(1, 25) == [1]


def test_step_figures_from_known_arrivals() -> None:
    lo, hi = 10.0, 12.0
    steady = list(10.0 + 0.04 * np.arange(50))  # 25 fps over the window
    late = [t + (0.03 if i in (10, 20, 30, 40) else 0.0) for i, t in enumerate(steady)]
    # Audio: one packet lost (sequence 7), the sequence numbers wrap past 65535.
    audio = [(10.0 + 0.02 * i, (65530 + i) % 65536, 960 * i) for i in range(100) if i != 7]
    report = {
        "connected": 2,
        "video": [steady, late],
        "audio": [audio, audio],
        "cpu_percent": 12.5,
        "loop_lag_ms_p95": 1.5,
        "loop_lag_ms_max": 3.0,
    }
    step = viewers.step_figures(2, [report], lo, hi)
    assert step["connected"] == 2 and step["receivers_cpu_percent"] == 12.5
    assert step["frames_received_ratio"] == 1.0
    assert step["frame_interval_ms_p95"] == pytest.approx(40.0, abs=0.5)
    assert step["frame_interval_ms_p95_worst"] > 40.0  # the receiver that got 4 frames late
    assert step["audio_packets_lost_ratio"] == pytest.approx(1 / 100, abs=1e-3)
    assert step["audio_received_ratio"] == pytest.approx(99 / 100, abs=1e-3)
    assert step["audio_gap_ms_max"] == pytest.approx(40.0, abs=0.5)  # where one was lost
    assert viewers.held(step | {"viewers": 2})
    assert not viewers.held(step | {"viewers": 3})  # one viewer never connected
    assert not viewers.held(step | {"frames_received_ratio": 0.5})
    assert step["frame_interval_ms_p95_socket"] is None  # this report had no socket stamps


def test_a_step_is_judged_on_the_socket_stamps() -> None:
    """Receivers whose own loop ran late (every 5th frame stamped 30 ms late) while their
    sockets got every frame 40 ms apart: the step holds at the sockets, not at the loops."""
    lo, hi = 10.0, 12.0
    steady = list(10.0 + 0.04 * np.arange(50))
    late = [t + (0.03 if i % 5 == 0 else 0.0) for i, t in enumerate(steady)]
    report = {
        "connected": 1,
        "video": [late],
        "video_socket": [steady],
        "audio": [[(10.0 + 0.02 * i, i, 960 * i) for i in range(100)]],
        "cpu_percent": 30.0,
        "loop_lag_ms_p95": 25.0,
        "loop_lag_ms_max": 40.0,
    }
    step = viewers.step_figures(1, [report], lo, hi)
    assert step["frame_interval_ms_p95_socket"] == pytest.approx(40.0, abs=0.5)
    assert step["frame_interval_ms_p95"] > 60.0
    assert viewers.held(step) and not viewers.held(step, "loop")


def test_viewer_counts_are_checked() -> None:
    parser = bench.build_parser()
    assert parser.parse_args(["--viewers", "10,25"]).viewers == [10, 25]
    for bad in ("0", "ten", "5,,6"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--viewers", bad])


def test_three_viewers_of_a_real_session(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def short(quick: bool, per_process: int, decode: bool) -> viewers.AudiencePlan:
        return viewers.AudiencePlan(0.5, 1.5, per_process, decode)

    monkeypatch.setattr(viewers.AudiencePlan, "for_mode", short)
    assert bench.main(["--viewers", "3", "--viewers-per-process", "2", "--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["avatar"] == "default" and result["machine"]["cores"] >= 1
    baseline, step = result["steps"]
    assert baseline["viewers"] == 0 and baseline["server_cpu_percent"] > 0
    assert step["viewers"] == 3 and step["connected"] == 3 and step["processes"] == 2
    assert step["shared_encoders"] == 1  # every viewer reads the session's one encoder
    assert step["frames_received_ratio"] > 0 and step["frame_interval_ms_p95"] is not None
    # The kernel stamped the packets at the receivers' sockets (Linux's SIOCGSTAMP).
    assert step["frame_interval_ms_p95_socket"] is not None
    assert 0 <= step["audio_packets_lost_ratio"] <= 1 and step["audio_received_ratio"] > 0
    assert step["receivers_cpu_percent"] > 0 and step["loop_cpu_percent"] > 0
    assert step["server_loop_lag_ms_max_connecting"] >= 0 and step["server_loop_lag_ms_p99"] >= 0
    assert result["viewers_held"] in (0, 3) and result["viewers_held_by_loop_stamps"] in (0, 3)
