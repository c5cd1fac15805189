"""The LiveKit worker against a fake room (``livekit_fakes``), through the dispatch API.

The agent's side follows ``livekit-agents``' DataStreamAudioOutput: PCM byte streams on
``lk.audio_stream``, ``lk.clear_buffer`` to interrupt, and the avatar's
``lk.playback_started`` / ``lk.playback_finished`` calls back. An opt-in test at the end runs
against a real LiveKit server when ``LIVEKIT_URL``, ``LIVEKIT_API_KEY`` and
``LIVEKIT_API_SECRET`` are set.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from models.avatar import Avatar
from streamer.engine.base import Backend
from streamer.pipeline.frames import AVFrame
from streamer.session import Session
from tests.conftest import Live, make_app, serving, state_of, wait_for

# The worker needs the server's livekit extra (the Makefile installs it for the tests).
pytest.importorskip("livekit.rtc", reason="the livekit extra is not installed")
from streamer.outputs.livekit.segments import (
    PcmDecoder,
    StreamRejected,
    stream_format,
)
from tests.livekit_fakes import AGENT, MIRRORS, PROPERTIES, FakeRoom

ATTRS_24K = {"sample_rate": "24000", "num_channels": "1"}


def pcm(seconds: float, rate: int = 24_000, channels: int = 1) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.4 * 32767 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
    return np.repeat(wave, channels).tobytes()


def chunks(data: bytes, size: int = 4801) -> list[bytes]:
    """Odd-sized chunks, so samples straddle them as they may on the wire."""
    return [data[i : i + size] for i in range(0, len(data), size)]


@dataclass
class Dispatched:
    client: httpx.AsyncClient
    app: FastAPI
    rooms: list[FakeRoom]

    @property
    def room(self) -> FakeRoom:
        return self.rooms[-1]

    def session(self, session_id: str) -> Session:
        session = state_of(self.app).registry.get(session_id)
        assert session is not None
        return session

    async def dispatch(self, **body: object) -> str:
        answer = await self.client.post(
            "/v1/livekit/sessions", json={"url": "wss://lk.example", "token": "t", **body}
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])


@pytest.fixture()
async def lk(standin: tuple[Avatar, Backend]) -> AsyncIterator[Dispatched]:
    app = make_app(standin)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        made = Dispatched(client, app, [])
        room_kwargs: dict[str, object] = {}

        def factory() -> FakeRoom:
            made.rooms.append(FakeRoom(**room_kwargs))  # type: ignore[arg-type]
            return made.rooms[-1]

        made.room_kwargs = room_kwargs  # type: ignore[attr-defined]
        state_of(app).livekit_room = factory
        yield made


class Frames:
    """The session's AV frames from now on, as a test reads them."""

    def __init__(self, session: Session) -> None:
        self.seen: list[AVFrame] = []
        self._sub = session.bus.subscribe(audio_depth=10_000)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionError):  # the session closed
            while True:
                self.seen.append(await self._sub.next_audio())

    def speaking(self) -> list[AVFrame]:
        return [f for f in self.seen if f.utterance_id and np.abs(f.audio).max() > 1000]

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


# --- the fake is the SDK's shape -------------------------------------------------------------


def shape(func: object) -> list[tuple[str, object, object]]:
    params = inspect.signature(func).parameters.values()  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in params]


def test_the_fake_room_has_the_sdks_signatures() -> None:
    for fake, (real, methods) in MIRRORS.items():
        for name in methods:
            assert shape(getattr(fake, name)) == shape(getattr(real, name)), (fake, name)
            assert inspect.iscoroutinefunction(getattr(fake, name)) == (
                inspect.iscoroutinefunction(getattr(real, name))
            ), (fake, name, "async")
    for fake, (real, names) in PROPERTIES.items():
        for name in names:
            assert isinstance(inspect.getattr_static(real, name), property), (real, name)
            fields = (
                {f.name for f in dataclasses.fields(fake)}
                if dataclasses.is_dataclass(fake)
                else set()
            )
            assert hasattr(fake, name) or name in fields, (fake, name)


# --- audio in, speech out, playback reported -------------------------------------------------


