"""An RTMP push's muxing child process, as its output's thread sees it: connections that
look like a :class:`~streamer.outputs.mux.Muxer`, and the deadlines that kill a stalled one.

The child (:mod:`.rtmp_child`) does everything that touches the network: PyAV's FLV muxer,
the AAC encode, the RTMP connection. Here, the output's thread only writes framed messages
into the child's stdin and reads its report lines, never blocking for long:

- the stdin pipe is non-blocking and enlarged to ``PIPE_BYTES`` (1 MiB, about 6 s of the
  stream), so a child that is briefly busy never holds the thread; when the pipe is full the
  thread waits in ``select``, in slices that look at the output's stop flag;
- a connection must say ``connected`` (its header sent: TCP, the RTMP handshake and the
  publish commands done) within ``CONNECT_TIMEOUT_S`` (10 s) of its ``OPEN``;
- once connected, the child must keep taking data: when it has read nothing of what waits
  in the pipe for ``STALL_TIMEOUT_S`` (5 s), it is stuck in a network write (a link gone
  silent without a reset) and is killed. What the child took is counted as the bytes written
  minus those still in the pipe (``FIONREAD``), so the pipe's size does not delay this.

Either deadline kills the child and raises ``MuxError('... timed out')``: the output goes
``retrying`` with that reason and its usual backoff, and its next connection starts a new
child. A connection that fails on its own (``Connection refused``, ``Broken pipe``) leaves
the child alive for the next one. The child's CPU time (``/proc/PID/stat``, read before it
is reaped) is counted with the thread's in the output's ``cpu_ms_per_frame``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import streamer
from streamer.outputs.mux import MuxError, Target
from streamer.outputs.rtmp_child import AUDIO, CLOSE, HEADER, KEY, OPEN, VIDEO

if TYPE_CHECKING:
    from streamer.pipeline.codecs import EncodedFrame
    from streamer.pipeline.frames import AVFrame

CONNECT_TIMEOUT_S = 10.0  # from OPEN to the header sent
STALL_TIMEOUT_S = 5.0  # a connected child that reads nothing this long is stuck
EXIT_WAIT_S = 2.0  # for the trailer on close, before the child is killed
PIPE_BYTES = 1 << 20
SLICE_S = 0.25  # how long one wait lasts before the stop flag is looked at again
CHECK_EVERY_S = 0.25  # how often a flowing stream looks at the child's lines and progress
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


class ChildConnection:
    """One connection of the child: what the output's thread feeds (``Container``)."""

    def __init__(self, link: RtmpLink, number: int, size: tuple[int, int]) -> None:
        self._link = link
        self.number = number
        self.size = size

    def video(self, frame: EncodedFrame) -> None:
        if frame.video is not None:
            self._link.send(self.number, KEY if frame.keyframe else VIDEO, frame.index, frame.video)

    def audio(self, frame: AVFrame) -> None:
        self._link.send(self.number, AUDIO, frame.index, frame.audio.tobytes())

    def ready(self, stop: threading.Event) -> bool:
        return self._link.wait_connected(self.number)

    def close(self) -> None:
        self._link.end(self.number)


