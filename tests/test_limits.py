"""The limits (``Settings.limits``, docs/limits.md): each refusal a clear 4xx in the one
error shape, or a WebSocket closed with its reason after an error event; nothing accepted
before the refusal is lost, and the refused client's session keeps streaming."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from models.avatar import Avatar
from streamer.config import ConfigError, Limits, Settings
from streamer.engine.base import Backend
from streamer.keys import KeyFile
from streamer.session import Session, SessionOptions
from streamer.session.events import PlaybackFinished, SessionEvent
from streamer.session.registry import SessionRegistry
from tests.conftest import make_app, serving, state_of, tone
from tests.test_api import wav_bytes
from tests.webrtc_fakes import whep_offer

Standin = tuple[Avatar, Backend]


def refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text
    assert response.json()["error"]["message"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def finished(events: asyncio.Queue[SessionEvent]) -> PlaybackFinished:
    async with asyncio.timeout(15):
        while True:
            event = await events.get()
            if isinstance(event, PlaybackFinished):
                return event


@pytest.fixture()
async def server(
    standin: Standin, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Any]:
    """A served app with the test's limits (``@pytest.mark.parametrize`` on ``request``)."""
    limits, max_sessions = request.param
    app = make_app(standin, limits=limits, max_sessions=max_sessions, home=tmp_path)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield app, url, client


def test_limits_are_read_from_the_environment() -> None:
    env = {"AVATARCAST_SESSIONS_PER_KEY": "3", "AVATARCAST_IDLE_SESSION_S": "0"}
    limits = Settings.from_env(env).limits
    assert limits.sessions_per_key == 3 and limits.idle_session_s == 0
    with pytest.raises(ConfigError, match="AVATARCAST_MAX_TEXT_CHARS"):
        Settings.from_env({"AVATARCAST_MAX_TEXT_CHARS": "lots"})
    with pytest.raises(ConfigError, match="AVATARCAST_WS_MAX_MESSAGES_PER_S"):
        Settings.from_env({"AVATARCAST_WS_MAX_MESSAGES_PER_S": "0"})


@pytest.mark.parametrize("server", [(Limits(sessions_per_key=2), 3)], indirect=True)
async def test_sessions_per_key_429_and_in_total_503(server: Any) -> None:
    app, _, client = server
    keys = KeyFile(state_of(app).settings.home)
    a, b, *burst_keys = (keys.create("admin")[1] for _ in range(42))
    for _ in range(2):
        assert (await client.post("/v1/sessions", json={}, headers=bearer(a))).status_code == 201
    refused(await client.post("/v1/sessions", json={}, headers=bearer(a)), 429, "too_many_sessions")
    assert (await client.post("/v1/sessions", json={}, headers=bearer(b))).status_code == 201
    full = await client.post("/v1/sessions", json={}, headers=bearer(b))
    refused(full, 503, "server_full")
    assert full.headers["retry-after"]
    # Many at once, after one is deleted: exactly one more is made, the rest refused.
    first = state_of(app).registry.list()[0]
    deleted = await client.delete(f"/v1/sessions/{first.id}", headers=bearer(a))
    assert deleted.status_code == 204
    burst = await asyncio.gather(
        *(client.post("/v1/sessions", json={}, headers=bearer(key)) for key in burst_keys)
    )
    codes = sorted(r.status_code for r in burst)
    assert codes == [201] + [503] * 39
    assert len(state_of(app).registry) == 3


@pytest.mark.parametrize(
    "server",
    [(Limits(max_body_bytes=2000, max_upload_bytes=20_000, max_text_chars=50), 4)],
    indirect=True,
)
async def test_body_upload_and_text_sizes_are_413(server: Any) -> None:
    _, _, client = server
    refused(await client.post("/v1/sessions", json={"avatar": "x" * 3000}), 413, "too_large")
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    speak = f"/v1/sessions/{sid}/speak"
    audio = {"Content-Type": "audio/wav"}
    refused(await client.post(speak, content=wav_bytes(tone(1.0)), headers=audio), 413, "too_large")

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(100):
            yield b"\0" * 1000

    refused(await client.post(speak, content=chunked(), headers=audio), 413, "too_large")
    refused(await client.post(speak, json={"text": "word " * 20}), 413, "text_too_long")
    small = await client.post(speak, content=wav_bytes(tone(0.3)), headers=audio)
    assert small.status_code == 202


@pytest.mark.parametrize("server", [(Limits(max_queued_utterances=3), 4)], indirect=True)
async def test_utterances_queued_per_session_429(server: Any) -> None:
    app, url, client = server
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    speak = f"/v1/sessions/{sid}/speak"
    ids = [(await client.post(speak, json={"text": "one two three"})).json() for _ in range(3)]
    assert all("utterance_id" in i for i in ids)
    refused(await client.post(speak, json={"text": "four"}), 429, "too_many_utterances")
    async with connect(f"ws{url[4:]}/v1/sessions/{sid}/ws") as ws:  # a stream is one too
        await ws.send(b"\0" * 640)
        assert json.loads(await ws.recv())["code"] == "too_many_utterances"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    interrupted = (await client.post(f"/v1/sessions/{sid}/interrupt")).json()["interrupted"]
    assert sorted(interrupted) == sorted(i["utterance_id"] for i in ids)
    assert (await client.post(speak, json={"text": "again"})).status_code == 202
    assert state_of(app).registry.get(sid) is not None


