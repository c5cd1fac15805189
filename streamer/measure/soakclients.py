"""The clients of the soak (``avatarcast bench --soak``), in a process of their own.

``python -m streamer.measure.soakclients REQUEST`` keeps every session of the soak busy as
users would, until a ``stop`` line arrives on stdin:

- **Turns of speech**: each session speaks bursts (:func:`~streamer.measure.signals.bursts`,
  clear voice onsets), alternately streamed as WebSocket PCM at real-time pace (ended with
  ``audio_end``) and posted whole as a WAV (``POST speak``); every ``interrupt_every``-th turn
  is cut half-way, alternately by ``POST interrupt`` and by the WebSocket's ``interrupt``.
- **Viewers**: one WHEP viewer per session stays; ``churn`` more per session join early in
  each cycle and leave (DELETE) half-way through it, so that by the cycle's end, when the
  server samples itself, the audience is back to what it was.

Running in a process of its own keeps the clients' memory, sockets and tasks out of the
server's figures, which are what the soak is about. Each viewer is a real aiortc peer (ICE,
DTLS, SRTP, RTCP) whose packets stop before decoding (the audience bench's receivers). The
report counts what happened and lists every failure: a refused call, an ``error`` event, a
``session_closed``, a viewer that could not connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx

from models.audio import SAMPLE_RATE
from streamer.measure.audience import Receiver
from streamer.measure.liveserver import CHUNK, sleep_until
from streamer.measure.signals import bursts, pcm16, wav_bytes

PAUSE_S = 0.4  # between two turns of one session
MAX_FAILURES = 50  # listed in the report; the count goes on


@dataclass
class Tally:
    """What the clients saw, over every session."""

    turns: int = 0
    interrupts: int = 0
    finished: int = 0  # playback_finished events
    viewers_joined: int = 0
    viewers_left: int = 0
    failures: list[str] = field(default_factory=list)
    failure_count: int = 0

    def fail(self, what: str) -> None:
        self.failure_count += 1
        if len(self.failures) < MAX_FAILURES:
            self.failures.append(what)


@dataclass(frozen=True)
class ClientPlan:
    """How busy the clients keep the sessions; cycles of ``cycle_s`` start when they are
    ready (a ``time.monotonic()`` the server reads from their ``ready`` line)."""

    cycle_s: float
    churn: int  # extra viewers per session per cycle
    turn_s: float
    interrupt_every: int


class SessionClient:
    """One session's speaker (WebSocket and HTTP) and persistent viewer."""

    def __init__(self, http: httpx.AsyncClient, base: str, sid: str, token: str) -> None:
        self.http, self.sid, self.token = http, sid, token
        self.ws_url = base.replace("http", "ws", 1) + f"/v1/sessions/{sid}/ws"
        self.viewer: Receiver | None = None

    async def speak(self, plan: ClientPlan, delay_s: float, tally: Tally) -> None:
        """Turns of speech, the first after ``delay_s`` (sessions do not speak in step),
        until cancelled; the events are read as they come."""
        from websockets.asyncio.client import connect

        url = f"{self.ws_url}?sample_rate={SAMPLE_RATE}"
        async with connect(url, max_queue=None) as ws:
            events = asyncio.get_running_loop().create_task(self._events(ws, tally))
            try:
                await asyncio.sleep(delay_s)
                turn = 0
                while True:
                    cut = plan.interrupt_every > 0 and turn % plan.interrupt_every == 1
                    if turn % 2 == 0:
                        await self._stream(ws, plan.turn_s, cut, turn, tally)
                    else:
                        await self._post(plan.turn_s, cut, turn, ws, tally)
                    tally.turns += 1
                    turn += 1
                    await asyncio.sleep(PAUSE_S)
            finally:
                events.cancel()
                await asyncio.gather(events, return_exceptions=True)

    async def _stream(self, ws: Any, seconds: float, cut: bool, turn: int, tally: Tally) -> None:
        """``seconds`` of bursts as 20 ms PCM messages at real-time pace, then audio_end."""
        loop = asyncio.get_running_loop()
        total = int(seconds * SAMPLE_RATE)
        stop_at = total // 2 if cut else total
        start, sent = loop.time(), 0
        while sent < stop_at:
            await ws.send(pcm16(bursts(CHUNK, sent)))
            sent += CHUNK
            await asyncio.sleep(max(0.0, start + sent / SAMPLE_RATE - loop.time()))
        if cut:
            await self._interrupt(turn, ws, tally)
        else:
            await ws.send(json.dumps({"type": "audio_end"}))

    async def _post(self, seconds: float, cut: bool, turn: int, ws: Any, tally: Tally) -> None:
        """``seconds`` of bursts posted as one WAV; waits for it to play (or cuts it)."""
        wav = wav_bytes(bursts(int(seconds * SAMPLE_RATE)))
        res = await self.http.post(
            f"/v1/sessions/{self.sid}/speak", content=wav, headers={"Content-Type": "audio/wav"}
        )
        if res.status_code != 202:
            tally.fail(f"{self.sid}: POST speak answered {res.status_code}: {res.text[:200]}")
        await asyncio.sleep(seconds / 2 if cut else seconds)
        if cut:
            await self._interrupt(turn, ws, tally)

    async def _interrupt(self, turn: int, ws: Any, tally: Tally) -> None:
        tally.interrupts += 1
        if (turn // 2) % 2 == 0:
            await ws.send(json.dumps({"type": "interrupt"}))
            return
        res = await self.http.post(f"/v1/sessions/{self.sid}/interrupt")
        if res.status_code != 200:
            tally.fail(f"{self.sid}: POST interrupt answered {res.status_code}: {res.text[:200]}")

    async def _events(self, ws: Any, tally: Tally) -> None:
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):  # a closed socket is told below
            async for message in ws:
                if not isinstance(message, str):
                    continue
                kind = json.loads(message).get("type")
                if kind == "playback_finished":
                    tally.finished += 1
                elif kind in ("error", "session_closed"):
                    tally.fail(f"{self.sid}: {kind} event: {message[:300]}")
        tally.fail(f"{self.sid}: the WebSocket closed")

    async def join(self, tally: Tally) -> Receiver | None:
        """One more viewer with a first frame, or None (counted as a failure)."""
        receiver = Receiver(decode=False)
        try:
            await receiver.connect(self.http, self.sid, self.token)
            await asyncio.wait_for(asyncio.shield(receiver.first_frame), 20)
        except Exception as exc:
            tally.fail(f"{self.sid}: a viewer did not connect: {exc!r}")
            await receiver.aclose(self.http, self.token)
            return None
        tally.viewers_joined += 1
        return receiver

    async def leave(self, receiver: Receiver, tally: Tally) -> None:
        await receiver.aclose(self.http, self.token)  # DELETE, then the peer closes
        tally.viewers_left += 1


