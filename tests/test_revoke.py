"""Revoking a key ends what it opened, not only its next call: its WebSockets (4401), its
sessions (closed as DELETE closes them: outputs stopped, a LiveKit room left), the peers it
opened; and API keys are refused in URLs except on the WebSocket (tests/test_auth.py has the
tables)."""

from __future__ import annotations

import asyncio
import io
import json
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI

from models.avatar import Avatar
from streamer.api.revocation import KeyHolds, sweep
from streamer.engine.base import Backend
from streamer.keys import KeyFile, Keyring
from tests.conftest import serving, state_of, tone, wait_for
from tests.test_auth import Keys, bearer, create, keyed_app, make_keys

CLOSED_IN_S = 5.0  # the watch polls every 0.25 s; this only bounds a stuck test


@pytest.fixture()
async def server(
    standin: tuple[Avatar, Backend], tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI, Keys]]:
    """A server whose key file (under ``tmp_path``) holds test_auth's keys."""
    made = make_keys(tmp_path)
    app = keyed_app(standin, tmp_path, recordings=tmp_path / "recordings")
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client, app, made


async def until_closed(sock: Any) -> tuple[list[dict[str, Any]], int]:
    """The events a socket gets until the server closes it, and the close code."""
    seen = []
    try:
        async with asyncio.timeout(CLOSED_IN_S):
            while True:
                seen.append(json.loads(await sock.recv()))
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None
        return seen, closed.rcvd.code


async def test_revoking_a_key_closes_its_sockets_and_sessions(
    server: tuple[httpx.AsyncClient, FastAPI, Keys], tmp_path: Path
) -> None:
    client, app, k = server
    registry = state_of(app).registry
    made = await create(client, k.pub_default)
    sid, ws = made["id"], made["ws_url"]
    record = await client.post(
        f"/v1/sessions/{sid}/outputs",
        json={"type": "record", "name": "take"},
        headers=bearer(k.pub_default),
    )
    assert record.status_code == 201, record.text
    session = registry.get(sid)
    assert session is not None
    output = session.outputs.get(record.json()["id"])
    # A session of the admin key, watched by nobody: it ends with the admin key.
    admin_sid = (await create(client, k.admin))["id"]
    _, other_key = KeyFile(tmp_path).create("publisher", ("default",))
    other_sid = (await create(client, other_key))["id"]
    offered = ["avatarcast", f"avatarcast.bearer.{k.pub_default}"]
    own = await websockets.connect(ws, subprotocols=offered)  # type: ignore[arg-type]
    watching = await websockets.connect(ws + f"&token={k.admin}")  # the admin's, on it
    await own.send(json.dumps({"type": "interrupt"}))
    # The recording's state changes may come first: the socket works when the reply comes.
    async with asyncio.timeout(CLOSED_IN_S):
        while json.loads(await own.recv())["type"] != "interrupted":
            pass

    # The recording has its header out before the key goes: on a busy machine the revocation
    # could otherwise stop it before it wrote a byte.
    await wait_for(lambda: output is not None and output.state == "live", 15, "recording live")
    KeyFile(tmp_path).revoke(k.ids["pub_default"])
    events, code = await until_closed(own)
    assert code == 4401 and events[-1]["code"] == "key_revoked", events
    events, code = await until_closed(watching)
    assert code == 1001 and events[-1] == {
        "type": "session_closed",
        "session_id": sid,
        "reason": "key_revoked",
    }
    assert registry.get(sid) is None and session.closed
    assert output is not None and output.describe()["state"] == "stopped"  # as DELETE
    assert (tmp_path / "recordings" / "take.mp4").stat().st_size > 0
    view = await client.get(f"/view/{sid}", headers=bearer(made["view_token"]))
    assert view.status_code == 404  # its view tokens went with it

    # An admin key's sessions end with it; another key's session goes on.
    KeyFile(tmp_path).revoke(k.ids["admin"])
    await wait_for(lambda: registry.get(admin_sid) is None, CLOSED_IN_S, "admin's closed")
    assert registry.get(other_sid) is not None
    r = await client.get(f"/v1/sessions/{other_sid}", headers=bearer(other_key))
    assert r.status_code == 200


async def test_an_admin_keys_socket_on_another_keys_session_ends_alone(
    server: tuple[httpx.AsyncClient, FastAPI, Keys], tmp_path: Path
) -> None:
    client, app, k = server
    made = await create(client, k.pub_default)
    admin_ws = await websockets.connect(made["ws_url"] + f"&token={k.admin}")
    own_ws = await websockets.connect(made["ws_url"] + f"&token={k.pub_default}")
    # The admin key streams 4 s of speech into the publisher's session, ahead of real time.
    pcm = (tone(4.0) * 32767).astype("<i2").tobytes()
    for start in range(0, len(pcm), 3200):
        await admin_ws.send(pcm[start : start + 3200])
    started = await next_event(own_ws, "speaking_started")
    KeyFile(tmp_path).revoke(k.ids["admin"])
    events, code = await until_closed(admin_ws)
    assert code == 4401 and events[-1]["type"] == "error"
    # What it streamed stops playing with it: interrupted long before its 4 s.
    finished = await next_event(own_ws, "playback_finished")
    assert finished["utterance_id"] == started["utterance_id"] and finished["interrupted"]
    assert finished["position_s"] < 3.0
    # The publisher's socket and session carry on.
    await own_ws.send(json.dumps({"type": "interrupt"}))
    assert (await next_event(own_ws, "interrupted"))["type"] == "interrupted"
    assert state_of(app).registry.get(made["id"]) is not None
    await own_ws.close()