async def test_an_audio_stream_is_spoken_and_its_playback_reported(lk: Dispatched) -> None:
    session_id = await lk.dispatch()
    room, session = lk.room, lk.session(session_id)
    assert room.connected_with is not None and room.connected_with[:2] == ("wss://lk.example", "t")
    kinds = sorted(track.kind for track, _ in room.local_participant.published)
    assert kinds == [1, 2]  # one audio and one video track
    assert set(room.local_participant.rpc_handlers) == {"lk.clear_buffer"}
    frames = Frames(session)
    room.agent_send(ATTRS_24K, chunks(pcm(0.6)))
    await wait_for(lambda: room.calls_to("lk.playback_finished"), 10, "playback finished")
    started, finished = room.calls_to("lk.playback_started"), room.calls_to("lk.playback_finished")
    assert len(started) == 1 and started[0].payload == "" and started[0].at <= finished[0].at
    assert finished[0].destination_identity == AGENT
    assert finished[0].json == {
        "playback_position": pytest.approx(0.6, abs=0.02),
        "interrupted": False,
    }
    assert len(frames.speaking()) >= 12  # 0.6 s is 15 frames; the ramp-in edges are quiet
    await frames.aclose()
    shown = (await lk.client.get(f"/v1/sessions/{session_id}")).json()["outputs"]
    assert shown[0]["type"] == "livekit" and shown[0]["state"] == "live"
    assert shown[0]["segments"] == 1 and shown[0]["frames"] > 0 and shown[0]["agent"] == AGENT


async def test_clear_buffer_interrupts_within_two_frames(lk: Dispatched) -> None:
    session_id = await lk.dispatch()
    room, session = lk.room, lk.session(session_id)
    frames = Frames(session)
    reader = room.agent_stream(ATTRS_24K)  # an open stream, as the agent is still speaking
    for chunk in chunks(pcm(3.0)):
        reader.feed(chunk)
    await wait_for(lambda: room.calls_to("lk.playback_started"), 10, "speaking")
    await wait_for(lambda: len(frames.speaking()) >= 5, 10, "five frames of speech")
    assert await room.agent_rpc("lk.clear_buffer", caller="someone-else") == "reject"
    assert session.state == "speaking"
    assert await room.agent_rpc("lk.clear_buffer") == "ok"
    last_before = session.bus.last
    assert isinstance(last_before, AVFrame)
    finished = room.calls_to("lk.playback_finished")
    await wait_for(lambda: room.calls_to("lk.playback_finished"), 5, "playback finished")
    finished = room.calls_to("lk.playback_finished")
    assert finished[0].json["interrupted"] is True
    assert 0.1 < finished[0].json["playback_position"] < 2.0
    await wait_for(
        lambda: frames.seen and frames.seen[-1].index > last_before.index + 5, 5, "frames"
    )
    after = [f for f in frames.seen if f.index > last_before.index + 2]
    assert after and not any(f.utterance_id for f in after)
    assert all(np.abs(f.audio).max() == 0 for f in after)
    figures = session.outputs.describe()[0]
    assert figures["clear_to_silence_ms"] is not None and figures["first_frame_ms_p95"] > 0
    # the rest of that stream is discarded; the next stream plays
    reader.feed(pcm(0.2))
    reader.close()
    room.agent_send(ATTRS_24K, [pcm(0.3)])
    await wait_for(lambda: len(room.calls_to("lk.playback_finished")) == 2, 10, "next segment")
    assert room.calls_to("lk.playback_finished")[1].json["interrupted"] is False
    await frames.aclose()


async def test_a_new_stream_ends_the_open_one(lk: Dispatched) -> None:
    session_id = await lk.dispatch()
    room = lk.room
    lost_trailer = room.agent_stream(ATTRS_24K)
    lost_trailer.feed(pcm(0.2))
    room.agent_send({"sample_rate": "48000", "num_channels": "2"}, chunks(pcm(0.2, 48_000, 2)))
    await wait_for(lambda: len(room.calls_to("lk.playback_finished")) == 2, 10, "both segments")
    positions = [c.json["playback_position"] for c in room.calls_to("lk.playback_finished")]
    assert positions == [pytest.approx(0.2, abs=0.02)] * 2
    assert lk.session(session_id).state == "idle"


