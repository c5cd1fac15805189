"""A local nginx with the RTMP module, started and stopped by whoever measures or tests RTMP.

Debian's ``nginx`` and ``libnginx-mod-rtmp`` (``make test`` installs them) receive a push on a
free loopback port and play it back to readers; the RTMP soak (``avatarcast bench
--rtmp-soak``) and ``tests/test_rtmp.py`` both start it this way, and stop and start it again
to see an output reconnect.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from streamer.measure.liveserver import free_port

RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
MISSING = "needs nginx with the RTMP module: apt-get install nginx libnginx-mod-rtmp"


def nginx_rtmp_missing() -> str | None:
    """Why nginx-rtmp cannot run here, or None when it can."""
    return MISSING if shutil.which("nginx") is None or not RTMP_MODULE.exists() else None


class NginxRtmp:
    """nginx-rtmp on a free loopback port, its files in ``folder``; one ``live`` application."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.conf = folder / "nginx.conf"
        self.conf.write_text(
            f"load_module {RTMP_MODULE};\n"
            "daemon off;\nmaster_process off;\n"
            f"error_log {folder}/error.log;\npid {folder}/nginx.pid;\n"
            "events { worker_connections 64; }\n"
            f"rtmp {{ server {{ listen 127.0.0.1:{self.port};\n"
            "  application live { live on; wait_key on; } } }\n"
        )
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, key: str) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{key}"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start nginx and return once it accepts connections (RuntimeError if it does not)."""
        nginx = shutil.which("nginx")
        if nginx is None:
            raise RuntimeError(MISSING)
        process = subprocess.Popen(
            [nginx, "-p", str(self.folder), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._process = process
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    _, err = process.communicate()
                    why = err.decode(errors="replace")
                    raise RuntimeError(f"nginx did not start: {why}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop nginx (its connections drop at once, as in a crash or a restart)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(10)
