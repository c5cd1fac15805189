"""Who may do what: API keys and their scopes, view tokens, CORS, the loopback rule, logs.

Every route class is called with every kind of credential on one real server; a key file
under a temporary home holds the keys (tests/test_ownership.py: whose face it is).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI

from models.avatar import Avatar
from streamer.api import core_routers, redact
from streamer.app import create_app
from streamer.config import Settings
from streamer.engine.base import Backend
from streamer.keys import KeyFile
from tests.conftest import fake_speech, serving, state_of

SDP = {"Content-Type": "application/sdp"}
SDPFRAG = {"Content-Type": "application/trickle-ice-sdpfrag"}
GARBAGE_SDP = "v=0\r\nnonsense\r\n"


@dataclass
class Keys:
    admin: str
    pub_default: str  # a publisher key for "default"
    pub_other: str  # a publisher key for "other"
    creator: str
    revoked: str
    ids: dict[str, str]


def make_keys(home: Path) -> Keys:
    store = KeyFile(home)
    made = {
        "admin": store.create("admin"),
        "pub_default": store.create("publisher", ("default",)),
        "pub_other": store.create("publisher", ("other",)),
        "creator": store.create("creator"),
        "revoked": store.create("admin"),
    }
    store.revoke(made["revoked"][0].id)
    return Keys(**{k: v[1] for k, v in made.items()}, ids={k: v[0].id for k, v in made.items()})


def keyed_app(standin: tuple[Avatar, Backend], home: Path, **settings: Any) -> FastAPI:
    return create_app(
        Settings(home=home, **settings),
        loader=lambda name: standin,  # every name is the stand-in; ownership is read from home
        speech=fake_speech,  # type: ignore[arg-type]
    )


@pytest.fixture()
async def keyed(
    standin: tuple[Avatar, Backend], tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI, Keys]]:
    made = make_keys(tmp_path)
    app = keyed_app(standin, tmp_path)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client, app, made


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def create(client: httpx.AsyncClient, token: str, avatar: str = "default") -> dict[str, Any]:
    r = await client.post("/v1/sessions", json={"avatar": avatar}, headers=bearer(token))
    assert r.status_code == 201, r.text
    return dict(r.json())


def control_routes(sid: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("GET", f"/v1/sessions/{sid}", {}),
        ("PATCH", f"/v1/sessions/{sid}", {"json": {"avatar": "default"}}),
        ("POST", f"/v1/sessions/{sid}/speak", {"json": {"text": "hi"}}),
        ("POST", f"/v1/sessions/{sid}/interrupt", {}),
        ("GET", f"/v1/sessions/{sid}/outputs", {}),
        ("POST", f"/v1/sessions/{sid}/outputs", {"json": {"type": "nope"}}),
        ("DELETE", f"/v1/sessions/{sid}/outputs/none", {}),
        ("GET", f"/v1/sessions/{sid}/view_tokens", {}),
        ("POST", f"/v1/sessions/{sid}/view_tokens", {"json": {}}),
        ("DELETE", f"/v1/sessions/{sid}/view_tokens/t-none", {}),
        ("POST", f"/v1/sessions/{sid}/mic", {"content": GARBAGE_SDP, "headers": SDP}),
        ("PATCH", f"/v1/sessions/{sid}/mic/r-none", {"content": "", "headers": SDPFRAG}),
        ("DELETE", f"/v1/sessions/{sid}/mic/r-none", {}),
        ("DELETE", f"/v1/livekit/sessions/{sid}", {}),
    ]


def viewer_routes(sid: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("GET", f"/view/{sid}", {}),
        ("GET", f"/obs/{sid}", {}),
        ("POST", f"/v1/sessions/{sid}/whep", {"content": GARBAGE_SDP, "headers": SDP}),
        ("PATCH", f"/v1/sessions/{sid}/whep/r-none", {"content": "", "headers": SDPFRAG}),
        ("DELETE", f"/v1/sessions/{sid}/whep/r-none", {}),
    ]


def test_the_tables_cover_every_route() -> None:
    """A new route must be put in one of the tables above (and so be checked) to pass."""
    tabled = {(m, p) for m, p, _ in control_routes("{session_id}") + viewer_routes("{session_id}")}
    tabled |= {
        ("GET", "/v1/sessions"),
        ("POST", "/v1/sessions"),
        ("DELETE", "/v1/sessions/{session_id}"),
        ("POST", "/v1/livekit/sessions"),
    }
    tabled |= {("GET", "/v1/sessions/{session_id}/ws")}  # the WebSocket: its own test below
    tabled |= {("GET", "/v1/avatars"), ("GET", "/v1/avatars/{name}")}
    routes = set()
    for route in (r for router in core_routers() for r in router.routes):
        path = getattr(route, "path", "")
        path = path.replace("{resource_id}", "r-none").replace("{output_id}", "none")
        path = path.replace("{token_id}", "t-none")
        for method in getattr(route, "methods", None) or {"GET"}:
            if method not in ("OPTIONS", "HEAD") and path.startswith(("/v1/", "/view/", "/obs/")):
                routes.add((method, path))
    assert len(routes) >= 20 and routes - tabled == set()


async def outcome(
    client: httpx.AsyncClient, method: str, path: str, token: str | None, extra: dict[str, Any]
) -> int | str:
    """401 or 403 (with the error shape), else "ok": the call got past the access check.
    A token ``url:...`` is sent only as ``?token=``."""
    in_url = token is not None and token.startswith("url:")
    params = {"token": token[4:]} if in_url and token else None
    headers = {**({} if in_url else bearer(token)), **extra.get("headers", {})}
    kwargs = {k: v for k, v in extra.items() if k != "headers"}
    r = await client.request(method, path, headers=headers, params=params, **kwargs)
    assert r.status_code < 500, (method, path, r.text)
    if r.status_code in (401, 403):
        assert set(r.json()["error"]) == {"code", "message"}
        return r.status_code
    return "ok"


async def test_every_route_class_with_every_credential(
    keyed: tuple[httpx.AsyncClient, FastAPI, Keys],
) -> None:
    client, app, k = keyed
    admin_sid = (await create(client, k.admin))["id"]
    made = await create(client, k.pub_default)
    own_sid, view = made["id"], made["view_token"]
    views = state_of(app).access.views
    minted = await client.post(
        f"/v1/sessions/{admin_sid}/view_tokens", json={"ttl_s": 60}, headers=bearer(k.admin)
    )
    expiring = minted.json()["token"]
    views.clock = lambda: time.time() + 120  # the 60 s token has expired, t0 (12 h) has not
    admin_view = (await client.get(f"/v1/sessions/{admin_sid}", headers=bearer(k.admin))).json()
    # credential -> (control of the admin's session, viewing it, control of pub_default's own)
    expected: dict[str, tuple[int | str, int | str, int | str]] = {
        "none": (401, 401, 401),
        "wrong": (401, 401, 401),
        "revoked": (401, 401, 401),
        "admin": ("ok", "ok", "ok"),
        "pub_default": (403, 403, "ok"),
        "pub_other": (403, 403, 403),
        "creator": (403, 403, 403),
        "view token": (403, "ok", 403),
        "expired view token": (403, 401, 403),
        # A key in the URL is refused everywhere but the WebSocket; a view token works there.
        "admin in the URL": (401, 401, 401),
        "view token in the URL": (403, "ok", 403),
    }
    tokens = {
        "none": None,
        "wrong": "ack_00000000_" + "x" * 43,
        "revoked": k.revoked,
        "admin": k.admin,
        "pub_default": k.pub_default,
        "pub_other": k.pub_other,
        "creator": k.creator,
        "view token": admin_view["view_token"],
        "expired view token": expiring,
        "admin in the URL": f"url:{k.admin}",
        "view token in the URL": f"url:{admin_view['view_token']}",
    }
    for name, token in tokens.items():
        got = (
            {await outcome(client, m, p, token, x) for m, p, x in control_routes(admin_sid)},
            {await outcome(client, m, p, token, x) for m, p, x in viewer_routes(admin_sid)},
            {await outcome(client, m, p, token, x) for m, p, x in control_routes(own_sid)},
        )
        assert got == tuple({e} for e in expected[name]), name
    # The collections: who may list, create sessions of "default" and see it.
    for name, token in tokens.items():
        listed = await outcome(client, "GET", "/v1/sessions", token, {})
        made_one = await outcome(client, "POST", "/v1/sessions", token, {"json": {}})
        # A LiveKit dispatch makes a session too (the bad URL keeps it from joining anything).
        dispatch = {"json": {"url": "ftp://nowhere", "token": "t", "avatar": "default"}}
        joined = await outcome(client, "POST", "/v1/livekit/sessions", token, dispatch)
        avatars = await outcome(client, "GET", "/v1/avatars", token, {})
        shown = await outcome(client, "GET", "/v1/avatars/default", token, {})
        may_use = name in ("admin", "pub_default")
        may_list = name in ("admin", "pub_default", "pub_other", "creator")
        verdicts = (listed == "ok", avatars == "ok", made_one == "ok", shown == "ok")
        assert verdicts == (may_list, may_list, may_use, may_use), name
        assert (joined == "ok") == may_use, name
    assert view  # pub_default's own session has its own token
    # Deleting: never with someone else's key; always by the session's own.
    for token in (k.pub_other, k.creator, view, None):
        assert (
            await client.delete(f"/v1/sessions/{own_sid}", headers=bearer(token))
        ).status_code in (
            401,
            403,
        )
    assert (
        await client.delete(f"/v1/sessions/{own_sid}", headers=bearer(k.pub_default))
    ).status_code == 204


async def test_scoped_answers_say_why(keyed: tuple[httpx.AsyncClient, FastAPI, Keys]) -> None:
    client, _, k = keyed
    r = await client.post("/v1/sessions", json={"avatar": "default"}, headers=bearer(k.pub_other))
    assert r.status_code == 403 and r.json()["error"]["code"] == "avatar_not_allowed"
    assert "other" in r.json()["error"]["message"]
    sid = (await create(client, k.admin))["id"]
    r = await client.post(
        f"/v1/sessions/{sid}/speak", json={"text": "x"}, headers=bearer(k.pub_default)
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_your_session"
    view = (await client.get(f"/v1/sessions/{sid}", headers=bearer(k.admin))).json()["view_token"]
    r = await client.post(f"/v1/sessions/{sid}/interrupt", headers=bearer(view))
    assert r.status_code == 403 and r.json()["error"]["code"] == "view_token_cannot_control"
    r = await client.get("/v1/sessions", headers=bearer(k.revoked))
    assert r.status_code == 401 and r.json()["error"]["code"] == "key_revoked"
    # A publisher sees only its own sessions; the admin sees all, with who made them.
    own = (await create(client, k.pub_default))["id"]
    mine = (await client.get("/v1/sessions", headers=bearer(k.pub_default))).json()["sessions"]
    assert [s["id"] for s in mine] == [own] and mine[0]["key_id"] == k.ids["pub_default"]
    every = (await client.get("/v1/sessions", headers=bearer(k.admin))).json()["sessions"]
    assert {s["id"] for s in every} == {sid, own}
    # A publisher may not switch its session to an avatar it does not name.
    r = await client.patch(
        f"/v1/sessions/{own}", json={"avatar": "other"}, headers=bearer(k.pub_default)
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "avatar_not_allowed"


async def test_websocket_needs_a_key_that_controls_the_session(
    keyed: tuple[httpx.AsyncClient, FastAPI, Keys],
) -> None:
    client, _, k = keyed
    made = await create(client, k.pub_default)
    ws = made["ws_url"]
    for token, status in ((made["view_token"], 403), (k.pub_other, 403), (None, 401)):
        url = ws + (f"&token={token}" if token else "")
        with pytest.raises(websockets.InvalidStatus) as denied:
            async with websockets.connect(url):
                pass
        assert denied.value.response.status_code == status
    async with websockets.connect(ws + f"&token={k.pub_default}") as sock:
        await sock.send(json.dumps({"type": "interrupt"}))
        assert json.loads(await sock.recv())["type"] == "interrupted"
    # What the control page sends: the key as a subprotocol; the server picks "avatarcast".
    offered = ["avatarcast", f"avatarcast.bearer.{k.pub_default}"]
    async with websockets.connect(ws, subprotocols=offered) as sock:  # type: ignore[arg-type]
        assert sock.subprotocol == "avatarcast"
        await sock.send(json.dumps({"type": "interrupt"}))
        assert json.loads(await sock.recv())["type"] == "interrupted"


async def test_revoking_a_key_takes_effect_without_a_restart(
    keyed: tuple[httpx.AsyncClient, FastAPI, Keys], tmp_path: Path
) -> None:
    client, _, k = keyed
    assert (await client.get("/v1/sessions", headers=bearer(k.creator))).status_code == 200
    KeyFile(tmp_path).revoke(k.ids["creator"])
    r = await client.get("/v1/sessions", headers=bearer(k.creator))
    assert r.status_code == 401 and r.json()["error"]["code"] == "key_revoked"
    # A key created while the server runs works at once.
    _, fresh = KeyFile(tmp_path).create("creator")
    assert (await client.get("/v1/sessions", headers=bearer(fresh))).status_code == 200


async def test_view_tokens_expire_and_revoke(
    keyed: tuple[httpx.AsyncClient, FastAPI, Keys], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, app, k = keyed
    made = await create(client, k.pub_default)
    sid, owner = made["id"], bearer(k.pub_default)
    r = await client.post(f"/v1/sessions/{sid}/view_tokens", json={"ttl_s": 600}, headers=owner)
    assert r.status_code == 201, r.text
    minted = r.json()
    assert set(minted) == {"id", "token", "expires", "view_url", "obs_url"}
    assert minted["view_url"].endswith(f"/view/{sid}?token={minted['token']}")
    assert (await client.get(f"/view/{sid}?token={minted['token']}")).status_code == 200
    listed = (await client.get(f"/v1/sessions/{sid}/view_tokens", headers=owner)).json()
    assert [t["id"] for t in listed["view_tokens"]] == ["t0", minted["id"]]
    assert minted["token"] not in json.dumps(listed)  # values are shown once, never listed
    # A viewer that joined with the token is hung up when it is revoked.
    state = state_of(app)
    state.access.views.of(state.registry.get(sid))[minted["id"]].peers.add("peer-1")  # type: ignore[arg-type]
    removed: list[str] = []

    async def remove(resource_id: str, why: str = "") -> bool:
        removed.append(resource_id)
        return True

    monkeypatch.setattr(state.webrtc, "remove", remove)
    r = await client.delete(f"/v1/sessions/{sid}/view_tokens/{minted['id']}", headers=owner)
    assert r.status_code == 204 and removed == ["peer-1"]
    r = await client.get(f"/obs/{sid}", headers=bearer(minted["token"]))
    assert r.status_code == 401 and r.json()["error"]["code"] == "view_token_revoked"
    r = await client.delete(f"/v1/sessions/{sid}/view_tokens/nope", headers=owner)
    assert r.status_code == 404
    # The first token expires 12 h (the default) after the session was made.
    assert (await client.get(f"/view/{sid}", headers=bearer(made["view_token"]))).status_code == 200
    state.access.views.clock = lambda: time.time() + 12 * 3600 + 1
    r = await client.get(f"/view/{sid}", headers=bearer(made["view_token"]))
    assert r.status_code == 401 and r.json()["error"]["code"] == "view_token_expired"
    r = await client.post(f"/v1/sessions/{sid}/view_tokens", json={"ttl_s": 5}, headers=owner)
    assert r.status_code == 422


async def test_cors_allowlist(standin: tuple[Avatar, Backend], tmp_path: Path) -> None:
    ok, other = "https://ok.example", "https://evil.example"
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    for origins, allowed in (((ok,), {ok}), ((), set())):
        app = keyed_app(standin, tmp_path, cors_origins=origins)
        async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
            for origin in (ok, other):
                r = await client.options("/v1/sessions", headers={"Origin": origin, **preflight})
                got = r.headers.get("access-control-allow-origin")
                assert (got == origin) == (origin in allowed), (origins, origin)
                assert r.status_code == (200 if origin in allowed else 400)
                r = await client.get("/healthz", headers={"Origin": origin})
                assert (r.headers.get("access-control-allow-origin") == origin) == (
                    origin in allowed
                )
            # WHEP answers every origin, as a player embedded anywhere needs.
            r = await client.options("/v1/sessions/x/whep", headers={"Origin": other, **preflight})
            assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"


def test_cors_setting_from_the_environment() -> None:
    env = {
        "AVATARCAST_CORS_ORIGINS": "https://a.example/, https://b.example",
        "AVATARCAST_VIEW_TOKEN_TTL": "600",
    }
    settings = Settings.from_env(env)
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.view_token_ttl_s == 600


def test_logs_never_print_tokens() -> None:
    import uvicorn

    uvicorn.Config(FastAPI(), log_level="info")  # configures uvicorn's loggers as serve does
    redact.install()
    secret = "ack_12345678_SECRETSECRET"
    for name, args in (
        ("uvicorn.access", ("127.0.0.1:5", "GET", f"/view/x?token={secret}&a=1", "1.1", 200)),
        ("uvicorn.error", ("127.0.0.1:5", f"/v1/sessions/x/ws?sample_rate=16000&token={secret}")),
    ):
        logger = logging.getLogger(name)
        msg = '%s - "%s %s HTTP/%s" %d' if len(args) == 5 else '%s - "WebSocket %s" [accepted]'
        record = logger.makeRecord(name, logging.INFO, __file__, 1, msg, args, None)
        handlers = logger.handlers or logging.getLogger("uvicorn").handlers
        assert handlers
        for handler in handlers:
            assert handler.filter(record)
            line = handler.format(record)
            assert secret not in line and "token=[redacted]" in line, line
    assert redact.scrub("Authorization: Bearer abc.def") == "Authorization: Bearer [redacted]"
