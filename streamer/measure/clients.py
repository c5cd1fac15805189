"""The clients of a session-ramp step, in a process of their own.

``python -m streamer.measure.clients REQUEST`` runs either a speaker streaming a steady voice
into each session or a WHEP viewer of each, as other machines' clients would reach the server:
their decoding and packet work costs CPU on the same cores, but not the server's event loop,
and the viewers' work does not make the speakers late. :class:`ClientProcess` starts one such
process from the bench and reads its report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import httpx

from streamer.measure.liveserver import Speaker, sleep_until
from streamer.measure.signals import voiced
from streamer.measure.viewer import Viewer

EXIT_GRACE_S = 5.0  # a client process that has reported gets this long to exit by itself


class ClientProcess:
    """A process running :func:`clients`: ``python -m streamer.measure.clients REQUEST``."""

    def __init__(self, process: asyncio.subprocess.Process, ready_at: float) -> None:
        self.process = process
        self.ready_at = ready_at  # time.monotonic(), the clock of every process here

    @classmethod
    async def start(
        cls, base: str, role: str, sessions: list[list[str]], seconds: float
    ) -> ClientProcess:
        request = {"base": base, "role": role, "sessions": sessions, "seconds": seconds}
        return await cls.spawn("streamer.measure.clients", request, f"the {role}'", 60.0)

    @classmethod
    async def spawn(
        cls, module: str, request: dict[str, Any], what: str, ready_s: float
    ) -> ClientProcess:
        """``python -m module REQUEST``, once it has printed ``ready <time>`` (within
        ``ready_s``). Its stdin is a pipe: :meth:`stop` writes a line to it."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            json.dumps(request),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        made = cls(process, 0.0)
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), ready_s)
        except TimeoutError:
            line = b""
        if not line.startswith(b"ready"):
            await made.aclose()
            raise RuntimeError(f"{what} process did not start within {ready_s:.0f} s")
        made.ready_at = float(line.split()[1])
        return made

    def stop(self) -> None:
        """Tell a process that waits for it (the audience) to report now."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"stop\n")

    async def report(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        return dict(json.loads(await asyncio.wait_for(self.process.stdout.read(), 60)))

    async def aclose(self) -> None:
        """End the process: one that has reported (its stdout closed) is exiting, so it gets a
        few seconds to finish; any other is killed. Killing one that has just exited raced
        asyncio's child watcher: ``kill`` polls, and so reaps, the child first, and the watcher
        then logged "Unknown child process pid N, will report returncode 255"."""
        stdout = self.process.stdout
        if self.process.returncode is None and stdout is not None and stdout.at_eof():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.process.wait()), EXIT_GRACE_S)
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()


async def _connect_viewer(http: httpx.AsyncClient, sid: str, token: str) -> Viewer:
    """A viewer that decodes, as a player would, but measures nothing, once it has a frame."""
    viewer = Viewer(None)
    try:
        await viewer.connect(http, sid, token)
        await asyncio.wait_for(asyncio.shield(viewer.first_frame), 15)
    except BaseException:
        await viewer.aclose(http, token)
        raise
    return viewer


async def clients(
    base: str, role: str, sessions: list[list[str]], seconds: float
) -> dict[str, Any]:
    """The clients of a ramp step, in their own process: a speaker streaming a steady voice
    into each session (``role`` "speakers") or a viewer of each ("viewers"). Prints
    ``ready <time>`` once all are connected (viewers: with a frame), then runs ``seconds``
    more; returns the speakers' failures or each viewer's frame arrivals."""
    loop = asyncio.get_running_loop()
    viewers: list[tuple[Viewer, str]] = []
    speakers: list[Speaker] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        try:
            for sid, token in sessions:
                if role == "speakers":
                    speakers.append(Speaker(base, sid, voiced))
                else:
                    viewers.append((await _connect_viewer(http, sid, token), token))
            ready = loop.time()
            print(f"ready {ready}", flush=True)
            await sleep_until(ready + seconds)
            return {
                "failed": [repr(s.failed) for s in speakers if s.failed is not None],
                "arrivals": [v.video.complete for v, _ in viewers],
            }
        finally:
            for speaker in speakers:
                await speaker.aclose()
            for viewer, token in viewers:
                await viewer.aclose(http, token)


def clients_main(argv: list[str]) -> int:
    import logging
    import warnings

    logging.getLogger("aiortc").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    request = json.loads(argv[0])
    report = asyncio.run(
        clients(request["base"], request["role"], request["sessions"], request["seconds"])
    )
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":  # the clients' process of a ramp step
    raise SystemExit(clients_main(sys.argv[1:]))
