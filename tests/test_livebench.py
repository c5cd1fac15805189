"""The live part of bench: its measures on known signals, and one short run through the real
server with the default avatar (shape and sanity only: timings belong to ``avatarcast bench``).
"""

from __future__ import annotations

import asyncio
import json

import numpy as np

from streamer.measure import avsync, bench, livebench, signals
from streamer.measure.livebench import LivePlan
from streamer.measure.viewer import Track, hook_receiver


def test_onsets_are_interpolated_and_paired() -> None:
    times = np.arange(40) * 0.04
    values = np.where((np.arange(40) % 20) >= 12, 10.0, 0.0)
    found = avsync.onsets(times, values)
    assert np.allclose(found, [0.46, 1.26])  # half-way between 0.44 and 0.48, 1.24 and 1.28
    assert avsync.onsets(times, np.zeros(40)) == []
    lags = avsync.paired_lag_ms([0.38, 1.18], [0.40, 1.30, 3.0])
    assert np.allclose(lags, [20.0, 120.0])
    # A measure that falls when the mouth opens still gives the onset.
    assert np.allclose(avsync.onsets(times, avsync.activity(-values + 3)), found)


def test_the_av_offset_aligns_whole_measures() -> None:
    rng = np.random.default_rng(3)
    # 30 s of bursty speech: a voice level per 20 ms; pictures per 40 ms (16 x 16 thumbnails)
    # whose mouth follows it and whose head sways, with a busy session's repeated pictures.
    level = np.repeat(rng.random(150) > 0.6, 10) * rng.uniform(0.5, 1.0, 1500)
    a_times = np.arange(1500) * 0.02
    mouth = np.convolve(level, np.ones(4) / 4, "same")[::2]
    sway = np.sin(np.arange(750) * 0.04 * 2 * np.pi / 3.7)
    pictures = np.outer(mouth, rng.random(256)) + np.outer(sway, rng.random(256)) + rng.random(256)
    repeated = np.flatnonzero(rng.random(750) < 0.3)
    repeated = repeated[repeated > 0]
    pictures[repeated] = pictures[repeated - 1]
    v_times = np.arange(750) * 0.04
    published = ((v_times, pictures), (a_times, level))

    def receiver(clock: float, late_ms: float) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """On another clock, pictures placed ``late_ms`` later than the voice, jitter in where
        the frames land and codec noise on both measures."""
        return (
            (
                v_times + clock + late_ms / 1000.0 + rng.normal(0, 0.002, 750),
                pictures + rng.normal(0, 0.05, pictures.shape),
            ),
            (a_times + clock + rng.normal(0, 0.001, 1500), level + rng.normal(0, 0.02, 1500)),
        )

    for clock, late in ((5.0, 30.0), (3.9e9, -60.0), (0.1, 0.0)):
        got = avsync.av_offset_by_alignment(published, receiver(clock, late))
        assert got["offset"] is not None and abs(got["offset"] - late) < 3.0, (clock, late, got)
        assert got["audio_shift"] is not None and abs(got["audio_shift"] - clock * 1000) < 3.0
    # A receiver too busy to read its socket loses stretches of frames: the gaps are left out,
    # not bridged by interpolation.
    (vt, vv), (at, av) = receiver(2.0, 20.0)
    stretches = [(t, t + rng.uniform(0.5, 2.0)) for t in rng.uniform(0, 29, 8)]
    lost_v = np.any([(vt > 2 + a) & (vt < 2 + b) for a, b in stretches], axis=0)
    lost_a = np.any([(at > 2 + a + 0.3) & (at < 2 + b) for a, b in stretches], axis=0)
    got = avsync.av_offset_by_alignment(
        published, ((vt[~lost_v], vv[~lost_v]), (at[~lost_a], av[~lost_a]))
    )
    assert got["offset"] is not None and abs(got["offset"] - 20.0) < 3.0, got
    times = np.array([0.0, 0.04, 0.08, 1.0, 1.04])  # a second lost after 0.08
    assert list(avsync._covered(times, np.array([0.05, 0.5, 1.02]))) == [True, False, True]
    # Unrelated signals do not line up: no figure rather than a wrong one.
    other = ((v_times, rng.random((750, 256))), (a_times, rng.random(1500)))
    assert avsync.av_offset_by_alignment(published, other)["offset"] is None


