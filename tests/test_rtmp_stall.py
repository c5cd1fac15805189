"""An RTMP push whose server stalls: the session never notices, the output says why and
reconnects, and its muxing child process never outlives it.

- A server that accepts TCP and never answers the RTMP handshake: the session keeps
  publishing while the output connects (PyAV used to hold the GIL there and freeze the whole
  server), the output goes ``retrying`` with a timeout, and DELETE leaves no process behind.
- A proxy in front of nginx that stops reading mid-stream (a link gone silent, no reset): the
  output leaves ``live`` for ``retrying`` and is live again through a fresh connection.

The deadlines are shortened here (the logic is the same) so the tests take seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import streamer
from streamer.measure.nginx import NginxRtmp as Nginx
from streamer.measure.nginx import nginx_rtmp_missing
from streamer.outputs import rtmp_link
from streamer.outputs.rtmp import RtmpOutput
from tests.conftest import Live, tone, wait_for
from tests.test_outputs import attach
from tests.test_rtmp import nginx  # noqa: F401  (the fixture)

needs_nginx = pytest.mark.skipif(
    nginx_rtmp_missing() is not None, reason=f"{nginx_rtmp_missing()} (make test installs them)"
)


@pytest.fixture(autouse=True)
def short_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rtmp_link, "CONNECT_TIMEOUT_S", 3.0)
    monkeypatch.setattr(rtmp_link, "STALL_TIMEOUT_S", 2.0)


def children() -> set[int]:
    """This process's child processes, zombies included."""
    mine = str(os.getpid())
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if stat[stat.rindex(")") + 2 :].split()[1] == mine:
                found.add(int(entry.name))
    return found


