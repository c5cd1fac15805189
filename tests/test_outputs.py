"""Outputs: validation, recording to a fragmented MP4, and RTMP into a real nginx-rtmp.

The media checks read what was written or received back with PyAV and look at the streams'
own timestamps (25 fps, audio without gaps), never at wall-clock timing; the only time
bounds are generous functional ones ("live again within 5 s").
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import httpx
import pytest
from fastapi import FastAPI

from models.avatar import Avatar
from streamer.app import output_specs
from streamer.config import ConfigError, Settings
from streamer.engine.base import Backend
from streamer.outputs.base import MAX_OUTPUTS_PER_SESSION, OutputRejected
from streamer.outputs.factory import attach_output
from streamer.outputs.inbox import Inbox
from streamer.outputs.muxed import MuxedOutput
from streamer.outputs.record import RecordOutput
from streamer.outputs.spec import SESSION_VIDEO_KBPS, OutputSpec, parse_spec, redact
from streamer.pipeline.frames import AVFrame
from streamer.session import Session
from streamer.session.events import OutputState
from tests.conftest import Live, make_app, serving, tone, wait_for

# --- validation ------------------------------------------------------------------------------


def rejected(recordings: Path, kind: object, **fields: object) -> OutputRejected:
    with pytest.raises(OutputRejected) as caught:
        parse_spec(kind, recordings=recordings, **fields)
    return caught.value


@pytest.mark.parametrize(
    ("kind", "fields", "status", "code"),
    [
        ("ftp", {"url": "ftp://x/y"}, 400, "unknown_output_type"),
        ("rtmp", {"url": "http://example.com/live/key"}, 400, "unsupported_scheme"),
        ("rtmp", {"url": "file:///etc/passwd"}, 400, "unsupported_scheme"),
        ("rtmp", {}, 400, "invalid_url"),
        ("rtmp", {"url": "rtmp://example.com"}, 400, "invalid_url"),
        ("rtmp", {"url": "rtmp:///live/key"}, 400, "invalid_url"),
        ("rtmp", {"url": "rtmp://example.com:99999/live/key"}, 400, "invalid_url"),
        ("rtmp", {"url": "rtmp://example.com/live/key with space"}, 400, "invalid_url"),
        ("rtmp", {"url": "rtmp://h/live/k", "name": "x"}, 400, "invalid_request"),
        ("record", {}, 400, "invalid_name"),
        ("record", {"name": "../escape"}, 400, "invalid_name"),
        ("record", {"name": "/etc/passwd"}, 400, "invalid_name"),
        ("record", {"name": "a/b.mp4"}, 400, "invalid_name"),
        ("record", {"name": ".hidden"}, 400, "invalid_name"),
        ("record", {"name": "show.mkv"}, 400, "invalid_name"),
        ("record", {"name": "x", "url": "rtmp://h/a/k"}, 400, "invalid_request"),
        (
            "rtmp",
            {"url": "rtmp://h/a/k", "video_bitrate_kbps": 500},
            422,
            "bitrate_below_shared_encode",
        ),
        ("rtmp", {"url": "rtmp://h/a/k", "video_bitrate_kbps": "fast"}, 422, "invalid_bitrate"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_touched(
    tmp_path: Path, kind: str, fields: dict[str, object], status: int, code: str
) -> None:
    error = rejected(tmp_path / "recordings", kind, **fields)
    assert (error.status, error.code) == (status, code), error.message
    assert error.message
    if code == "not_implemented":
        assert kind in error.message
    assert not (tmp_path / "recordings").exists()  # validation writes nothing


def test_good_requests_and_what_they_show(tmp_path: Path) -> None:
    folder = tmp_path / "rec"
    spec = parse_spec("rtmp", recordings=folder, url="rtmps://live.example.com/app/SECRET")
    assert spec.url and spec.video_bitrate_kbps == SESSION_VIDEO_KBPS
    assert "SECRET" not in spec.target and spec.target == "rtmps://live.example.com/app/****"
    assert redact("rtmp://user:pw@h:1935/app/KEY?x=1") == "rtmp://h:1935/app/****"
    capped = parse_spec("rtmp", recordings=folder, url="rtmp://h/a/k", video_bitrate_kbps=6000)
    assert capped.video_bitrate_kbps == 6000
    record = parse_spec("record", recordings=folder, name="show-1")
    assert record.path == folder.resolve() / "show-1.mp4"
    folder.mkdir()
    (folder / "taken.mp4").write_bytes(b"")
    assert rejected(folder, "record", name="taken").code == "recording_exists"
    (folder / "link.mp4").symlink_to(tmp_path / "elsewhere.mp4")
    assert rejected(folder, "record", name="link.mp4").code == "invalid_name"


# --- helpers ---------------------------------------------------------------------------------


def attach(session: Session, kind: str, tmp: Path, **fields: object) -> MuxedOutput:
    return attach_output(session, parse_spec(kind, recordings=tmp, **fields), None)


def states(events: asyncio.Queue[object]) -> list[str]:
    seen = []
    while not events.empty():
        event = events.get_nowait()
        if isinstance(event, OutputState):
            seen.append(event.state)
    return seen


@dataclass
class Media:
    """What PyAV reads back: video packet times, decoded pictures, decoded audio spans."""

    video_s: list[float] = field(default_factory=list)
    keyframes_s: list[float] = field(default_factory=list)
    pictures: int = 0
    audio: list[tuple[float, float]] = field(default_factory=list)  # (start s, length s)
    size: tuple[int, int] = (0, 0)

    @property
    def span_s(self) -> float:
        return self.video_s[-1] - self.video_s[1]

    def check_25_fps(self) -> None:
        """Pictures on the 40 ms grid of the session clock, in order, at most 10 % missing
        (the shared encoder skips a picture when a loaded machine stalls it; a player holds
        the last one).

        The first picture is left out: a fragmented MP4 starts each track at 0, so it is
        stretched over the AAC encoder's priming; every later one keeps its place."""
        times = self.video_s[1:]
        slots = [(t - times[0]) / 0.04 for t in times]
        off = [s for s in slots if abs(s - round(s)) * 40 >= 1.5]
        assert not off, f"pictures off the 40 ms grid at slots {off[:5]}"
        assert all(b > a for a, b in itertools.pairwise(slots)), "timestamps not increasing"
        expected = round(slots[-1]) + 1
        assert len(slots) >= 0.9 * expected, f"{len(slots)} pictures of {expected} slots"

    @property
    def largest_audio_gap_s(self) -> float:
        ends = [start + length for start, length in self.audio]
        return max(
            (b[0] - a_end for a_end, b in zip(ends, self.audio[1:], strict=False)), default=0.0
        )

    @property
    def audio_s(self) -> float:
        return sum(length for _, length in self.audio)


