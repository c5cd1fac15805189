"""The LiveKit worker against a real LiveKit server: opt-in, it runs only when
``LIVEKIT_URL``, ``LIVEKIT_API_KEY`` and ``LIVEKIT_API_SECRET`` are set (a local
``livekit-server --dev`` gives ``ws://127.0.0.1:7880``, ``devkey`` and ``secret``).

The test plays the agent with the ``livekit`` SDK exactly as ``livekit-agents``'
DataStreamAudioOutput does: it mints the avatar's token, dispatches it, sends speech as a
byte stream, interrupts with ``lk.clear_buffer`` and reads the playback RPCs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from typing import Any

import httpx
import numpy as np
import pytest

from models.avatar import Avatar
from streamer.engine.base import Backend
from tests.conftest import make_app, serving, state_of, wait_for

pytest.importorskip("livekit.rtc", reason="the livekit extra is not installed")
from livekit import rtc

ENV = ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")
pytestmark = pytest.mark.skipif(
    not all(os.environ.get(name) for name in ENV),
    reason="set LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET to run against a real "
    "LiveKit server",
)
AVATAR = "avatarcast-avatar"


def token(identity: str, room: str, attributes: dict[str, str] | None = None) -> str:
    """A LiveKit access token (an HS256 JWT), as ``livekit.api.AccessToken`` mints it; the
    server venv has the real-time SDK only, not ``livekit-api``."""

    def b64(data: dict[str, Any]) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")

    now = int(time.time())
    claims = {
        "iss": os.environ["LIVEKIT_API_KEY"],
        "sub": identity,
        "name": identity,
        "nbf": now - 10,
        "exp": now + 600,
        "kind": "agent",
        "attributes": attributes or {},
        "video": {
            "room": room,
            "roomJoin": True,
            "canPublish": True,
            "canSubscribe": True,
            "canPublishData": True,
        },
    }
    signing = b64({"alg": "HS256", "typ": "JWT"}) + b"." + b64(claims)
    key = os.environ["LIVEKIT_API_SECRET"].encode()
    signature = hmac.new(key, signing, hashlib.sha256).digest()
    return (signing + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


def has_video(room: rtc.Room) -> bool:
    avatar = room.remote_participants.get(AVATAR)
    return avatar is not None and any(
        p.kind == rtc.TrackKind.KIND_VIDEO for p in avatar.track_publications.values()
    )


async def speak(agent: rtc.Room, seconds: float) -> rtc.ByteStreamWriter:
    rate = 24_000
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.4 * 32767 * np.sin(2 * np.pi * 220 * t)).astype(np.int16).tobytes()
    writer = await agent.local_participant.stream_bytes(
        "AUDIO_" + secrets.token_hex(3),
        topic="lk.audio_stream",
        destination_identities=[AVATAR],
        attributes={"sample_rate": str(rate), "num_channels": "1"},
    )
    for i in range(0, len(pcm), 4800):
        await writer.write(pcm[i : i + 4800])
    return writer


async def test_a_real_room(standin: tuple[Avatar, Backend]) -> None:
    url, room_name = os.environ["LIVEKIT_URL"], "avatarcast-e2e-" + secrets.token_hex(4)
    app = make_app(standin)
    agent = rtc.Room()
    calls: list[tuple[str, str]] = []

    def record(data: rtc.RpcInvocationData) -> str:
        calls.append((data.method, data.payload))
        return "ok"

    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        await agent.connect(url, token("agent-e2e", room_name))
        agent.local_participant.register_rpc_method("lk.playback_started", record)
        agent.local_participant.register_rpc_method("lk.playback_finished", record)
        avatar_token = token(AVATAR, room_name, {"lk.publish_on_behalf": "agent-e2e"})
        answer = await client.post("/v1/livekit/sessions", json={"url": url, "token": avatar_token})
        assert answer.status_code == 201, answer.text
        session_id = answer.json()["id"]
        await wait_for(lambda: has_video(agent), 20, "the avatar's video track published")

        writer = await speak(agent, 0.8)
        await writer.aclose()
        finished = lambda: [json.loads(p) for m, p in calls if m == "lk.playback_finished"]  # noqa: E731
        await wait_for(finished, 20, "playback finished")
        assert finished()[0] == {
            "playback_position": pytest.approx(0.8, abs=0.03),
            "interrupted": False,
        }

        writer = await speak(agent, 3.0)
        await wait_for(
            lambda: len([m for m, _ in calls if m == "lk.playback_started"]) == 2,
            20,
            "second segment started",
        )
        reply = await agent.local_participant.perform_rpc(
            destination_identity=AVATAR, method="lk.clear_buffer", payload=""
        )
        assert reply == "ok"
        await wait_for(lambda: len(finished()) == 2, 10, "interrupted playback finished")
        assert finished()[1]["interrupted"] is True
        await writer.aclose()

        await agent.disconnect()
        await wait_for(lambda: state_of(app).registry.get(session_id) is None, 20, "session closed")
