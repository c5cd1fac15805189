"""WHIP (RFC 9725): validation, then publishing into a real endpoint written with aiortc
(:mod:`tests.whip_endpoint`), which decodes what arrives.

Media checks read the received stream's own timestamps and samples (pictures of the avatar's
size at 25 fps of stream time, audio that is loud while the session speaks); the only time
bounds are generous functional ones ("live within 15 s").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from models.avatar import Avatar
from streamer.app import output_specs
from streamer.config import ConfigError, Settings
from streamer.engine.base import Backend
from streamer.outputs.base import OutputRejected
from streamer.outputs.spec import parse_spec
from streamer.outputs.webrtc.whip_http import WhipError
from streamer.outputs.whip import WhipOutput, answered_codec, video_preferences
from tests.conftest import Live, make_app, serving, tone
from tests.test_outputs import attach, error_code, free_port, states, wait_for
from tests.whip_endpoint import Endpoint, whip_app

TOKEN = "s3cr3t-T0ken.abc~+/="

# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"url": "ftp://example.com/whip"}, "unsupported_scheme"),
        ({"url": "rtmp://example.com/whip"}, "unsupported_scheme"),
        ({"url": "http://example.com/whip"}, "insecure_url"),
        ({"url": "http://10.0.0.5:8889/cam/whip"}, "insecure_url"),
        ({"url": "https://user:pw@example.com/whip"}, "invalid_url"),
        ({"url": "https:///whip"}, "invalid_url"),
        ({"url": "https://example.com/a b"}, "invalid_url"),
        ({"url": "https://example.com/" + "x" * 2100}, "invalid_url"),
        ({"url": "https://example.com/whip#frag"}, "invalid_url"),
        ({}, "invalid_url"),
        ({"url": "https://example.com/whip", "token": "SECRET space"}, "invalid_token"),
        ({"url": "https://example.com/whip", "token": "SECRET\r\nX-Evil: 1"}, "invalid_token"),
        ({"url": "https://example.com/whip", "token": ""}, "invalid_token"),
        ({"url": "https://example.com/whip", "token": "x" * 4097}, "invalid_token"),
        ({"url": "https://example.com/whip", "name": "x"}, "invalid_request"),
    ],
)
def test_bad_whip_requests_are_refused(
    tmp_path: Path, fields: dict[str, object], code: str
) -> None:
    with pytest.raises(OutputRejected) as caught:
        parse_spec("whip", recordings=tmp_path, **fields)
    assert caught.value.status == 400 and caught.value.code == code, caught.value.message
    assert "SECRET" not in caught.value.message and "Evil" not in caught.value.message


def test_good_whip_requests_and_the_secret_they_hide(tmp_path: Path) -> None:
    spec = parse_spec(
        "whip", recordings=tmp_path, url="https://sfu.example.com:8443/KEY/whip?k=1", token=TOKEN
    )
    assert spec.token == TOKEN and spec.target == "https://sfu.example.com:8443/****"
    assert TOKEN not in repr(spec) and "KEY" not in spec.target
    local = parse_spec("whip", recordings=tmp_path, url="http://[::1]:8889/cam/whip")
    assert local.token is None and local.target == "http://[::1]:8889/****"
    with pytest.raises(OutputRejected, match="only a whip output takes a token"):
        parse_spec("rtmp", recordings=tmp_path, url="rtmp://h/app/k", token=TOKEN)


def test_serve_maps_whip_urls_to_their_endpoint(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        outputs=("whip+https://sfu.example.com/live/whip", "WHIP+HTTP://localhost:8889/c/whip"),
        whip_token=TOKEN,
    )
    specs = output_specs(settings)
    assert [(s.kind, s.url, s.token) for s in specs] == [
        ("whip", "https://sfu.example.com/live/whip", TOKEN),
        ("whip", "HTTP://localhost:8889/c/whip", TOKEN),
    ]
    assert TOKEN not in repr(settings)
    assert Settings.from_env({"AVATARCAST_WHIP_TOKEN": TOKEN}).whip_token == TOKEN
    with pytest.raises(ConfigError, match="must be https"):
        output_specs(Settings(home=tmp_path, outputs=("whip+http://example.com/whip",)))


async def test_what_an_answer_must_hold() -> None:
    """The codec an answer picks is read from its video section; an answer without DTLS
    fingerprints, without audio or that is not SDP at all is a broken answer, to retry."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    video.setCodecPreferences(video_preferences("h264"))
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    assert answered_codec(sdp) == "h264"
    lines = sdp.splitlines()
    broken = {
        "no fingerprint": [x for x in lines if not x.startswith("a=fingerprint")],
        "no audio": lines[: next(i for i, x in enumerate(lines) if x.startswith("m=audio"))],
        "not sdp": ["v=0", "hello"],
    }
    for what, text in broken.items():
        with pytest.raises(WhipError) as caught:
            answered_codec("\r\n".join(text) + "\r\n")
        assert caught.value.retry, what