def test_sender_times_follow_the_sender_reports() -> None:
    # The stream's first RTP timestamp is just before the wrap.
    track = Track(90_000, pts_origin=lambda: 2**32 - 900)
    track.frames = [(0.0, 0, 1.0), (0.04, 3600, 1.0)]
    # A report after the wrap: RTP 2700 is pts 3600, sent at NTP second 100.04.
    track.reports = [(0.05, 100.04, 2700)]
    times = track.sender_times()
    assert times is not None and np.allclose(times, [100.0, 100.04])
    assert Track(48_000).sender_times() is None  # not hooked: unknown, not guessed


def test_receiver_hook_reports_and_passes_packets_on() -> None:
    from aiortc.rtp import RtcpSenderInfo, RtcpSrPacket, RtpPacket

    class Mapper:
        _origin = 2**32 + 5  # aiortc counts past the wrap

    class Receiver:  # the parts of aiortc's RTCRtpReceiver the hook wraps and reads
        _RTCRtpReceiver__timestamp_mapper = Mapper()

        def __init__(self) -> None:
            self.handled: list[object] = []

        async def _handle_rtcp_packet(self, packet: object) -> None:
            self.handled.append(packet)

        async def _handle_rtp_packet(self, packet: object, arrival_time_ms: int) -> None:
            self.handled.append(packet)

    receiver = Receiver()
    reports: list[tuple[float, int]] = []
    ends: list[None] = []
    origin = hook_receiver(receiver, lambda *r: reports.append(r), lambda: ends.append(None))  # type: ignore[arg-type]
    info = RtcpSenderInfo(
        ntp_timestamp=3 * 2**31, rtp_timestamp=2700, packet_count=1, octet_count=1
    )
    sr = RtcpSrPacket(ssrc=1, sender_info=info)
    last, middle = RtpPacket(marker=1), RtpPacket(marker=0)

    async def deliver() -> None:
        await receiver._handle_rtcp_packet(sr)
        await receiver._handle_rtp_packet(middle, 0)
        await receiver._handle_rtp_packet(last, 0)

    asyncio.run(deliver())
    assert reports == [(1.5, 2700)] and len(ends) == 1
    assert receiver.handled == [sr, middle, last]
    assert origin() == 5


def test_bench_signals() -> None:
    x = signals.bursts(2 * 16000)
    on = np.abs(x) > 0
    assert on[: int(0.45 * 16000)].any() and not on[int(0.55 * 16000) : int(1.15 * 16000)].any()
    assert np.allclose(signals.voiced(320, 320), signals.voiced(640)[320:], atol=1e-5)
    assert signals.wav_bytes(x[:160])[:4] == b"RIFF"


def test_live_figures_through_the_real_server() -> None:
    plan = LivePlan(main_s=2.5, settle_s=0.5, interrupts=1, ttff_tries=1, ramp_s=1.5, ramp_max=1)
    messages: list[str] = []
    figures = asyncio.run(livebench.measure_live("default", "auto", 2, plan, None, messages.append))
    json.dumps(figures)
    for key in bench.SERVER_FIGURES:
        assert key in figures
    for key in (
        "frame_interval_ms_p95",
        "frame_interval_ms_p95_server",
        "speech_to_mouth_ms_p95",
        "interrupt_to_idle_ms",
        "interrupt_to_idle_ms_receiver",
        "time_to_first_frame_ms",
    ):
        assert isinstance(figures[key], float) and figures[key] >= 0, (key, figures[key])
    # Frames arrived about every 40 ms; a loaded machine may stretch it, not shrink it.
    assert figures["frame_interval_ms_p95"] > 30
    assert figures["av_offset_ms"] is None or isinstance(figures["av_offset_ms"], float)
    assert 0 <= figures["frames_dropped_ratio"] <= 1
    (step,) = figures["realtime_ramp"]
    assert step["sessions"] == 1 and figures["realtime_sessions"] in (0, 1)
    assert any(m.startswith("live: interrupt") for m in messages)


def test_a_client_process_that_reported_ends_by_itself() -> None:
    """Closing a ramp client that has reported waits for its exit instead of killing it: a kill
    racing its exit reaped it under asyncio's child watcher, which then logged "Unknown child
    process" and gave returncode 255 (seen in `avatarcast bench`; 8 of 40 closes here before)."""
    import sys

    from streamer.measure.clients import ClientProcess

    async def close_one() -> int | None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "print('report')", stdout=asyncio.subprocess.PIPE
        )
        assert process.stdout is not None
        assert await process.stdout.read() == b"report\n"
        await ClientProcess(process, 0.0).aclose()
        return process.returncode

    async def run() -> list[int | None]:
        return [await close_one() for _ in range(30)]

    assert set(asyncio.run(run())) == {0}
