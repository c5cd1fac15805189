"""hypothesis on what clients send: audio files, WebSocket messages, SDP offers and trickle
fragments. Whatever comes in, the answer is a 2xx or a 4xx in the one error shape (or, on
the WebSocket, an error event and a clean close), never a 5xx, a hang or a server error in the
log; what was queued before still plays, and the session keeps streaming.

The app is served on its own thread (tests/fuzz_inputs.py), so each example is a plain
synchronous call; examples are few enough for ``make test`` (tests/fuzz_api.py fuzzes more).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from models.avatar import Avatar
from streamer.config import Limits
from streamer.engine.base import Backend
from streamer.outputs.webrtc import SdpError
from streamer.outputs.webrtc.sdp import parse_offer, trickle_candidates
from streamer.session import Session
from streamer.session.events import PlaybackFinished
from tests.conftest import make_app, state_of
from tests.fuzz_api import error_shape_ok
from tests.fuzz_inputs import (
    ServedInThread,
    audio_bodies,
    fragment_texts,
    frames_made,
    offer_template,
    sdp_bodies,
    sdp_texts,
    wav_file,
)

FEW = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CLEAN_CLOSES = {1000, 1008, 1009}  # done, a limit (rate, buffer), a message too large
AUDIO_TYPES = (
    "audio/wav",
    "audio/mpeg",
    "audio/ogg",
    "audio/flac",
    "video/mp4",
    "application/octet-stream",
    "audio/x-anything; codecs=none",
)


class Served:
    """The served app and one session on it."""

    def __init__(self, served: ServedInThread, session: Session) -> None:
        self.served = served
        self.session = session
        self.url = served.url
        self.http = requests.Session()

    def check(self, response: requests.Response, allowed: set[int]) -> None:
        assert response.status_code in allowed, (response.status_code, response.text[:300])
        if response.status_code >= 400:
            assert error_shape_ok(response.content), response.text[:300]


@pytest.fixture(scope="module")
def template() -> str:
    return offer_template()


@pytest.fixture(scope="module")
def app_and_session(
    standin: tuple[Avatar, Backend], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    limits = Limits(max_queued_utterances=1000, max_viewers_per_session=1000)
    app = make_app(standin, home=tmp_path_factory.mktemp("home"), limits=limits)
    with ServedInThread(app) as served:
        made = requests.post(f"{served.url}/v1/sessions", json={}, timeout=30).json()
        session = state_of(app).registry.get(made["id"])
        assert session is not None
        served.call(asyncio.wait_for(session.wait_ready(), 30))
        yield Served(served, session)


@pytest.fixture()
def quiet_log(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No error logged by the server (a route's traceback, a failed session) during the test."""
    caplog.set_level(logging.WARNING)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]


# --- SDP, parsed -----------------------------------------------------------------------------


def test_any_offer_parses_or_is_an_sdp_error(template: str) -> None:
    @settings(FEW, max_examples=300)
    @given(sdp_texts(template))
    def parse(text: str) -> None:
        try:
            offer = parse_offer(text)
        except SdpError as exc:
            assert str(exc)
        else:
            assert offer.kinds

    parse()


@FEW
@given(fragment=fragment_texts())
def test_any_fragment_gives_candidates_or_an_sdp_error(fragment: str) -> None:
    try:
        found = trickle_candidates(fragment)
    except SdpError as exc:
        assert "candidate" in str(exc)
    else:
        assert all(c is None or c.ip for c in found)


# --- over HTTP -------------------------------------------------------------------------------


def test_any_offer_is_answered_201_or_400(
    app_and_session: Served, template: str, quiet_log: None
) -> None:
    served = app_and_session
    base = f"{served.url}/v1/sessions/{served.session.id}"

    @settings(FEW, max_examples=30)
    @given(
        route=st.sampled_from(["whep", "mic"]),
        body=sdp_bodies(template),
        fragment=fragment_texts(),
    )
    def offer(route: str, body: bytes, fragment: str) -> None:
        sdp = {"Content-Type": "application/sdp"}
        answer = served.http.post(f"{base}/{route}", data=body, headers=sdp, timeout=30)
        served.check(answer, {201, 400, 413})
        if answer.status_code == 201:
            resource = served.url + answer.headers["location"]
            trickle = {"Content-Type": "application/trickle-ice-sdpfrag"}
            patched = served.http.patch(resource, data=fragment.encode(), headers=trickle)
            if patched.status_code == 404:  # an offer whose ICE failed at once (no pair)
                assert "has ended: its connection failed" in patched.text, patched.text
                return
            served.check(patched, {204, 400, 422})
            assert served.http.delete(resource, timeout=30).status_code == 200

    offer()
    assert frames_made(served.served, served.session) > 0