async def next_event(sock: Any, kind: str) -> dict[str, Any]:
    """The next event of type ``kind`` on a session's socket (others are passed over)."""
    async with asyncio.timeout(CLOSED_IN_S):
        while True:
            event = json.loads(await sock.recv())
            if event["type"] == kind:
                return dict(event)


async def test_an_admin_keys_speech_in_another_keys_session_stops(
    server: tuple[httpx.AsyncClient, FastAPI, Keys], tmp_path: Path
) -> None:
    """Speech an admin key asked for by POST (no socket of its own) stops with the key."""
    client, _, k = server
    made = await create(client, k.pub_default)
    own_ws = await websockets.connect(made["ws_url"] + f"&token={k.pub_default}")
    wav = io.BytesIO()
    with wave.open(wav, "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
        out.writeframes((tone(4.0) * 32767).astype("<i2").tobytes())
    r = await client.post(
        f"/v1/sessions/{made['id']}/speak",
        content=wav.getvalue(),
        headers={**bearer(k.admin), "content-type": "audio/wav"},
    )
    assert r.status_code == 202, r.text
    uid = r.json()["utterance_id"]
    assert (await next_event(own_ws, "speaking_started"))["utterance_id"] == uid
    KeyFile(tmp_path).revoke(k.ids["admin"])
    finished = await next_event(own_ws, "playback_finished")
    assert finished["utterance_id"] == uid and finished["interrupted"]
    assert finished["position_s"] < 3.0
    await own_ws.close()


class Registry:
    """The part of a session registry that :func:`sweep` uses."""

    def __init__(self) -> None:
        self.deleted: list[tuple[str, str]] = []

    def list(self) -> list[Any]:
        return []

    async def delete(self, session_id: str, reason: str) -> bool:
        self.deleted.append((session_id, reason))
        return True


async def test_the_sweep_ends_holds_of_ended_keys_only(tmp_path: Path) -> None:
    """Revoked and removed keys end; the environment's key, ``local`` and every key of an
    unreadable file do not; a hold that closed on its own is forgotten."""
    store = KeyFile(tmp_path)
    (kept, _), (revoked, _), (removed, _) = (store.create("admin") for _ in range(3))
    store.revoke(revoked.id)
    data = json.loads(store.path.read_text())
    data["keys"] = [r for r in data["keys"] if r["id"] != removed.id]
    store.path.write_text(json.dumps(data))
    keyring, holds = Keyring(tmp_path, "env-key"), KeyHolds()
    closed: list[str] = []

    def closer(name: str) -> Any:
        async def close() -> None:
            closed.append(name)

        return close

    for key_id in (kept.id, revoked.id, removed.id, "env", "local"):
        holds.hold(key_id, closer(key_id))
    holds.hold(revoked.id, closer("gone"), alive=lambda: False)
    ended = await sweep(keyring, holds, Registry())  # type: ignore[arg-type]
    assert ended == {revoked.id, removed.id} and sorted(closed) == sorted(ended)
    assert len(holds) == 3  # kept, env, local
    store.path.write_text("{ half an edit")
    holds.hold(removed.id, closer("after"))
    assert await sweep(keyring, holds, Registry()) == set()  # type: ignore[arg-type]
    assert "after" not in closed


async def test_a_livekit_dispatch_leaves_the_room_with_its_key(
    server: tuple[httpx.AsyncClient, FastAPI, Keys], tmp_path: Path
) -> None:
    pytest.importorskip("livekit.rtc")
    from tests.livekit_fakes import FakeRoom

    client, app, k = server
    rooms: list[FakeRoom] = []

    def room() -> FakeRoom:
        rooms.append(FakeRoom())
        return rooms[-1]

    state_of(app).livekit_room = room
    body = {"url": "wss://lk.example", "token": "t", "avatar": "default"}
    r = await client.post("/v1/livekit/sessions", json=body, headers=bearer(k.pub_default))
    assert r.status_code == 201, r.text
    KeyFile(tmp_path).revoke(k.ids["pub_default"])
    await wait_for(lambda: not rooms[0].isconnected(), CLOSED_IN_S, "left the room")
    assert state_of(app).registry.get(r.json()["id"]) is None


async def test_a_key_in_the_url_is_refused_saying_why(
    server: tuple[httpx.AsyncClient, FastAPI, Keys],
) -> None:
    client, _, k = server
    r = await client.get("/v1/sessions", params={"token": k.admin})
    assert r.status_code == 401 and r.json()["error"]["code"] == "key_in_url"
    assert "Authorization: Bearer" in r.json()["error"]["message"]
    made = await create(client, k.admin)
    r = await client.get(f"/obs/{made['id']}", params={"token": k.admin})
    assert r.status_code == 401 and "view_token" in r.json()["error"]["message"]
    r = await client.get(f"/obs/{made['id']}", params={"token": made["view_token"]})
    assert r.status_code == 200