# --- publishing into a real endpoint ---------------------------------------------------------


@pytest.fixture()
async def endpoint() -> AsyncIterator[tuple[Endpoint, str]]:
    made = Endpoint(token=TOKEN)
    async with serving(whip_app(made)) as url:
        yield made, url
    await made.aclose()


def whip(live: Live, tmp_path: Path, url: str, token: str | None = TOKEN) -> WhipOutput:
    output = attach(live.session, "whip", tmp_path, url=url, token=token)
    assert isinstance(output, WhipOutput)
    return output


async def test_publishes_the_sessions_media_and_deletes_on_stop(
    live: Live,
    tmp_path: Path,
    endpoint: tuple[Endpoint, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Pictures of the avatar's size at 25 fps of stream time and a voice that is loud while
    the session speaks, sent with the Bearer token (which no log line shows); removing the
    output DELETEs the resource (Location was relative, resolved against the request URL)."""
    caplog.set_level(logging.INFO)
    server, url = endpoint
    session = live.session
    events = session.subscribe_events()
    output = whip(live, tmp_path, f"{url}/whip/cam")
    await wait_for(lambda: output.state == "live", 15, "live")
    assert output.codec == session.video_codec == "vp8"
    received = server.only()
    await wait_for(lambda: len(received.video_pts) >= 10, 10, "receiving pictures")
    quiet = len(received.audio_peaks)
    session.speak_audio(tone(1.5, amp=0.5))
    await wait_for(lambda: len(received.video_pts) >= 60, 15, "60 pictures")
    await wait_for(lambda: max(received.audio_peaks[quiet:], default=0) > 3000, 10, "voice")
    assert received.sizes == {(512, 512)}
    assert received.fps == pytest.approx(25, abs=1.5)
    assert server.posts[0]["authorization"] == f"Bearer {TOKEN}"
    assert server.posts[0]["content-type"] == "application/sdp"
    resource = next(iter(server.peers))
    assert await session.outputs.remove(output.id)
    assert server.deletes == [resource]
    assert output.state == "stopped" and output.last_error is None
    assert states(events) == ["connecting", "live", "stopped"]
    assert not session.closed
    assert f"output {output.id} (whip): live" in caplog.text and TOKEN not in caplog.text


async def test_redirect_codec_choice_reconnect_and_close(
    live: Live, tmp_path: Path, endpoint: tuple[Endpoint, str]
) -> None:
    """A 307 is followed (the offer POSTed again, token included); the endpoint's answer picks
    H.264 over the session's VP8, and H.264 is sent; an endpoint that hangs up makes the
    output retry and come back; closing the session DELETEs the resource."""
    server, url = endpoint
    server.behaviour, server.video_codec = "redirect", "h264"
    output = whip(live, tmp_path, f"{url}/whip/lb")
    await wait_for(lambda: output.state == "live", 15, "live")
    assert output.codec == "h264"
    assert [p["authorization"] for p in server.posts] == [f"Bearer {TOKEN}"] * 2
    await wait_for(lambda: len(server.only().video_pts) >= 5, 10, "receiving H.264")
    assert server.only().sizes == {(512, 512)}
    await server.kick()
    await wait_for(lambda: output.connections == 2 and output.state == "live", 20, "back")
    assert output.last_error is not None and "lost" in output.last_error
    live_resource = next(iter(server.peers))
    await live.session.aclose()
    assert live_resource in server.deletes
    assert output.state == "stopped"


async def test_refusals_fail_or_retry_and_harm_nothing_else(live: Live, tmp_path: Path) -> None:
    """401 and 404 fail the output for good (the user must fix them); 500, an answer that is
    not SDP or too big, and a refused connection retry with backoff. A recording of the same session
    stays live throughout."""
    session = live.session
    record = attach(session, "record", tmp_path, name="alongside")
    servers = {case: Endpoint(behaviour=case) for case in ("404", "500", "broken", "huge")}
    servers["401"] = Endpoint(token="the-right-one")
    async with (
        serving(whip_app(servers["401"])) as u401,
        serving(whip_app(servers["404"])) as u404,
        serving(whip_app(servers["500"])) as u500,
        serving(whip_app(servers["broken"])) as ubroken,
        serving(whip_app(servers["huge"])) as uhuge,
    ):
        urls = {"401": u401, "404": u404, "500": u500, "broken": ubroken, "huge": uhuge}
        urls["refused"] = f"http://127.0.0.1:{free_port()}"
        outputs = {case: whip(live, tmp_path, f"{u}/whip/x") for case, u in urls.items()}
        frames = session.stats.frames
        await wait_for(lambda: outputs["401"].state == "failed", 10, "401 failed")
        await wait_for(lambda: outputs["404"].state == "failed", 10, "404 failed")
        await wait_for(lambda: outputs["500"].connections >= 2, 10, "500 retried")
        await wait_for(lambda: outputs["broken"].connections >= 2, 10, "broken retried")
        assert "token" in (outputs["401"].last_error or "")
        assert "404" in (outputs["404"].last_error or "")
        assert "500" in (outputs["500"].last_error or "")
        assert "not an answer" not in (outputs["broken"].last_error or "")
        assert "broken" in (outputs["broken"].last_error or "")
        await wait_for(lambda: outputs["refused"].connections >= 2, 10, "refused retried")
        await wait_for(lambda: outputs["huge"].connections >= 2, 10, "huge retried")
        assert "kB" in (outputs["huge"].last_error or "")
        assert "cannot reach" in (outputs["refused"].last_error or "")
        assert outputs["500"].state in ("retrying", "connecting")
        assert len(servers["401"].posts) == 1 and len(servers["404"].posts) == 1
        assert TOKEN not in str(session.outputs.describe())
        await wait_for(lambda: record.state == "live", 15, "recording")
        assert session.stats.frames > frames and not session.closed
        for output in outputs.values():
            await session.outputs.remove(output.id)
        assert record.state == "live"


async def test_whip_over_the_api_and_serve(
    standin: tuple[Avatar, Backend], tmp_path: Path, endpoint: tuple[Endpoint, str]
) -> None:
    """``serve --output whip+http://...`` publishes the default session with the token from
    the environment. POST answers 201, GET shows a redacted target and never the token, bad
    input is a 400 before anything is fetched, DELETE stops it and DELETEs the resource."""
    server, whip_url = endpoint
    headless = (f"whip+{whip_url}/whip/headless",)
    app = make_app(standin, recordings=tmp_path / "recordings", outputs=headless, whip_token=TOKEN)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        sid = (await client.post("/v1/sessions", json={})).json()["id"]
        outputs = f"/v1/sessions/{sid}/outputs"
        bad = {"type": "whip", "url": f"{whip_url}/whip/a", "token": "no spaces"}
        assert error_code(await client.post(outputs, json=bad), 400) == "invalid_token"
        far = {"type": "whip", "url": "http://example.com/whip"}
        assert error_code(await client.post(outputs, json=far), 400) == "insecure_url"
        assert "/whip/a" not in server.paths
        good = {"type": "whip", "url": f"{whip_url}/whip/a", "token": TOKEN}
        made = await client.post(outputs, json=good)
        assert made.status_code == 201, made.text
        oid = made.json()["id"]
        for _ in range(150):
            listed = (await client.get("/v1/sessions")).text
            if listed.count('"live"') == 2:
                break
            await asyncio.sleep(0.1)
        assert listed.count('"live"') == 2, listed  # the headless output and this one
        assert TOKEN not in listed and "/****" in listed
        assert TOKEN not in (await client.get(outputs)).text
        assert sorted(server.paths) == ["/whip/a", "/whip/headless"]
        assert (await client.delete(f"{outputs}/{oid}")).status_code == 204
        assert len(server.deletes) == 1