def read_media(url: str, until_s: float | None = None, **options: object) -> Media:
    """Demux and decode ``url`` (a file, or a live stream up to ``until_s`` of video)."""
    media = Media()
    with av.open(url, **options) as container:  # type: ignore[call-overload]
        video = container.streams.video[0]
        media.size = (video.codec_context.width, video.codec_context.height)
        try:
            for packet in container.demux():
                if packet.pts is None or packet.time_base is None:
                    continue
                _take(media, packet)
                if (
                    until_s
                    and len(media.video_s) > 1
                    and media.video_s[-1] - media.video_s[0] >= until_s
                ):
                    break
        except av.error.InvalidDataError:
            pass  # a file cut short: what came before is what a player plays
    return media


def _take(media: Media, packet: av.Packet) -> None:
    when = float(packet.pts * packet.time_base)
    if packet.stream.type == "video":
        media.video_s.append(when)
        if packet.is_keyframe:
            media.keyframes_s.append(when)
        media.pictures += len(packet.decode())
    elif packet.stream.type == "audio":
        for frame in packet.decode():
            assert isinstance(frame, av.AudioFrame) and frame.pts is not None
            start = float(frame.pts * frame.time_base)
            media.audio.append((start, frame.samples / frame.sample_rate))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- recording -------------------------------------------------------------------------------


