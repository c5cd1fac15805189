"""The reaches into aiortc/aioice (streamer/outputs/webrtc/compat.py) still apply and work.

Each reach is guarded so that a library change degrades the stream instead of breaking
it; these tests are what notices such a change.
"""

from __future__ import annotations

import logging

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, VideoStreamTrack
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket

from streamer.outputs.webrtc import add_loopback_candidates, route_keyframe_requests, warm_up
from streamer.outputs.webrtc.compat import LOOPBACK


class KeyframeRequests:
    def __init__(self) -> None:
        self.count = 0

    def request_keyframe(self) -> None:
        self.count += 1


async def test_loopback_candidate_is_offered(caplog: pytest.LogCaptureFixture) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    offer = await pc.createOffer()
    try:
        # As the registry does: between making a description and setting it.
        with caplog.at_level(logging.WARNING):
            assert await add_loopback_candidates(pc)
        assert not caplog.records, [r.getMessage() for r in caplog.records]
        await pc.setLocalDescription(offer)
        sdp = pc.localDescription.sdp
        assert any(
            line.startswith("a=candidate:") and f" {LOOPBACK} " in line for line in sdp.splitlines()
        ), sdp
        # Idempotent: a second call adds no second loopback candidate.
        assert await add_loopback_candidates(pc)
        assert pc.localDescription.sdp.count(f" {LOOPBACK} ") == sdp.count(f" {LOOPBACK} ")
    finally:
        await pc.close()


@pytest.mark.parametrize("fmt", [RTCP_PSFB_PLI, RTCP_PSFB_FIR])
async def test_rtcp_keyframe_requests_reach_the_shared_encoder(fmt: int) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        sender = pc.addTransceiver(VideoStreamTrack(), direction="sendonly").sender
        requests = KeyframeRequests()
        assert route_keyframe_requests(sender, requests)
        # What aiortc does with a receiver's RTCP PLI/FIR for this sender.
        await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=fmt, ssrc=1, media_ssrc=2))
        assert requests.count == 1
    finally:
        await pc.close()


def test_warm_up_makes_a_dtls_context(caplog: pytest.LogCaptureFixture) -> None:
    """The start-up warm-up still reaches aiortc's DTLS context (else the first viewer pays)."""
    with caplog.at_level(logging.WARNING):
        assert warm_up() is True
    assert "aiortc changed" not in caplog.text
