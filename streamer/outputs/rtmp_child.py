"""The muxing child process of an RTMP push: ``python -m streamer.outputs.rtmp_child PPID``.

Why a child: PyAV (18.1) opens an output's connection with ``avio_open`` while holding the
GIL and with no options, so a server that accepts TCP and never answers the RTMP handshake
froze every thread of the server, and a link that went silent blocked the output's writes
for good (FFmpeg's ``rw_timeout`` cannot be set there). In a process of its own, the network
can hold nothing but this process, which the output watches and kills
(:mod:`.rtmp_link`).

It runs the same :class:`~streamer.outputs.mux.Muxer` a recording runs in its thread. The
output writes framed messages on its stdin: ``OPEN`` (a connection: its number, the URL,
format, options, origin and frame size, as JSON; the URL never appears in ``ps``), then
``KEY``/``VIDEO`` (an access unit) and ``AUDIO`` (640 PCM samples) with their frame index,
then ``CLOSE``. It answers one line per event on stdout: ``connected N`` once connection
``N``'s header went out, ``error N REASON`` when it failed (FFmpeg's reason, e.g.
``Connection refused``); after an error it skips messages until the next ``OPEN``. It
lives as long as its output, so a push that retries a refused connection every few seconds
does not start a Python process each time; it exits at the end of its stdin, and when the
thread that started it ends (``PR_SET_PDEATHSIG``), so it never outlives the server.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import struct
import sys
import threading
from typing import IO, Any

import numpy as np

from streamer.outputs.mux import Muxer, MuxError, Target
from streamer.outputs.tcpwatch import TcpWatch

# kind (one byte), frame index or connection number, payload length; then the payload
HEADER = struct.Struct("<BqI")
OPEN, KEY, VIDEO, AUDIO, CLOSE = 1, 2, 3, 4, 5
MAX_PAYLOAD = 64 << 20  # larger than any access unit: a longer one means a broken stream
PR_SET_PDEATHSIG = 1


def message(kind: int, index: int, payload: bytes = b"") -> tuple[bytes, bytes]:
    """One message as the two buffers the output writes (header, payload)."""
    return HEADER.pack(kind, index, len(payload)), payload


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    data = stream.read(size)
    if len(data) < size:
        return None  # the end of stdin: the output is gone or done
    return data


def read_message(stream: IO[bytes]) -> tuple[int, int, bytes] | None:
    """The next message, or None at the end of the stream."""
    header = _read_exactly(stream, HEADER.size)
    if header is None:
        return None
    kind, index, size = HEADER.unpack(header)
    if size > MAX_PAYLOAD:
        raise ValueError(f"a message of {size} bytes: the stream is broken")
    payload = _read_exactly(stream, size) if size else b""
    return None if payload is None else (kind, index, payload)


def die_with_parent(parent: int) -> None:
    """Be killed when the thread that started this process ends (Linux); exit at once if
    the parent is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        sys.exit(0)


class Child:
    """The loop over stdin: one :class:`Muxer` per ``OPEN``."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._number = 0
        self._muxer: Muxer | None = None  # None before an OPEN, after an error or a close
        self._said_connected = False
        self._stall_s = 0.0
        self._saying = threading.Lock()
        self._watch = TcpWatch(self._stalled)

    def say(self, line: str) -> None:
        with self._saying:
            self._out.write(line.replace("\n", " ") + "\n")
            self._out.flush()

    def _stalled(self, stall_s: float) -> None:
        """The server took nothing for ``stall_s`` (from the watch's thread): the main thread
        is stuck in a write, so say why and end here; the output starts a new process."""
        self.say(
            f"error {self._number} the RTMP server took no data for {stall_s:.0f} s: timed out"
        )
        os._exit(1)

    def handle(self, kind: int, index: int, payload: bytes) -> None:
        if kind == OPEN:
            self._close()
            self._number = index
            try:
                self._open(json.loads(payload))
            except MuxError as exc:
                self.say(f"error {index} {exc}")
        elif kind == CLOSE:
            self._close()
        elif self._muxer is not None:
            try:
                self._feed(self._muxer, kind, index, payload)
            except MuxError as exc:
                self.say(f"error {self._number} {exc}")
                self._close()

    def _open(self, params: dict[str, Any]) -> None:
        target = Target(params["url"], params["format"], params["options"])
        self._said_connected = False
        self._muxer = Muxer(target, params["origin"], (params["width"], params["height"]))
        self._stall_s = float(params["stall_timeout_s"])

    def _feed(self, muxer: Muxer, kind: int, index: int, payload: bytes) -> None:
        if kind == AUDIO:
            muxer.audio_pcm(index, np.frombuffer(payload, np.int16))
            return
        muxer.video_unit(index, payload, kind == KEY)
        if not self._said_connected:  # the first picture connected and wrote the header
            self._said_connected = True
            self._watch.watch(self._stall_s)
            self.say(f"connected {self._number}")

    def _close(self) -> None:
        muxer, self._muxer = self._muxer, None
        self._watch.forget()
        if muxer is not None:
            muxer.close()


def main(argv: list[str]) -> int:
    """Run until the end of stdin (exit status 0), or 2 for a wrong command line."""
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m streamer.outputs.rtmp_child PARENT_PID", file=sys.stderr)
        return 2
    die_with_parent(int(argv[0]))
    child = Child(sys.stdout)
    stdin = sys.stdin.buffer
    while (got := read_message(stdin)) is not None:
        child.handle(*got)
    child.handle(CLOSE, 0, b"")  # the trailer written, the connection closed
    sys.stdout.flush()
    os._exit(0)  # nothing left to clean: skip the interpreter's teardown, a DELETE waits on it


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
