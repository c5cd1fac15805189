"""A live session with real parts: the ONNX stand-in generator, the compositor, the clock.

The stand-in avatar, the ``standin`` and ``live`` fixtures and :class:`Live` are in
tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from models.audio import SAMPLE_RATE
from models.avatar import Avatar
from streamer.engine.base import Backend
from streamer.engine.worker import InferenceWorker
from streamer.pipeline.frames import AVFrame
from streamer.session import (
    Session,
    SessionConfig,
    SessionEvent,
    SessionOptions,
    SessionRegistry,
    SpeechRejected,
)
from tests.conftest import Live, tone

FRAME = 640


async def collect(session: Session, count: int) -> list[AVFrame]:
    sub = session.bus.subscribe(video_depth=1000, audio_depth=1000)
    try:
        return [await sub.next_audio() for _ in range(count)]
    finally:
        session.bus.unsubscribe(sub)


async def events_until(
    queue: asyncio.Queue[SessionEvent], kind: str, n: int = 1, wait_s: float = 10.0
) -> list[dict[str, object]]:
    """The events up to the ``n``-th of ``kind``, as the JSON the WebSocket sends."""
    seen: list[dict[str, object]] = []
    async with asyncio.timeout(wait_s):
        while sum(e["type"] == kind for e in seen) < n:
            seen.append((await queue.get()).to_json())
    return seen


def speech_audio(frames: list[AVFrame]) -> np.ndarray:
    return np.concatenate([f.audio for f in frames])


async def test_frames_are_paced_by_timestamps_and_carry_640_samples(virtual: Live) -> None:
    frames = await collect(virtual.session, 50)
    assert [f.index for f in frames] == list(range(frames[0].index, frames[0].index + 50))
    assert all(f.audio.shape == (FRAME,) and f.audio.dtype == np.int16 for f in frames)
    # Frame k is published at its due time t0 + k * 40 ms on the session's clock.
    clock = virtual.clock
    assert clock is not None
    t = [f.published_at for f in frames]
    assert t == pytest.approx([clock.t0 + f.index * 0.040 for f in frames], abs=1e-9)
    assert np.diff(t) == pytest.approx(np.full(49, 0.040), abs=1e-9)
    assert virtual.session.ready and virtual.session.state == "idle"


async def test_idle_reuses_the_cached_mouth(live: Live) -> None:
    await collect(live.session, 60)
    # Four base frames (open + three blink frames): at most one generator run for each.
    assert live.worker.stats.frames <= 4
    assert live.session.stats.generated >= 55


def generated(frames: list[AVFrame]) -> list[bool]:
    """Which frames carry a picture rendered for them: a frame whose render missed its time is
    published with the previous picture (the same array), so it says nothing about its audio."""
    return [i > 0 and f.video is not frames[i - 1].video for i, f in enumerate(frames)]


async def test_speech_plays_exactly_with_events(virtual: Live) -> None:
    # On the virtual clock every frame is rendered for its own audio (none is ever late).
    live = virtual
    events = live.session.subscribe_events()
    sub = live.session.bus.subscribe(video_depth=1000, audio_depth=1000)
    # Some idle frames first: the quiet side of the mouth comparison.
    frames: list[AVFrame] = [await sub.next_audio() for _ in range(12)]
    x = tone(0.5)
    uid = live.session.speak_audio(x)
    seen = await events_until(events, "playback_finished")
    while sub.depth[1]:
        frames.append(await sub.next_audio())
    assert [e["type"] for e in seen] == ["speaking_started", "playback_finished"]
    assert seen[1] == {
        "type": "playback_finished",
        "utterance_id": uid,
        "position_s": 0.5,
        "interrupted": False,
    }
    pcm = speech_audio(frames).astype(np.float32) / 32767.0
    start = int(np.argmax(np.abs(pcm) > 0))
    np.testing.assert_allclose(pcm[start : start + len(x)], x, atol=1.5 / 32767)
    assert not pcm[start + len(x) :].any()
    spoken = [f for f in frames if f.utterance_id == uid]
    assert sum(int(np.count_nonzero(f.audio)) > 0 for f in spoken) >= 12
    # The mouth follows the audio: the stand-in brightens the mouth with the mel energy.
    # Only frames rendered for their own audio count (under CPU load some are replaced).
    rendered = [f for f, fresh in zip(frames, generated(frames), strict=True) if fresh]
    loud = [float(f.video[330:430, 206:306].mean()) for f in rendered if f.utterance_id == uid]
    quiet = [float(f.video[330:430, 206:306].mean()) for f in rendered if f.utterance_id is None]
    assert len(loud) >= 3 and len(quiet) >= 3, "too few frames rendered to compare"
    assert np.mean(loud) > np.mean(quiet) + 1.0


async def test_utterances_play_in_order(virtual: Live) -> None:
    live = virtual
    events = live.session.subscribe_events()
    first = live.session.speak_audio(tone(0.3, 200))
    second = live.session.speak_text("one two")  # the stand-in TTS: 0.4 s
    third = live.session.speak_audio(tone(0.2, 500))
    seen = await events_until(events, "playback_finished", 3)
    order = [(e["type"], e["utterance_id"]) for e in seen]
    assert order == [
        ("speaking_started", first),
        ("playback_finished", first),
        ("speaking_started", second),
        ("playback_finished", second),
        ("speaking_started", third),
        ("playback_finished", third),
    ]
    positions = [e["position_s"] for e in seen if e["type"] == "playback_finished"]
    assert positions == [0.3, 0.4, 0.2]


async def test_interrupt_goes_idle_within_two_frames(virtual: Live) -> None:
    session, clock = virtual.session, virtual.clock
    assert clock is not None
    events = session.subscribe_events()
    sub = session.bus.subscribe(video_depth=1000, audio_depth=1000)
    queued = session.speak_audio(tone(1.0, 300))
    playing = session.speak_audio(tone(3.0))
    ids = [queued, playing]
    await events_until(events, "speaking_started")
    spoken = 0
    while spoken < 8:  # 0.3 s of the first utterance on the session's clock
        spoken += (await sub.next_audio()).utterance_id == queued
    last_before = session.bus.last
    assert last_before is not None
    t_interrupt = clock.now()
    assert sorted(session.interrupt()) == sorted(ids)
    assert session.state == "idle"
    finished = [
        e
        for e in await events_until(events, "playback_finished", 2)
        if e["type"] == "playback_finished"
    ]
    assert all(e["interrupted"] for e in finished)
    assert 0.2 < float(finished[0]["position_s"]) < 1.0  # type: ignore[arg-type]
    frames: list[AVFrame] = []
    while len(frames) < 200 and (not frames or frames[-1].index < last_before.index + 10):
        frames.append(await sub.next_audio())
    after = [f for f in frames if f.index > last_before.index]
    first_idle = next(f for f in after if not f.audio.any() and f.utterance_id is None)
    assert first_idle.index - last_before.index <= 2
    assert all(
        not f.audio.any() and f.utterance_id is None for f in after if f.index >= first_idle.index
    )
    # On the clock's time: the next frame to leave the session is idle, two frames at most.
    assert (first_idle.published_at - t_interrupt) * 1000 <= 80 + 1e-6


class SlowBackend:
    """The stand-in generator plus ``delay_s`` per call (70 ms: generation is always late)."""

    def __init__(self, inner: Backend, delay_s: float = 0.07) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.name, self.device = "slow", inner.device

    def infer(self, reference: np.ndarray, masked: np.ndarray, mel: np.ndarray) -> np.ndarray:
        time.sleep(self.delay_s)
        return self.inner.infer(reference, masked, mel)


async def test_late_generation_drops_video_but_never_audio(
    standin: tuple[Avatar, Backend],
) -> None:
    avatar, backend = standin
    made = Live(avatar, SlowBackend(backend), config=SessionConfig(lead_extra_max_s=0.0))
    await made.session.start()
    try:
        x = tone(0.6)
        made.session.speak_audio(x)
        frames = await collect(made.session, 40)
        pcm = speech_audio(frames).astype(np.float32) / 32767.0
        start = int(np.argmax(np.abs(pcm) > 0))
        np.testing.assert_allclose(pcm[start : start + len(x)], x, atol=1.5 / 32767)
        assert made.session.stats.dropped > 10
        assert 38.0 < np.median(np.diff([f.published_at for f in frames])) * 1000 < 42.0
    finally:
        await made.aclose()


async def test_bounded_buffer_rejects_audio_beyond_the_limit(
    standin: tuple[Avatar, Backend],
) -> None:
    made = Live(*standin, config=SessionConfig(max_buffer_s=2.0))
    await made.session.start()
    try:
        made.session.speak_audio(tone(1.5))
        with pytest.raises(SpeechRejected) as err:
            made.session.speak_audio(tone(1.0))
        assert err.value.code == "buffer_full"
        stream = made.session.open_stream()
        stream.push(tone(0.3))
        with pytest.raises(SpeechRejected):
            stream.push(tone(1.0))
    finally:
        await made.aclose()


async def test_one_failing_session_leaves_the_other_running(
    standin: tuple[Avatar, Backend], caplog: pytest.LogCaptureFixture
) -> None:
    avatar, backend = standin
    pool = ThreadPoolExecutor(2)
    worker = InferenceWorker(backend)
    doomed = InferenceWorker(backend)  # the bad session's own, closed under it

    async def factory(name: str, options: SessionOptions, on_failure: object) -> Session:
        chosen = doomed if registry else worker
        return Session(avatar, chosen, executor=pool, on_failure=on_failure)  # type: ignore[arg-type]

    registry = SessionRegistry(factory)
    try:
        good = await registry.create("standin")
        bad = await registry.create("standin")
        await collect(bad, 3)
        await doomed.aclose()
        bad.speak_audio(tone(1.0))  # its next spoken frame finds the worker closed
        for _ in range(50):
            if registry.get(bad.id) is None:
                break
            await asyncio.sleep(0.02)
        assert registry.get(bad.id) is None and bad.closed
        assert any(bad.id in r.getMessage() for r in caplog.records)
        before = good.stats.frames
        frames = await collect(good, 10)
        assert good.stats.frames >= before + 10 and not good.closed
        assert np.median(np.diff([f.published_at for f in frames])) == pytest.approx(
            0.04, abs=0.003
        )
    finally:
        await registry.aclose()
        await worker.aclose()
        await doomed.aclose()
        pool.shutdown()


async def test_close_is_idempotent_and_close_before_start_works(
    standin: tuple[Avatar, Backend],
) -> None:
    made = Live(*standin)
    await made.session.aclose()
    await made.session.aclose()
    await made.aclose()


async def test_speech_to_mouth_latency_and_frame_interval(live: Live) -> None:
    """Figures, not assertions on timing: a live stream pushed in 20 ms chunks at real time,
    tone bursts after silence; latency = publication of the first frame carrying the burst
    minus the wall time its first sample was pushed."""
    session = live.session
    loop = asyncio.get_running_loop()
    sub = session.bus.subscribe(video_depth=1000, audio_depth=1000)
    stream = session.open_stream()
    chunk = 320
    burst, gap = tone(0.2, 400), np.zeros(int(0.22 * SAMPLE_RATE), np.float32)  # 21 chunks
    signal = np.concatenate([np.concatenate([burst, gap])] * 12)
    onsets: list[float] = []
    t0 = loop.time()
    period = len(burst) + len(gap)
    for i, start in enumerate(range(0, len(signal), chunk)):
        await asyncio.sleep(max(0.0, t0 + i * chunk / SAMPLE_RATE - loop.time()))
        if start % period == 0:
            onsets.append(loop.time())
        stream.push(signal[start : start + chunk])
    stream.end()
    await asyncio.sleep(0.4)
    frames: list[AVFrame] = []
    while sub.depth[1]:
        frames.append(await sub.next_audio())
    loud = np.array([np.abs(f.audio).max() > 1000 for f in frames])
    starts = [frames[i].published_at for i in range(1, len(frames)) if loud[i] and not loud[i - 1]]
    measured = [(s - o) * 1000 for o, s in zip(onsets, starts, strict=False)]
    intervals = np.diff([f.published_at for f in frames]) * 1000
    p95_latency = float(np.percentile(measured, 95))
    p95_interval = float(np.percentile(intervals, 95))
    stats = session.describe()
    print(
        f"\nspeech-to-mouth (onset pushed -> frame published) ms: p50 "
        f"{np.median(measured):.1f} p95 {p95_latency:.1f} (n={len(measured)}); "
        f"session's own p95 {stats['speech_to_mouth_ms_p95']}; frame interval ms: p50 "
        f"{np.median(intervals):.1f} p95 {p95_interval:.1f}; dropped {session.stats.dropped}"
    )
    assert len(measured) >= 10
    assert 0 < p95_latency < 1000  # sanity only: the figure is reported, not asserted


async def test_cpu_sessions_are_spread_over_the_frame_period_gpu_ones_batch(
    standin: tuple[Avatar, Backend],
) -> None:
    _, backend = standin
    cpu = InferenceWorker(backend)
    phases = [cpu.claim_phase() for _ in range(3)]
    assert phases == pytest.approx([0.0, 0.020, 0.010])
    cpu.release_phase(0.020)
    assert cpu.claim_phase() == pytest.approx(0.025)  # farthest from 0 and 10 ms
    await cpu.aclose()

    class Gpu:
        name, device = "onnx", "cuda:0"

        def infer(self, *args: np.ndarray) -> np.ndarray:
            raise AssertionError("not called")

    gpu = InferenceWorker(Gpu())  # type: ignore[arg-type]
    assert [gpu.claim_phase() for _ in range(3)] == [0.0, 0.0, 0.0]
    await gpu.aclose()


async def test_two_sessions_on_a_cpu_publish_at_different_phases(
    standin: tuple[Avatar, Backend],
) -> None:
    a = Live(*standin)
    b = Live(*standin, worker=a.worker)  # one worker for both, as in the server
    try:
        await a.session.start()
        await b.session.start()
        fa, fb = await asyncio.gather(collect(a.session, 10), collect(b.session, 10))
        # Half a period apart, not due together: the median over the frames, so that one
        # frame the loop published late on a busy machine does not decide it.
        gaps = [(y.published_at - x.published_at) % 0.040 for x, y in zip(fa, fb, strict=True)]
        assert 0.015 < float(np.median(gaps)) < 0.025, gaps
    finally:
        await b.session.aclose()
        b.pool.shutdown()
        await a.aclose()


async def test_stats_mean_what_they_say(live: Live) -> None:
    """Queued speech reports request -> first sound; only live streams speech -> mouth."""
    session = live.session
    events = session.subscribe_events()
    session.speak_text("one two three")
    await events_until(events, "playback_finished")
    figures = session.describe()
    assert figures["speech_to_mouth_ms_p95"] is None
    first = figures["first_audible_ms_p95"]
    assert first is not None and 100 < first < 2000  # latency budget + TTS + a frame
    stream = session.open_stream()
    for _ in range(15):
        stream.push(tone(0.04))
        await asyncio.sleep(0.04)
    stream.end()
    await events_until(events, "playback_finished")
    figures = session.describe()
    assert figures["speech_to_mouth_ms_p95"] is not None
    assert figures["first_audible_ms_p95"] == first  # a live stream adds no first-sound figure
    metrics = live.metrics.render().decode()
    assert "avatarcast_first_audible_ms_count 1.0" in metrics


async def test_interrupt_resets_every_stage(live: Live) -> None:
    session = live.session
    events = session.subscribe_events()
    stream = session.open_stream()
    stream.push(tone(0.5))
    queued = session.speak_audio(tone(2.0))
    await events_until(events, "speaking_started")
    dropped = session.interrupt()
    assert sorted(dropped) == sorted([stream.utterance_id, queued])
    assert stream.dropped and session.queued == 0 and session.state == "idle"
    # The timeline was cut after the frames in flight (silenced), nothing is queued.
    left = session.buffered_samples()
    assert left <= 2 * FRAME
    stream.push(tone(0.1))  # a dropped stream ignores what still comes in
    assert session.buffered_samples() <= left
    # The feeder took up the next utterance after the reset.
    after = session.speak_audio(tone(0.2))
    seen = await events_until(events, "playback_finished", 3)
    assert [e["utterance_id"] for e in seen if e["type"] == "speaking_started"][-1] == after
