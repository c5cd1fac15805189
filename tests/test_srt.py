"""SRT into a real SRT listener (``srt-live-transmit`` writing what it receives to a file),
read back with PyAV (25 fps, audio without gaps); a destination that does not answer and one
that refuses the passphrase go ``retrying`` while the session and its recording go on.

Skipped, saying why, where ``srt-live-transmit`` is absent (``make test`` installs
``srt-tools``). URL validation runs everywhere.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamer.outputs import srt_link
from streamer.outputs.base import OutputRejected
from streamer.outputs.muxed import MuxedOutput
from streamer.outputs.spec import parse_spec, specs_from_urls
from streamer.outputs.srt_url import parse_srt_url
from tests.conftest import Live, tone
from tests.test_outputs import attach, read_media, wait_for

TOOL = shutil.which("srt-live-transmit")
needs_tool = pytest.mark.skipif(
    TOOL is None,
    reason="needs srt-live-transmit: apt-get install srt-tools (make test installs it)",
)
PASSPHRASE = "correct-horse-battery"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Listener:
    """An SRT listener on a free loopback port that writes the TS it receives to a file."""

    def __init__(self, folder: Path, passphrase: str) -> None:
        assert TOOL is not None
        self.port = free_udp_port()
        self.path = folder / f"received-{self.port}.ts"
        self._file = self.path.open("wb")
        url = f"srt://127.0.0.1:{self.port}?mode=listener&passphrase={passphrase}"
        self._process = subprocess.Popen(
            [TOOL, "-q", url, "file://con"], stdout=self._file, stderr=subprocess.DEVNULL
        )

    def bound(self) -> bool:
        """Whether it listens yet (its UDP port is in /proc/net/udp): a caller sent before
        would race its start, and the port could meanwhile go to another socket."""
        local = f"0100007F:{self.port:04X}"
        rows = Path("/proc/net/udp").read_text().splitlines()[1:]
        listening = any(row.split()[1] == local for row in rows)
        return listening and self._process.poll() is None  # bound by it, not by another

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait(10)
        self._file.close()


@pytest.fixture()
def listeners(tmp_path: Path) -> Iterator[list[Listener]]:
    made: list[Listener] = []
    yield made
    for listener in made:
        listener.stop()


@needs_tool
async def test_srt_push_plays_back_at_25_fps(
    live: Live, tmp_path: Path, listeners: list[Listener]
) -> None:
    listener = Listener(tmp_path, PASSPHRASE)
    listeners.append(listener)
    await wait_for(listener.bound, 30, "the listener listening")
    session = live.session
    url = f"srt://127.0.0.1:{listener.port}?streamid=%23%21%3A%3Ar%3Dlive%2Fkey&passphrase={PASSPHRASE}&latency=120"
    output = attach(session, "srt", tmp_path, url=url)
    target = output.describe()["target"]
    assert PASSPHRASE not in target and "live/key" not in target and "latency=120" in target
    await wait_for(lambda: output.state == "live", 15, "live")
    session.speak_audio(tone(2.0))
    await wait_for(lambda: listener.path.stat().st_size > 300_000, 20, "received")
    assert await session.outputs.remove(output.id)
    listener.stop()

    media = await asyncio.to_thread(read_media, str(listener.path))
    assert media.size == (512, 512)
    assert media.span_s >= 1.5
    media.check_25_fps()
    assert media.pictures >= len(media.video_s) - 2
    assert media.largest_audio_gap_s < 0.005
    assert media.audio_s >= media.span_s - 0.2
    assert output.state == "stopped" and output.connections == 1 and output.last_error is None


@needs_tool
async def test_unreachable_and_refused_srt_retry_while_the_session_goes_on(
    live: Live, tmp_path: Path, listeners: list[Listener]
) -> None:
    """Nobody at one port, a listener with another passphrase at the other: both outputs
    go ``retrying`` and say why; the session's recording stays live throughout.

    The bounds are generous and nothing here is timed: under a loaded suite, starting the
    processes and SRT's 3 s handshake can take several times their quiet-machine time. The
    listener is listening before anyone calls it, and the port nobody answers on is held
    by a socket of the test (bound, never read), so no other process can take it."""
    wrong = Listener(tmp_path, "some-other-passphrase")
    listeners.append(wrong)
    await wait_for(wrong.bound, 30, "the listener listening")
    session = live.session
    record = attach(session, "record", tmp_path, name="alongside")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as nobody:
        nobody.bind(("127.0.0.1", 0))
        silent = attach(session, "srt", tmp_path, url=f"srt://127.0.0.1:{nobody.getsockname()[1]}")
        refused = attach(
            session, "srt", tmp_path, url=f"srt://127.0.0.1:{wrong.port}?passphrase={PASSPHRASE}"
        )
        await wait_for(lambda: said(refused, "passphrase"), 60, "refused and retrying")
        assert refused.last_error is not None and PASSPHRASE not in refused.last_error
        await wait_for(lambda: said(silent, "no SRT answer"), 60, "unanswered and retrying")
        frames = session.stats.frames
        await wait_for(lambda: refused.connections >= 2, 60, "tried again")
        await wait_for(lambda: session.stats.frames > frames + 10, 30, "publishing meanwhile")
    assert refused.state != "failed" and silent.state != "failed"
    await wait_for(lambda: record.state == "live", 30, "recording")
    assert record.last_error is None
    assert not session.closed


def said(output: MuxedOutput, reason: str) -> bool:
    """Whether ``output`` went ``retrying`` (its ``last_error`` is set only then) saying
    ``reason``; an earlier attempt may have failed otherwise on a loaded machine."""
    return output.last_error is not None and reason.lower() in output.last_error.lower()


@pytest.mark.parametrize(
    ("url", "code", "says"),
    [
        ("srt://h", "invalid_url", "port"),
        ("srt://:9000", "invalid_url", "host"),
        ("srt://user@h:9000", "invalid_url", "user"),
        ("srt://h:9000/path", "invalid_url", "no path"),
        ("srt://h:9000?mode=listener", "invalid_url", "caller"),
        ("srt://h:9000?mode=rendezvous", "invalid_url", "caller"),
        ("srt://h:9000?localip=0.0.0.0", "invalid_url", "unsupported option"),
        ("srt://h:9000?passphrase=short", "invalid_url", "10 to 79"),
        ("srt://h:9000?latency=-1", "invalid_url", "milliseconds"),
        ("srt://h:9000?latency=1&latency=2", "invalid_url", "twice"),
        ("srt://h:9000?streamid=a%26mode%3Dlistener", "invalid_url", "'&'"),
        ("srt://h:9000?pbkeylen=8", "invalid_url", "16, 24 or 32"),
        ("udp://h:9000", "unsupported_scheme", "srt://"),
        (None, "invalid_url", "needs a url"),
    ],
)
def test_bad_srt_urls_are_refused(url: str | None, code: str, says: str) -> None:
    with pytest.raises(OutputRejected) as caught:
        parse_srt_url(url)
    assert caught.value.status == 400 and caught.value.code == code
    assert says in caught.value.message


def test_a_good_srt_url_reaches_the_tool_raw_and_is_shown_redacted(tmp_path: Path) -> None:
    address = parse_srt_url(
        "srt://[::1]:9000?streamid=%23%21%3A%3Ar%3Dlive%2FKEY&passphrase=0123456789ab&latency=200"
    )
    assert address.for_tool() == (
        "srt://[::1]:9000?mode=caller&streamid=#!::r=live/KEY&passphrase=0123456789ab&latency=200"
    )
    assert set(address.secrets) == {"#!::r=live/KEY", "0123456789ab"}
    if TOOL is not None:
        [spec] = specs_from_urls(("srt://h.example:9000?passphrase=0123456789ab",), tmp_path)
        assert spec.kind == "srt" and spec.target == "srt://h.example:9000?passphrase=****"


def test_without_the_tool_an_srt_output_is_refused_with_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(OutputRejected) as caught:
        parse_spec("srt", recordings=tmp_path, url="srt://h:9000")
    assert caught.value.status == 424 and "apt-get install srt-tools" in caught.value.message


def test_a_child_that_takes_no_data_is_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hung srt-live-transmit (neither connected nor gone) would block the output's writes
    on a full pipe for ever, the output stuck ``connecting``; it is ended and the write fails
    instead, so the output retries."""
    hung = tmp_path / "hung-tool"
    hung.write_text("#!/bin/sh\nexec sleep 600\n")
    hung.chmod(0o755)
    monkeypatch.setattr(srt_link, "STALL_S", 0.5)
    link = srt_link.SrtLink(str(hung), parse_srt_url("srt://127.0.0.1:9"), lambda _: None)
    try:
        with pytest.raises(ConnectionError, match="no SRT answer"):
            for _ in range(200):  # 263 KB: more than a pipe holds
                link.write(bytes(srt_link.CHUNK))
        assert link._process.poll() is not None  # ended, not left behind
    finally:
        link.close()
