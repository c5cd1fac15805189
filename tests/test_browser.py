"""A real headless Chromium plays a session through the viewer page and WHEP.

Debian's ``chromium`` (``apt-get install -y chromium``, done by ``make test``) driven by python
playwright with ``executable_path``: no browser download. The page's own WebRTC statistics
say how fast frames decode and that audio arrives.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_webrtc import FakeSession, fake_app, serving

CHROMIUM = Path(os.environ.get("AVATARCAST_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--allow-loopback-in-peer-connection",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    # Real host addresses in ICE candidates rather than mDNS names, which nothing resolves here.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
SHOTS = os.environ.get("AVATARCAST_SCREENSHOTS")  # a folder to write page screenshots to

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium"
)

STATS_JS = """async () => {
  const report = await window.avatarcast.player.pc.getStats();
  const out = {frames: 0, audioSamples: 0, audioBytes: 0, audioLevel: 0};
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') out.frames = s.framesDecoded || 0;
    if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.audioSamples = s.totalSamplesReceived || 0;
      out.audioBytes = s.bytesReceived || 0;
      out.audioEnergy = s.totalAudioEnergy || 0;
    }
  });
  out.t = performance.now();
  return out;
}"""


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def test_viewer_page_plays_at_25fps_with_audio(browser: Any) -> None:
    session = FakeSession()
    app = fake_app({session.id: session}, api_key="k3y")
    async with serving(app) as base:
        session.start()
        page = await browser.new_page(viewport={"width": 900, "height": 760})
        await page.goto(f"{base}/view/{session.id}?token={session.view_token}")
        await page.wait_for_function(
            "window.avatarcast && window.avatarcast.firstFrameMs", timeout=10_000
        )
        first_frame_ms = await page.evaluate("window.avatarcast.firstFrameMs")
        a = await page.evaluate(STATS_JS)
        await asyncio.sleep(3.0)
        b = await page.evaluate(STATS_JS)
        fps = (b["frames"] - a["frames"]) * 1000 / (b["t"] - a["t"])
        audio_rate = (b["audioSamples"] - a["audioSamples"]) * 1000 / (b["t"] - a["t"])
        if SHOTS:
            await page.screenshot(path=f"{SHOTS}/view.png")
            obs = await browser.new_page(viewport={"width": 640, "height": 360})
            await obs.goto(f"{base}/obs/{session.id}?token={session.view_token}&bg=00ff00")
            await obs.wait_for_function("window.avatarcast.firstFrameMs", timeout=10_000)
            await asyncio.sleep(0.5)
            await obs.screenshot(path=f"{SHOTS}/obs.png")
            control = await browser.new_page(viewport={"width": 1280, "height": 800})
            await control.goto(f"{base}/")
            await control.screenshot(path=f"{SHOTS}/control.png")
        print(
            f"\nchromium: {fps:.1f} fps decoded, audio {audio_rate:.0f} samples/s, "
            f"first frame {first_frame_ms:.0f} ms after page script start"
        )
        assert 21.0 <= fps <= 27.5, f"{fps:.1f} fps decoded in the browser"
        assert audio_rate > 0.8 * 48_000, "audio is not arriving at the browser"
        assert b["audioBytes"] > a["audioBytes"]
        assert first_frame_ms < 2000
        assert session.viewers >= 1
        await page.close()
        await session.aclose()


async def test_pages_need_the_view_token(browser: Any) -> None:
    import httpx

    session = FakeSession()
    app = fake_app({session.id: session}, api_key="k3y")
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        assert (await http.get(f"/view/{session.id}")).status_code == 401
        assert (await http.get(f"/obs/{session.id}?token=k3y")).status_code == 200
        assert (await http.get("/view/nope?token=k3y")).status_code == 404
        assert (await http.get("/")).status_code == 200
        js = await http.get("/web/whep.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert (await http.get("/web/..%2Fpyproject.toml")).status_code == 404
        for name in ("index.html", "view.html", "obs.html", "control.js", "whep.js"):
            body = (await http.get(f"/web/{name}")).text
            assert "http://" not in body.replace("http://www.w3.org", "")  # nothing external
