"""A real avatarcast server for the tests, started from this checkout in the server's own venv.

pipecat-ai cannot share the server's virtual environment (their protobuf pins conflict), so
the tests run in the integrations' venv and start ``python -m streamer.cli serve`` with the
server's interpreter: ``$AVATARCAST_SERVER_PYTHON``, by default ``.venv/bin/python`` at the
repository root (what ``make test`` creates). The server runs from this checkout
(``PYTHONPATH``), on a free port, with an empty ``AVATARCAST_HOME``, the built-in default
avatar and one API key.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]
API_KEY = "pipecat-test-key"
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Server:
    url: str
    api_key: str
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def server_python() -> Path:
    return Path(os.environ.get("AVATARCAST_SERVER_PYTHON", REPO / ".venv" / "bin" / "python"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    python = server_python()
    if not python.exists():
        pytest.skip(
            f"no avatarcast server interpreter at {python}: run `make install` at the "
            "repository root or set AVATARCAST_SERVER_PYTHON"
        )
    home = tmp_path_factory.mktemp("avatarcast-home")
    log = home / "server.log"
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "AVATARCAST_HOME": str(home),
        "AVATARCAST_API_KEY": API_KEY,
    }
    command = [str(python), "-m", "streamer.cli", "serve", "--host", "127.0.0.1"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port)], cwd=REPO, env=env, stdout=out, stderr=out
        )
    found = Server(f"http://127.0.0.1:{port}", API_KEY, log)
    try:
        wait_healthy(found, process)
        yield found
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_healthy(server: Server, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            status = process.returncode
            pytest.fail(f"the avatarcast server exited ({status}):\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    took = f"{START_TIMEOUT_S:.0f} s"
    pytest.fail(f"the avatarcast server did not start in {took}:\n{server.log_tail()}")