async def churn(clients: list[SessionClient], plan: ClientPlan, t0: float, tally: Tally) -> None:
    """Each cycle from ``t0``: ``plan.churn`` viewers per session join at 10 % of it and
    leave at 50 %."""
    cycle = 0
    while True:
        start = t0 + cycle * plan.cycle_s
        await sleep_until(start + 0.1 * plan.cycle_s)
        joined = await asyncio.gather(*(c.join(tally) for c in clients for _ in range(plan.churn)))
        pairs = [
            (c, r)
            for c, r in zip([c for c in clients for _ in range(plan.churn)], joined, strict=True)
            if r is not None
        ]
        await sleep_until(start + 0.5 * plan.cycle_s)
        await asyncio.gather(*(c.leave(r, tally) for c, r in pairs))
        cycle += 1


async def _guarded(job: Coroutine[Any, Any, None], what: str, tally: Tally) -> None:
    """Run ``job``; a client that stops early is a failure of its own, counted."""
    try:
        await job
    except Exception as exc:
        tally.fail(f"{what} stopped: {exc!r}")


async def soak_clients(base: str, sessions: list[list[str]], plan: ClientPlan) -> dict[str, Any]:
    """Run the clients until ``stop`` on stdin; the tally as a dict."""
    tally = Tally()
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        clients = [SessionClient(http, base, sid, token) for sid, token in sessions]
        tasks: list[asyncio.Task[None]] = []
        try:
            for client in clients:
                client.viewer = await client.join(tally)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            jobs = [
                (c.speak(plan, i * plan.turn_s / len(clients), tally), f"{c.sid}: the speaker")
                for i, c in enumerate(clients)
            ]
            jobs.append((churn(clients, plan, t0, tally), "the viewers' churn"))
            tasks = [loop.create_task(_guarded(job, what, tally)) for job, what in jobs]
            print(f"ready {t0}", flush=True)
            await asyncio.to_thread(sys.stdin.readline)  # the soak's "stop"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for client in clients:
                if client.viewer is not None:
                    with contextlib.suppress(Exception):
                        await client.leave(client.viewer, tally)
    return {
        "turns": tally.turns,
        "interrupts": tally.interrupts,
        "playback_finished": tally.finished,
        "viewers_joined": tally.viewers_joined,
        "viewers_left": tally.viewers_left,
        "failure_count": tally.failure_count,
        "failures": tally.failures,
    }


def soak_clients_main(argv: list[str]) -> int:
    import logging
    import warnings

    logging.getLogger("aiortc").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    request = json.loads(argv[0])
    plan = ClientPlan(**request["plan"])
    report = asyncio.run(soak_clients(request["base"], request["sessions"], plan))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":  # the clients' process of the soak
    raise SystemExit(soak_clients_main(sys.argv[1:]))
