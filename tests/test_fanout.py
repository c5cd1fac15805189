"""The fan-out (streamer/outputs/webrtc/fanout.py): every viewer's RTP sent in one pass.

Playback through it is what tests/test_webrtc.py checks; here, what the fan-out owes aiortc
and the other viewers: RTCP's counters kept, a failing viewer isolated, nothing left behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from aiortc.rtcrtpsender import RTP_HISTORY_SIZE
from aiortc.rtp import RtpPacket, wrap_rtx

from streamer.outputs.webrtc import PeerRegistry, fanout
from streamer.pipeline.codecs import EncodedFrame
from tests.webrtc_fakes import FakeSession, play, served_fake, whep_offer


@pytest.fixture
async def live() -> AsyncIterator[tuple[str, FakeSession, PeerRegistry]]:
    async with served_fake() as made:
        yield made


def _video_leg(registry: PeerRegistry) -> tuple[fanout.Fanout, fanout.Leg]:
    """The one session's fan-out and its one viewer's video leg."""
    (encoder,) = registry.encoders()
    fan = fanout.fanout_of(encoder)
    (leg,) = [x for x in fan.legs if x.kind == "video"]
    return fan, leg


async def test_aiortc_still_has_what_a_leg_keeps() -> None:
    """An aiortc upgrade that drops the sender's RTCP counters fails here, not in a player."""
    assert fanout.supported()


async def test_sender_reports_count_what_the_fan_out_sent(
    live: tuple[str, FakeSession, PeerRegistry],
) -> None:
    base, session, registry = live
    task = asyncio.ensure_future(play(base, session, 2.0))
    await asyncio.sleep(1.5)
    (peer,) = registry.of_session(session.id)
    counts = {}
    for transceiver in peer.pc.getTransceivers():
        report = await transceiver.sender.getStats()
        (outbound,) = [s for s in report.values() if s.type == "outbound-rtp"]
        counts[transceiver.kind] = outbound.packetsSent
    got, _ = await task
    # What aiortc's RTCP sender reports and getStats read: the packets the legs sent.
    assert counts["video"] >= 20 and counts["audio"] >= 40, counts
    assert len(got.video) > 30 and len(got.audio) > 60


async def test_a_failing_viewer_leaves_the_others_playing(
    live: tuple[str, FakeSession, PeerRegistry],
) -> None:
    base, session, registry = live
    first = asyncio.ensure_future(play(base, session, 3.0))
    await asyncio.sleep(1.0)
    fan, broken = _video_leg(registry)

    def fail(*_: object) -> None:
        raise RuntimeError("this viewer's socket is gone")

    broken.video = fail  # type: ignore[method-assign]
    second = asyncio.ensure_future(play(base, session, 1.5))
    got, _ = await second
    assert len(got.video) > 20  # the other viewer kept receiving
    assert broken not in fan.legs and broken.ended.is_set()
    await first


async def test_a_viewer_that_never_connects_leaves_no_leg(
    live: tuple[str, FakeSession, PeerRegistry],
) -> None:
    base, session, registry = live
    pc = await whep_offer()
    auth = {"Authorization": "Bearer k3y"}
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            res = await http.post(
                f"/v1/sessions/{session.id}/whep",
                content=pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp", **auth},
            )
            assert res.status_code == 201, res.text
            (encoder,) = registry.encoders()
            assert len(fanout.fanout_of(encoder).legs) == 2
            res = await http.delete(
                res.headers["Location"], headers={"Authorization": "Bearer k3y"}
            )
            assert res.status_code == 200
    finally:
        await pc.close()
    assert registry.encoders() == [] and encoder.viewers == 0


async def test_a_lost_packet_can_be_sent_again(
    live: tuple[str, FakeSession, PeerRegistry],
) -> None:
    """aiortc answers a NACK from the history each leg keeps: the packet as it was sent."""
    base, session, registry = live
    task = asyncio.ensure_future(play(base, session, 2.0))
    await asyncio.sleep(1.5)
    _, leg = _video_leg(registry)
    sender = leg._sender
    assert sender is not None
    history = getattr(sender, fanout._SENDER + fanout._HISTORY)
    kept = history[(leg._sequence - 1) % RTP_HISTORY_SIZE]
    packet = RtpPacket.parse(kept.serialize(), leg.extensions)
    assert packet.sequence_number == kept.sequence_number == (leg._sequence - 1) & 0xFFFF
    assert (packet.ssrc, packet.payload_type) == (sender._ssrc, leg.payload_type)
    assert packet.marker == 1 and packet.extensions.mid == leg.mid and packet.payload
    rtx = wrap_rtx(kept, payload_type=97, sequence_number=7, ssrc=1)
    assert rtx.payload[2:] == packet.payload and rtx.timestamp == packet.timestamp
    await sender._retransmit(kept.sequence_number)  # protected and sent again
    got, _ = await task
    assert len(got.video) > 30


async def test_a_viewer_whose_first_key_frame_is_lost_still_starts(
    live: tuple[str, FakeSession, PeerRegistry], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encoder makes key frames only when asked. One that reaches a viewer's leg but not
    the viewer (sent as its connection came up, or older than the start its audio fixed)
    must not leave it without a picture: the leg asks again."""
    base, session, _ = live
    send = fanout.Leg.video
    lost: list[int] = []

    def losing_the_first(leg: fanout.Leg, item: EncodedFrame, packets: fanout.Packets) -> None:
        if item.keyframe and not lost and leg._socket() is not None:
            lost.append(item.index)
            return
        send(leg, item, packets)

    monkeypatch.setattr(fanout.Leg, "video", losing_the_first)
    got, _ = await play(base, session, 2.5)
    assert lost
    assert len(got.video) > 20
