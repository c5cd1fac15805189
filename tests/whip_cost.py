"""What one WHIP output costs, in CPU per frame: ``python -m tests.whip_cost [SECONDS]``.

Not a test (timings belong in benchmarks): docs/benchmarks.md gives its figures. A live
session of the default avatar speaks tone bursts. The WHIP endpoint (:mod:`tests.whip_endpoint`)
runs in its own process, so its decoding is not counted. Phases of SECONDS each (10 by
default), twice over: the session with its shared VP8 encode already running (a subscriber
that drains it, as a viewer would keep it running), then with one WHIP output, then with two.
A WHIP output's work (aiortc packetising, SRTP, sending, RTCP, DTLS) all runs on the event
loop, so the loop thread's CPU time (``time.thread_time`` read on the loop) per published
frame isolates it from inference; the whole process's CPU time is printed beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from models.avatar import load_avatar
from streamer.config import Settings
from streamer.engine.factory import make_backend
from streamer.outputs.factory import attach_output
from streamer.outputs.spec import parse_spec
from streamer.outputs.whip import WhipOutput
from tests.conftest import Live, tone
from tests.test_outputs import free_port, wait_for


def _endpoint(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "tests.whip_endpoint", str(port)])
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return process
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the WHIP endpoint did not start")
        time.sleep(0.1)


async def _speak(live: Live) -> None:
    burst = tone(2.0, 180.0, 0.4) * (0.6 + 0.4 * np.sin(np.linspace(0, 40, 32000)))
    while True:
        live.session.speak_audio(burst.astype(np.float32))
        await asyncio.sleep(2.5)


async def _phase(live: Live, seconds: float) -> dict[str, float]:
    frames, loop_cpu, cpu = live.session.stats.frames, time.thread_time(), time.process_time()
    await asyncio.sleep(seconds)
    n = live.session.stats.frames - frames
    return {
        "frames": n,
        "loop_ms_per_frame": 1000 * (time.thread_time() - loop_cpu) / n,
        "process_ms_per_frame": 1000 * (time.process_time() - cpu) / n,
    }


async def _publish(live: Live, port: int) -> WhipOutput:
    """One more WHIP output, once live and past its connection's set-up."""
    url = f"http://127.0.0.1:{port}/whip/bench"
    output = attach_output(live.session, parse_spec("whip", recordings=Path("."), url=url), None)
    assert isinstance(output, WhipOutput)
    await wait_for(lambda: output.state == "live", 15, "live")
    await asyncio.sleep(1)
    return output


async def _drain(sub: object) -> None:
    while True:
        await sub.next_video()  # type: ignore[attr-defined]


async def measure(seconds: float) -> list[dict[str, float]]:
    settings = Settings.from_env()
    avatar = load_avatar(settings.avatar, settings.home)
    live = Live(avatar, make_backend(settings.backend, avatar, settings.threads))
    port = free_port()
    endpoint = _endpoint(port)
    results = []
    try:
        await live.session.start()
        stream = live.session.encoded()
        sub = stream.subscribe()
        tasks = [asyncio.ensure_future(_speak(live)), asyncio.ensure_future(_drain(sub))]
        await asyncio.sleep(3)  # warm up
        for _ in range(2):
            outputs = []
            for count in range(3):
                if count:
                    outputs.append(await _publish(live, port))
                results.append({"whip_outputs": count, **await _phase(live, seconds)})
                print(json.dumps(results[-1]), file=sys.stderr)
            for output in outputs:
                await live.session.outputs.remove(output.id)
        for task in tasks:
            task.cancel()
        stream.unsubscribe(sub)
    finally:
        await live.aclose()
        endpoint.terminate()
        endpoint.wait(10)
    return results


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    results = asyncio.run(measure(seconds))
    for count in (1, 2):
        pairs = [
            (a, b)
            for a, b in itertools.pairwise(results)
            if b["whip_outputs"] == count and a["whip_outputs"] == count - 1
        ]
        for key in ("loop_ms_per_frame", "process_ms_per_frame"):
            extra = ", ".join(f"{b[key] - a[key]:+.2f}" for a, b in pairs)
            print(f"WHIP output {count}: {key} {extra}")


if __name__ == "__main__":
    main()