class Server:
    """A TCP listener on a free loopback port, in a thread: each accepted connection goes to
    ``serve`` (which by default holds it and says nothing)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(conn)
            self.accepted += 1
            self.serve(conn)

    def serve(self, conn: socket.socket) -> None:
        """Answer nothing (the RTMP handshake never completes)."""

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for conn in self._held:
            conn.close()


class FreezingProxy(Server):
    """Forwards each connection to ``upstream`` until :meth:`freeze`: then every connection
    open at that moment stops reading from its client, and its upstream side is closed (the
    server gave up on it, the client is not told); later connections forward."""

    def __init__(self, upstream: int) -> None:
        self._upstream = upstream
        self._frozen: set[socket.socket] = set()
        self._live: dict[socket.socket, socket.socket] = {}
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        # What a frozen reader's kernel still takes (and acknowledges): a little.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        upstream = socket.create_connection(("127.0.0.1", self._upstream))
        self._held.append(upstream)
        self._live[conn] = upstream
        threading.Thread(target=self._pipe, args=(conn, upstream), daemon=True).start()
        threading.Thread(target=self._pipe, args=(upstream, conn), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while source not in self._frozen and (data := source.recv(4096)):
                sink.sendall(data)
        while source in self._frozen and not self._closed.is_set():
            self._closed.wait(0.1)  # holds the connection open, reading nothing

    def freeze(self) -> None:
        self._frozen |= set(self._live)
        for upstream in self._live.values():
            upstream.shutdown(socket.SHUT_RDWR)
        self._live = {}


@pytest.fixture()
def silent() -> Iterator[Server]:
    server = Server()
    yield server
    server.close()


async def test_a_server_that_never_answers_stalls_nothing_and_is_given_up(
    live: Live, tmp_path: Path, silent: Server
) -> None:
    session = live.session
    before = children()
    output = attach(session, "rtmp", tmp_path, url=f"rtmp://127.0.0.1:{silent.port}/live/k")
    assert isinstance(output, RtmpOutput)
    first: list[int] = []  # the child that connects first, and is stuck

    def connected() -> bool:
        if not first and output.child_pid is not None:
            first.append(output.child_pid)
        return silent.accepted >= 1

    await wait_for(connected, 10, "connected to the silent server")
    frames = session.stats.frames
    await wait_for(lambda: output.state == "retrying", 15, "given up")
    # While the child was stuck in the handshake, the server's loop turned and published.
    assert session.stats.frames > frames + 10
    assert output.last_error and "timed out" in output.last_error
    assert first and gone(first[0])  # killed and reaped before the output said why
    await wait_for(lambda: silent.accepted >= 2, 15, "tried again")
    assert await session.outputs.remove(output.id)
    assert output.child_pid is None and output.state == "stopped"
    assert children() <= before  # no child left, not even a zombie


# A server process of a few lines whose output's child is stuck in the RTMP handshake.
SERVER = """
import sys, threading
import av
from streamer.outputs.mux import Target
from streamer.outputs.rtmp_link import RtmpLink
from streamer.pipeline.codecs import EncodedFrame
encoder = av.CodecContext.create("libx264", "w")
encoder.width = encoder.height = 64
encoder.pix_fmt = "yuv420p"
encoder.options = {"tune": "zerolatency"}
picture = av.VideoFrame(64, 64, "yuv420p")
picture.pts = 0
key = bytes(encoder.encode(picture)[0])
link = RtmpLink(threading.Event())
link.connect(Target(sys.argv[1], "flv"), 0, (64, 64)).video(EncodedFrame(0, (), key, True))
print(link.pid, flush=True)
threading.Event().wait()
"""


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (reaped, or a zombie its new parent has not reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def test_the_child_dies_with_the_server(silent: Server) -> None:
    home = str(Path(streamer.__file__).resolve().parent.parent)
    url = f"rtmp://127.0.0.1:{silent.port}/live/k"
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, url],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": home},
    )
    try:
        assert server.stdout is not None
        child = int(server.stdout.readline())
        deadline = time.monotonic() + 30
        while silent.accepted < 1:  # the child is in the handshake, holding its GIL
            assert time.monotonic() < deadline, "the child never connected"
            time.sleep(0.05)
        assert not gone(child)
        server.send_signal(signal.SIGKILL)  # no clean-up of any kind
        server.wait(10)
        while not gone(child):
            assert time.monotonic() < deadline, f"the muxing child {child} outlived its server"
            time.sleep(0.05)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@needs_nginx
async def test_a_push_whose_link_goes_silent_reconnects(
    live: Live,
    nginx: Nginx,  # noqa: F811
    tmp_path: Path,
) -> None:
    proxy = FreezingProxy(nginx.port)
    try:
        session = live.session
        session.speak_audio(tone(20.0))
        output = attach(session, "rtmp", tmp_path, url=f"rtmp://127.0.0.1:{proxy.port}/live/k")
        await wait_for(lambda: output.state == "live", 15, "live")
        proxy.freeze()
        await wait_for(lambda: output.state == "retrying", 30, "retrying after the stall")
        assert output.last_error == "the RTMP server took no data for 2 s: timed out"
        frames = session.stats.frames
        await wait_for(lambda: output.state == "live", 15, f"live again ({output.last_error})")
        assert output.connections >= 2 and proxy.accepted >= 2
        assert session.stats.frames > frames
        described = output.describe()
        assert described["cpu_ms_per_frame"] is not None and described["cpu_ms_per_frame"] > 0
        assert await session.outputs.remove(output.id)
    finally:
        proxy.close()


@needs_nginx
async def test_a_child_that_stops_reading_is_replaced(
    live: Live,
    nginx: Nginx,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The back-stop: a child that takes nothing from its pipe (stopped here, so its own
    watch on the network is stopped too) is killed, and a new one carries on."""
    session = live.session
    output = attach(session, "rtmp", tmp_path, url=nginx.url("stuck"))
    assert isinstance(output, RtmpOutput)
    await wait_for(lambda: output.state == "live", 15, "live")
    stuck = output.child_pid
    assert stuck is not None
    os.kill(stuck, signal.SIGSTOP)
    await wait_for(lambda: output.state == "retrying", 30, "retrying after the child stuck")
    assert output.last_error == "the muxing process took no data for 2 s: timed out"
    assert gone(stuck)
    await wait_for(lambda: output.state == "live", 15, f"live again ({output.last_error})")
    assert output.child_pid not in (None, stuck) and output.connections >= 2
    assert await session.outputs.remove(output.id)
