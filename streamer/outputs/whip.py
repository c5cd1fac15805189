"""``whip``: the session published into a media server or SFU over WebRTC (RFC 9725).

One peer connection sends the session's video and voice (sendonly). Nothing is encoded here:
the tracks are the WHEP viewers' (:mod:`streamer.outputs.webrtc.tracks`), forwarding the
packets of the session's shared encode (``session.encoded(codec)``, encode once), so aiortc
only packetises and encrypts them. The offer lists the session's codec first and the other
one (VP8 or H.264) after it; the endpoint's answer picks, and the shared encode of the codec
it picked is the one sent. Audio is the shared Opus.

A publish: the offer, with every host candidate (no trickle), is POSTed by
:class:`~streamer.outputs.webrtc.whip_http.WhipClient`; the answer is applied; the output is
``live`` once ICE and DTLS are up. A refusal that the user must fix (401, 404, ...) makes it
``failed``; anything that may pass (a 5xx, a network error, a broken answer, ICE or DTLS
failing then or later) makes it ``retrying``, and it publishes afresh after a backoff, having
DELETEd what it had. Stopping (``DELETE`` of the output, or the session closing) DELETEs the
resource. All of it runs on the event loop as one task: HTTP through an async client, media
through aiortc; the session and its other outputs never wait for it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol, cast

from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidStateError
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.sdp import SessionDescription

from streamer.outputs.base import Backoff, HasStatus, OutputStatus, Report
from streamer.outputs.spec import OutputSpec
from streamer.outputs.webrtc.compat import add_loopback_candidates, route_keyframe_requests
from streamer.outputs.webrtc.sdp import PARSE_ERRORS, UNUSABLE, codec_preferences
from streamer.outputs.webrtc.tracks import (
    EncodedAudioTrack,
    EncodedStream,
    EncodedVideoTrack,
    SharedStart,
)
from streamer.outputs.webrtc.whip_http import WhipClient, WhipError
from streamer.pipeline.codecs import EncodedFrame, VideoCodec
from streamer.pipeline.frames import Subscription

log = logging.getLogger(__name__)

CODECS: tuple[VideoCodec, ...] = ("vp8", "h264")
CONNECT_TIMEOUT_S = 15.0  # ICE and DTLS after the answer


class Publishable(Protocol):
    """What a WHIP output reads from a session: its codec and its shared encodes."""

    id: str

    @property
    def video_codec(self) -> VideoCodec: ...

    def encoded(self, codec: VideoCodec | None = None) -> EncodedStream: ...


def answered_codec(sdp: str) -> VideoCodec:
    """The video codec an answer picked (its video section's first), or :class:`WhipError`
    for an answer that cannot be used."""
    try:
        description = SessionDescription.parse(sdp)
    except PARSE_ERRORS as exc:
        raise WhipError(
            f"the WHIP endpoint's SDP answer is broken: {exc or type(exc).__name__}", retry=True
        ) from None
    media = {m.kind: m for m in description.media}
    if not media or not all(
        m.ice and m.ice.usernameFragment and m.dtls and m.dtls.fingerprints
        for m in description.media
    ):
        raise WhipError(
            "the WHIP endpoint's SDP answer is broken: no media, ICE credentials or DTLS "
            "fingerprint",
            retry=True,
        )
    video, audio = media.get("video"), media.get("audio")
    names = [c.mimeType.split("/", 1)[1].lower() for c in video.rtp.codecs] if video else []
    picked = next((n for n in names if n in CODECS), None)
    if picked is None or audio is None or not video or not video.port:
        raise WhipError(
            "the WHIP endpoint's SDP answer accepts no VP8 or H.264 video and Opus audio",
            retry=True,
        )
    return cast(VideoCodec, picked)


class WhipOutput(HasStatus):
    """Publish one session to one WHIP endpoint until removed or failed for good."""

    kind = "whip"

    def __init__(
        self, output_id: str, spec: OutputSpec, source: Publishable, report: Report
    ) -> None:
        if spec.url is None:
            raise ValueError("a whip output needs a url")
        self.id = output_id
        self.spec = spec
        self.connections = 0  # publish attempts, the first included
        self.codec: VideoCodec | None = None  # what the endpoint's last answer picked
        self._source = source
        self._loop = asyncio.get_running_loop()
        self._status = OutputStatus(output_id, self.kind, report, self._loop)
        self._client = WhipClient(spec.url, spec.token)
        self._task: asyncio.Task[None] | None = None
        self._pc: RTCPeerConnection | None = None
        self._resource: str | None = None
        self._encoded: tuple[EncodedStream, Subscription[EncodedFrame]] | None = None
        self._closed = False

    def start(self) -> None:
        self._task = self._loop.create_task(self._run(), name=f"output-whip-{self.id}")

    def describe(self) -> dict[str, Any]:
        return {
            **self._status_fields(),
            "target": self.spec.target,
            "video_bitrate_kbps": self.spec.video_bitrate_kbps,
            "connections": self.connections,
            "video_codec": self.codec,
        }

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                await self._publish(backoff)
            except WhipError as exc:
                error = exc
            except Exception as exc:  # a bug: this output fails, the session goes on
                log.exception("output %s (whip) failed", self.id)
                self._status.set("failed", f"{type(exc).__name__}: {exc}")
                await self._hang_up()
                return
            await self._hang_up()
            if not error.retry:
                self._status.set("failed", str(error))
                return
            self._status.set("retrying", str(error))
            await asyncio.sleep(max(backoff.next(), error.retry_after or 0.0))
            self._status.set("connecting")

    async def _publish(self, backoff: Backoff) -> None:
        """One publish, until it breaks (raises :class:`WhipError`)."""
        self.connections += 1
        # No STUN: a public server would be a network call at run time; an SFU is reachable
        # at the candidates its answer gives, and learns ours from our checks (peer-reflexive).
        pc = self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        down = asyncio.Event()
        up = asyncio.Event()

        @pc.on("connectionstatechange")
        def _state() -> None:
            if pc.connectionState == "connected":
                up.set()
            elif pc.connectionState in ("failed", "closed"):
                down.set()

        video = pc.addTransceiver("video", direction="sendonly")
        audio = pc.addTransceiver("audio", direction="sendonly")
        video.setCodecPreferences(video_preferences(self._source.video_codec))
        audio.setCodecPreferences(codec_preferences("audio", "opus"))
        offer = await pc.createOffer()
        await add_loopback_candidates(pc)  # an endpoint on this machine (a local MediaMTX)
        await pc.setLocalDescription(offer)
        answer = await self._client.publish(pc.localDescription.sdp)
        self._resource = answer.resource
        self._send(video, audio, answered_codec(answer.sdp))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
        except (*UNUSABLE, InvalidStateError) as exc:
            raise WhipError(
                f"the WHIP endpoint's SDP answer cannot be used: {exc or type(exc).__name__}",
                retry=True,
            ) from None
        await _wait(up, down, CONNECT_TIMEOUT_S)
        self._status.set("live")
        backoff.reset()
        await down.wait()
        raise WhipError("the connection to the WHIP endpoint was lost (ICE/DTLS)", retry=True)

    def _send(self, video: RTCRtpTransceiver, audio: RTCRtpTransceiver, codec: VideoCodec) -> None:
        """Give the transceivers the shared encode of the codec the answer picked."""
        self.codec = codec
        stream = self._source.encoded(codec)
        sub = stream.subscribe()
        self._encoded = (stream, sub)
        start = SharedStart(video=True)
        video.sender.replaceTrack(EncodedVideoTrack(sub, start, stream))
        audio.sender.replaceTrack(EncodedAudioTrack(sub, start))
        route_keyframe_requests(video.sender, stream)

    async def _hang_up(self) -> None:
        """Stop sending, end the subscription and DELETE the resource. Idempotent."""
        pc, self._pc = self._pc, None
        if pc is not None:
            await pc.close()
        if self._encoded is not None:
            stream, sub = self._encoded
            self._encoded = None
            stream.unsubscribe(sub)
        resource, self._resource = self._resource, None
        if resource is not None:
            await self._client.delete(resource)

    async def aclose(self) -> None:
        """Stop: state ``stopped``, the resource DELETEd. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._status.set("stopped")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._hang_up()
        await self._client.aclose()


def video_preferences(ours: VideoCodec) -> list[RTCRtpCodecCapability]:
    """The session's codec first (every H.264 profile aiortc has), the other one after it,
    then RTX: the answer picks the first it takes."""
    codecs = RTCRtpSender.getCapabilities("video").codecs
    order = (ours, *(name for name in CODECS if name != ours), "rtx")
    return [c for name in order for c in codecs if c.mimeType.lower() == f"video/{name}"]


async def _wait(up: asyncio.Event, down: asyncio.Event, seconds: float) -> None:
    """Until ``up``; :class:`WhipError` when ``down`` comes first or time runs out."""
    waits = [asyncio.ensure_future(up.wait()), asyncio.ensure_future(down.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
    if not up.is_set():
        reason = "failed" if down.is_set() else f"did not connect within {seconds:.0f} s"
        raise WhipError(f"ICE/DTLS to the WHIP endpoint {reason}", retry=True)
