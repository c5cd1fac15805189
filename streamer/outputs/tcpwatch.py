"""Whether a process's TCP connections still deliver: the muxing child's watch on its link.

A link that goes silent without a reset (a cable pulled on the way, a server that stopped
reading) does not fail a write at once: the kernel keeps accepting data into the socket's
send buffer, which Linux grows to 4 MiB, about 25 s of an RTMP push, and only then does a
write block. A timeout on blocked writes (FFmpeg's ``rw_timeout``) therefore fires that much
later. This looks at what the peer acknowledges instead: when data waits in the send queue
(``SIOCOUTQ``) and the bytes the peer acknowledged (``TCP_INFO``'s ``tcpi_bytes_acked``,
Linux 4.1+) have not moved for ``stall_s``, the peer is taking nothing, whatever the
buffers' size.

It runs in a thread of the muxing child: PyAV releases the GIL while it writes packets, so
this thread runs while the main one is stuck in a write. (The handshake and the header are
written holding the GIL; the output's connect deadline covers those.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable

CHECK_EVERY_S = 0.5
BYTES_ACKED_AT = 120  # offset of tcpi_bytes_acked (u64) in struct tcp_info


def tcp_sockets() -> list[socket.socket]:
    """Duplicates of this process's connected TCP sockets (closing them leaves the
    originals open)."""
    found = []
    seen = set()  # "socket:[inode]": the duplicates made here are listed too
    for name in os.listdir("/proc/self/fd"):
        try:
            what = os.readlink(f"/proc/self/fd/{name}")
            if not what.startswith("socket:") or what in seen:
                continue
            seen.add(what)
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        if sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.getpeername()  # connected: not a listener
                found.append(sock)
                continue
        sock.close()
    return found


def delivery(sockets: list[socket.socket]) -> tuple[int, int] | None:
    """(bytes waiting in the send queues, bytes the peers acknowledged), or None where the
    kernel does not say."""
    queued = acked = 0
    for sock in sockets:
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 192)
            # SIOCOUTQ (the same request as TIOCOUTQ on Linux): unsent and unacknowledged
            waiting = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            queued += struct.unpack("i", waiting)[0]
        except OSError:
            return None
        if len(info) < BYTES_ACKED_AT + 8:
            return None
        acked += struct.unpack_from("<Q", info, BYTES_ACKED_AT)[0]
    return queued, acked


class TcpWatch:
    """Calls ``stalled()`` once the watched connection has delivered nothing for
    ``stall_s`` while data waited; :meth:`watch` (after connecting) and :meth:`forget`
    (before closing) say which connection that is."""

    def __init__(self, stalled: Callable[[float], None]) -> None:
        self._stalled = stalled
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._stall_s = 0.0
        self._since = 0.0  # when the peer last took something (or nothing waited)
        self._acked = -1
        threading.Thread(target=self._run, name="tcp-watch", daemon=True).start()

    def watch(self, stall_s: float) -> None:
        sockets = tcp_sockets()
        with self._lock:
            self._forget()
            self._sockets, self._stall_s = sockets, stall_s
            self._since, self._acked = time.monotonic(), -1

    def forget(self) -> None:
        with self._lock:
            self._forget()

    def _forget(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._sockets = []

    def _run(self) -> None:
        while True:
            time.sleep(CHECK_EVERY_S)
            with self._lock:
                if not self._sockets:
                    continue
                got = delivery(self._sockets)
                now = time.monotonic()
                if got is None:
                    self._forget()  # the kernel does not say: the output's own deadline stays
                    continue
                queued, acked = got
                if queued == 0 or acked != self._acked:
                    self._since, self._acked = now, acked
                    continue
                if now - self._since <= self._stall_s:
                    continue
                stall_s = self._stall_s
            self._stalled(stall_s)
