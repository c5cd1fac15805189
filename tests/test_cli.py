"""The ``avatarcast`` command line: user errors are one line and exit 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.avatar import avatar_dir
from streamer.cli import main
from tests.conftest import make_stand_in_avatar

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AVATARCAST_HOME", str(tmp_path / "home"))
    make_stand_in_avatar(avatar_dir("alice", tmp_path / "home"), "alice")
    return tmp_path / "home"


def wav(path: Path, seconds: float = 1.0) -> Path:
    import wave

    t = np.arange(int(seconds * 16000)) / 16000
    pcm = (0.3 * np.sin(2 * np.pi * 300 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    return path


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, pattern: str) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert pattern in lines[0], lines[0]


def test_render_writes_mp4(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.mp4"
    code = main(
        [
            "render",
            "--audio",
            str(wav(tmp_path / "a.wav")),
            "--out",
            str(out),
            "--avatar",
            "alice",
            "--backend",
            "onnx",
        ]
    )
    assert code == 0 and out.stat().st_size > 1000
    assert "25 frames" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("missing.wav", None, "does not exist"),
        ("empty.wav", b"", "is empty"),
        ("noise.ogg", os.urandom(5000), "audio"),
        ("notes.txt", b"hello " * 99, "audio"),
    ],
)
def test_bad_audio_is_one_line_exit_2(
    home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: bytes | None,
    pattern: str,
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    code = main(
        ["render", "--audio", str(path), "--out", str(tmp_path / "o.mp4"), "--avatar", "alice"]
    )
    one_line_error(capsys, code, pattern)
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["render", "--text", " ", "--out", "o.mp4", "--avatar", "alice"], "empty"),
        (["render", "--audio", "a.wav", "--out", "o.mp4", "--avatar", "nobody"], "no avatar"),
        (["render", "--audio", "a.wav", "--out", "o.mp4", "--avatar", "Bad Name"], "invalid"),
        (["render", "--audio", "a.wav", "--out", "o.avi", "--avatar", "alice"], ".mp4"),
        (
            [
                "render",
                "--audio",
                "a.wav",
                "--out",
                "o.mp4",
                "--avatar",
                "alice",
                "--backend",
                "torch",
            ],
            "checkpoint",
        ),
        (["render", "--out", "o.mp4"], "required"),
        (["avatar", "delete", "default"], "cannot be deleted"),
        (["avatar", "show", "nobody"], "no avatar"),
        (["export", "alice", "--to", "onnx"], "checkpoint.pt"),
        (["export", "alice", "--to", "tensorrt"], "TensorRT"),
        (["serve", "--avatar", "nobody"], "no avatar"),
        (["serve", "--backend", "tensorrt"], "TensorRT"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_errors(
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    pattern: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    wav(tmp_path / "a.wav")
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = int(exit_.code or 0)
    one_line_error(capsys, code, pattern)


def test_avatar_list_show_delete(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["avatar", "list"]) == 0
    assert "alice" in capsys.readouterr().out.split()
    assert main(["avatar", "show", "alice"]) == 0
    assert '"kind": "photo"' in capsys.readouterr().out
    assert main(["avatar", "delete", "alice"]) == 0
    assert main(["avatar", "list"]) == 0
    assert "alice" not in capsys.readouterr().out.split()


def test_bad_setting_from_environment(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AVATARCAST_THREADS", "many")
    code = main(
        [
            "render",
            "--audio",
            str(wav(tmp_path / "a.wav")),
            "--out",
            str(tmp_path / "o.mp4"),
            "--avatar",
            "alice",
        ]
    )
    one_line_error(capsys, code, "AVATARCAST_THREADS")


def test_console_entry_point_has_no_traceback(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"ID3" + os.urandom(3000))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamer.cli",
            "render",
            "--audio",
            str(bad),
            "--out",
            str(tmp_path / "o.mp4"),
            "--avatar",
            "alice",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_reader_that_goes_away_gets_no_traceback(home: Path, tmp_path: Path) -> None:
    """`avatarcast avatar show NAME | head -1`: the pipe closes before the output is written."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer.cli", "avatar", "show", "default"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert err == ""


def test_serve_on_a_busy_port_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("avatarcast: error: cannot listen on 127.0.0.1:") and "--port" in err


def test_served_connections_outlive_clients_idle_keep_alive() -> None:
    """The server leaves closing an idle connection to its clients (httpx keeps one 5 s): at
    equal timeouts a request sent as the server closes gets a closed connection back."""
    import httpx

    from streamer.app import UVICORN_OPTIONS

    client_expiry = httpx.Limits().keepalive_expiry
    assert client_expiry is not None
    assert UVICORN_OPTIONS["timeout_keep_alive"] > 2 * client_expiry
