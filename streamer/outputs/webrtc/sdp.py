"""Offers and trickle fragments: parsed with ``aiortc.sdp``, checked, and the codecs chosen.

An offer is checked here, before any peer connection exists, so that a client's mistake is a
clear 400 naming what is missing instead of an error from deep inside aiortc.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiortc import RTCIceCandidate, RTCRtpSender
from aiortc.exceptions import InvalidAccessError, OperationError
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.sdp import SessionDescription, candidate_from_sdp

# What aiortc's parser raises on malformed SDP (it asserts on some lines, and reads an
# attribute without a value as None: "a=group" gives AttributeError). Found by hypothesis.
PARSE_ERRORS = (
    ValueError,
    KeyError,
    IndexError,
    AssertionError,
    StopIteration,
    AttributeError,
    TypeError,
)
# What aiortc raises for SDP it parsed but cannot answer or apply (no codec in common with
# it, say): the peer's description, not the server, is at fault.
UNUSABLE = (*PARSE_ERRORS, OperationError, InvalidAccessError)
MEDIA = frozenset({"audio", "video"})
# A viewer's offer has two sections (audio, video), a page with a data channel three. Each
# section costs an ICE transport and a DTLS handshake: more than this is refused, not answered.
MAX_MEDIA_SECTIONS = 8


class SdpError(ValueError):
    """An offer or a trickle fragment that is not usable SDP."""


@dataclass(frozen=True)
class Offer:
    """A client's offer: its text (handed to aiortc as is) and what it says."""

    sdp: str
    description: SessionDescription

    @property
    def kinds(self) -> set[str]:
        return {m.kind for m in self.description.media}

    def codecs(self, kind: str) -> set[str]:
        """The codecs (lower-case names) the offer's first ``kind`` section lists."""
        for media in self.description.media:
            if media.kind == kind:
                return {c.mimeType.split("/", 1)[1].lower() for c in media.rtp.codecs}
        return set()

    def shared(self, video_codec: str) -> set[str]:
        """The kinds that can carry the session's shared encoder's packets as they are."""
        wanted = {"video": video_codec, "audio": "opus"}
        return {kind for kind, name in wanted.items() if name in self.codecs(kind)}


def parse_offer(sdp: str) -> Offer:
    """``sdp`` as an :class:`Offer`, or :class:`SdpError` saying what is wrong with it."""
    sections = sum(1 for line in sdp.splitlines() if line.startswith("m="))
    if sections > MAX_MEDIA_SECTIONS:
        raise SdpError(
            f"the offer has {sections} media sections; at most {MAX_MEDIA_SECTIONS} are answered"
        )
    try:
        description = SessionDescription.parse(sdp)
    except PARSE_ERRORS as exc:
        raise SdpError(f"the offer could not be used: {exc or type(exc).__name__}") from exc
    if not sdp.lstrip().startswith("v=0") or not description.media:
        raise SdpError("not an SDP offer (it must start with v=0 and have media sections)")
    if not any(m.ice and m.ice.usernameFragment for m in description.media):
        raise SdpError("the offer has no ICE credentials (a=ice-ufrag)")
    if not any(m.dtls and m.dtls.fingerprints for m in description.media):
        raise SdpError("the offer has no DTLS fingerprint (a=fingerprint)")
    return Offer(sdp, description)


def codec_preferences(kind: str, name: str) -> list[RTCRtpCodecCapability]:
    """aiortc's codecs named ``name`` (every H.264 profile it has), with RTX for video."""
    codecs = RTCRtpSender.getCapabilities(kind).codecs
    wanted = [c for c in codecs if c.mimeType.lower() == f"{kind}/{name}"]
    return wanted + [c for c in codecs if c.mimeType.lower() == f"{kind}/rtx"]


def trickle_candidates(fragment: str) -> list[RTCIceCandidate | None]:
    """The remote candidates of an ``application/trickle-ice-sdpfrag`` body, in order;
    ``None`` marks ``a=end-of-candidates``. (A fragment is not a whole description, so
    ``SessionDescription.parse`` does not take it; its candidate lines are parsed by aiortc.)
    """
    found: list[RTCIceCandidate | None] = []
    mid: str | None = None
    mline = -1
    for raw in fragment.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            mline += 1
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        elif line.startswith("a=candidate:"):
            try:
                candidate = candidate_from_sdp(line[len("a=") :])
            except PARSE_ERRORS as exc:
                raise SdpError(f"bad candidate line {line!r}") from exc
            candidate.sdpMid = mid
            candidate.sdpMLineIndex = max(mline, 0)
            found.append(candidate)
        elif line == "a=end-of-candidates":
            found.append(None)
    return found
