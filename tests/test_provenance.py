"""Marking what is synthetic: the invisible mark through a real codec and a resize, `verify`,
the C2PA manifest of a render, and the visible label."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import httpx
import numpy as np
import pytest

from models.avatar import Avatar, load_avatar
from streamer.cli import main
from streamer.config import default_home
from streamer.engine import make_backend
from streamer.engine.base import Backend
from streamer.outputs.factory import attach_output
from streamer.outputs.spec import parse_spec
from streamer.pipeline.codecs import VIDEO_BITRATE, VideoEncoder
from streamer.pipeline.provenance import Provenance, draw_label
from streamer.pipeline.watermark import LAYOUT, MIN_CONFIDENCE, Marker, Payload, decide
from streamer.render import render_samples
from streamer.session import Session
from streamer.verify import verify
from tests.conftest import Live, make_app, serving

c2pa = pytest.importorskip("c2pa")

SECONDS = 2.4  # one 2 s window of frames, and a little more


@pytest.fixture(scope="module")
def default() -> tuple[Avatar, Backend]:
    """The shipped avatar (a real face) and its ONNX backend."""
    avatar = load_avatar("default", default_home())
    return avatar, make_backend("onnx", avatar, threads=1)


def speech(seconds: float = SECONDS) -> np.ndarray:
    t = np.arange(int(16_000 * seconds)) / 16_000
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)


@pytest.fixture(scope="module")
def rendered(
    default: tuple[Avatar, Backend], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, str]:
    """A signed, labelled render: (the file, the signing home, its mark id)."""
    avatar, backend = default
    home = tmp_path_factory.mktemp("home")
    out = home / "clip.mp4"
    result = render_samples([speech()], out, avatar, backend, label=True, signing=home)
    assert result.mark_id is not None
    return out, home, result.mark_id


def frames_of(path: Path) -> Iterator[np.ndarray]:
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def transcode(frames: Iterator[np.ndarray], out: Path, scale: float) -> Path:
    """The session's own H.264 settings at half their bit rate, then a resize to ``scale``,
    written as a new MP4 (what a platform's lower rendition would be)."""
    encoder = VideoEncoder("h264", VIDEO_BITRATE // 2)
    decoder = av.CodecContext.create("h264", "r")
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 25)
        n = 0
        for i, rgb in enumerate(frames):
            data, _ = encoder.encode(rgb, keyframe=i == 0)
            if data is None:
                continue
            for decoded in decoder.decode(av.Packet(data)):
                small: np.ndarray = cv2.resize(
                    decoded.to_ndarray(format="rgb24"),
                    None,
                    fx=scale,
                    fy=scale,
                    interpolation=cv2.INTER_AREA,
                )
                if not n:
                    stream.width, stream.height = small.shape[1], small.shape[0]
                frame = av.VideoFrame.from_ndarray(small, format="rgb24")
                frame.pts = n
                n += 1
                container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out


def test_payload_bits_round_trip_and_crc() -> None:
    payload = Payload.make("default", "a1b2c3d4", when=1_790_000_000)
    bits = payload.bits() > 0
    assert Payload.from_bits(bits) == payload
    for flip in (0, 20, 47, 63):  # a payload bit or a CRC bit: the CRC catches one error
        damaged = bits.copy()
        damaged[flip] = not damaged[flip]
        assert Payload.from_bits(damaged) is None
    assert abs(payload.hour_utc(now=1_790_000_000) - 1_790_000_000) < 3600


def test_a_bit_read_wrong_but_weakly_is_corrected() -> None:
    """A window whose CRC fails because of a bit or two read with the wrong sign, weakly, still
    gives its payload; one read wrong with strength does not, and neither does weak video."""
    payload = Payload.make("default", "a1b2c3d4", when=1_790_000_000)
    signs = payload.bits()
    scale, frames = 1.0, 50
    unit = scale * np.sqrt(LAYOUT.per_bit)  # a bit's sum of strength 1
    strong = signs * 3.0 * unit
    assert decide(strong, scale, frames).payload == payload
    weak = strong.copy()
    weak[[5, 40]] *= -0.1  # two bits wrong, weakly: the flips find them
    assert decide(weak, scale, frames).payload == payload
    wrong = strong.copy()
    wrong[5] *= -1.0  # wrong with full strength: not among the weakest, no payload
    assert decide(wrong, scale, frames).payload is None
    faint = weak * (0.9 * MIN_CONFIDENCE / 3.0)  # under the confidence gate: never decoded
    assert decide(faint, scale, frames).payload is None


def test_mark_is_invisible(default: tuple[Avatar, Backend]) -> None:
    avatar, _ = default
    picture = avatar.frames[0].copy()
    Marker(Payload.make("default", "s")).mark(picture)
    mse = np.mean((picture.astype(np.float64) - avatar.frames[0]) ** 2)
    assert mse > 0 and 10 * np.log10(255**2 / mse) >= 40.0


def test_render_survives_h264_half_rate_and_half_size(
    rendered: tuple[Path, Path, str], tmp_path: Path
) -> None:
    path, _, mark_id = rendered
    small = transcode(frames_of(path), tmp_path / "small.mp4", 0.5)
    with av.open(str(small)) as container:
        assert container.streams.video[0].codec_context.width == 256
    verdict = verify(small)
    assert verdict.payload is not None
    assert verdict.payload.avatar == Payload.avatar_id("default")
    assert verdict.payload.session == Payload.session_id(mark_id)
    assert verdict.marked_windows == len(verdict.windows)


def test_unmarked_video_is_not_marked(default: tuple[Avatar, Backend], tmp_path: Path) -> None:
    avatar, _ = default
    # The avatar's own frames with a little motion, never marked, through the same codec path.
    still = [np.roll(avatar.frames[0], k // 4, axis=1) for k in range(60)]
    verdict = verify(transcode(iter(still), tmp_path / "plain.mp4", 1.0))
    assert verdict.payload is None
    assert all(not w.marked for w in verdict.windows)
    assert verdict.confidence < 1.5


def test_render_carries_a_valid_c2pa_manifest(rendered: tuple[Path, Path, str]) -> None:
    path, home, _ = rendered
    with c2pa.Reader(str(path)) as reader:
        store = json.loads(reader.json())
    assert store["validation_state"] in ("Valid", "Trusted")
    # Signed by a chain the local CA issued, which no public trust list holds: nothing else.
    codes = {s["code"] for s in store.get("validation_status") or []}
    assert codes <= {"signingCredential.untrusted"}
    active = store["manifests"][store["active_manifest"]]
    assertions = {a["label"]: a["data"] for a in active["assertions"]}
    actions = assertions["c2pa.actions.v2"]["actions"]
    assert any(
        a["action"] == "c2pa.created" and a["digitalSourceType"].endswith("trainedAlgorithmicMedia")
        for a in actions
    )
    assert assertions["org.avatarcast.avatar"]["owner"] == "local"
    for key in ("ca.key", "leaf.key"):
        assert stat.S_IMODE((home / "c2pa" / key).stat().st_mode) == 0o600


def test_verify_command(
    rendered: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _, _ = rendered
    assert main(["verify", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["marked"] and result["mark"]["avatar"] == "default"
    assert result["c2pa"]["validation_state"] in ("Valid", "Trusted")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    assert main(["verify", str(junk)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "junk.mp4" in err


def test_label_comes_on_with_a_platform_push_unless_refused() -> None:
    auto = Provenance("default", "s1")
    auto.output_added("record")
    assert not auto.label
    auto.output_added("rtmp")
    assert auto.label
    refused = Provenance("default", "s2", label=False)
    refused.output_added("srt")
    assert refused.label is False
    grey = np.full((512, 512, 3), 128, np.uint8)
    labelled = draw_label(grey.copy())
    corner = np.abs(labelled.astype(int) - grey)[-60:, -200:]
    assert corner.max() > 100 and np.abs(labelled.astype(int) - grey)[:-60].max() == 0


def test_a_transparent_picture_is_marked_on_its_colour_only(
    default: tuple[Avatar, Backend],
) -> None:
    avatar, _ = default
    colour = avatar.frames[0]
    alpha = np.full_like(colour, 255)
    packed = np.concatenate([colour, alpha], axis=1)
    Provenance("default", "s3", label=True).apply(packed, transparent=True)
    assert np.array_equal(packed[:, 512:], alpha)
    assert not np.array_equal(packed[:, :512], colour)


async def test_a_finished_recording_is_marked_and_signed(
    default: tuple[Avatar, Backend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AVATARCAST_HOME", str(tmp_path / "home"))
    live = Live(*default)
    try:
        await live.session.start()
        await record_and_check(live.session, tmp_path)
    finally:
        await live.aclose()


async def record_and_check(session: Session, tmp_path: Path) -> None:
    output = attach_output(session, parse_spec("record", recordings=tmp_path, name="take"), None)
    for _ in range(150):
        if output.state == "live":
            break
        await asyncio.sleep(0.1)
    session.speak_audio(speech(2.0))
    await asyncio.sleep(3.0)
    assert await session.outputs.remove(output.id)
    assert output.state == "stopped"
    path = tmp_path / "take.mp4"
    with c2pa.Reader(str(path)) as reader:
        store = json.loads(reader.json())
    assert store["validation_state"] in ("Valid", "Trusted")
    active = store["manifests"][store["active_manifest"]]
    about = next(a["data"] for a in active["assertions"] if a["label"] == "org.avatarcast.avatar")
    assert about["avatar"] == "default" and about["watermark"]["session"] == session.id
    verdict = verify(path)
    assert verdict.payload == session.provenance.payload
    # A recording is not a push to a platform: no label; an RTMP output turns it on.
    assert session.describe()["label"] is False
    session.outputs.add(PushStandIn())
    assert session.describe()["label"] is True


@dataclass
class PushStandIn:
    """An RTMP output as the session sees it (kind and state only): no server needed."""

    id: str = "out_push"
    kind: str = "rtmp"

    def describe(self) -> dict[str, Any]:
        return {"state": "live", "last_error": None}

    async def aclose(self) -> None:
        pass


async def test_sessions_take_a_label_option(default: tuple[Avatar, Backend]) -> None:
    async with serving(make_app(default)) as base, httpx.AsyncClient(base_url=base) as client:
        made = await client.post("/v1/sessions", json={"label": True})
        assert made.status_code == 201
        shown = await client.get(f"/v1/sessions/{made.json()['id']}")
        assert shown.json()["label"] is True
        bad = await client.post("/v1/sessions", json={"label": "sometimes"})
        assert bad.status_code == 422
        plain = await client.post("/v1/sessions", json={})
        shown = await client.get(f"/v1/sessions/{plain.json()['id']}")
        assert shown.json()["label"] is False
