"""One SRT connection: ``srt-live-transmit`` as a child process that reads MPEG-TS on its
stdin and sends it as an SRT caller.

Why a child: PyAV's FFmpeg is built without libsrt, and no maintained Python binding of
libsrt exists. Debian's ``srt-tools`` (the SRT project's own sample sender, a few hundred KB)
does one thing, stdin to SRT, and reports on its stderr when it connects, is refused
(``REJECT ... Incorrect passphrase``; it is ended on that, as it does not always exit) or
loses the peer. It runs with auto-reconnect off (``-a:no``), so a lost connection ends it,
the next write here fails, and the output's own backoff and restart-at-a-key-frame take over,
the same as for RTMP. It is started with an argument list, never a shell string.

The TS is handed over in 1316-byte writes (7 TS packets, what one SRT live-mode packet
carries), each below the pipe's atomic-write size, so every SRT packet holds whole TS
packets, as hardware and platform receivers expect. A child that takes no data for
:data:`STALL_S` (hung, neither connected nor gone) is ended, so that its output retries
instead of waiting on a full pipe for ever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import subprocess
import threading
from collections.abc import Callable

from streamer.outputs.srt_url import SrtAddress

log = logging.getLogger(__name__)

CHUNK = 7 * 188  # one SRT live packet of MPEG-TS
EXIT_WAIT_S = 2.0
STALL_S = 15.0  # no data taken for this long: the child is ended (see the docstring)


class SrtLink:
    """A file-like sink (``write``) that PyAV muxes into; ``close`` ends the child."""

    def __init__(
        self, tool: str, address: SrtAddress, on_connected: Callable[[SrtLink], None]
    ) -> None:
        self._address = address
        self._on_connected = on_connected
        self._pending = bytearray()
        self.connected = False
        self.closed = False
        self._reason: str | None = None
        # -v prints "SRT target connected"; the URL's passphrase is in argv (see docs).
        argv = [tool, "-a:no", "-v", "-loglevel:warn", f"-chunk:{CHUNK}", "file://con"]
        self._process = subprocess.Popen(
            [*argv, address.for_tool()],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self._process.stdin is not None
        os.set_blocking(self._process.stdin.fileno(), False)  # a full pipe is waited on in _send
        self._watcher = threading.Thread(
            target=self._watch, name=f"srt-{self._process.pid}", daemon=True
        )
        self._watcher.start()

    # --- PyAV's side (the output's thread) --------------------------------------------------

    def write(self, data: bytes) -> int:
        self._pending += data
        whole = len(self._pending) - len(self._pending) % CHUNK
        try:
            for start in range(0, whole, CHUNK):
                self._send(self._pending[start : start + CHUNK])
        finally:
            del self._pending[:whole]
        return len(data)

    def _send(self, chunk: bytes | bytearray) -> None:
        stdin = self._process.stdin
        if stdin is None or stdin.closed:
            raise ConnectionError("the SRT link is closed")
        fd = stdin.fileno()
        try:
            if self._write(fd, chunk):
                return
        except OSError:
            raise ConnectionError(self.reason()) from None
        log.warning(
            "srt-live-transmit %d took no data for %.0f s: ended", self._process.pid, STALL_S
        )
        self._process.kill()
        raise ConnectionError(self.reason())

    @staticmethod
    def _write(fd: int, chunk: bytes | bytearray) -> bool:
        """Write ``chunk`` (under the pipe's atomic size: all of it or nothing); a full pipe
        is waited on for :data:`STALL_S` at most. False: the child took nothing that long."""
        try:
            os.write(fd, chunk)
        except BlockingIOError:
            if not select.select([], [fd], [], STALL_S)[1]:
                return False
            os.write(fd, chunk)
        return True

    def reason(self) -> str:
        """Why the child ended, once it has (what ``last_error`` shows)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(EXIT_WAIT_S)
        self._watcher.join(EXIT_WAIT_S)
        if self._reason is not None:
            return self._reason
        where = f"{self._address.host}:{self._address.port}"
        if self.connected:
            return f"the SRT connection to {where} closed"
        return f"no SRT answer from {where} (nothing listening there, or a firewall)"

    # --- the child's stderr (its own thread) -----------------------------------------------

    def _watch(self) -> None:
        stderr = self._process.stderr
        assert stderr is not None
        for raw in stderr:
            line = raw.decode(errors="replace").strip()
            if line == "SRT target connected":
                self.connected = True
                if not self.closed:
                    self._on_connected(self)
            elif line == "SRT target disconnected":
                self._reason = "the SRT listener closed the connection"
            elif "REJECT" in line:
                said = line.rsplit(": ", 1)[-1].removesuffix(" - not processing further")
                self._reason = f"the SRT listener refused the connection: {said}"
                # A refusal is final, but the tool does not always exit on one: now and then
                # it goes on reading stdin with no connection, and nothing here would fail.
                self._process.kill()
            elif line.startswith("ERROR:"):
                self._reason = self._hide(line.removeprefix("ERROR:").strip())

    def _hide(self, text: str) -> str:
        for secret in self._address.secrets:
            text = text.replace(secret, "****")
        return text

    def close(self) -> None:
        """Send what is left, then end the child (it would wait on its peer otherwise)."""
        self.closed = True
        with contextlib.suppress(OSError):
            if self._pending and self._process.stdin is not None:
                os.write(self._process.stdin.fileno(), self._pending)
        self._pending.clear()
        with contextlib.suppress(OSError):
            if self._process.stdin is not None:
                self._process.stdin.close()
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(EXIT_WAIT_S)
            except subprocess.TimeoutExpired:
                log.warning("srt-live-transmit %d did not stop: killed", self._process.pid)
                self._process.kill()
                self._process.wait()
        self._watcher.join(EXIT_WAIT_S)
