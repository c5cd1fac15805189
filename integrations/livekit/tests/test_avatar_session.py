"""The plugin against a small fake avatarcast server (aiohttp) and an unconnected room.

What a LiveKit server would do with the token is out of reach here; what the plugin sends
is checked: the token's claims (verified with the secret), the dispatch request, and that
the agent's audio now goes to the avatar as a data stream held until its video track.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from livekit import api, rtc
from livekit.agents import AgentSession, APIConnectOptions, APIStatusError
from livekit.agents.voice.avatar import DataStreamAudioOutput
from livekit.plugins import avatarcast

KEY, SECRET = "devkey", "a-secret-at-least-32-characters-long"
FAST = APIConnectOptions(max_retry=2, retry_interval=0.01, timeout=5)


@dataclass
class FakeServer:
    """POST and DELETE /v1/livekit/sessions as avatarcast answers them; ``answers`` are
    given out in order (then 201)."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    async def dispatch(self, request: web.Request) -> web.Response:
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "auth": request.headers.get("Authorization"),
                "json": json.loads(await request.text() or "null"),
            }
        )
        status, body = self.answers.pop(0) if self.answers else (201, {"id": "s1"})
        return web.json_response(body, status=status)


@pytest.fixture()
async def server() -> AsyncIterator[FakeServer]:
    fake = FakeServer()
    app = web.Application()
    app.router.add_post("/v1/livekit/sessions", fake.dispatch)
    app.router.add_delete("/v1/livekit/sessions/{id}", fake.dispatch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


class AgentRoom(rtc.Room):
    """The agent's room before it connects, with the name and identity a job would give."""

    @property
    def name(self) -> str:
        return "room-1"

    @property
    def local_participant(self) -> Any:
        return type("Local", (), {"identity": "agent-1"})()


def test_the_token_lets_the_avatar_publish_for_the_agent() -> None:
    token = avatarcast.mint_avatar_token(
        api_key=KEY,
        api_secret=SECRET,
        room="room-1",
        identity="avatarcast-avatar",
        name="avatarcast",
        publish_on_behalf="agent-1",
    )
    claims = api.TokenVerifier(KEY, SECRET).verify(token)
    assert claims.identity == "avatarcast-avatar" and claims.name == "avatarcast"
    assert claims.kind == "agent"
    assert claims.attributes == {"lk.publish_on_behalf": "agent-1"}
    assert claims.video is not None and claims.video.room == "room-1" and claims.video.room_join
    with pytest.raises(Exception, match=r"(?i)signature"):
        api.TokenVerifier(KEY, "another-secret-at-least-32-characters").verify(token)


async def test_start_dispatches_and_routes_the_audio_to_the_avatar(server: FakeServer) -> None:
    avatar = avatarcast.AvatarSession(api_url=server.url, api_key="ak", avatar="anna")
    session: AgentSession[None] = AgentSession()
    room = AgentRoom()
    await avatar.start(
        session,
        room,
        livekit_url="wss://lk.example",
        livekit_api_key=KEY,
        livekit_api_secret=SECRET,
    )
    assert avatar.session_id == "s1"
    [sent] = server.requests
    assert sent["path"] == "/v1/livekit/sessions" and sent["auth"] == "Bearer ak"
    assert sent["json"]["url"] == "wss://lk.example" and sent["json"]["avatar"] == "anna"
    claims = api.TokenVerifier(KEY, SECRET).verify(sent["json"]["token"])
    assert claims.attributes == {"lk.publish_on_behalf": "agent-1"}
    assert claims.video is not None and claims.video.room == "room-1"
    output = session.output.audio
    assert isinstance(output, DataStreamAudioOutput)
    assert output._destination_identity == "avatarcast-avatar"
    assert output._wait_remote_track == rtc.TrackKind.KIND_VIDEO
    assert output.sample_rate == 16_000
    await avatar.aclose()
    assert server.requests[-1]["method"] == "DELETE"
    assert server.requests[-1]["path"] == "/v1/livekit/sessions/s1"


async def test_a_refusal_says_why_and_is_not_retried(server: FakeServer) -> None:
    server.answers = [(400, {"error": {"code": "unknown_avatar", "message": "no avatar 'x'"}})]
    avatar = avatarcast.AvatarSession(api_url=server.url, conn_options=FAST)
    with pytest.raises(APIStatusError, match="no avatar 'x'") as raised:
        await avatar.dispatch("wss://lk.example", "token")
    assert raised.value.status_code == 400 and len(server.requests) == 1
    assert server.requests[0]["auth"] is None  # no key given, none sent


async def test_server_errors_are_retried(server: FakeServer) -> None:
    server.answers = [(503, {"error": {"code": "busy", "message": "later"}})]
    avatar = avatarcast.AvatarSession(api_url=server.url, conn_options=FAST)
    assert await avatar.dispatch("wss://lk.example", "token") == "s1"
    assert len(server.requests) == 2


async def test_missing_livekit_credentials_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    avatar = avatarcast.AvatarSession(api_url="http://127.0.0.1:9")
    with pytest.raises(avatarcast.AvatarcastException, match="LIVEKIT_API_SECRET"):
        await avatar.start(AgentSession(), AgentRoom())


def test_the_example_agent_loads() -> None:
    """The example is importable against the installed livekit-agents (names, signatures)."""
    import importlib.util
    from pathlib import Path

    from livekit.agents import AgentServer

    path = Path(__file__).parents[1] / "examples" / "agent.py"
    spec = importlib.util.spec_from_file_location("avatarcast_example_agent", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert isinstance(module.server, AgentServer)
