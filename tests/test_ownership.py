"""Whose face it is: the signed ownership record, consent at creation, and who may use,
train, export or delete an avatar (by API key on the server, by AVATARCAST_KEY on the CLI)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import models.photo_avatar
from models.avatar import Avatar, default_avatar_dir
from models.create import create_avatar
from models.ownership import OwnershipError, read_ownership, seal
from streamer.cli import main
from streamer.engine.base import Backend
from streamer.keys import KeyFile
from tests.conftest import serving
from tests.test_auth import bearer, keyed_app

CONSENT = "I, Anna Example, consent to avatarcast making a speaking avatar of my face."


def fake_package(home: Path, name: str) -> Path:
    """Just enough of a package for its record: the manifest, signed over."""
    package = home / "avatars" / name
    package.mkdir(parents=True)
    manifest = {"name": name, "format": 1, "kind": "photo", "frame_size": [64, 64]}
    (package / "manifest.json").write_text(json.dumps(manifest))
    return package


def sealed(home: Path, name: str, owner: str) -> Path:
    package = fake_package(home, name)
    source = home / f"{name}.jpg"
    source.write_bytes(b"a photo of " + name.encode())
    seal(package, owner=owner, source=source, statement=CONSENT, home=home)
    return package


def edit(path: Path, change: dict[str, Any]) -> None:
    data = json.loads(path.read_text())
    data.update(change)
    path.write_text(json.dumps(data))


def test_the_record_is_signed_and_tampering_is_detected(tmp_path: Path) -> None:
    package = sealed(tmp_path, "anna", "k1")
    record = read_ownership(package, tmp_path)
    assert record is not None and record.owner == "k1" and record.consent.statement == CONSENT
    assert record.source_file == "anna.jpg" and len(record.source_sha256) == 64
    assert (tmp_path / "signing.key").stat().st_mode & 0o777 == 0o600
    original = (package / "ownership.json").read_text()
    for change in (
        {"owner": "k2"},
        {"consent": {"kind": "statement", "statement": "x", "given": ""}},
    ):
        edit(package / "ownership.json", change)
        with pytest.raises(OwnershipError, match="bad signature"):
            read_ownership(package, tmp_path)
        (package / "ownership.json").write_text(original)
    edit(package / "ownership.json", {"signature": None})
    with pytest.raises(OwnershipError, match="unsigned"):
        read_ownership(package, tmp_path)
    (package / "ownership.json").write_text(original)
    edit(package / "manifest.json", {"kind": "video"})
    with pytest.raises(OwnershipError, match=r"manifest\.json changed"):
        read_ownership(package, tmp_path)
    # Another installation's secret does not verify it either.
    other = sealed(tmp_path / "elsewhere", "ben", "k1")
    (tmp_path / "elsewhere" / "signing.key").write_bytes(b"0" * 32)
    with pytest.raises(OwnershipError, match="bad signature"):
        read_ownership(other, tmp_path / "elsewhere")
    assert read_ownership(fake_package(tmp_path, "old"), tmp_path) is None  # made before records


def test_the_default_ships_its_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = read_ownership(default_avatar_dir(), tmp_path)
    assert record is not None and record.owner == "avatarcast" and record.signature is None
    assert record.consent.kind == "public_domain" and "astronaut" in record.consent.statement
    assert main(["avatar", "show", "default"]) == 0
    shown = json.loads(capsys.readouterr().out)["ownership"]
    assert shown["valid"] and shown["owner"] == "avatarcast" and shown["consent"]["statement"]


def test_create_needs_consent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AVATARCAST_HOME", str(tmp_path))
    photo = tmp_path / "me.jpg"
    photo.write_bytes(b"not looked at: consent comes first")
    for extra, words in (
        ([], "--consent"),
        (["--consent", "yes"], "not explicit"),
        (["--consent-file", str(tmp_path / "missing.txt")], "missing.txt"),
    ):
        assert main(["avatar", "create", "me", "--image", str(photo), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "avatars").exists()
    # A publisher key cannot create avatars at all.
    _, token = KeyFile(tmp_path).create("publisher", ("me",))
    monkeypatch.setenv("AVATARCAST_KEY", token)
    statement = tmp_path / "consent.txt"
    statement.write_text(CONSENT + "\n")  # read, and found explicit: then the key is refused
    assert (
        main(["avatar", "create", "me", "--image", str(photo), "--consent-file", str(statement)])
        == 2
    )
    assert "creator key" in capsys.readouterr().err


def test_create_signs_the_record_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def build(name: str, path: Path, target: Path, *_: Any) -> dict[str, Any]:
        fake_package(target.parent.parent, name)
        return {
            "face_px": 100.0,
            "frame_size": (512, 512),
            "frames": 1,
            "warnings": [],
            "seconds": 0.0,
            "notes": [],
            "check": None,
        }

    monkeypatch.setattr(models.photo_avatar, "create_photo_avatar", build)
    photo = tmp_path / "me.jpg"
    photo.write_bytes(b"me")
    create_avatar("me", image=photo, home=tmp_path, quiet=True, consent=CONSENT, owner="k7")
    record = read_ownership(tmp_path / "avatars" / "me", tmp_path)
    assert record is not None and record.owner == "k7" and record.source_file == "me.jpg"
    with pytest.raises(OwnershipError, match="consent"):
        create_avatar("you", image=photo, home=tmp_path, quiet=True, consent="ok")
    assert not (tmp_path / "avatars" / "you").exists()


def test_cli_acts_within_the_key_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AVATARCAST_HOME", str(tmp_path))
    store = KeyFile(tmp_path)
    owner, owner_token = store.create("creator")
    _, stranger = store.create("creator")
    sealed(tmp_path, "anna", owner.id)
    for token in (stranger, store.create("publisher", ("anna",))[1]):
        monkeypatch.setenv("AVATARCAST_KEY", token)
        for argv in (
            ["avatar", "delete", "anna"],
            ["avatar", "train", "anna"],
            ["export", "anna", "--to", "onnx"],
        ):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert "may not train, export or delete avatar 'anna'" in err and owner.id in err
    monkeypatch.setenv("AVATARCAST_KEY", "ack_00000000_nope")
    assert main(["avatar", "delete", "anna"]) == 2 and "not a valid" in capsys.readouterr().err
    monkeypatch.setenv("AVATARCAST_KEY", owner_token)
    assert main(["avatar", "delete", "anna"]) == 0
    assert not (tmp_path / "avatars" / "anna").exists()


@pytest.fixture()
async def owned(
    standin: tuple[Avatar, Backend], tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    store = KeyFile(tmp_path)
    owner, owner_token = store.create("creator")
    tokens = {
        "owner": owner_token,
        "stranger": store.create("creator")[1],
        "publisher": store.create("publisher", ("mine",))[1],
        "admin": store.create("admin")[1],
    }
    sealed(tmp_path, "mine", owner.id)
    async with (
        serving(keyed_app(standin, tmp_path)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        yield client, tokens


async def test_only_the_owners_keys_use_an_avatar(
    owned: tuple[httpx.AsyncClient, dict[str, str]], tmp_path: Path
) -> None:
    client, tokens = owned

    async def start(who: str) -> httpx.Response:
        return await client.post(
            "/v1/sessions", json={"avatar": "mine"}, headers=bearer(tokens[who])
        )

    for who, status in (("owner", 201), ("publisher", 201), ("admin", 201), ("stranger", 403)):
        r = await start(who)
        assert r.status_code == status, (who, r.text)
        if status == 403:
            assert r.json()["error"]["code"] == "avatar_not_allowed"
        else:
            await client.delete(f"/v1/sessions/{r.json()['id']}", headers=bearer(tokens[who]))
    # GET /v1/avatars lists what a key may use, with whose face each is.
    for who, names in (
        ("owner", ["mine"]),
        ("publisher", ["mine"]),
        ("stranger", []),
        ("admin", ["default", "mine"]),
    ):
        r = await client.get("/v1/avatars", headers=bearer(tokens[who]))
        assert [a["name"] for a in r.json()["avatars"]] == names, who
    r = await client.get("/v1/avatars/mine", headers=bearer(tokens["owner"]))
    assert (
        r.json()["ownership"]["valid"] and r.json()["ownership"]["consent"]["statement"] == CONSENT
    )
    r = await client.get("/v1/avatars/mine", headers=bearer(tokens["stranger"]))
    assert r.status_code == 403 and r.json()["error"]["code"] == "avatar_not_allowed"
    r = await client.get("/v1/avatars/nobody", headers=bearer(tokens["stranger"]))
    assert r.status_code == 403  # a key learns nothing of avatars it may not use
    # A changed record makes the avatar unusable for everyone, admin included.
    edit(tmp_path / "avatars" / "mine" / "ownership.json", {"owner": "someone-else"})
    for who in ("owner", "admin"):
        r = await start(who)
        assert r.status_code == 403 and r.json()["error"]["code"] == "avatar_tampered"
    r = await client.get("/v1/avatars/mine", headers=bearer(tokens["admin"]))
    assert (
        r.json()["ownership"]["valid"] is False
        and "bad signature" in r.json()["ownership"]["error"]
    )
