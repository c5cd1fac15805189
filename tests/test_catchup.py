"""Catching up a live stream that fell behind: the splice itself, and the session's rule.

The rule is tested by controlled feeding on a clock the test moves (:class:`Playout`): the
real feeder task and timeline, the frames taken exactly as the session's clock takes them,
each chunk pushed at its send time. Nothing depends on the machine's speed. One test runs the
whole session on a virtual clock, for the ``position_s`` a client is told.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from models.audio import SAMPLE_RATE, WindowConfig
from streamer.pipeline.catchup import UNVOICED, shorten
from streamer.pipeline.frames import FRAME_SECONDS
from streamer.pipeline.prepare import prepare_frame
from streamer.pipeline.timeline import Timeline
from streamer.session import SessionConfig
from streamer.session.events import PlaybackFinished
from streamer.session.feeder import RECLAIM_SLACK, Feeder
from streamer.session.utterances import LiveStream, UtteranceQueue
from tests.conftest import Live

CHUNK = SAMPLE_RATE // 50  # 20 ms, as the WebSocket clients send


def voice(n: int, start: int = 0, f0: float = 125.0) -> np.ndarray:
    """A voiced sound without pauses: harmonics of ``f0`` (period 128 samples at 125 Hz)."""
    t = (start + np.arange(n)) / SAMPLE_RATE
    x = np.sum([np.sin(2 * np.pi * h * f0 * t) / h for h in range(1, 8)], axis=0)
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


Schedule = Callable[[int], float]  # chunk index -> send time, seconds from the start
CONFIG = SessionConfig()
LEAD = int(CONFIG.lead_s * SAMPLE_RATE)


class Playout:
    """A feeder and its timeline on a clock the test moves: frame ``k``'s audio is taken
    ``lead`` before it is due, as the session's clock takes it."""

    def __init__(self) -> None:
        self.now = 0  # the sample playing now
        self.timeline = Timeline(CONFIG.max_buffer_s)
        self.queue = UtteranceQueue(lambda event: None)
        self.tasks: list[asyncio.Task[None]] = []
        self.feeder = Feeder(
            self.queue,
            self.timeline,
            config=CONFIG,
            now_pos=lambda: self.now,
            now=lambda: self.now / SAMPLE_RATE,
            emit=lambda event: None,
            speech=None,
            speech_executor=None,
            start_task=self._start,
            name="test",
        )
        self._next_frame = 0
        self.behind: list[float] = []  # how far behind (ms) after each chunk was written

    def _start(self, coro: Any, name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.append(task)
        return task

    def advance(self, seconds: float) -> None:
        self.now = int(seconds * SAMPLE_RATE)
        while (self._next_frame * FRAME_SECONDS - CONFIG.lead_s) * SAMPLE_RATE <= self.now:
            prepare_frame(self.timeline, self._next_frame, WindowConfig())
            self._next_frame += 1

    def behind_ms(self) -> float:
        return 1000.0 * max(0, self.feeder.excess()) / SAMPLE_RATE

    async def stream(self, chunks: list[np.ndarray], send_at: Schedule) -> LiveStream:
        """Push ``chunks``, chunk ``i`` at ``send_at(i)`` (the feeder writes each at once),
        then play out what is buffered; returns the stream."""
        utt = self.queue.new("stream", 0.0)
        stream = LiveStream(utt, lambda extra: None)
        utt.stream = stream
        self.queue.add(utt)
        self.feeder.start()
        t0 = 0.1
        for i, chunk in enumerate(chunks):
            self.advance(t0 + send_at(i))
            stream.push(chunk)
            for _ in range(5):  # the feeder's turn: it takes the chunk and writes it
                await asyncio.sleep(0)
            self.behind.append(self.behind_ms())
        stream.end()
        await self.feeder.aclose()
        return stream


def voice_with_pauses(seconds: float) -> list[np.ndarray]:
    """Chunks of voice, 0.3 s on and 0.2 s of digital silence, ending on a pause."""
    n = int(seconds * SAMPLE_RATE)
    x = voice(n)
    x[(np.arange(n) % (SAMPLE_RATE // 2)) >= SAMPLE_RATE * 3 // 10] = 0.0
    return [x[i : i + CHUNK] for i in range(0, n, CHUNK)]


def voice_chunks(seconds: float) -> list[np.ndarray]:
    return [voice(CHUNK, i) for i in range(0, int(seconds * SAMPLE_RATE), CHUNK)]


def real_time(i: int) -> float:
    return i * CHUNK / SAMPLE_RATE


def stalled(at: float, for_s: float) -> Schedule:
    """A live source's send times when the network holds it back ``for_s`` from ``at`` on,
    then delivers what it held at once."""

    def send_at(i: int) -> float:
        t = real_time(i)
        return at + for_s if at <= t < at + for_s else t

    return send_at


async def test_a_stream_sent_at_twice_real_time_plays_every_sample_and_pause() -> None:
    # The case seen from outside: 1.0 s sent at 2x real time played only 0.753 s, its
    # trailing pause dropped as if the stream were behind.
    play = Playout()
    chunks = voice_with_pauses(1.0)
    stream = await play.stream(chunks, lambda i: real_time(i) / 2)
    assert stream.utterance.written == SAMPLE_RATE
    assert stream.behind == 0


async def test_sent_far_ahead_or_in_bursts_every_sample_plays() -> None:
    for send_at in (
        lambda i: real_time(i) / 4,  # 4x real time
        lambda i: real_time(i - i % 10),  # bursts of 200 ms, on schedule on average
        lambda i: 0.0,  # all at once
    ):
        play = Playout()
        stream = await play.stream(voice_with_pauses(2.0), send_at)
        assert stream.utterance.written == 2 * SAMPLE_RATE


async def test_a_client_pausing_and_resuming_loses_nothing() -> None:
    play = Playout()
    chunks = voice_with_pauses(3.0)  # 1 s, nothing sent for 1 s, then the rest
    stream = await play.stream(chunks, lambda i: real_time(i) + (1.0 if i >= 50 else 0.0))
    assert stream.utterance.written == 3 * SAMPLE_RATE


async def test_a_short_stall_plays_every_sample_and_gives_its_delay_back() -> None:
    play = Playout()
    stream = await play.stream(voice_chunks(3.0), stalled(1.0, 0.15))
    # 150 ms late against 135 ms of budget, with the frame being prepared already taken:
    # the late pieces play whole, after the ~45 ms of silence that played in their place,
    # and pitch periods give that delay back.
    lost = 3 * SAMPLE_RATE - stream.utterance.written
    assert 0.02 * SAMPLE_RATE <= lost <= 0.05 * SAMPLE_RATE
    assert stream.behind <= RECLAIM_SLACK
    assert play.behind[-1] < 30  # what is buffered: little more than the last 20 ms chunk


async def test_a_voice_without_pauses_catches_up_after_a_long_stall() -> None:
    play = Playout()
    chunks = voice_chunks(6.5)  # held back 350 ms after 1 s: the stream starts over late
    stream = await play.stream(chunks, stalled(1.0, 0.35))
    assert play.behind[70] > 250  # the stall is carried ...
    # ... and given back within a few seconds, at most 10 % faster, at pitch periods.
    assert play.behind[-1] < 30
    lost = len(chunks) * CHUNK - stream.utterance.written
    assert 0.3 * SAMPLE_RATE < lost < 0.45 * SAMPLE_RATE


async def test_a_stalled_stream_with_pauses_gives_its_delay_back_from_them() -> None:
    play = Playout()
    stream = await play.stream(voice_with_pauses(4.0), stalled(1.0, 0.35))
    lost = 4 * SAMPLE_RATE - stream.utterance.written
    assert play.behind[-1] < 30 and stream.behind <= RECLAIM_SLACK
    assert 0.3 * SAMPLE_RATE < lost < 0.4 * SAMPLE_RATE


async def test_position_s_of_a_stream_sent_ahead_is_all_of_it(virtual: Live) -> None:
    """The whole session, on a virtual clock: what the client is told equals what it sent."""
    session = virtual.session
    events = session.subscribe_events()
    sub = session.bus.subscribe(video_depth=1, audio_depth=1000)
    stream = session.open_stream()
    chunks = voice_with_pauses(1.0)
    first = None
    while chunks:  # two chunks per 20 ms of the session's clock: twice real time
        await sub.next_audio()
        first = virtual.clock.now() if first is None else first  # type: ignore[union-attr]
        due = 2 * (virtual.clock.now() - first) / (CHUNK / SAMPLE_RATE)  # type: ignore[union-attr]
        while chunks and 50 - len(chunks) <= due:
            stream.push(chunks.pop(0))
    stream.end()
    async with asyncio.timeout(30):
        while not isinstance(event := await events.get(), PlaybackFinished):
            pass
    assert event.utterance_id == stream.utterance_id and not event.interrupted
    assert abs(event.position_s - 1.0) <= FRAME_SECONDS
