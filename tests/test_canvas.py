"""A session's picture size never changes under its outputs: chosen once (asked for, else the
first avatar's, rounded up to even), and any later avatar fitted into it; a recording across
a switch to an avatar of another size is one playable MP4 of one size."""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from models.avatar import Avatar, AvatarError, load_avatar
from streamer.app import create_app
from streamer.config import Settings
from streamer.engine.base import Backend
from streamer.pipeline.canvas import Canvas
from tests.conftest import fake_speech, make_stand_in_avatar, serving, state_of, tone, wait_for
from tests.test_outputs import read_media

TALL = (400, 480)  # the second stand-in: narrower and shorter than the first (512x512)


def test_the_size_is_chosen_once_and_even() -> None:
    assert Canvas.choose((512, 512), None, None) == Canvas(512, 512)
    assert Canvas.choose((401, 481), None, None) == Canvas(402, 482)
    assert Canvas.choose((400, 480), 200, None) == Canvas(200, 240)
    assert Canvas.choose((400, 480), None, 241) == Canvas(202, 242)
    assert Canvas.choose((400, 480), 640, 360) == Canvas(640, 360)


def test_pictures_are_fitted_with_their_aspect_kept() -> None:
    canvas = Canvas(512, 512)
    same = np.full((512, 512, 3), 200, np.uint8)
    assert canvas.fit(same) is same  # no copy when nothing changes
    odd = np.full((511, 511, 3), 200, np.uint8)
    padded = Canvas.choose((511, 511), None, None).fit(odd)
    assert padded.shape == (512, 512, 3)
    assert (padded[:511, :511] == odd).all()  # one row and column of padding, no scaling
    tall = np.full((480, 400, 3), 200, np.uint8)
    fitted = canvas.fit(tall)  # 400x480 scaled by 512/480: 427x512, centred
    assert fitted.shape == (512, 512, 3)
    assert fitted[:, :42].max() == 0 and fitted[:, -42:].max() == 0
    assert fitted[:, 43:468].min() == 200
    # Transparent: colour and alpha fitted each in its half, the padding transparent.
    colour_alpha = np.hstack([tall, np.full_like(tall, 255)])
    both = canvas.fit(colour_alpha, transparent=True)
    assert both.shape == (512, 1024, 3)
    assert both[:, 512:554].max() == 0 and both[:, 555:980].min() == 255


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home holding the two stand-ins, so the server reads their ownership as for any."""
    home = tmp_path_factory.mktemp("home")
    make_stand_in_avatar(home / "avatars" / "square", name="square")
    make_stand_in_avatar(home / "avatars" / "tall", name="tall", size=TALL)
    return home


async def test_a_recording_across_a_switch_to_another_size_is_one_mp4(
    standin: tuple[Avatar, Backend], home: Path
) -> None:
    _, backend = standin  # the stand-in generator works on the mouth crop, any frame size

    def loader(name: str) -> tuple[Avatar, Backend]:
        if name not in ("square", "tall"):
            raise AvatarError(f"no avatar named {name!r}")
        return load_avatar(name, home), backend

    settings = Settings(home=home, avatar="square", recordings=home / "recordings")
    app = create_app(settings, loader=loader, speech=fake_speech)  # type: ignore[arg-type]
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        r = await client.post("/v1/sessions", json={"avatar": "square", "video_codec": "h264"})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        r = await client.post(f"/v1/sessions/{sid}/outputs", json={"type": "record", "name": "x"})
        assert r.status_code == 201, r.text
        session = state_of(app).registry.get(sid)
        assert session is not None
        output = session.outputs.get(r.json()["id"])
        assert output is not None
        await wait_for(lambda: output.describe()["state"] == "live", 15, "recording")
        session.speak_audio(tone(3.0))
        await asyncio.sleep(1.5)
        r = await client.patch(f"/v1/sessions/{sid}", json={"avatar": "tall"})
        assert r.status_code == 200, r.text
        assert (r.json()["avatar"], r.json()["width"], r.json()["height"]) == ("tall", 512, 512)
        await asyncio.sleep(2.5)
        r = await client.delete(f"/v1/sessions/{sid}/outputs/{output.id}")
        assert r.status_code == 204 and output.describe()["last_error"] is None

    path = str(home / "recordings" / "x.mp4")
    media = read_media(path)
    assert media.size == (512, 512) and media.span_s >= 3.5
    media.check_25_fps()
    assert media.pictures == len(media.video_s)  # every picture decodes
    with av.open(path) as container:
        pictures = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert {p.shape for p in pictures} == {(512, 512, 3)}
    # Before the switch the square face fills the picture; after it, the tall one is
    # letterboxed (black bars at the sides), so the switch happened inside this one file.
    sides = [float(p[:, :30].mean()) for p in pictures]
    assert sides[0] > 60 and sides[-1] < 10, (sides[0], sides[-1])
