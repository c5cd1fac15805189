"""A transparent session and a transparent render: colour and the person's alpha side by side
in every picture, a 422 for an unknown background, WebM VP9 whose decoded alpha is the person."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from models.avatar import Avatar, read_avatar
from models.matte import write_matte
from streamer.engine import make_backend
from streamer.engine.base import Backend
from streamer.render import RenderError, render_samples
from tests.conftest import SIZE, make_app, make_stand_in_avatar, serving, state_of, tone
from tests.test_matte import disc_matte


@pytest.fixture(scope="module")
def matted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Avatar, Backend]:
    """The stand-in avatar with a disc for its person, and its ONNX backend."""
    root = make_stand_in_avatar(tmp_path_factory.mktemp("matted") / "standin")
    write_matte(root, disc_matte())
    avatar = read_avatar(root)
    return avatar, make_backend("onnx", avatar, threads=1)


@pytest.fixture()
async def api(matted: tuple[Avatar, Backend]) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    app = make_app(matted)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client, app


async def test_unknown_background_is_422(api: tuple[httpx.AsyncClient, FastAPI]) -> None:
    client, _ = api
    r = await client.post("/v1/sessions", json={"background": "green"})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request"
    assert "background" in error["message"] and "transparent" in error["message"]


async def test_transparent_session_sends_colour_and_alpha(
    api: tuple[httpx.AsyncClient, FastAPI],
) -> None:
    client, app = api
    r = await client.post("/v1/sessions", json={"background": "transparent"})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["obs_url"].endswith("&background=transparent")
    assert made["view_url"].endswith("&background=transparent")
    shown = (await client.get(f"/v1/sessions/{made['id']}")).json()
    assert shown["background"] == "transparent"
    session = state_of(app).registry.get(made["id"])
    assert session is not None
    sub = session.bus.subscribe()
    try:
        await client.post(f"/v1/sessions/{made['id']}/speak", json={"text": "hello there"})
        for _ in range(6):
            frame = await sub.next_video()
            assert frame.video.shape == (SIZE, 2 * SIZE, 3)
            alpha = frame.video[:, SIZE:, 0]
            assert np.array_equal(alpha, frame.video[:, SIZE:, 1])  # grey
            assert (
                alpha[SIZE // 2 - 50 : SIZE // 2 + 50, SIZE // 2 - 50 : SIZE // 2 + 50].min() > 240
            )
            for corner in (alpha[:20, :20], alpha[:20, -20:], alpha[-20:, :20], alpha[-20:, -20:]):
                assert corner.max() < 10
    finally:
        session.bus.unsubscribe(sub)
    opaque = (await client.post("/v1/sessions", json={})).json()
    assert "background" not in opaque["obs_url"]


class MeanBackend:
    """Numpy stand-in for speed: the mouth is the reference crop."""

    name, device = "fake", "cpu"

    def infer(self, reference: np.ndarray, masked: np.ndarray, mel: np.ndarray) -> np.ndarray:
        return reference.astype(np.float32)


def decoded_alpha(path: Path) -> list[np.ndarray]:
    """Every frame's alpha plane, decoded by libvpx (FFmpeg's own VP9 decoder drops alpha)."""
    with av.open(str(path)) as container:
        decoder = av.CodecContext.create("libvpx-vp9", "r")
        planes = []
        for packet in container.demux(container.streams.video[0]):
            planes += [f.to_ndarray(format="rgba")[..., 3] for f in decoder.decode(packet)]
    return planes


def test_transparent_render_writes_vp9_with_alpha(
    matted: tuple[Avatar, Backend], tmp_path: Path
) -> None:
    avatar, _ = matted
    out = tmp_path / "talk.webm"
    result = render_samples([tone(1.0)], out, avatar, MeanBackend(), transparent=True)  # type: ignore[arg-type]
    assert result.frames == 25
    with av.open(str(out)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, audio.codec_context.name) == ("vp9", "opus")
        assert (video.codec_context.width, video.codec_context.height) == (SIZE, SIZE)
    planes = decoded_alpha(out)
    assert len(planes) == 25
    for alpha in planes:
        assert_person_alpha(alpha)


def assert_person_alpha(alpha: np.ndarray) -> None:
    """Opaque over the person (the disc in the middle), clear in every corner."""
    assert alpha[SIZE // 2 - 50 : SIZE // 2 + 50, SIZE // 2 - 50 : SIZE // 2 + 50].min() == 255
    for corner in (alpha[:20, :20], alpha[:20, -20:], alpha[-20:, :20], alpha[-20:, -20:]):
        assert corner.max() == 0


def test_transparent_mov_is_prores_4444_with_alpha_and_signed(
    matted: tuple[Avatar, Backend], tmp_path: Path
) -> None:
    from streamer.credentials import read

    avatar, _ = matted
    out = tmp_path / "talk.mov"
    result = render_samples([tone(1.0)], out, avatar, MeanBackend(), signing=tmp_path)  # type: ignore[arg-type]
    assert result.frames == 25
    with av.open(str(out)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, audio.codec_context.name) == ("prores", "pcm_s16le")
        assert video.codec_context.pix_fmt.startswith("yuva444")  # FFmpeg decodes 4444 at 12 bits
        frames = [f.to_ndarray(format="rgba") for f in container.decode(video=0)]
    assert len(frames) == 25
    for rgba in frames:
        assert_person_alpha(rgba[..., 3])
    store = read(out)  # the C2PA SDK signs QuickTime, unlike WebM
    assert store is not None
    assert store.get("validation_state") in ("Valid", "Trusted"), store.get("validation_status")


def test_webm_output_means_transparent_and_mp4_refuses_it(
    matted: tuple[Avatar, Backend], tmp_path: Path
) -> None:
    avatar, _ = matted
    backend = MeanBackend()
    with pytest.raises(RenderError, match=r"must end in \.webm \(VP9\) or \.mov"):
        render_samples([tone(0.2)], tmp_path / "a.mp4", avatar, backend, transparent=True)  # type: ignore[arg-type]
    render_samples([tone(0.2)], tmp_path / "b.webm", avatar, backend)  # type: ignore[arg-type]
    assert decoded_alpha(tmp_path / "b.webm")[0][0, 0] == 0