def test_any_audio_upload_is_202_or_4xx_and_loses_nothing_queued(
    app_and_session: Served, quiet_log: None
) -> None:
    served = app_and_session
    speak = f"{served.url}/v1/sessions/{served.session.id}/speak"
    events = served.session.subscribe_events()
    first = served.http.post(
        speak, data=wav_file(1.0), headers={"Content-Type": "audio/wav"}, timeout=30
    )
    assert first.status_code == 202
    queued = first.json()["utterance_id"]

    @FEW
    @given(kind=st.sampled_from(AUDIO_TYPES), body=audio_bodies())
    def upload(kind: str, body: bytes) -> None:
        answer = served.http.post(speak, data=body, headers={"Content-Type": kind}, timeout=30)
        served.check(answer, {202, 400, 413})

    upload()

    async def played() -> PlaybackFinished:
        async with asyncio.timeout(30):
            while True:
                event = await events.get()
                if isinstance(event, PlaybackFinished) and event.utterance_id == queued:
                    return event

    try:
        done = served.served.call(played(), timeout=40)
    finally:
        served.session.unsubscribe_events(events)
        served.http.post(f"{served.url}/v1/sessions/{served.session.id}/interrupt", timeout=30)
    assert not done.interrupted and done.position_s == pytest.approx(1.0, abs=0.05)


# --- the WebSocket ---------------------------------------------------------------------------

# No subnormal floats: native code in the process may leave the FPU flushing them
# (tests/fuzz_api.py, default_float_environment).
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_subnormal=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
_COMMANDS = st.fixed_dictionaries(
    {"type": st.sampled_from(["speak", "audio_end", "interrupt", "nope", "", "SPEAK"])},
    optional={"text": _JSON},
)
_ODD_TEXT = st.sampled_from(["[" * 100_000, "9" * 5000, "{", "", "null", '{"type":', "\0"])
_TEXT = st.one_of(
    _COMMANDS.map(json.dumps), _JSON.map(json.dumps), st.text(max_size=200), _ODD_TEXT
)
_BINARY = st.one_of(st.binary(max_size=2048), st.just(b""), st.just(b"\0" * ((1 << 20) + 2)))
MESSAGES = st.lists(st.one_of(_TEXT, _BINARY), min_size=1, max_size=12)


def _exchange(url: str, messages: list[str | bytes]) -> int | None:
    """Send ``messages``; then, if still open, interrupt and wait for the reply. Returns the
    close code the server gave, or None if the socket stayed open to the end."""
    with connect(url, max_size=None, open_timeout=30) as ws:
        try:
            for message in messages:
                ws.send(message)
            ws.send(json.dumps({"type": "interrupt"}))
            while True:
                event = json.loads(ws.recv(timeout=30))
                if event["type"] == "error":
                    assert set(event) == {"type", "code", "message"} and event["message"]
                if event["type"] == "interrupted":
                    return None
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "the server dropped the socket without a close"
            return closed.rcvd.code


def test_any_websocket_messages_get_events_or_a_clean_close(
    app_and_session: Served, quiet_log: None
) -> None:
    served = app_and_session
    url = f"ws{served.url[4:]}/v1/sessions/{served.session.id}/ws"
    closes: list[int | None] = []

    @FEW
    @given(messages=MESSAGES)
    def talk(messages: list[Any]) -> None:
        code = _exchange(url, messages)
        assert code is None or code in CLEAN_CLOSES, code
        closes.append(code)
        assert not served.session.closed

    talk()
    assert None in closes  # most conversations end open, answered
    assert frames_made(served.served, served.session) > 0
    assert state_of(served.served.app).registry.get(served.session.id) is served.session


def test_a_plain_http_get_of_the_websocket_is_426(app_and_session: Served) -> None:
    """What /openapi.json describes for the WebSocket: the handshake's checks, then 426."""
    served = app_and_session
    ws = f"{served.url}/v1/sessions/{served.session.id}/ws"
    answer = served.http.get(ws, timeout=30)
    served.check(answer, {426})
    assert answer.json()["error"]["code"] == "upgrade_required"
    assert answer.headers["upgrade"] == "websocket"
    served.check(served.http.get(f"{ws}?sample_rate=7", timeout=30), {400})
    served.check(served.http.get(f"{served.url}/v1/sessions/nope/ws", timeout=30), {404})
