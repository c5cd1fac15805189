"""Faults: one test each, and in each another session keeps streaming in sync.

Two sessions run on one served app (the stand-in avatar, one inference worker). The fault
hits session ``a``; session ``b``, speaking meanwhile, must keep publishing frames on its
clock's 40 ms grid, each carrying its own 40 ms of audio (one index stamps both, so their
presentation times agree), and ``a`` too where the fault is not its end. The cadence is
judged by the median gap between publications (over five frames, as a loop held up on a
loaded machine publishes two frames at once and then none), never by the largest gap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aioice.ice
import aioice.stun
import httpx
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from models.audio import SAMPLES_PER_VIDEO_FRAME
from models.avatar import Avatar, AvatarError, read_avatar, write_avatar
from streamer.app import create_app
from streamer.config import Settings
from streamer.engine.base import Backend
from streamer.pipeline.frames import AVFrame
from streamer.session import Session, SessionEvent
from tests.conftest import serving, stand_in_assets, state_of, tone
from tests.test_api import wav_bytes
from tests.webrtc_fakes import whep_offer

FAIL_WORD = "boom"


class Flaky:
    """The stand-in backend, raising while ``failing`` (a GPU error, a bad batch)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name, self.device = inner.name, inner.device
        self.failing = False
        self.failed_calls = 0
        self.calls = 0

    def infer(self, reference: np.ndarray, masked: np.ndarray, mel: np.ndarray) -> np.ndarray:
        if self.failing:
            self.failed_calls += 1
            raise RuntimeError("the device reported an error")
        self.calls += 1
        return self.inner.infer(reference, masked, mel)


def speech(text: str) -> Iterator[np.ndarray]:
    """A TTS that fails on one word, as an engine does on input it cannot take."""
    if FAIL_WORD in text:
        raise RuntimeError("the speech engine crashed")
    return iter([tone(0.2 * len(text.split()), 300.0)])


@dataclasses.dataclass
class Pair:
    app: Any
    url: str
    http: httpx.AsyncClient
    a: Session
    b: Session
    backend: Flaky


@pytest.fixture()
async def pair(standin: tuple[Avatar, Backend], tmp_path: Path) -> AsyncIterator[Pair]:
    avatar, backend = standin
    flaky = Flaky(backend)

    def loader(name: str) -> tuple[Avatar, Backend]:
        if name not in ("default", avatar.name):
            raise AvatarError(f"no avatar named {name!r}")
        return avatar, flaky  # type: ignore[return-value]

    app = create_app(Settings(home=tmp_path), loader=loader, speech=speech)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        ids = [(await http.post("/v1/sessions", json={})).json()["id"] for _ in range(2)]
        a, b = (state_of(app).registry.get(i) for i in ids)
        assert a is not None and b is not None
        await asyncio.wait_for(asyncio.gather(a.wait_ready(), b.wait_ready()), 15)
        yield Pair(app, url, http, a, b, flaky)


