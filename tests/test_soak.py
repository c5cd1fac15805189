"""``avatarcast bench --soak``: its verdicts on known samples, and a few seconds of the real
thing (two sessions of the default avatar, clients in their own process, outputs coming and
going) that prove the plumbing. How long the server holds up is the bench's to say."""

from __future__ import annotations

import json

import pytest

from streamer.measure import bench, soak
from streamer.measure.nginx import nginx_rtmp_missing


def test_the_soak_takes_seconds_or_half_an_hour() -> None:
    parser = bench.build_parser()
    assert parser.parse_args(["--soak"]).soak == 1800.0
    assert parser.parse_args(["--soak", "900", "--soak-sessions", "4"]).soak_sessions == 4
    for bad in (["--soak", "2"], ["--soak", "60", "--soak-sessions", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def _sample(t_s: float, rss: float, fds: int, tasks: int) -> dict[str, object]:
    return {"t_s": t_s, "rss_mb": rss, "fds": fds, "tasks": tasks, "threads": 20, "sessions": []}


def test_growth_is_counted_from_the_end_of_the_warm_up() -> None:
    plan = soak.SoakPlan(600, cycle_s=60, warmup_s=120)
    # The first two minutes grow (models, caches, codecs); from 120 s on the server is flat.
    samples = [
        _sample(54, 250.0, 40, 60),
        _sample(114, 290.0, 44, 70),
        _sample(174, 300.0, 50, 80),
        _sample(234, 306.0, 50, 80),
        _sample(294, 309.0, 50, 79),
    ]
    client = {"failure_count": 1, "failures": ["s1: a viewer did not connect"], "turns": 9}
    av = {"av_offset_ms_end": -4.0}
    out = soak.summary(plan, samples, ["s2: published 20.0 fps over a cycle"], client, av)
    assert out["warmup_sample_t_s"] == 174
    assert out["rss_mb"] == {"start": 300.0, "end": 309.0, "max": 309.0, "growth_percent": 3.0}
    assert out["fds"] == {"start": 50, "end": 50, "max": 50}
    assert out["cross_session_failures"] == 2 and len(out["failures"]) == 2
    assert out["clients"] == {"turns": 9}
    assert out["held"] == {"rss": True, "fds": True, "tasks": True, "av": True, "failures": False}
    grown = [*samples, _sample(354, 320.0, 51, 81)]
    out = soak.summary(plan, grown, [], {"failure_count": 0, "failures": []}, {})
    assert out["rss_mb"]["growth_percent"] == pytest.approx(6.67)
    assert out["held"] == {
        "rss": False,
        "fds": False,
        "tasks": False,
        "av": False,
        "failures": True,
    }


def test_a_short_soak_of_the_real_server(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def tiny(seconds: float, sessions: int = 3) -> soak.SoakPlan:
        return soak.SoakPlan(
            seconds,
            sessions,
            cycle_s=2.0,
            warmup_s=3.0,
            churn=1,
            turn_s=1.0,
            interrupt_every=2,
            av_window_s=2.0,
        )

    monkeypatch.setattr(soak.SoakPlan, "for_seconds", tiny)
    assert bench.main(["--soak", "6", "--soak-sessions", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["avatar"] == "default" and result["plan"]["sessions"] == 2
    samples = result["samples"]
    assert len(samples) == 3 and all(len(s["sessions"]) == 2 for s in samples)
    assert all(s["rss_mb"] > 50 and s["fds"] > 3 and s["tasks"] > 1 for s in samples)
    # RSS is counted from the first sample after the 3 s warm-up (the samples' times slip
    # on a loaded machine: which sample that is is read off their times).
    warm = next(s for s in samples if s["t_s"] >= 3.0)
    assert result["rss_mb"]["start"] == warm["rss_mb"] and result["warmup_sample_t_s"] >= 3.0
    assert all(x["fps"] > 0 for s in samples[1:] for x in s["sessions"])
    # A recording each cycle (and an RTMP push where nginx-rtmp is here), all removed.
    per_cycle = 1 if nginx_rtmp_missing() else 2
    assert result["rtmp"] is (nginx_rtmp_missing() is None)
    assert result["outputs"] == {"added": 3 * per_cycle, "removed": 3 * per_cycle}
    clients = result["clients"]
    assert clients["turns"] >= 2 and clients["interrupts"] >= 1
    assert clients["viewers_joined"] >= 2 and clients["viewers_left"] >= 2
    # A busy machine may slow a session or a viewer down; nothing may be refused or fail.
    refused = [f for f in result["failures"] if "answered" in f or "event" in f]
    assert refused == [], refused
    assert isinstance(result["cross_session_failures"], int)
    assert "av_offset_ms_start" in result and "av_offset_ms_end" in result
    assert set(result["held"]) == {"rss", "fds", "tasks", "av", "failures"}