class RtmpLink:
    """The child process of one output: started by its first connection, kept for the next
    ones, replaced after it was killed or died. Used from the output's thread only."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._process: subprocess.Popen[bytes] | None = None
        self._pidfd = -1
        self._number = 0  # the connection last opened
        self._connected = 0  # the connection last said to be connected
        self._failed = 0  # the connection last said to have failed
        self._opened_at = 0.0
        self._written = 0  # bytes written to the current child's stdin
        self._consumed = 0  # of which the child had read at ``_progress_at``
        self._progress_at = 0.0
        self._next_check = 0.0
        self._lines = bytearray()
        self._cpu_done_s = 0.0  # CPU of the children already reaped

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def cpu_s(self) -> float:
        """CPU time (user and system) of every child this output has run so far."""
        return self._cpu_done_s + (0.0 if self._process is None else self._child_cpu_s())

    # --- connections -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the child ahead of the first connection: its imports (about 0.3 s of CPU)
        then overlap the wait for a key frame instead of delaying the connection, while the
        output's hand-off, which holds 1 s of pictures, fills."""
        if self._process is None:
            self._spawn()

    def connect(self, target: Target, origin: int, size: tuple[int, int]) -> ChildConnection:
        """Open a connection: the child connects while the thread goes on."""
        if not isinstance(target.url, str):
            raise TypeError("a muxing child takes a URL")
        if self._process is not None and select.select([self._pidfd], [], [], 0)[0]:
            self._reap(0.0)  # it ended after its last connection (a stall it detected)
        if self._process is None:
            self._spawn()
        self._number += 1
        params = {
            **{"url": target.url, "format": target.format, "options": target.options},
            **{"origin": origin, "width": size[0], "height": size[1]},
            "stall_timeout_s": STALL_TIMEOUT_S,
        }
        self._opened_at = time.monotonic()
        self.send(self._number, OPEN, self._number, json.dumps(params).encode())
        return ChildConnection(self, self._number, size)

    def wait_connected(self, number: int) -> bool:
        """Wait for connection ``number``'s header to go out: True, or False on a stop;
        MuxError when it failed or did not connect within ``CONNECT_TIMEOUT_S``."""
        deadline = self._opened_at + CONNECT_TIMEOUT_S
        while self._connected != number:
            if self._stop.is_set():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._kill(
                    f"the RTMP server did not complete the connection within "
                    f"{CONNECT_TIMEOUT_S:.0f} s: timed out"
                )
            self._wait(number, min(SLICE_S, left), writing=False)
        return True

    def send(self, number: int, kind: int, index: int, payload: bytes) -> None:
        """Write one message whole (MuxError when the connection or the child failed)."""
        if self._process is None or number != self._number:
            raise MuxError("the muxing process is gone")
        header = HEADER.pack(kind, index, len(payload))
        rest: list[memoryview] = [memoryview(header), memoryview(payload)]
        while True:
            try:
                written = os.writev(self._stdin_fd(), rest)
            except BlockingIOError:
                written = 0
            except BrokenPipeError:
                raise self._ended(number) from None
            self._written += written
            rest = _after(rest, written)
            if not rest:
                break
            try:
                self._wait(number, SLICE_S, writing=True)
            except MuxError:
                self._reap(0.0)  # a message cut in two: the child cannot read on
                raise
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + CHECK_EVERY_S
            self._wait(number, 0.0, writing=False)

    def end(self, number: int) -> None:
        """Close connection ``number`` (its trailer written by the child)."""
        if self._process is None or number != self._number or self._failed == number:
            return
        if self._connected != number:  # stuck connecting, or given up: nothing to keep
            self._kill("closed while connecting")
            return
        with contextlib.suppress(MuxError):
            self.send(number, CLOSE, number, b"")

    def close(self) -> None:
        """End the child: the end of its stdin, then a kill if it has not exited in time."""
        process = self._process
        if process is None or process.stdin is None:
            return
        with contextlib.suppress(OSError):
            process.stdin.close()
        self._reap(EXIT_WAIT_S)

    # --- waiting, reading, ending -----------------------------------------------------------

    def _wait(self, number: int, timeout: float, writing: bool) -> None:
        """Wait up to ``timeout`` for the pipe to take more (``writing``) or for a line, and
        act on what the child said or did; raises MuxError for this connection's end."""
        assert self._process is not None and self._process.stdout is not None
        out = self._process.stdout.fileno()
        into = [self._stdin_fd()] if writing else []
        readable, _, _ = select.select([out, self._pidfd], into, [], timeout)
        if out in readable:
            with contextlib.suppress(BlockingIOError):
                self._lines += os.read(out, 4096)
            self._heard(number)
        if self._pidfd in readable:
            raise self._ended(number)
        if writing and self._stop.is_set():
            raise self._kill("stopped")
        if self._connected == number:
            self._check_progress()

    def _heard(self, number: int) -> None:
        """Act on the child's whole lines about connection ``number``."""
        while (end := self._lines.find(b"\n")) >= 0:
            line = self._lines[:end].decode(errors="replace")
            del self._lines[: end + 1]
            said, _, rest = line.partition(" ")
            which, _, reason = rest.partition(" ")
            if not which.isdigit() or int(which) != number:
                continue  # about an earlier connection
            if said == "connected":
                self._connected = number
                self._consumed = self._written - self._unread()
                self._progress_at = time.monotonic()
            elif said == "error":
                self._failed = number
                raise MuxError(reason or "the connection failed")

    def _check_progress(self) -> None:
        unread = self._unread()
        consumed = self._written - unread
        now = time.monotonic()
        if unread == 0 or consumed > self._consumed:
            self._consumed, self._progress_at = consumed, now
        elif now - self._progress_at > STALL_TIMEOUT_S:
            raise self._kill(
                f"the muxing process took no data for {STALL_TIMEOUT_S:.0f} s: timed out"
            )

    def _unread(self) -> int:
        got = fcntl.ioctl(self._stdin_fd(), termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", got)[0])

    def _ended(self, number: int) -> MuxError:
        """The child exited by itself: its last word about ``number``, or its exit status."""
        assert self._process is not None and self._process.stdout is not None
        out = self._process.stdout.fileno()
        with contextlib.suppress(OSError):  # all it wrote, up to the end of its stdout
            while len(self._lines) < 65536 and (chunk := os.read(out, 4096)):
                self._lines += chunk
        try:
            self._heard(number)
        except MuxError as said:
            self._reap(EXIT_WAIT_S)
            return said
        status = self._reap(EXIT_WAIT_S)
        return MuxError(f"the muxing process ended (exit status {status})")

    def _kill(self, reason: str) -> MuxError:
        self._reap(0.0)
        return MuxError(reason)

    def _reap(self, wait_s: float) -> int | None:
        """Let the child exit for up to ``wait_s``, then kill it; count its CPU (its times
        are final once it has exited, and readable until it is reaped); close its pipes."""
        process, self._process = self._process, None
        if process is None:
            return None
        if not select.select([self._pidfd], [], [], wait_s)[0]:
            process.kill()
            select.select([self._pidfd], [], [], None)
        self._cpu_done_s += _cpu_s_of(process.pid)
        status = process.wait()
        os.close(self._pidfd)
        self._pidfd = -1
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._lines.clear()
        return status

    def _child_cpu_s(self) -> float:
        assert self._process is not None
        return _cpu_s_of(self._process.pid)

    def _stdin_fd(self) -> int:
        assert self._process is not None and self._process.stdin is not None
        return self._process.stdin.fileno()

    def _spawn(self) -> None:
        """Start a child (an argument list, this interpreter, this package's code)."""
        home = str(Path(streamer.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (home, env.get("PYTHONPATH")) if p)
        argv = [sys.executable, "-m", "streamer.outputs.rtmp_child", str(os.getpid())]
        try:
            process = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env
            )
        except OSError as exc:
            raise MuxError(f"cannot start the muxing process: {exc.strerror or exc}") from exc
        assert process.stdin is not None and process.stdout is not None
        with contextlib.suppress(OSError):
            fcntl.fcntl(process.stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        os.set_blocking(process.stdin.fileno(), False)
        os.set_blocking(process.stdout.fileno(), False)
        self._pidfd = os.pidfd_open(process.pid)
        self._process = process
        self._written = self._consumed = 0
        self._lines.clear()


def _after(buffers: list[memoryview], written: int) -> list[memoryview]:
    """What is left of ``buffers`` once ``written`` bytes of them went out."""
    while buffers and written >= len(buffers[0]):
        written -= len(buffers[0])
        buffers = buffers[1:]
    if buffers and written:
        buffers = [buffers[0][written:], *buffers[1:]]
    return buffers


def _cpu_s_of(pid: int) -> float:
    """A process's user and system CPU time so far (0 when it cannot be read)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime
