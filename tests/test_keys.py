"""API keys on disk and on the command line: hashed, 0600, compared in constant time;
``avatarcast keys``; ``serve`` refusing a public address without them."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from streamer import keys as keys_module
from streamer.cli import main
from streamer.keys import KeyFile, Keyring


def test_keys_are_stored_hashed_0600_and_compared_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record, token = KeyFile(tmp_path).create("publisher", ("anna", "anna", "ben"))
    path = tmp_path / "keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert token not in text and token[13:] not in text
    assert hashlib.sha256(token.encode()).hexdigest() in text
    assert record.avatars == ("anna", "ben") and not list(tmp_path.glob(".keys.*"))
    compared: list[tuple[str, str]] = []
    real = keys_module.hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)
    ring = Keyring(tmp_path)
    who = ring.authenticate(token)
    assert who is not None and who.key_id == record.id and who.avatars == ("anna", "ben")
    assert compared[-1] == (hashlib.sha256(token.encode()).hexdigest(), record.digest)
    # A wrong secret for a real id, and an unknown id, go through the same comparison.
    assert ring.authenticate(token[:-4] + "AAAA") is None
    assert ring.authenticate("ack_ffffffff_" + "A" * 43) is None
    assert len(compared) == 3
    # The environment's key is one more admin key.
    env = Keyring(tmp_path, "from-the-env").authenticate("from-the-env")
    assert env is not None and env.admin and env.key_id == "env"


def test_keys_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AVATARCAST_HOME", str(tmp_path))
    assert main(["keys", "create", "--scope", "publisher", "--avatar", "anna"]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert token.startswith("ack_") and "shown this once" in err
    key_id = token[4:12]
    assert main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert key_id in listed and "publisher" in listed and "anna" in listed and token not in listed
    assert main(["keys", "revoke", key_id]) == 0
    assert main(["keys", "list"]) == 0 and "revoked" in capsys.readouterr().out
    for argv, words in (
        (["keys", "create", "--scope", "publisher"], "--avatar"),
        (["keys", "create", "--scope", "admin", "--avatar", "anna"], "publisher"),
        (["keys", "create", "--scope", "creator", "--avatar", "../x"], "invalid avatar name"),
        (["keys", "revoke", "nope"], "no key"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err


def test_serve_refuses_a_public_address_without_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AVATARCAST_HOME", str(tmp_path))
    monkeypatch.delenv("AVATARCAST_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--insecure" in err and "keys create" in err
    # Past the refusal (a bad --output stops it next): with --insecure, or once a key exists.
    bad = ["--output", "ftp://nowhere"]
    assert main(["serve", "--host", "0.0.0.0", "--insecure", *bad]) == 2
    assert "ftp" in capsys.readouterr().err
    KeyFile(tmp_path).create("admin")
    assert main(["serve", "--host", "0.0.0.0", *bad]) == 2
    assert "ftp" in capsys.readouterr().err
