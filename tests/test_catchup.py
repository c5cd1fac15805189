"""Catching up a live stream that fell behind: the splice itself, and the session's rule."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from models.audio import SAMPLE_RATE
from streamer.pipeline.catchup import UNVOICED, shorten
from tests.conftest import Live

CHUNK = SAMPLE_RATE // 50  # 20 ms, as the WebSocket clients send


def voice(n: int, start: int = 0, f0: float = 125.0) -> np.ndarray:
    """A voiced sound without pauses: harmonics of ``f0`` (period 128 samples at 125 Hz)."""
    t = (start + np.arange(n)) / SAMPLE_RATE
    x = sum(np.sin(2 * np.pi * h * f0 * t) / h for h in range(1, 8))
    return (0.3 * x / 2.6).astype(np.float32)


def test_a_voiced_chunk_loses_exactly_one_period_without_a_click() -> None:
    x = voice(CHUNK, 1000)
    y = shorten(x, 200)
    assert len(y) == CHUNK - 128
    # The joint is as smooth as the voice itself: no step larger than its own largest step.
    assert np.abs(np.diff(y)).max() <= np.abs(np.diff(x)).max() * 1.05
    # A budget under one period takes nothing from voiced sound.
    assert len(shorten(x, 100)) == CHUNK


def test_unvoiced_sound_loses_a_short_block() -> None:
    noise = np.random.default_rng(0).standard_normal(CHUNK).astype(np.float32) * 0.1
    assert len(shorten(noise, 400)) == CHUNK - UNVOICED
    assert len(shorten(noise, 10)) == CHUNK  # under the shortest cut: unchanged
    assert len(shorten(noise[:40], 400)) == 40  # too short to cut


async def stream(live: Live, chunks: int, send_at: Callable[[int], float]) -> tuple[int, float]:
    """Push ``chunks`` chunks of voice, chunk i at ``send_at(i)`` seconds from the start (on
    an absolute schedule, as a live source sends); returns the samples the timeline got and
    how far behind (ms) the stream was just after its last chunk."""
    s = live.session.open_stream()
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.1)
    t0 = loop.time()
    for i in range(chunks):
        await asyncio.sleep(max(0.0, t0 + send_at(i) - loop.time()))
        s.push(voice(CHUNK, i * CHUNK))
    await asyncio.sleep(0.01)
    behind_at_end = behind_ms(live)
    await asyncio.sleep(0.2)
    return s.utterance.written, behind_at_end


def behind_ms(live: Live) -> float:
    excess = live.session.feeder.excess()
    return 1000.0 * max(0, excess) / SAMPLE_RATE


def stalled(at: float, for_s: float) -> Callable[[int], float]:
    """A live source's send times when the network holds it back ``for_s`` from ``at`` on,
    then delivers what it held at once."""

    def send_at(i: int) -> float:
        t = i * CHUNK / SAMPLE_RATE
        return at + for_s if at <= t < at + for_s else t

    return send_at


async def test_a_short_stall_keeps_the_stream_on_schedule(live: Live) -> None:
    chunks = 150  # 3 s of voice; held back 150 ms after 1 s
    task = asyncio.ensure_future(stream(live, chunks, stalled(1.0, 0.15)))
    await asyncio.sleep(1.45)
    # The late pieces kept their places (dropping what had already played as silence), so
    # no delay is carried and there is nothing to catch up.
    assert behind_ms(live) < 20
    written, behind_at_end = await task
    assert written == chunks * CHUNK
    assert behind_at_end < 20


async def test_a_voice_without_pauses_catches_up_after_a_long_stall(live: Live) -> None:
    chunks = 325  # 6.5 s of voice; held back 350 ms after 1 s: the stream starts over late
    task = asyncio.ensure_future(stream(live, chunks, stalled(1.0, 0.35)))
    await asyncio.sleep(1.6)
    assert behind_ms(live) > 250  # the stall is carried ...
    written, behind_at_end = await task
    # ... and given back within a few seconds, at most 10 % faster, at pitch periods.
    assert behind_at_end < 30
    lost = chunks * CHUNK - written
    assert 0.3 * SAMPLE_RATE < lost < 0.45 * SAMPLE_RATE


async def test_a_client_sending_ahead_keeps_every_sample(live: Live) -> None:
    chunks = 100  # 2 s of voice sent at 4x real time
    written, _ = await stream(live, chunks, lambda i: i * CHUNK / SAMPLE_RATE / 4)
    assert written == chunks * CHUNK