async def test_record_writes_a_playable_fragmented_mp4(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 s recorded, read back: 25 fps H.264, continuous AAC as long as the video; a copy of
    the file taken mid-write and cut mid-fragment (what a kill leaves) still decodes. The
    audio handed to the output's thread holds no pictures (a stalled thread's backlog would
    keep them all alive)."""
    handed: list[AVFrame] = []
    put_audio = Inbox.put_audio
    monkeypatch.setattr(
        Inbox, "put_audio", lambda inbox, f: (handed.append(f), put_audio(inbox, f))
    )
    session = live.session
    events = session.subscribe_events()
    output = attach(session, "record", tmp_path, name="take")
    await wait_for(lambda: output.state == "live", 15, "recording")
    session.speak_audio(tone(2.0))
    path = output.spec.path
    assert path is not None and path.name == "take.mp4"
    await wait_for(lambda: path.stat().st_size > 20_000, 15, "written to")
    await asyncio.sleep(3.0)  # session-clock content to read back: checked on its own pts
    killed = path.read_bytes()  # the file as a killed server would leave it...
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(killed[: len(killed) - 777])  # ... and a write torn mid-fragment
    assert await session.outputs.remove(output.id)
    assert output.state == "stopped" and output.last_error is None
    assert states(events) == ["connecting", "live", "stopped"]

    media = read_media(str(path))
    assert media.size == (512, 512)
    assert media.span_s >= 3.0
    media.check_25_fps()
    keys = media.keyframes_s
    assert len(keys) >= 2 and max(b - a for a, b in itertools.pairwise(keys)) < 2.2  # 2 s GOP
    assert media.pictures == len(media.video_s)
    assert media.largest_audio_gap_s < 0.002
    assert media.audio_s == pytest.approx(media.span_s, abs=0.2)

    torn = read_media(str(cut))
    assert torn.pictures >= 2 * 25  # every whole 2 s fragment before the tear
    torn.check_25_fps()

    assert len(handed) >= 75
    assert all(f.video.shape == (512, 512, 3) and f.video.strides[:2] == (0, 0) for f in handed)


async def test_a_recording_stopped_before_its_first_frame_leaves_no_file(
    live: Live, tmp_path: Path
) -> None:
    """Removed at once, before a key frame reached it: no empty, unplayable file stays."""
    output = attach(live.session, "record", tmp_path, name="nothing")
    path = output.spec.path
    assert path is not None
    assert await live.session.outputs.remove(output.id)
    assert output.state == "stopped" and output.connections == 0
    assert not path.exists()


class FullDisk(RecordOutput):
    """A recording whose file is /dev/full: every write fails with ENOSPC."""

    def prepare(self) -> None:
        pass


async def test_a_full_disk_fails_the_recording_not_the_session(live: Live) -> None:
    session = live.session
    events = session.subscribe_events()
    report_states: list[str] = []
    spec = OutputSpec("record", path=Path("/dev/full"))
    output = FullDisk("out_full", spec, session, lambda change: report_states.append(change.state))
    output.start()
    session.outputs.add(output)
    await wait_for(lambda: output.state == "failed", 15, "failed")
    assert output.last_error and "space" in output.last_error.lower()
    frames = session.stats.frames
    await wait_for(lambda: session.stats.frames > frames + 10, 5, "publishing")
    assert report_states[-1] == "failed"
    assert not session.closed
    del events


async def test_a_refused_connection_retries_while_the_session_goes_on(
    live: Live, tmp_path: Path
) -> None:
    session = live.session
    output = attach(session, "rtmp", tmp_path, url=f"rtmp://127.0.0.1:{free_port()}/live/k")
    await wait_for(lambda: output.state == "retrying", 15, "retrying")
    assert output.last_error and "refused" in output.last_error.lower()
    frames = session.stats.frames
    await wait_for(lambda: output.connections >= 2, 10, "tried again")
    assert session.stats.frames > frames  # the session kept publishing meanwhile
    assert output.state in ("retrying", "connecting")
    assert output.describe()["last_error"] == output.last_error


# --- the API and serve --output --------------------------------------------------------------


@pytest.fixture()
async def api(
    standin: tuple[Avatar, Backend], tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    app = make_app(standin, recordings=tmp_path / "recordings")
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client, app


def error_code(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    return str(error["code"])


async def state_of(client: httpx.AsyncClient, outputs: str, oid: str) -> str:
    """One output's state, as GET .../outputs lists it."""
    listed = (await client.get(outputs)).json()["outputs"]
    return str(next(o for o in listed if o["id"] == oid)["state"])