@pytest.mark.parametrize(
    "server", [(Limits(ws_max_message_bytes=4000, ws_max_messages_per_s=20), 4)], indirect=True
)
async def test_websocket_size_and_rate_close_with_a_reason_and_keep_what_was_sent(
    server: Any,
) -> None:
    app, url, client = server
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    session = state_of(app).registry.get(sid)
    assert session is not None
    await asyncio.wait_for(session.wait_ready(), 10)
    ws_url = f"ws{url[4:]}/v1/sessions/{sid}/ws?sample_rate=16000"
    async with connect(ws_url) as ws:
        await ws.send(b"\0" * 5000)
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["code"] == "message_too_large"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

    events = session.subscribe_events()
    chunk = (tone(0.02) * 32767).astype("<i2").tobytes()  # 20 ms
    async with connect(ws_url) as ws:
        sent = 0
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(200):  # far faster than 20 messages a second
                await ws.send(chunk)
                sent += 1
                await asyncio.sleep(0)
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert "messages a second" in closed.value.rcvd.reason
    # What was accepted before the refusal plays to its end: a second's worth at least.
    done = await finished(events)
    assert not done.interrupted and done.position_s >= 0.4
    assert abs(done.position_s * 50 - round(done.position_s * 50)) < 0.01  # whole chunks


@pytest.mark.parametrize("server", [(Limits(max_viewers_per_session=1), 4)], indirect=True)
async def test_viewers_per_session_503(server: Any) -> None:
    app, _, client = server
    created = (await client.post("/v1/sessions", json={})).json()
    session = state_of(app).registry.get(created["id"])
    assert session is not None
    await asyncio.wait_for(session.wait_ready(), 10)
    pcs = [await whep_offer(), await whep_offer()]
    headers = {"Content-Type": "application/sdp"}
    try:
        whep = f"/v1/sessions/{session.id}/whep"
        first = await client.post(whep, content=pcs[0].localDescription.sdp, headers=headers)
        assert first.status_code == 201
        second = await client.post(whep, content=pcs[1].localDescription.sdp, headers=headers)
        refused(second, 503, "too_many_viewers")
        assert second.headers["access-control-allow-origin"] == "*"
    finally:
        for pc in pcs:
            await pc.close()


@pytest.mark.parametrize("server", [(Limits(max_outputs_per_session=3), 4)], indirect=True)
async def test_twenty_outputs_on_one_session(server: Any) -> None:
    app, _, client = server
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    session = state_of(app).registry.get(sid)
    assert session is not None
    outputs = f"/v1/sessions/{sid}/outputs"
    answers = [
        await client.post(outputs, json={"type": "record", "name": f"r{i}.mp4"}) for i in range(20)
    ]
    assert [a.status_code for a in answers] == [201] * 3 + [429] * 17
    refused(answers[-1], 429, "too_many_outputs")
    before = session.stats.frames
    await asyncio.sleep(0.5)
    assert session.stats.frames > before and not session.closed
    assert len((await client.get(outputs)).json()["outputs"]) == 3


class _Idle:
    """What the reaper reads of a session."""

    def __init__(self, session_id: str, busy: bool) -> None:
        self.id = session_id
        self.busy = busy
        self.reason: str | None = None

    async def start(self) -> None:
        pass

    async def aclose(self, reason: str = "deleted") -> None:
        self.reason = reason


async def test_idle_sessions_are_reaped_busy_ones_kept(caplog: pytest.LogCaptureFixture) -> None:
    made = {"quiet": _Idle("quiet", busy=False), "watched": _Idle("watched", busy=True)}

    async def factory(name: str, _: SessionOptions, __: Any) -> Session:
        return made[name]  # type: ignore[return-value]

    registry = SessionRegistry(factory)
    for name in made:
        await registry.create(name)
    caplog.set_level(logging.INFO, "streamer.session.registry")
    reaper = asyncio.create_task(registry.reap_idle(0.2))
    await asyncio.sleep(0.6)
    reaper.cancel()
    assert [s.id for s in registry.list()] == ["watched"]
    assert made["quiet"].reason == "idle" and made["watched"].reason is None
    assert "session quiet: idle for" in caplog.text
    await registry.aclose()
    assert made["watched"].reason == "shutdown"


@pytest.mark.parametrize("server", [(Limits(idle_session_s=0.4), 4)], indirect=True)
async def test_the_app_reaps_a_session_nobody_uses(server: Any) -> None:
    app, url, client = server
    quiet = (await client.post("/v1/sessions", json={})).json()["id"]
    talked_to = (await client.post("/v1/sessions", json={})).json()["id"]
    async with connect(f"ws{url[4:]}/v1/sessions/{talked_to}/ws") as ws:
        await asyncio.sleep(1.0)
        await ws.send(json.dumps({"type": "speak", "text": "still here"}))
        assert json.loads(await ws.recv())["type"] == "queued"
    refused(await client.get(f"/v1/sessions/{quiet}"), 404, "session_not_found")
    assert (await client.get(f"/v1/sessions/{talked_to}")).status_code == 200
    assert len(state_of(app).registry) == 1
