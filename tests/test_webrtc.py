"""WebRTC viewers through WHEP, with a real aiortc client over real UDP on this machine.

The session is a fake publisher (tests/webrtc_fakes.py) whose mouth opens exactly on the
frames whose audio is a tone burst; its viewers go through the production encoder. At the
receiver we check the frame rate, that audio arrives, that the mouth changes when the audio
energy rises, and estimate the A/V offset from the RTP timelines.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from unittest import mock

import httpx
import numpy as np
import pytest
from aiortc import RTCSessionDescription

from models.audio import SAMPLE_RATE
from models.avatar import read_avatar
from streamer.app import create_app
from streamer.config import Settings
from streamer.outputs.webrtc import (
    AVVideoTrack,
    EncodedAudioTrack,
    PeerRegistry,
    SharedStart,
    add_loopback_candidates,
    fanout,
)
from streamer.pipeline.codecs import EncodedFrame
from streamer.pipeline.frames import Subscription
from tests.conftest import make_stand_in_avatar, serving
from tests.webrtc_fakes import (
    EnergyBackend,
    FakeSession,
    av_offset_ms,
    play,
    served_fake,
    whep_offer,
)


@pytest.fixture
async def live() -> AsyncIterator[tuple[str, FakeSession, PeerRegistry]]:
    async with served_fake() as made:
        yield made


def queued_audio(indices: range) -> Subscription[EncodedFrame]:
    """A viewer's queues holding each frame's two Opus packets, as before its connection."""
    sub: Subscription[EncodedFrame] = Subscription(video_depth=3)
    for i in indices:
        sub.offer(EncodedFrame(i, (b"a",), None, False), video=False)
        sub.offer(EncodedFrame(i, (b"b",), None, False, 320), video=False)
    return sub


async def test_audio_only_viewer_starts_at_the_live_edge() -> None:
    sub = queued_audio(range(20))  # 0.8 s queued while the connection was set up
    track = EncodedAudioTrack(sub, SharedStart(video=False))
    first = await track.recv()
    # The newest: frame 19's second half, at 20 ms on Opus's 48 kHz clock.
    assert (bytes(first), first.pts) == (b"b", 960)
    assert sub.stats.audio_skipped == 39 and sub.depth[1] == 0
    sub.offer(EncodedFrame(20, (b"a",), None, False), video=False)
    after = await track.recv()
    assert after.pts == 1920 and sub.stats.audio_dropped == 0  # then every packet, in order


async def test_audio_starts_on_the_frame_the_video_started_on() -> None:
    sub = queued_audio(range(10))
    start = SharedStart(video=True)
    track = EncodedAudioTrack(sub, start)
    recv = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    assert not recv.done()  # the audio waits for the video's first key frame ...
    assert start.offset(7) == 0  # ... here on frame 7
    first = await recv
    assert (bytes(first), first.pts) == (b"a", 0)
    assert sub.stats.audio_skipped == 14 and sub.depth[1] == 5


async def test_whep_viewer_gets_lipsynced_av(live: tuple[str, FakeSession, PeerRegistry]) -> None:
    base, session, _ = live
    got, ttff = await play(base, session, seconds=4.5)

    arrivals = np.array([t for t, _, _ in got.video])
    steady = arrivals[arrivals > arrivals[0] + 0.5]
    fps = (len(steady) - 1) / (steady[-1] - steady[0])
    assert 21.0 <= fps <= 27.5, f"{fps:.1f} fps at the receiver"
    assert got.audio_samples >= 0.8 * 4.5 * 48_000, "audio did not keep flowing"
    assert ttff < 1.0, f"first frame after {ttff * 1000:.0f} ms"

    # The mouth changes when (and only when) the audio energy rises.
    mouth = np.array([m for _, _, m in got.video])
    assert mouth.max() - mouth.min() > 100, "the mouth region never changed"
    offset = av_offset_ms(got)
    assert abs(offset) <= 45, f"A/V offset {offset:.0f} ms"
    print(f"\nreceiver: {fps:.1f} fps, ttff {ttff * 1000:.0f} ms, A/V offset {offset:+.0f} ms")


async def test_two_viewers_and_viewer_count(live: tuple[str, FakeSession, PeerRegistry]) -> None:
    base, session, registry = live
    (a, _), (b, _) = await asyncio.gather(
        play(base, session, seconds=2.0), play(base, session, seconds=2.0)
    )
    assert len(a.video) > 30 and len(b.video) > 30
    await asyncio.sleep(0.1)
    assert session.viewers == 0 and len(registry) == 0 and session.bus.subscribers == 0


async def test_viewers_of_a_session_share_one_encoder(
    live: tuple[str, FakeSession, PeerRegistry],
) -> None:
    base, session, registry = live
    plays = asyncio.gather(play(base, session, 3.0), play(base, session, 3.0))
    await asyncio.sleep(1.5)
    (encoder,) = registry.encoders()
    # Both viewers are legs of the encoder's one fan-out (its one subscriber).
    legs = fanout.fanout_of(encoder).legs
    assert encoder.viewers == 1 and encoder.codec == "vp8"
    assert [leg.kind for leg in legs].count("video") == 2
    frames, published = encoder.frames, session.frames
    await asyncio.sleep(1.0)
    # Each published frame was encoded once, not once per viewer.
    assert abs((encoder.frames - frames) - (session.frames - published)) <= 2
    # A receiver's key frame request (RTCP PLI) reaches the shared encoder.
    peer = registry.of_session(session.id)[0]
    (sender,) = [t.sender for t in peer.pc.getTransceivers() if t.kind == "video"]
    # (tests/test_webrtc_compat.py checks that aiortc sends RTCP PLI/FIR to this hook.)
    assert sender._send_keyframe == encoder.request_keyframe
    (a, _), (b, _) = await plays
    assert len(a.video) > 50 and len(b.video) > 50
    assert registry.encoders() == []  # the last viewer gone, the encoder is closed


async def test_h264_session_and_a_viewer_without_vp8(
    live: tuple[str, FakeSession, PeerRegistry],
) -> None:
    """A session asking for H.264 encodes it once; a client that offers only H.264 to a VP8
    session still plays (its video encoded for it alone, its audio shared)."""
    base, session, registry = live
    session.video_codec = "h264"
    task = asyncio.ensure_future(play(base, session, 2.0, video_codec="H264"))
    await asyncio.sleep(1.0)
    assert [e.codec for e in registry.encoders()] == ["h264"]
    (peer,) = registry.of_session(session.id)
    assert isinstance(peer.video, fanout.LegTrack)
    got, _ = await task
    mouth = np.array([m for _, _, m in got.video])
    assert len(mouth) > 30 and mouth.max() - mouth.min() > 100

    session.video_codec = "vp8"
    task = asyncio.ensure_future(play(base, session, 2.0, video_codec="H264"))
    await asyncio.sleep(1.0)
    (peer,) = registry.of_session(session.id)
    assert isinstance(peer.video, AVVideoTrack) and peer.encoded is not None
    got, _ = await task
    mouth = np.array([m for _, _, m in got.video])
    assert len(mouth) > 30 and mouth.max() - mouth.min() > 100
    assert max(r for _, _, r in got.audio) > 1000


async def test_whep_http_contract(live: tuple[str, FakeSession, PeerRegistry]) -> None:
    base, session, registry = live
    token = {"Authorization": f"Bearer {session.view_token}"}
    sdp = {"Content-Type": "application/sdp"}
    url = f"/v1/sessions/{session.id}/whep"
    pc = await whep_offer()
    offer = pc.localDescription.sdp
    async with httpx.AsyncClient(base_url=base) as http:
        res = await http.options(url)
        assert res.status_code == 204
        assert res.headers["access-control-allow-origin"] == "*"
        assert "Location" in res.headers["access-control-expose-headers"]
        assert "ETag" in res.headers["access-control-expose-headers"]
        assert res.headers["accept-post"] == "application/sdp"

        res = await http.post(url, content=offer, headers=sdp)
        assert res.status_code == 401 and res.json()["error"]["code"] == "unauthorized"
        res = await http.post(url, content=offer, headers={**sdp, "Authorization": "Bearer no"})
        assert res.status_code == 401
        res = await http.post(url, content=offer, headers={"Content-Type": "text/plain", **token})
        assert res.status_code == 415
        res = await http.post(url, content="v=0\r\nnonsense", headers={**sdp, **token})
        assert res.status_code == 400 and res.json()["error"]["code"] == "bad_sdp"
        # Parsed, but no video codec aiortc can answer (found by hypothesis: it was a 500).
        odd = offer.replace("VP8/90000", "VP8/48000").replace("H264/90000", "H264/48000")
        res = await http.post(url, content=odd, headers={**sdp, **token})
        assert res.status_code == 400 and res.json()["error"]["code"] == "bad_sdp", res.text
        res = await http.post("/v1/sessions/nope/whep", content=offer, headers={**sdp, **token})
        assert res.status_code == 404

        # As before the first frame: 409 with Retry-After. A data descriptor on the class
        # wins over the attribute the fake's frame loop sets true at every frame.
        not_ready = property(lambda _: False, lambda _, __: None)
        with mock.patch.object(FakeSession, "ready", not_ready):
            res = await http.post(url, content=offer, headers={**sdp, **token})
        assert res.status_code == 409 and int(res.headers["retry-after"]) >= 1

        res = await http.post(f"{url}?token={session.view_token}", content=offer, headers=sdp)
        assert res.status_code == 201
        location, etag = res.headers["location"], res.headers["etag"]
        assert res.headers["accept-patch"] == "application/trickle-ice-sdpfrag"
        frag = (
            "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\nm=video 9 UDP/TLS/RTP/SAVPF 0"
            "\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n"
            "a=end-of-candidates\r\n"
        )
        patch = {"Content-Type": "application/trickle-ice-sdpfrag", **token}
        res = await http.patch(location, content=frag, headers={**patch, "If-Match": etag})
        assert res.status_code == 204
        res = await http.patch(location, content=frag, headers={**patch, "If-Match": '"x"'})
        assert res.status_code == 412
        res = await http.patch(location, content=frag, headers={**token, **sdp})
        assert res.status_code == 415
        res = await http.options(location)
        assert res.status_code == 204 and "PATCH" in res.headers["access-control-allow-methods"]
        assert len(registry) == 1
        res = await http.delete(location, headers=token)
        assert res.status_code == 200 and len(registry) == 0
        res = await http.delete(location, headers=token)
        assert res.status_code == 404 and "has ended: it was deleted" in res.text
    await pc.close()


async def test_a_peer_whose_ice_fails_at_once_says_why_it_is_gone(
    live: tuple[str, FakeSession, PeerRegistry],
) -> None:
    """An offer with no candidates that says it has no more: ICE fails as soon as the answer
    is made, the server closes the peer, and a trickle to it learns why (found by hypothesis:
    it was a bare "no whep resource")."""
    base, session, registry = live
    pc = await whep_offer()
    offer = "".join(
        line for line in pc.localDescription.sdp.splitlines(True) if "a=candidate:" not in line
    )
    assert "a=end-of-candidates" in offer
    token = {"Authorization": f"Bearer {session.view_token}"}
    async with httpx.AsyncClient(base_url=base, headers=token) as http:
        url = f"/v1/sessions/{session.id}/whep"
        res = await http.post(url, content=offer, headers={"Content-Type": "application/sdp"})
        assert res.status_code == 201
        for _ in range(100):
            if len(registry) == 0:
                break
            await asyncio.sleep(0.02)
        frag = "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n"
        trickle = {"Content-Type": "application/trickle-ice-sdpfrag"}
        res = await http.patch(res.headers["location"], content=frag, headers=trickle)
        assert res.status_code == 404, res.text
        assert "has ended: its connection failed" in res.json()["error"]["message"]
    await pc.close()


async def test_vanished_viewer_is_cleaned_up(live: tuple[str, FakeSession, PeerRegistry]) -> None:
    """A client that disappears without DELETE: ICE fails and the server closes the peer."""
    base, session, registry = live
    pc = await whep_offer()
    await add_loopback_candidates(pc)
    async with httpx.AsyncClient(base_url=base) as http:
        res = await http.post(
            f"/v1/sessions/{session.id}/whep?token={session.view_token}",
            content=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp"},
        )
    assert res.status_code == 201
    await pc.setRemoteDescription(RTCSessionDescription(res.text, "answer"))
    for _ in range(100):
        if session.viewers == 1:
            break
        await asyncio.sleep(0.05)
    assert session.viewers == 1 and session.bus.subscribers == 1
    await pc.close()  # gone, no DELETE; aioice consent checks notice within ~30 s at worst
    peer = registry.of_session(session.id)[0]
    await peer.pc.close()  # what an ICE failure does, without waiting for the consent timeout
    for _ in range(50):
        if len(registry) == 0 and session.viewers == 0:
            break
        await asyncio.sleep(0.05)
    assert len(registry) == 0 and session.viewers == 0 and session.bus.subscribers == 0
    # The session kept publishing throughout.
    before = session.frames
    await asyncio.sleep(0.2)
    assert session.frames > before


async def test_real_app_session_through_whep(tmp_path: Path) -> None:
    """The real app and Session: WHEP plays it, audio of an uploaded utterance arrives."""
    avatar = read_avatar(make_stand_in_avatar(tmp_path / "standin"))
    app = create_app(Settings(), loader=lambda name: (avatar, EnergyBackend()))
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        res = await http.post("/v1/sessions", json={"avatar": "standin"})
        assert res.status_code == 201, res.text
        info = res.json()
        session = app.state.avatarcast.registry.get(info["id"])
        await asyncio.wait_for(session.wait_ready(), 10)
        t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
        tone = (np.sin(2 * np.pi * 220 * t) * 0.5).astype(np.float32)
        session.speak_audio(tone)
        playing = asyncio.ensure_future(play(base, session, seconds=2.5))
        await asyncio.sleep(1.5)
        metrics = (await http.get("/metrics")).text
        assert "avatarcast_encoders 1.0" in metrics  # one viewer: its session is encoded once
        (line,) = [x for x in metrics.splitlines() if x.startswith("avatarcast_video_encode_ms ")]
        assert float(line.split()[1]) > 0
        got, ttff = await playing
        arrivals = np.array([a for a, _, _ in got.video])
        steady = arrivals[arrivals > arrivals[0] + 0.5]
        fps = (len(steady) - 1) / (steady[-1] - steady[0])
        print(f"\nreal app: {fps:.1f} fps, ttff {ttff * 1000:.0f} ms")
        assert fps > 18 and got.audio_samples > 0.7 * 2.5 * 48_000
        assert max(r for _, _, r in got.audio) > 1000  # the tone came through
        await app.state.avatarcast.webrtc.aclose()
