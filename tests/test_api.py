"""The HTTP API on a real uvicorn server, with the stand-in avatar and generator."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from models.audio import SAMPLE_RATE
from models.avatar import Avatar, AvatarError, read_avatar
from streamer.app import create_app
from streamer.config import Settings
from streamer.engine.base import Backend
from tests.conftest import fake_speech, make_app, make_stand_in_avatar, serving, state_of, tone


@pytest.fixture()
async def api(standin: tuple[Avatar, Backend]) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    app = make_app(standin)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client, app


def wav_bytes(x: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code


async def test_session_lifecycle(api: tuple[httpx.AsyncClient, FastAPI]) -> None:
    client, _ = api
    r = await client.post("/v1/sessions", json={"avatar": "default"})
    assert r.status_code == 201
    made = r.json()
    assert set(made) == {"id", "avatar", "view_token", "whep_url", "view_url", "obs_url", "ws_url"}
    sid = made["id"]
    assert r.headers["location"] == f"/v1/sessions/{sid}"  # what a sticky proxy learns from
    assert made["whep_url"].endswith(f"/v1/sessions/{sid}/whep")
    assert made["ws_url"].startswith("ws://") and f"/v1/sessions/{sid}/ws" in made["ws_url"]
    assert made["view_token"] in made["view_url"] and made["view_token"] in made["obs_url"]
    r = await client.post("/v1/sessions")  # no body: the server's avatar
    assert r.status_code == 201
    listed = (await client.get("/v1/sessions")).json()["sessions"]
    assert {s["id"] for s in listed} == {sid, r.json()["id"]}
    one = (await client.get(f"/v1/sessions/{sid}")).json()
    assert one["state"] == "idle" and one["viewers"] == 0 and one["outputs"] == []
    await asyncio.sleep(0.3)
    one = (await client.get(f"/v1/sessions/{sid}")).json()
    assert one["ready"] and one["frames"] > 3
    assert (await client.delete(f"/v1/sessions/{sid}")).status_code == 204
    assert_error(await client.get(f"/v1/sessions/{sid}"), 404, "session_not_found")
    assert_error(await client.delete(f"/v1/sessions/{sid}"), 404)


async def test_speak_text_and_audio_queue_in_order(api: tuple[httpx.AsyncClient, FastAPI]) -> None:
    client, app = api
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    session = state_of(app).registry.get(sid)
    assert session is not None
    events = session.subscribe_events()
    r1 = await client.post(f"/v1/sessions/{sid}/speak", json={"text": "hello there"})
    assert r1.status_code == 202
    r2 = await client.post(
        f"/v1/sessions/{sid}/speak",
        content=wav_bytes(np.resize(tone(0.3), int(0.3 * 22_050)), 22_050),
        headers={"Content-Type": "audio/wav"},
    )
    assert r2.status_code == 202, r2.text
    ids = [r1.json()["utterance_id"], r2.json()["utterance_id"]]
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while sum(e["type"] == "playback_finished" for e in seen) < 2:
            seen.append((await events.get()).to_json())
    assert [e["utterance_id"] for e in seen if e["type"] == "speaking_started"] == ids
    finished = [e for e in seen if e["type"] == "playback_finished"]
    assert [e["utterance_id"] for e in finished] == ids
    assert finished[0]["position_s"] == pytest.approx(0.4, abs=0.01)
    # 0.3 s at 22.05 kHz resampled to 16 kHz
    assert finished[1]["position_s"] == pytest.approx(0.3, abs=0.01)


async def test_interrupt_over_http(api: tuple[httpx.AsyncClient, FastAPI]) -> None:
    client, app = api
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    session = state_of(app).registry.get(sid)
    assert session is not None
    uid = (
        await client.post(
            f"/v1/sessions/{sid}/speak",
            content=wav_bytes(tone(3.0)),
            headers={"Content-Type": "audio/x-wav"},
        )
    ).json()["utterance_id"]
    for _ in range(100):
        if session.state == "speaking":
            break
        await asyncio.sleep(0.02)
    assert (await client.get(f"/v1/sessions/{sid}")).json()["state"] == "speaking"
    r = await client.post(f"/v1/sessions/{sid}/interrupt")
    assert r.status_code == 200 and r.json() == {"interrupted": [uid]}
    assert (await client.get(f"/v1/sessions/{sid}")).json()["state"] == "idle"
    assert (await client.post(f"/v1/sessions/{sid}/interrupt")).json() == {"interrupted": []}


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        (
            {"content": b"hello", "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        ({"content": b"hello"}, 415, "unsupported_media_type"),
        (
            {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "invalid_json",
        ),
        ({"json": {"words": "hi"}}, 422, "invalid_request"),
        ({"json": {"text": 5}}, 422, "invalid_request"),
        ({"json": {"text": "  ...  "}}, 400, "empty_text"),
        ({"json": {"text": "a " * 60_000}}, 413, "text_too_long"),
        ({"content": b"", "headers": {"Content-Type": "audio/wav"}}, 400, "empty_audio"),
        (
            {"content": b"RIFF\x00garbage" * 50, "headers": {"Content-Type": "audio/wav"}},
            400,
            "bad_audio",
        ),
        (
            {"content": wav_bytes(tone(61.0)), "headers": {"Content-Type": "audio/wav"}},
            413,
            "audio_too_long",
        ),
    ],
)
async def test_bad_speak_requests_get_clean_errors(
    api: tuple[httpx.AsyncClient, FastAPI], kwargs: dict[str, Any], status: int, code: str
) -> None:
    client, app = api
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    res = await client.post(f"/v1/sessions/{sid}/speak", **kwargs)
    assert_error(res, status, code)
    assert "avatarcast-upload" not in res.text  # the server's temporary file is its own
    session = state_of(app).registry.get(sid)
    assert session is not None and not session.closed and session.queued == 0


async def test_too_large_body_is_413(api: tuple[httpx.AsyncClient, FastAPI]) -> None:
    client, app = api
    state = state_of(app)
    limits = dataclasses.replace(state.settings.limits, max_upload_bytes=10_000)
    state.settings = dataclasses.replace(state.settings, limits=limits)
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    r = await client.post(
        f"/v1/sessions/{sid}/speak",
        content=wav_bytes(tone(1.0)),
        headers={"Content-Type": "audio/wav"},
    )
    assert_error(r, 413, "too_large")


@pytest.mark.parametrize(
    ("call", "status"),
    [
        (lambda c: c.post("/v1/sessions/nope/speak", json={"text": "hi"}), 404),
        (lambda c: c.post("/v1/sessions/nope/interrupt"), 404),
        (lambda c: c.get("/v1/sessions/nope"), 404),
        (lambda c: c.post("/v1/sessions", json={"avatar": "nobody"}), 400),
        (lambda c: c.post("/v1/sessions", json={"video_codec": "av1"}), 422),
        (lambda c: c.post("/v1/sessions", json={"width": 13}), 422),
        (lambda c: c.post("/v1/sessions", json={"bogus": 1}), 422),
        (
            lambda c: c.post(
                "/v1/sessions", content=b"{", headers={"Content-Type": "application/json"}
            ),
            422,
        ),
        (lambda c: c.put("/v1/sessions"), 405),
        (lambda c: c.get("/v1/nothing-here"), 404),
    ],
)
async def test_bad_requests_get_clean_errors(
    api: tuple[httpx.AsyncClient, FastAPI],
    call: Callable[[httpx.AsyncClient], Any],
    status: int,
) -> None:
    client, _ = api
    assert_error(await call(client), status)


class FakeOutput:
    """An output as the session owns one: it describes itself and is stopped once."""

    def __init__(self, output_id: str) -> None:
        self.id, self.kind = output_id, "record"
        self.stopped = 0

    def describe(self) -> dict[str, Any]:
        return {"state": "live", "last_error": None}

    async def aclose(self) -> None:
        self.stopped += 1


async def test_a_session_owns_its_outputs(api: tuple[httpx.AsyncClient, FastAPI]) -> None:
    """GET lists what the session holds, DELETE stops one, deleting the session stops the rest."""
    client, app = api
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    session = state_of(app).registry.get(sid)
    assert session is not None
    first, second = FakeOutput("o1"), FakeOutput("o2")
    session.outputs.add(first)
    session.outputs.add(second)
    listed = (await client.get(f"/v1/sessions/{sid}")).json()["outputs"]
    assert listed == [
        {"id": "o1", "type": "record", "state": "live", "last_error": None},
        {"id": "o2", "type": "record", "state": "live", "last_error": None},
    ]
    assert (await client.delete(f"/v1/sessions/{sid}/outputs/o1")).status_code == 204
    assert first.stopped == 1
    assert_error(await client.delete(f"/v1/sessions/{sid}/outputs/o1"), 404, "output_not_found")
    assert (await client.delete(f"/v1/sessions/{sid}")).status_code == 204
    assert second.stopped == 1 and first.stopped == 1


async def test_health_metrics_and_openapi(api: tuple[httpx.AsyncClient, FastAPI]) -> None:
    client, _ = api
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    await client.post(f"/v1/sessions/{sid}/speak", json={"text": "one two three"})
    await asyncio.sleep(1.0)
    assert (await client.get("/healthz")).json() == {"status": "ok", "sessions": 1}
    text = (await client.get("/metrics")).text
    for name in (
        "avatarcast_sessions 1.0",
        "avatarcast_viewers 0.0",
        "avatarcast_frames_generated_total",
        "avatarcast_frames_dropped_total",
        "avatarcast_generator_ms_bucket",
        "avatarcast_speech_to_mouth_ms_count",
        "avatarcast_frame_interval_ms_bucket",
        "avatarcast_inference_queue_depth",
        "avatarcast_utterance_queue_depth",
        "avatarcast_encoders 0.0",  # no viewer: nothing is encoded
        "avatarcast_video_encode_ms 0.0",
        "avatarcast_frames_given_up",
    ):
        assert name in text, name
    assert "/v1/sessions/{session_id}/speak" in (await client.get("/openapi.json")).json()["paths"]


async def test_api_key(standin: tuple[Avatar, Backend]) -> None:
    app = make_app(standin, api_key="s3cret")
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert_error(await client.post("/v1/sessions", json={}), 401, "unauthorized")
        bad = {"Authorization": "Bearer nope"}
        assert_error(await client.get("/v1/sessions", headers=bad), 401)
        good = {"Authorization": "Bearer s3cret"}
        r = await client.post("/v1/sessions", json={}, headers=good)
        assert r.status_code == 201
        # The view token is for viewers, not for control (tests/test_auth.py: every route).
        viewer = {"Authorization": f"Bearer {r.json()['view_token']}"}
        assert_error(await client.get("/v1/sessions", headers=viewer), 403)
        assert (await client.get("/healthz")).status_code == 200


async def test_many_sessions_share_one_worker(api: tuple[httpx.AsyncClient, FastAPI]) -> None:
    client, app = api
    ids = [(await client.post("/v1/sessions", json={})).json()["id"] for _ in range(3)]
    for sid in ids:
        await client.post(
            f"/v1/sessions/{sid}/speak",
            content=wav_bytes(tone(1.0)),
            headers={"Content-Type": "audio/wav"},
        )
    await asyncio.sleep(1.5)
    state = state_of(app)
    for sid in ids:
        session = state.registry.get(sid)
        assert session is not None and session.stats.frames > 30
    engine = await state.engines.get("default")
    assert engine.worker.stats.frames >= 60
    print(f"\ngenerator calls by batch size: {dict(sorted(engine.worker.stats.batches.items()))}")


async def test_switch_avatar_keeps_the_stream_going(
    standin: tuple[Avatar, Backend], tmp_path: Path
) -> None:
    avatar, backend = standin
    other = read_avatar(make_stand_in_avatar(tmp_path / "other", name="other"))
    # The second avatar looks different: a darker base frame, so the switch shows in the video.
    other = dataclasses.replace(other, frames=(other.frames // 2).astype(np.uint8))

    def loader(name: str) -> tuple[Avatar, Backend]:
        if name == "other":
            return other, backend
        if name == "default":
            return avatar, backend
        raise AvatarError(f"no avatar named {name!r}: see `avatarcast avatar list`")

    app = create_app(Settings(), loader=loader, speech=fake_speech)  # type: ignore[arg-type]
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        sid = (await client.post("/v1/sessions", json={})).json()["id"]
        session = state_of(app).registry.get(sid)
        assert session is not None
        await session.wait_ready()
        events = session.subscribe_events()
        sub = session.bus.subscribe(video_depth=1000, audio_depth=1000)
        await asyncio.sleep(0.3)
        r = await client.patch(f"/v1/sessions/{sid}", json={"avatar": "other"})
        assert r.status_code == 200 and r.json()["avatar"] == "other"
        assert (await asyncio.wait_for(events.get(), 2)).to_json()["type"] == "avatar_changed"
        await asyncio.sleep(0.4)
        frames = []
        while sub.depth[1]:
            frames.append(await sub.next_audio())
        # One unbroken run of frames: the clock never stopped, and the picture changed.
        assert [f.index for f in frames] == list(range(frames[0].index, frames[-1].index + 1))
        brightness = [float(f.video.mean()) for f in frames]
        assert brightness[0] > brightness[-1] + 20
        assert_error(
            await client.patch(f"/v1/sessions/{sid}", json={"avatar": "nobody"}),
            400,
            "unknown_avatar",
        )
        assert_error(await client.patch("/v1/sessions/nope", json={"avatar": "other"}), 404)


async def test_width_and_height_fix_the_sessions_picture_size(
    api: tuple[httpx.AsyncClient, FastAPI], standin: tuple[Avatar, Backend]
) -> None:
    """Any even size up to 1080p's pixels (the avatar is fitted to it); one side alone keeps
    the avatar's aspect; odd, out-of-range or too large sizes are a clear 422."""
    client, _ = api
    height, width = standin[0].frames.shape[1:3]
    for asked, size in (
        ({}, (width, height)),
        ({"width": 640, "height": 360}, (640, 360)),
        ({"width": width // 2}, (width // 2, height // 2)),
    ):
        r = await client.post("/v1/sessions", json=asked)
        assert r.status_code == 201, r.text
        shown = (await client.get(f"/v1/sessions/{r.json()['id']}")).json()
        assert (shown["width"], shown["height"]) == size
    for asked in ({"width": 641}, {"height": 8}, {"width": 4098}):
        assert_error(await client.post("/v1/sessions", json=asked), 422, "invalid_request")
    r = await client.post("/v1/sessions", json={"width": 4096, "height": 4096})
    assert_error(r, 422, "unsupported_size")
    assert "1920x1080" in r.json()["error"]["message"]
    assert len((await client.get("/v1/sessions")).json()["sessions"]) == 3
