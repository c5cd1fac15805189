"""A real headless Chromium plays a real session (the real app, the default avatar) via WHEP.

Debian's ``chromium`` (``apt-get install -y chromium``, done by ``make test``) driven by python
playwright with ``executable_path``: no browser download. What the page measures itself: frames
decoding (its WebRTC statistics), audio arriving, the mouth region of the decoded picture moving
while the avatar speaks (a canvas), and the received audio going silent after an interrupt (a
WebAudio AnalyserNode on the received track, on the page's own clock).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from models.audio import SAMPLE_RATE
from models.avatar import DEFAULT_NAME, default_avatar_dir
from streamer.app import create_app
from streamer.config import Settings
from streamer.measure.signals import wav_bytes
from tests.conftest import chromium, serving
from tests.webrtc_fakes import FakeSession, fake_app

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
    # A fake microphone (a beep) that needs no permission prompt, for the control page.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
SHOTS = os.environ.get("AVATARCAST_SCREENSHOTS")  # a folder to write page screenshots to
KEY = "k3y"
# The default avatar's mouth in its 512 x 512 frame: the lower half of the face crop.
MOUTH = (216, 300, 100, 72)  # x, y, width, height

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium"
)
needs_default = pytest.mark.skipif(
    not (default_avatar_dir() / "manifest.json").is_file(),
    reason="the default avatar is not built: python -m models.recipe",
)

STATS_JS = """async () => {
  const report = await window.avatarcast.player.pc.getStats();
  const out = {frames: 0, audioSamples: 0, audioBytes: 0};
  const jb = (s) => (1000 * (s.jitterBufferDelay || 0)) / (s.jitterBufferEmittedCount || 1);
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      out.frames = s.framesDecoded || 0;
      out.videoJitterMs = jb(s);
    }
    if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.audioSamples = s.totalSamplesReceived || 0;
      out.audioBytes = s.bytesReceived || 0;
      out.audioJitterMs = jb(s);
    }
  });
  out.t = performance.now();
  return out;
}"""

# Probes on the viewer page: the audio level of the received track every ~5 ms (WebAudio) and
# how much the mouth region changes from one decoded frame to the next (a canvas).
PROBE_JS = """async ([x, y, w, h]) => {
  const av = window.avatarcast;
  const pc = av.player.pc;
  const track = pc.getReceivers().map((r) => r.track).find((t) => t.kind === 'audio');
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 256;
  ctx.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  const mute = ctx.createGain();
  mute.gain.value = 0;
  analyser.connect(mute).connect(ctx.destination);
  await ctx.resume();
  const buf = new Float32Array(analyser.fftSize);
  av.levels = [];
  av.probe = setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    av.levels.push([performance.now(), Math.sqrt(sum / buf.length)]);
  }, 5);
  const video = document.getElementById('video');
  const canvas = document.createElement('canvas');
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  const g = canvas.getContext('2d', { willReadFrequently: true });
  av.mouth = [];
  let last = null;
  const onFrame = (now) => {
    g.drawImage(video, 0, 0);
    const px = g.getImageData(x, y, w, h).data;
    if (last) {
      let diff = 0;
      for (let i = 0; i < px.length; i += 4) diff += Math.abs(px[i + 1] - last[i + 1]);
      av.mouth.push([performance.now(), diff / (w * h)]);
    }
    last = px;
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
  return [ctx.state, canvas.width, canvas.height];
}"""

# Interrupt from the page itself, so the interrupt and the audio levels share one clock.
INTERRUPT_JS = """async ([sessionId, key]) => {
  const t = performance.now();
  const res = await fetch(`/v1/sessions/${sessionId}/interrupt`, {
    method: 'POST', headers: { Authorization: `Bearer ${key}` },
  });
  return [t, res.status];
}"""


def wav_tone(seconds: float, freq: float = 220.0, amp: float = 0.3) -> bytes:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return wav_bytes((amp * np.sin(2 * np.pi * freq * t)).astype(np.float32))


def silence_after(levels: list[list[float]], t: float, quiet: float, hold_ms: float) -> float:
    """The first time after ``t`` from which the level stays under ``quiet`` for ``hold_ms``."""
    after = [(when, level) for when, level in levels if when >= t]
    for i, (when, _) in enumerate(after):
        window = [lv for w, lv in after[i:] if w <= when + hold_ms]
        if after[-1][0] >= when + hold_ms and max(window) < quiet:
            return when
    raise AssertionError("the audio at the browser never went silent after the interrupt")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium(CHROMIUM, ARGS) as launched:
        yield launched


@pytest.fixture
async def real() -> AsyncIterator[tuple[str, FastAPI]]:
    """The real app, the real default avatar and TTS, on a free loopback port."""
    app = create_app(Settings(avatar=DEFAULT_NAME, api_key=KEY))
    async with serving(app) as base:
        yield base, app


async def new_session(http: httpx.AsyncClient) -> dict[str, Any]:
    res = await http.post("/v1/sessions", json={}, headers={"Authorization": f"Bearer {KEY}"})
    assert res.status_code == 201, res.text
    info: dict[str, Any] = res.json()
    return info


@needs_default
async def test_real_session_in_chromium(browser: Any, real: tuple[str, FastAPI]) -> None:
    base, app = real
    auth = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        info = await new_session(http)
        sid = info["id"]
        page = await browser.new_page(viewport={"width": 900, "height": 760})
        await page.goto(info["view_url"])
        await page.wait_for_function(
            "window.avatarcast && window.avatarcast.firstFrameMs", timeout=15_000
        )
        first_frame_ms = await page.evaluate("window.avatarcast.firstFrameMs")

        # Frames decode at about 25 fps and audio (silence while idle) arrives.
        a = await page.evaluate(STATS_JS)
        await asyncio.sleep(3.0)
        b = await page.evaluate(STATS_JS)
        fps = (b["frames"] - a["frames"]) * 1000 / (b["t"] - a["t"])
        audio_rate = (b["audioSamples"] - a["audioSamples"]) * 1000 / (b["t"] - a["t"])
        probe = await page.evaluate(PROBE_JS, list(MOUTH))
        assert probe == ["running", 512, 512], probe

        # Speech (the built-in TTS) makes the mouth move.
        await asyncio.sleep(1.0)
        t_speak = await page.evaluate("performance.now()")
        text = "Hello everyone, welcome to the stream. Today we talk about avatars."
        res = await http.post(f"/v1/sessions/{sid}/speak", json={"text": text}, headers=auth)
        assert res.status_code == 202, res.text
        for _ in range(150):
            await asyncio.sleep(0.1)
            state = (await http.get(f"/v1/sessions/{sid}", headers=auth)).json()["state"]
            if state == "speaking":
                break
        for _ in range(150):
            await asyncio.sleep(0.1)
            state = (await http.get(f"/v1/sessions/{sid}", headers=auth)).json()["state"]
            if state == "idle":
                break
        await asyncio.sleep(0.5)
        levels: list[list[float]] = await page.evaluate("window.avatarcast.levels")
        mouth: list[list[float]] = await page.evaluate("window.avatarcast.mouth")
        loud = [t for t, level in levels if t > t_speak and level > 0.02]
        assert loud, "the speech never reached the browser's audio"
        # Only frames whose picture changed: under CPU load the server repeats a picture it
        # could not render in time, and a repeat says nothing about the mouth.
        talking = [d for t, d in mouth if loud[0] <= t <= loud[-1] and d > 0.05]
        resting = [d for t, d in mouth if t < t_speak and d > 0.05]
        motion_speech, motion_idle = float(np.mean(talking)), float(np.mean(resting))

        # Interrupt a long tone: the audio at the browser goes silent.
        res = await http.post(
            f"/v1/sessions/{sid}/speak",
            # Long enough to be still playing when the interrupt comes, however slowly the
            # browser's audio starts; the interrupt cuts it short anyway.
            content=wav_tone(30.0),
            headers={**auth, "Content-Type": "audio/wav"},
        )
        assert res.status_code == 202, res.text
        await page.wait_for_function(
            "(() => { const l = window.avatarcast.levels; return l.length && "
            "l[l.length - 1][1] > 0.1; })()",
            timeout=15_000,
        )
        # The server's side of it, on the page's clock: the first silent frame published.
        # Subscribed while the tone plays, so the last loud frame before the interrupt is seen.
        session = app.state.avatarcast.registry.get(sid)
        sub = session.bus.subscribe(video_depth=1, audio_depth=1000)
        await asyncio.sleep(1.0)
        if SHOTS:
            await page.screenshot(path=f"{SHOTS}/view-speaking.png")
        loop = asyncio.get_running_loop()
        before = loop.time()
        page_now = await page.evaluate("performance.now()")
        page_to_loop = (before + loop.time()) / 2 - page_now / 1000
        t_interrupt, status = await page.evaluate(INTERRUPT_JS, [sid, KEY])
        assert status == 200
        await asyncio.sleep(1.0)
        levels = await page.evaluate("window.avatarcast.levels")
        silent_at = silence_after(levels, t_interrupt, quiet=0.01, hold_ms=200.0)
        interrupt_ms = silent_at - t_interrupt
        late = await page.evaluate(STATS_JS)
        published = []
        while sub.depth[1]:
            frame = await sub.next_audio()
            published.append(((frame.published_at - page_to_loop) * 1000, frame.audio.any()))
        session.bus.unsubscribe(sub)
        assert any(loud for _, loud in published), "the tone had stopped before the interrupt"
        last_loud = max(t for t, loud in published if loud)
        server_ms = min(t for t, loud in published if t > last_loud) - t_interrupt
        viewers = session.viewers
        await page.evaluate("clearInterval(window.avatarcast.probe)")
        await page.close()
    print(
        f"\nchromium, real app, default avatar: {fps:.1f} fps decoded, audio "
        f"{audio_rate:.0f} samples/s, first frame {first_frame_ms:.0f} ms after page start; "
        f"mouth motion {motion_speech:.2f} speaking vs {motion_idle:.2f} idle; "
        f"interrupt to silence: {server_ms:.0f} ms leaving the server (first silent frame), "
        f"{interrupt_ms:.0f} ms at the browser (WebAudio level); mean jitter-buffer delay "
        f"audio {late['audioJitterMs']:.0f} ms, video {late['videoJitterMs']:.0f} ms"
    )
    assert 20.0 <= fps <= 27.5, f"{fps:.1f} fps decoded in the browser"
    assert audio_rate > 0.8 * 48_000, "audio is not arriving at the browser"
    assert b["audioBytes"] > a["audioBytes"]
    assert first_frame_ms < 5000
    assert len(talking) > 15 and len(resting) > 10, (len(talking), len(resting))
    assert motion_speech > 2.0 * motion_idle + 0.2, "the mouth does not move with the speech"
    # The figure is <= 200 ms (measured by `avatarcast bench`); this is a sanity bound.
    assert 0.0 <= interrupt_ms < 1000.0
    assert viewers >= 1


@needs_default
async def test_obs_page_plays_full_bleed(browser: Any, real: tuple[str, FastAPI]) -> None:
    base, _ = real
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        info = await new_session(http)
    page = await browser.new_page(viewport={"width": 640, "height": 360})
    await page.goto(f"{info['obs_url']}&bg=00ff00")
    await page.wait_for_function(
        "window.avatarcast && window.avatarcast.firstFrameMs", timeout=15_000
    )
    await asyncio.sleep(0.5)
    if SHOTS:
        await page.screenshot(path=f"{SHOTS}/obs.png")
    look = await page.evaluate(
        """() => {
          const v = document.getElementById('video');
          const r = v.getBoundingClientRect();
          return { bg: getComputedStyle(document.body).backgroundColor,
                   rect: [r.left, r.top, r.width, r.height], controls: v.controls,
                   paused: v.paused, muted: v.muted, size: [v.videoWidth, v.videoHeight],
                   scroll: [document.documentElement.scrollWidth,
                            document.documentElement.scrollHeight] };
        }"""
    )
    await page.close()
    assert look["bg"] == "rgb(0, 255, 0)"
    assert look["rect"] == [0, 0, 640, 360] and look["scroll"] == [640, 360]
    assert not look["controls"] and not look["paused"] and not look["muted"]
    assert look["size"] == [512, 512]


@needs_default
async def test_control_page_end_to_end(
    browser: Any, real: tuple[str, FastAPI], tmp_path: Path
) -> None:
    """What a host does: key, new session, say text, speak a file, interrupt, microphone."""
    base, app = real
    audio = tmp_path / "tone.wav"
    audio.write_bytes(wav_tone(1.0))
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{base}/")
    await page.fill("#apikey", KEY)
    await page.dispatch_event("#apikey", "change")
    await page.click("#create")
    await page.wait_for_function("document.getElementById('overlay').hidden", timeout=15_000)
    events = page.locator("#events")

    async def logged(text: str, count: int = 1) -> None:
        await page.wait_for_function(
            "([t, n]) => [...document.querySelectorAll('#events li')]"
            ".filter((li) => li.textContent.includes(t)).length >= n",
            arg=[text, count],
            timeout=20_000,
        )

    await page.click("#say")
    await logged("speaking_started")
    await logged("playback_finished")
    await page.set_input_files("#file", str(audio))
    await page.click("#upload")
    await logged("speaking_started", 2)
    await page.click("#interrupt")
    await logged("(interrupted)")
    await page.click("#mic")
    await page.wait_for_function(
        "document.getElementById('mic').textContent === 'Microphone off'", timeout=10_000
    )
    await logged("speaking_started", 3)  # the fake microphone's beeps become speech
    await asyncio.sleep(1.5)  # the figures refresh every second
    figures = {
        name: await page.inner_text(f"#fig-{name}")
        for name in ("state", "fps", "latency", "viewers", "rtt")
    }
    if SHOTS:
        await page.screenshot(path=f"{SHOTS}/control.png")
    await page.click("#mic")
    await logged("playback_finished", 3)
    text = await events.inner_text()
    failed = await page.locator("#events li.error").all_inner_texts()
    sid = (await page.inner_text("#session")).split()[-1]
    assert app.state.avatarcast.registry.get(sid) is not None
    await page.close()
    assert not errors and not failed, (errors, failed)
    assert figures["state"] == "speaking" and figures["viewers"] == "1", figures
    assert float(figures["fps"]) > 15 and figures["latency"].endswith("ms"), figures
    assert text.count("playback_finished") == 3, text


async def test_pages_need_the_view_token(browser: Any) -> None:
    session = FakeSession()
    app = fake_app({session.id: session}, api_key="k3y")
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        assert (await http.get(f"/view/{session.id}")).status_code == 401
        assert (await http.get(f"/obs/{session.id}?token={session.view_token}")).status_code == 200
        assert (await http.get(f"/obs/{session.id}?token=k3y")).status_code == 401  # a key
        assert (await http.get("/view/nope?token=k3y")).status_code == 404
        assert (await http.get("/")).status_code == 200
        js = await http.get("/web/whep.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert (await http.get("/web/..%2Fpyproject.toml")).status_code == 404
        for name in ("index.html", "view.html", "obs.html", "control.js", "whep.js"):
            body = (await http.get(f"/web/{name}")).text
            assert "http://" not in body.replace("http://www.w3.org", "")  # nothing external


async def test_the_viewer_takes_the_shape_of_a_non_square_avatar(
    browser: Any, standin: tuple[Any, Any], tmp_path: Path
) -> None:
    """A photo avatar keeps its photo's framing, so its pictures need not be square: the
    viewer page's box takes their shape instead of a square with bars beside a tall face."""
    from models.avatar import AvatarError, load_avatar
    from tests.conftest import fake_speech, make_stand_in_avatar

    _, backend = standin
    make_stand_in_avatar(tmp_path / "avatars" / "tall", name="tall", size=(400, 480))

    def loader(name: str) -> tuple[Any, Any]:
        if name != "tall":
            raise AvatarError(f"no avatar named {name!r}")
        return load_avatar(name, tmp_path), backend

    app = create_app(Settings(home=tmp_path, avatar="tall"), loader=loader, speech=fake_speech)
    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
        res = await http.post("/v1/sessions", json={"avatar": "tall"})
        assert res.status_code == 201, res.text
        page = await browser.new_page(viewport={"width": 800, "height": 600})
        await page.goto(res.json()["view_url"])
        await page.wait_for_function(
            "window.avatarcast && window.avatarcast.firstFrameMs", timeout=15_000
        )
        await asyncio.sleep(0.3)
        look = await page.evaluate(
            """() => {
              const v = document.getElementById('video');
              const r = v.parentElement.getBoundingClientRect();
              return { size: [v.videoWidth, v.videoHeight], box: [r.width, r.height] };
            }"""
        )
        await page.close()
    assert look["size"] == [400, 480]
    width, height = look["box"]
    assert abs(width / height - 400 / 480) < 0.01, look  # a square box: 1.0
    assert height > 0.75 * 600  # as tall as the page allows (82 % of its height)
