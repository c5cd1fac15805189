"""The OBS page of a transparent session in a real headless Chromium: the page composes the
colour and alpha halves of the received video on a transparent WebGL canvas, so pixels outside
the person have alpha 0 and pixels on the person are opaque and have the avatar's colours.

Harness as in tests/test_browser.py (Debian's chromium driven by playwright, no download), with
WebGL on SwiftShader (headless has no GPU; OBS's browser source has one).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from models.avatar import DEFAULT_NAME, default_avatar_dir, read_avatar
from streamer.app import create_app
from streamer.config import Settings
from tests.conftest import chromium, serving
from tests.test_browser import ARGS, CHROMIUM, SHOTS

KEY = "k3y"
WEBGL_ARGS = [a for a in ARGS if a != "--disable-gpu"] + [
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium"
    ),
    pytest.mark.skipif(
        not (default_avatar_dir() / "manifest.json").is_file(),
        reason="the default avatar is not built: python -m models.recipe",
    ),
]

# The canvas read back at its own size (the avatar's 512 x 512), alpha un-premultiplied.
READ_CANVAS = """() => {
  const c = document.getElementById('canvas');
  const ctx = document.createElement('canvas').getContext('2d');
  ctx.canvas.width = c.width; ctx.canvas.height = c.height;
  ctx.drawImage(c, 0, 0);
  const v = document.getElementById('video');
  return { size: [c.width, c.height], video: [v.videoWidth, v.videoHeight],
           mode: window.avatarcast.alpha.mode,
           pixels: Array.from(ctx.getImageData(0, 0, c.width, c.height).data) };
}"""


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium(CHROMIUM, WEBGL_ARGS) as launched:
        yield launched


@pytest.fixture
async def real() -> AsyncIterator[tuple[str, FastAPI]]:
    app = create_app(Settings(avatar=DEFAULT_NAME, api_key=KEY))
    async with serving(app) as base:
        yield base, app


async def test_obs_page_composes_alpha(browser: Any, real: tuple[str, FastAPI]) -> None:
    base, _ = real
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        res = await http.post(
            "/v1/sessions",
            json={"background": "transparent"},
            headers={"Authorization": f"Bearer {KEY}"},
        )
    assert res.status_code == 201, res.text
    page = await browser.new_page(viewport={"width": 512, "height": 512})
    await page.goto(res.json()["obs_url"])
    await page.wait_for_function(
        "window.avatarcast && window.avatarcast.firstFrameMs", timeout=20_000
    )
    await asyncio.sleep(1.0)  # a few pictures past the first key frame
    if SHOTS:
        await page.screenshot(path=f"{SHOTS}/obs-transparent.png", omit_background=True)
    got = await page.evaluate(READ_CANVAS)
    body = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    await page.close()
    assert got["mode"] == "webgl"
    assert got["video"] == [1024, 512] and got["size"] == [512, 512]
    assert body == "rgba(0, 0, 0, 0)"  # nothing behind the canvas: OBS's scene shows through
    rgba = np.array(got["pixels"], np.uint8).reshape(512, 512, 4)
    avatar = read_avatar(default_avatar_dir())
    assert avatar.matte is not None
    matte = avatar.matte.get()[0]
    # The background, more than the idle sway (a few pixels) away from the person.
    outside = cv2.erode((matte == 0).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert rgba[..., 3][outside].max() == 0
    face = (slice(110, 150), slice(236, 276))  # forehead, well inside the person
    assert rgba[face][..., 3].min() > 240
    colour = rgba[face][..., :3].reshape(-1, 3).mean(axis=0)
    expected = avatar.frames[0][face].reshape(-1, 3).mean(axis=0)
    assert np.abs(colour - expected).max() < 25, (colour, expected)
    assert rgba[:40, :40, 3].max() == 0 and rgba[:40, -40:, 3].max() == 0  # the corners
