"""Where avatarcast reaches into aiortc and aioice: the places their public API falls short.

Each touches private state, so each is guarded: if the library changes shape they log a warning
and the stream still works (without the loopback candidate, with key frames only when a
viewer joins, or with the first viewer paying for what the warm-up would have done).
``tests/test_webrtc_compat.py`` fails when one stops applying, so an upgrade of aiortc/aioice
that breaks them is caught before a user sees it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Protocol

from aiortc import RTCCertificate, RTCPeerConnection, RTCRtpSender
from aiortc.rtcdtlstransport import SRTP_PROFILES

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class KeyframeSource(Protocol):
    def request_keyframe(self) -> None: ...


async def add_loopback_candidates(pc: RTCPeerConnection) -> bool:
    """Offer a 127.0.0.1 host candidate besides the interface addresses.

    aioice leaves the loopback address out of its host candidates, so a browser on the same
    machine (or a machine with only a loopback interface) finds no pair that works. Gather
    first (aiortc's own gather later is then a no-op), then bind one more host socket on
    127.0.0.1 through aioice's per-address gathering and add its candidate to the list the
    description is written from. Returns False when aioice's shape was not what this expects.
    """
    applied = True
    seen: set[int] = set()
    for transceiver in pc.getTransceivers():
        gatherer = transceiver.receiver.transport.transport.iceGatherer
        if id(gatherer) in seen:
            continue
        seen.add(id(gatherer))
        await gatherer.gather()
        connection = getattr(gatherer, "_connection", None)
        local = getattr(connection, "_local_candidates", None)
        if connection is None or not isinstance(local, list):
            log.warning("aioice changed: no loopback ICE candidate added")
            applied = False
            continue
        if any(c.host == LOOPBACK for c in local):
            continue
        with contextlib.suppress(OSError):
            local += await connection.get_component_candidates(component=1, addresses=[LOOPBACK])
    return applied


def route_keyframe_requests(sender: RTCRtpSender, source: KeyframeSource) -> bool:
    """Send a viewer's key frame requests (RTCP PLI/FIR) to the shared encoder.

    aiortc answers PLI/FIR by calling its sender's ``_send_keyframe``, which only flags its
    own encoder; a sender that packs shared packets has none. Returns False (and viewers get
    key frames only when they join) when aiortc no longer has that hook.
    """
    if callable(getattr(sender, "_send_keyframe", None)):
        sender._send_keyframe = source.request_keyframe  # type: ignore[method-assign]
        return True
    log.warning("aiortc changed: RTCP key frame requests do not reach the shared encoder")
    return False


def warm_up() -> bool:
    """Do once, at startup, what the first viewer's peer connection would do for the first time.

    The first WHEP POST used to hold the event loop for 100-350 ms: the first certificate and
    DTLS context import a dozen cryptography/pyOpenSSL modules and initialise OpenSSL's DTLS
    method, all on the loop. A throwaway certificate and its DTLS context (aiortc's private
    ``_create_ssl_context``) do it here, in a thread, before the server takes requests.
    Returns False when aiortc no longer has that method (the certificate is still made).
    """
    certificate = RTCCertificate.generateCertificate()
    certificate.getFingerprints()
    create = getattr(certificate, "_create_ssl_context", None)
    if not callable(create):
        log.warning("aiortc changed: the DTLS context is first made by the first viewer")
        return False
    create(srtp_profiles=SRTP_PROFILES)
    return True
