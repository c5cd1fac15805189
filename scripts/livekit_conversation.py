"""A scripted agent conversation against the LiveKit worker, for docs/benchmarks.md.

    PYTHONPATH=. python scripts/livekit_conversation.py --minutes 10

The server runs as ``avatarcast serve`` would (the default avatar, its backend) on a loopback
port; the room is the tests' fake (``tests/livekit_fakes.py``), since no LiveKit server can
run here. The agent's side sends each turn (2-4 s of voiced tone) as one ``lk.audio_stream``
at twice real time, as a TTS does, and interrupts every third turn with ``lk.clear_buffer``.
Once a minute it prints one JSON line: the worker's latency (agent audio in to the frame
leaving the worker) next to the session's own speech-to-mouth, clear to silence, clear to the
``lk.playback_finished`` call, the process's RSS and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import httpx
import numpy as np
import psutil

from streamer.app import create_app
from streamer.config import Settings
from tests.conftest import serving, state_of
from tests.livekit_fakes import FakeRoom

ATTRS = {"sample_rate": "24000", "num_channels": "1"}


def voiced(seconds: float, rate: int = 24_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)  # syllables
    return (0.4 * 32767 * envelope * np.sin(2 * np.pi * 180 * t)).astype(np.int16).tobytes()


async def turn(room: FakeRoom, seconds: float, interrupt: bool) -> float | None:
    """One turn; with ``interrupt``, the ms from the clear to the interrupted playback call."""
    before = len(room.calls_to("lk.playback_finished"))
    reader = room.agent_stream(ATTRS)
    data = voiced(seconds)
    for i in range(0, len(data), 4800):  # 100 ms chunks every 50 ms
        reader.feed(data[i : i + 4800])
        await asyncio.sleep(0.05)
    reader.close()
    if interrupt:
        await asyncio.sleep(0.8)
        cleared = time.monotonic()
        await room.agent_rpc("lk.clear_buffer")
    while len(room.calls_to("lk.playback_finished")) <= before:
        room.called.clear()
        await room.called.wait()  # the fake stamps each call as it is made
    last = room.calls_to("lk.playback_finished")[-1]
    return (last.at - cleared) * 1000.0 if interrupt and last.json["interrupted"] else None


async def main(minutes: float) -> None:
    app = create_app(Settings())
    rooms: list[FakeRoom] = []

    def new_room() -> FakeRoom:
        rooms.append(FakeRoom())
        return rooms[-1]

    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        state_of(app).livekit_room = new_room
        answer = await client.post("/v1/livekit/sessions", json={"url": "wss://x", "token": "t"})
        session = state_of(app).registry.get(answer.json()["id"])
        assert session is not None
        room, process = rooms[-1], psutil.Process()
        start, turns, minute = time.monotonic(), 0, 0
        clears: list[Any] = []
        finished: list[float] = []
        while time.monotonic() - start < minutes * 60:
            turns += 1
            took = await turn(room, 2.0 + turns % 3, interrupt=turns % 3 == 0)
            if took is not None:
                finished.append(round(took, 1))
                await asyncio.sleep(0.3)
                clears.append(session.outputs.describe()[0]["clear_to_silence_ms"])
            await asyncio.sleep(0.5)
            if time.monotonic() - start >= (minute + 1) * 60:
                minute += 1
                worker, figures = session.outputs.describe()[0], session.describe()
                line = {
                    "minute": minute,
                    "turns": turns,
                    "first_frame_ms_p50": worker["first_frame_ms_p50"],
                    "first_frame_ms_p95": worker["first_frame_ms_p95"],
                    "session_speech_to_mouth_ms_p95": figures["speech_to_mouth_ms_p95"],
                    "frames_repeated": figures["frames_dropped"],
                    "frames_out": worker["frames"],
                    "silent_frames_skipped": worker["silent_frames_skipped"],
                    "clear_to_silence_ms": clears[-5:],
                    "clear_to_finished_call_ms": finished[-5:],
                    "rss_mb": round(process.memory_info().rss / 2**20, 1),
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                }
                print(json.dumps(line), flush=True)
        print(json.dumps({"clear_to_silence_ms": clears, "clear_to_finished_call_ms": finished}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    asyncio.run(main(parser.parse_args().minutes))
