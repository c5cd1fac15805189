"""The service's parts on their own (clock, playout order, PCM conversion), and its errors as
a pipeline sees them: an ``ErrorFrame`` upstream that says what failed."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
from pipecat.frames.frames import EndFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.workers.runner import WorkerRunner

from pipecat_avatarcast import AvatarcastVideoService
from pipecat_avatarcast.playout import Flush, Playout, RtpTime
from pipecat_avatarcast.uplink import PcmConverter, with_sample_rate
from tests.conftest import Server, free_port
from tests.probes import ErrorLog


def test_rtp_time_counts_from_the_first_frame_across_the_wrap() -> None:
    clock = RtpTime(90_000)
    start = (1 << 32) - 3600  # a random origin, one frame before the 32-bit wrap
    times = [clock.seconds((start + k * 3600) % (1 << 32)) for k in range(3)]
    assert times == [0.0, 0.04, 0.08]
    assert clock.seconds(start + 3600) == 0.04  # a late packet's frame keeps its own time


async def test_playout_releases_by_time_pictures_first_and_clear_drops_the_waiting() -> None:
    out: list[str] = []
    three = asyncio.Event()

    async def emit(item: str) -> None:
        out.append(item)
        if len(out) == 3:
            three.set()

    playout: Playout[str] = Playout(emit, delay_s=0.0)
    playout.put(0.02, "audio 20 ms", rank=1)  # the anchor: all three are already due
    playout.put(0.0, "audio 0 ms", rank=1)
    playout.put(0.0, "picture 0 ms", rank=0)
    task = asyncio.create_task(playout.run())
    await asyncio.wait_for(three.wait(), 5)
    assert out == ["picture 0 ms", "audio 0 ms", "audio 20 ms"]

    playout.delay_s = 60.0
    playout.put(0.04, "cut off", rank=1)
    assert len(playout) == 1
    playout.clear()
    assert len(playout) == 0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert out == ["picture 0 ms", "audio 0 ms", "audio 20 ms"]


def test_an_interrupt_flushes_the_speech_on_its_way_until_the_avatar_is_quiet() -> None:
    flush = Flush(quiet_s=0.2, max_s=0.6)
    assert not flush.audio(0.0, 0.02, loud=True, now=0.0) and not flush.video(0.0)
    flush.start(now=1.0)
    # Speech still arriving, a pause shorter than quiet_s, more speech: all flushed.
    loud = [True] * 5 + [False] * 5 + [True] * 5 + [False] * 9
    t = [1.0 + 0.02 * k for k in range(len(loud))]
    assert all(
        flush.audio(tk, 0.02, lk, now=1.0 + 0.02 * k)
        for k, (tk, lk) in enumerate(zip(t, loud, strict=True))
    )
    assert flush.video(t[-1])
    # The tenth quiet frame completes 0.2 s of quiet: the flush ends with it.
    assert flush.audio(1.48, 0.02, loud=False, now=1.5)
    assert not flush.audio(1.50, 0.02, loud=True, now=1.52)  # the avatar speaks again: kept
    assert flush.video(1.49) and not flush.video(1.50)  # late pictures of the flushed time
    # A flush never lasts longer than max_s, quiet or not.
    flush.start(now=2.0)
    assert flush.audio(2.0, 0.02, loud=True, now=2.59)
    assert flush.audio(2.02, 0.02, loud=True, now=2.61)
    assert not flush.audio(2.04, 0.02, loud=True, now=2.63)


def test_pcm_converter_mixes_to_mono_and_resamples() -> None:
    stereo = np.zeros((4800, 2), "<i2")
    stereo[:, 0], stereo[:, 1] = 8000, -8000  # opposite channels cancel out
    converter = PcmConverter(16_000)
    data = converter.convert(stereo.tobytes(), 48_000, 2) + converter.flush()
    mono = np.frombuffer(data, "<i2")
    assert abs(len(mono) - 1600) <= 32 and np.abs(mono).max() <= 1
    same = np.arange(-500, 500, dtype="<i2").tobytes()
    assert converter.convert(same, 16_000, 1) == same


def test_the_socket_url_carries_the_tts_rate() -> None:
    url = "ws://host:8080/v1/sessions/abc/ws?sample_rate=16000&x=1"
    assert (
        with_sample_rate(url, 24_000) == "ws://host:8080/v1/sessions/abc/ws?sample_rate=24000&x=1"
    )


async def run_until_end(avatar: AvatarcastVideoService, errors: ErrorLog) -> None:
    """Start a pipeline, wait for the service's first error, then end it."""
    worker = PipelineWorker(Pipeline([errors, avatar]), idle_timeout_secs=None, enable_rtvi=False)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    for _ in range(300):
        if errors.errors:
            break
        await asyncio.sleep(0.05)
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(running, 20)


async def test_an_unreachable_server_is_an_error_frame_that_says_so() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    errors = ErrorLog()
    await run_until_end(AvatarcastVideoService(base_url=url, wait_for_transport=False), errors)
    assert len(errors.errors) == 1
    assert url in errors.errors[0] and "avatarcast serve" in errors.errors[0]


async def test_the_servers_refusal_reaches_the_pipeline_with_its_reason(server: Server) -> None:
    errors = ErrorLog()
    avatar = AvatarcastVideoService(base_url=server.url, api_key=server.api_key, avatar="nobody")
    await run_until_end(avatar, errors)
    assert len(errors.errors) == 1
    assert "HTTP 400" in errors.errors[0] and "unknown_avatar" in errors.errors[0]


async def test_cancel_frame_deletes_the_session(server: Server) -> None:
    avatar = AvatarcastVideoService(
        base_url=server.url, api_key=server.api_key, wait_for_transport=False
    )
    worker = PipelineWorker(Pipeline([avatar]), idle_timeout_secs=None, enable_rtvi=False)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    for _ in range(300):
        if avatar.session is not None:
            break
        await asyncio.sleep(0.05)
    assert avatar.session is not None
    headers = {"Authorization": f"Bearer {server.api_key}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers) as http:
        assert (await http.get(f"/v1/sessions/{avatar.session.id}")).status_code == 200
        await worker.cancel()  # a CancelFrame
        await asyncio.wait_for(running, 20)
        assert (await http.get(f"/v1/sessions/{avatar.session.id}")).status_code == 404


async def test_closing_before_starting_and_twice_is_harmless() -> None:
    avatar = AvatarcastVideoService(base_url="http://127.0.0.1:9")
    await avatar.cleanup()
    await avatar.cleanup()
    assert avatar.session is None