async def test_a_stall_is_caught_up_on_silence_not_on_speech(
    lk: Dispatched, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's audio source plays at its own rate: after a stall (here the loop is blocked,
    as on a busy machine) the frames that piled up in the worker are silent ones skipped,
    never speech."""
    from streamer.outputs.livekit import worker as worker_module

    sent: list[int] = []
    make_frame = worker_module.audio_frame

    def spy(frame: AVFrame) -> object:
        sent.append(frame.index)
        return make_frame(frame)

    monkeypatch.setattr(worker_module, "audio_frame", spy)
    session_id = await lk.dispatch()
    room, session = lk.room, lk.session(session_id)

    def figure(name: str) -> Any:
        return session.outputs.describe()[0][name]

    await wait_for(lambda: figure("frames") > 5, 10, "frames out")
    time.sleep(0.5)  # noqa: ASYNC251  # the stall, on purpose
    await wait_for(lambda: figure("silent_frames_skipped") > 0, 5, "silence skipped")
    frames = Frames(session)
    room.agent_send(ATTRS_24K, chunks(pcm(1.0)))
    await wait_for(lambda: len(frames.speaking()) > 5, 10, "speaking")
    time.sleep(0.3)  # noqa: ASYNC251  # a stall while speaking
    await wait_for(lambda: room.calls_to("lk.playback_finished"), 10, "playback finished")
    target = frames.seen[-1].index
    await wait_for(lambda: sent and sent[-1] >= target, 5, "the worker caught up")
    speech = [f.index for f in frames.speaking()]
    assert len(speech) >= 20 and set(speech) <= set(sent)
    await frames.aclose()


# --- leaving ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["agent_leaves", "room_closes", "delete"])
async def test_the_worker_leaves_and_the_session_closes(lk: Dispatched, how: str) -> None:
    session_id = await lk.dispatch()
    room, session = lk.room, lk.session(session_id)
    reader = room.agent_stream(ATTRS_24K)
    reader.feed(pcm(1.0))  # mid-sentence
    await wait_for(lambda: room.calls_to("lk.playback_started"), 10, "speaking")
    if how == "agent_leaves":
        room.agent_leave()
    elif how == "room_closes":
        room.server_closes()
    else:
        assert (await lk.client.delete(f"/v1/livekit/sessions/{session_id}")).status_code == 204
    await wait_for(lambda: not room.byte_handlers, 5, "left the room")
    await wait_for(lambda: state_of(lk.app).registry.get(session_id) is None, 5, "closed")
    assert session.closed and not room.isconnected()
    assert room.disconnects == (0 if how == "room_closes" else 1)  # a closed room is left
    assert not room.local_participant.rpc_handlers
    assert (await lk.client.get(f"/v1/sessions/{session_id}")).status_code == 404


async def test_another_participant_leaving_changes_nothing(lk: Dispatched) -> None:
    session_id = await lk.dispatch()
    lk.room.agent_join("viewer", kind=0)
    lk.room.agent_leave("viewer")
    await asyncio.sleep(0.1)
    assert not lk.session(session_id).closed and lk.room.isconnected()


async def test_no_agent_in_time_leaves(standin: tuple[Avatar, Backend]) -> None:
    from streamer.outputs.livekit.worker import LiveKitWorker

    app = make_app(standin)
    async with serving(app):
        session = await state_of(app).registry.create("default")
        room = FakeRoom(on_behalf=None, agent_present=False)
        ended: list[bool] = []

        async def end() -> None:
            ended.append(True)

        worker = LiveKitWorker(
            session,
            room,  # type: ignore[arg-type]  # the fake stands in for rtc.Room
            "wss://x",
            "t",
            ended=end,
            agent_wait_s=0.2,
        )
        await worker.start()
        await wait_for(lambda: ended, 5, "left")
        assert "no agent" in (worker.last_error or "")
        await worker.aclose()
        assert worker.describe()["state"] == "stopped" and not room.isconnected()


async def test_a_worker_closed_before_it_started_leaves_nothing(live: Live) -> None:
    from streamer.outputs.livekit.worker import LiveKitWorker

    room = FakeRoom()
    worker = LiveKitWorker(live.session, room, "wss://x", "t")  # type: ignore[arg-type]
    await worker.aclose()
    await worker.aclose()
    assert worker.describe()["state"] == "stopped" and room.connected_with is None


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "says"),
    [
        ({"sample_rate": "0", "num_channels": "1"}, "sample_rate"),
        ({"sample_rate": "1000000", "num_channels": "1"}, "sample_rate"),
        ({"sample_rate": "24000", "num_channels": "3"}, "num_channels"),
        ({"sample_rate": "24000"}, "no num_channels"),
        (None, "no sample_rate or num_channels"),
        ({"sample_rate": "fast", "num_channels": "1"}, "'fast'"),
    ],
)
def test_bad_stream_attributes_say_what_is_wrong(
    attributes: dict[str, str] | None, says: str
) -> None:
    with pytest.raises(StreamRejected, match=says):
        stream_format(attributes)


async def test_bad_streams_are_ignored_and_the_next_one_plays(lk: Dispatched) -> None:
    session_id = await lk.dispatch()
    room = lk.room
    room.agent_send({"sample_rate": "0", "num_channels": "1"}, [pcm(0.2)])
    room.agent_send({"sample_rate": "24000", "num_channels": "3"}, [pcm(0.2)])
    room.agent_send(ATTRS_24K, [pcm(0.2)], sender="intruder")  # not the agent
    room.agent_send(ATTRS_24K, [pcm(0.2)])
    await wait_for(lambda: room.calls_to("lk.playback_finished"), 10, "the good stream played")
    assert len(room.calls_to("lk.playback_finished")) == 1
    shown = lk.session(session_id).outputs.describe()[0]
    assert shown["streams_rejected"] == 2 and shown["state"] == "live"
    assert "num_channels" in shown["last_error"]


async def test_a_stream_faster_than_real_time_is_cut_not_buffered(lk: Dispatched) -> None:
    session_id = await lk.dispatch()
    room, session = lk.room, lk.session(session_id)
    one_minute = pcm(61.0, 16_000)
    room.agent_send({"sample_rate": "16000", "num_channels": "1"}, chunks(one_minute, 64_000))
    await wait_for(lambda: session.outputs.describe()[0]["streams_rejected"] == 1, 10, "cut")
    assert session.buffered_samples() <= session.config.max_buffer_s * 16_000
    assert "faster than real time" in session.outputs.describe()[0]["last_error"]
    assert await room.agent_rpc("lk.clear_buffer") == "ok"


async def test_dispatch_refuses_bad_requests(
    lk: Dispatched, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refused(body: dict[str, object]) -> tuple[int, str]:
        answer = await lk.client.post("/v1/livekit/sessions", json=body)
        return answer.status_code, answer.json()["error"]["code"]

    assert await refused({"url": "https://lk.example", "token": "t"}) == (400, "bad_url")
    assert await refused({"url": "wss://", "token": "t"}) == (400, "bad_url")
    assert await refused({"url": "wss://lk.example", "token": " "}) == (400, "missing_token")
    assert await refused({"url": "wss://lk.example", "token": "t", "avatar": "nobody"}) == (
        400,
        "unknown_avatar",
    )
    lk.room_kwargs["refuse"] = "token is for another room"  # type: ignore[attr-defined]
    assert await refused({"url": "wss://lk.example", "token": "t"}) == (
        502,
        "livekit_connect_failed",
    )
    assert len(state_of(lk.app).registry) == 0
    monkeypatch.setitem(sys.modules, "streamer.outputs.livekit.worker", None)
    assert await refused({"url": "wss://lk.example", "token": "t"}) == (501, "livekit_unavailable")


def test_pcm_decoder_mixes_down_and_resamples_across_odd_chunks() -> None:
    decoder = PcmDecoder(48_000, 2)
    data = pcm(0.5, 48_000, 2)
    out = np.concatenate([decoder.feed(c) for c in chunks(data, 1001)] + [decoder.flush()])
    assert abs(len(out) - 8000) <= 160
    assert 0.3 < np.abs(out).max() < 0.5