class Watch:
    """The AV frames one session publishes while the block runs."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.frames: list[AVFrame] = []
        self._task: asyncio.Task[None] | None = None

    async def _collect(self) -> None:
        sub = self.session.bus.subscribe(video_depth=1, audio_depth=1000)
        try:
            while True:
                self.frames.append(await sub.next_audio())
        finally:
            self.session.bus.unsubscribe(sub)

    async def __aenter__(self) -> Watch:
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def assert_streaming(self, seconds: float) -> None:
        """Frames kept coming for ``seconds``, on the 25 fps grid, each with its audio."""
        frames = self.frames
        span = frames[-1].published_at - frames[0].published_at if len(frames) > 1 else 0.0
        assert span >= 0.8 * seconds, f"{self.session.id} published for {span:.2f} s only"
        indices = np.array([f.index for f in frames])
        assert (np.diff(indices) == 1).all(), "frames were skipped or repeated"
        assert all(len(f.audio) == SAMPLES_PER_VIDEO_FRAME for f in frames)
        times = np.array([f.published_at for f in frames])
        gaps = (times[5:] - times[:-5]) / 5 * 1000
        assert 30 <= float(np.median(gaps)) <= 50, f"median gap {np.median(gaps):.1f} ms"
        assert len(frames) >= 20 * span  # no long stalls either: 25 fps, a fifth to spare


async def speak_tone(pair: Pair, session: Session, seconds: float) -> str:
    res = await pair.http.post(
        f"/v1/sessions/{session.id}/speak",
        content=wav_bytes(tone(seconds)),
        headers={"Content-Type": "audio/wav"},
    )
    assert res.status_code == 202, res.text
    return str(res.json()["utterance_id"])


async def next_event(
    events: asyncio.Queue[SessionEvent], kind: str, utterance_id: str | None = None
) -> dict[str, Any]:
    async with asyncio.timeout(15):
        while True:
            event = (await events.get()).to_json()
            if event["type"] == kind and utterance_id in (None, event.get("utterance_id")):
                return event


async def until(check: Any) -> None:
    """Poll ``check`` (state another task changes) for up to 10 s."""
    async with asyncio.timeout(10):
        while not check():  # noqa: ASYNC110 (plain attributes: nothing to wait on)
            await asyncio.sleep(0.05)


# --- viewers ---------------------------------------------------------------------------------


async def connect_viewer(pair: Pair, session: Session) -> RTCPeerConnection:
    pc = await whep_offer()
    res = await pair.http.post(
        f"/v1/sessions/{session.id}/whep",
        content=pc.localDescription.sdp,
        headers={"Content-Type": "application/sdp"},
    )
    assert res.status_code == 201, res.text
    await pc.setRemoteDescription(RTCSessionDescription(res.text, "answer"))
    return pc


def peers(pair: Pair, session: Session) -> int:
    return len(state_of(pair.app).webrtc.of_session(session.id))


async def test_a_viewer_that_vanishes_is_hung_up_after_consent_expires(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RFC 7675's 30 s, shortened: 6 unanswered consent checks, one every 0.2 s.
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    monkeypatch.setattr(aioice.stun, "RETRY_RTO", 0.1)
    pc = await connect_viewer(pair, pair.a)
    try:
        await until(lambda: pair.a.viewers == 1)
        async with Watch(pair.b) as b, Watch(pair.a) as a:
            await speak_tone(pair, pair.b, 3.0)
            # The viewer's machine goes away: its sockets close, no DTLS close, no DELETE.
            ice = pc.getTransceivers()[0].receiver.transport.transport
            consent = ice._connection._query_consent_task
            assert consent is not None
            consent.cancel()  # the client's own checks stop with it
            for protocol in ice._connection._protocols:
                protocol.transport.close()
            await until(lambda: peers(pair, pair.a) == 0)
            await until(lambda: pair.a.viewers == 0)  # its tracks stop just after the peer
            await asyncio.sleep(0.3)
        b.assert_streaming(1.0)
        a.assert_streaming(1.0)
    finally:
        await pc.close()


async def test_ice_failure_hangs_up_that_viewer_only(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aioice.stun, "RETRY_RTO", 0.05)
    monkeypatch.setattr(aioice.stun, "RETRY_MAX", 2)
    good = await connect_viewer(pair, pair.a)
    try:
        await until(lambda: pair.a.viewers == 1)
        async with Watch(pair.b) as b:
            await speak_tone(pair, pair.b, 2.0)
            # An offer whose candidates nobody answers: the client is gone before the answer.
            pc = await whep_offer()
            await pc.close()
            res = await pair.http.post(
                f"/v1/sessions/{pair.a.id}/whep",
                content=pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp"},
            )
            assert res.status_code == 201, res.text
            assert peers(pair, pair.a) == 2
            await until(lambda: peers(pair, pair.a) == 1)  # closed on ICE failure
            await asyncio.sleep(0.5)
        b.assert_streaming(1.0)
        assert pair.a.viewers == 1 and good.connectionState == "connected"
    finally:
        await good.close()


# --- speech ----------------------------------------------------------------------------------


async def test_a_tts_failure_is_an_error_event_and_the_session_goes_on(pair: Pair) -> None:
    events = pair.a.subscribe_events()
    async with Watch(pair.b) as b, Watch(pair.a) as a:
        await speak_tone(pair, pair.b, 2.0)
        speak = f"/v1/sessions/{pair.a.id}/speak"
        bad = (await pair.http.post(speak, json={"text": f"say {FAIL_WORD}"})).json()
        error = await next_event(events, "error")
        assert error["code"] == "speech_failed" and error["utterance_id"] == bad["utterance_id"]
        assert "crashed" in error["message"]
        good = (await pair.http.post(speak, json={"text": "hello there"})).json()
        done = await next_event(events, "playback_finished", good["utterance_id"])
        assert not done["interrupted"]
        assert done["position_s"] == pytest.approx(0.4, abs=0.04)
        await asyncio.sleep(0.5)
    b.assert_streaming(1.0)
    a.assert_streaming(1.0)


async def test_a_corrupt_upload_is_400_and_loses_nothing_queued(pair: Pair) -> None:
    events = pair.a.subscribe_events()
    async with Watch(pair.b) as b:
        await speak_tone(pair, pair.b, 2.0)
        first = await speak_tone(pair, pair.a, 1.0)
        res = await pair.http.post(
            f"/v1/sessions/{pair.a.id}/speak",
            content=b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 8,
            headers={"Content-Type": "audio/wav"},
        )
        assert res.status_code == 400 and res.json()["error"]["code"] == "bad_audio"
        done = await next_event(events, "playback_finished", first)
        assert not done["interrupted"]
        assert done["position_s"] == pytest.approx(1.0, abs=0.04)
    b.assert_streaming(1.0)


# --- inside the pipeline -----------------------------------------------------------------------


async def test_an_exception_in_one_session_closes_it_alone(pair: Pair) -> None:
    events = pair.a.subscribe_events()
    timeline = pair.a._timeline

    def broken(lo: int, hi: int) -> np.ndarray:
        raise RuntimeError("a bug in this session's frame preparation")

    async with Watch(pair.b) as b:
        await speak_tone(pair, pair.b, 2.0)
        timeline.samples = broken  # type: ignore[method-assign]
        error = await next_event(events, "error")
        assert error["code"] == "session_failed"
        closed = await next_event(events, "session_closed")
        assert closed["reason"] == "failed"
        await until(lambda: state_of(pair.app).registry.get(pair.a.id) is None)
        assert (await pair.http.get(f"/v1/sessions/{pair.a.id}")).status_code == 404
        await asyncio.sleep(1.0)
    b.assert_streaming(1.0)
    assert not pair.b.closed


async def test_a_backend_error_drops_those_frames_and_streaming_goes_on(pair: Pair) -> None:
    async with Watch(pair.b) as b, Watch(pair.a) as a:
        await speak_tone(pair, pair.a, 2.5)
        await speak_tone(pair, pair.b, 2.5)
        await asyncio.sleep(0.3)
        pair.backend.failing = True
        await until(lambda: pair.backend.failed_calls >= 3)
        await asyncio.sleep(0.5)
        pair.backend.failing = False
        calls = pair.backend.calls
        await until(lambda: pair.backend.calls > calls + 3)  # the worker generates again
        await asyncio.sleep(0.5)
    b.assert_streaming(1.5)
    a.assert_streaming(1.5)
    assert not pair.a.closed and not pair.b.closed


# --- a full disk -----------------------------------------------------------------------------


def test_a_full_disk_while_writing_an_avatar_keeps_the_old_one(
    standin: tuple[Avatar, Backend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    avatar, _ = standin
    target = tmp_path / "avatars" / avatar.name
    shutil.copytree(avatar.path, target)
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}

    def full(path: object, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(np, "save", full)  # the package writer's boxes.npy: the disk is full
    a = stand_in_assets()
    with pytest.raises(AvatarError, match="No space left on device") as refused:
        write_avatar(
            target,
            name=avatar.name,
            kind="photo",
            frames=a["frames"],
            boxes=a["boxes"],
            mask=a["mask"],
            reference=a["reference"],
            model=avatar.model_path,
        )
    assert "nothing changed" in str(refused.value)  # the CLI prints it and exits 2
    after = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert after == before  # the old package, whole
    assert [p.name for p in target.parent.iterdir()] == [avatar.name]  # no staging left
    assert read_avatar(target).frames.shape == avatar.frames.shape