async def test_outputs_api(api: tuple[httpx.AsyncClient, FastAPI], tmp_path: Path) -> None:
    """POST validates then starts (201), GET lists with state and last_error, /metrics counts
    them by type and state, the session's limit answers 429, DELETE stops one."""
    client, _ = api
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    outputs = f"/v1/sessions/{sid}/outputs"
    bad = {"type": "rtmp", "url": "https://example.com/live/key"}
    assert error_code(await client.post(outputs, json=bad), 400) == "unsupported_scheme"
    assert error_code(await client.post(outputs, json={"type": "whip", "url": "x"}), 400) == (
        "unsupported_scheme"
    )
    assert error_code(await client.post(outputs, json={"type": "record", "name": "../x"}), 400) == (
        "invalid_name"
    )
    assert error_code(await client.post(outputs, json={"type": "record", "bogus": 1}), 422) == (
        "invalid_request"
    )
    r = await client.post(outputs, json={"type": "record", "name": "show"})
    assert r.status_code == 201, r.text
    made = r.json()
    assert set(made) == {"id", "type", "state"} and made["type"] == "record"
    refused = {"type": "rtmp", "url": f"rtmp://127.0.0.1:{free_port()}/live/k"}
    for _ in range(MAX_OUTPUTS_PER_SESSION - 1):
        assert (await client.post(outputs, json=refused)).status_code == 201
    assert error_code(await client.post(outputs, json=refused), 429) == "too_many_outputs"
    listed = (await client.get(outputs)).json()["outputs"]
    assert len(listed) == MAX_OUTPUTS_PER_SESSION
    assert all({"id", "type", "state", "last_error"} <= set(o) for o in listed)
    shown = (await client.get(f"/v1/sessions/{sid}")).json()["outputs"]
    assert [o["id"] for o in shown] == [o["id"] for o in listed]
    deadline = time.monotonic() + 15
    while "avatarcast_outputs{" not in (text := (await client.get("/metrics")).text):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert 'avatarcast_outputs{state="' in text and 'type="record"' in text
    # A recording stopped before its first frame leaves no file: this one has begun.
    while await state_of(client, outputs, made["id"]) != "live":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert (await client.delete(f"{outputs}/{made['id']}")).status_code == 204
    left = (await client.get(outputs)).json()["outputs"]
    assert len(left) == MAX_OUTPUTS_PER_SESSION - 1 and made["id"] not in {o["id"] for o in left}
    assert (tmp_path / "recordings" / "show.mp4").exists()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://example.com/x", "use an rtmp://"),
        ("srt://example.com", "needs a port"),
        ("rtmp://example.com", "application and a stream key"),
    ],
)
def test_serve_refuses_a_bad_output_before_starting(tmp_path: Path, url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        output_specs(Settings(home=tmp_path, outputs=(url,)))
    specs = output_specs(Settings(home=tmp_path, outputs=("rtmps://h/app/KEY",)))
    assert [s.kind for s in specs] == ["rtmp"]
