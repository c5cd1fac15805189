"""TEMPORARY ADAPTER (issue 10): a session's shared encoder, until the session owns it.

The session is becoming the owner of its encode-once stage, reached as
``session.encoded(codec=None) -> EncodedStream``. Until that lands, this module builds today's
:class:`~streamer.outputs.encoding.SessionEncoder` for a session and codec, keeps one per pair,
and closes it when its last viewer leaves. At the merge, :meth:`PeerRegistry._encoded` calls
``session.encoded(codec)`` instead and this module and its two calls in ``registry.py``
(``encoded`` and ``release_idle``) are deleted.
"""

from __future__ import annotations

from streamer.outputs.encoding import SessionEncoder, VideoCodec
from streamer.outputs.webrtc.peer import Viewable
from streamer.outputs.webrtc.tracks import EncodedStream


class SessionEncoders:
    """One :class:`SessionEncoder` per session and codec, while anyone reads it."""

    def __init__(self) -> None:
        self._encoders: dict[tuple[str, str], SessionEncoder] = {}

    def encoded(self, session: Viewable, codec: VideoCodec | None = None) -> EncodedStream:
        key = (session.id, codec or session.video_codec)
        encoder = self._encoders.get(key)
        if encoder is None:
            encoder = SessionEncoder(session, codec or session.video_codec)
            self._encoders[key] = encoder
        return encoder

    async def release_idle(self, session_id: str) -> None:
        """Close the encoders of ``session_id`` that no viewer reads any more."""
        for key, encoder in list(self._encoders.items()):
            if key[0] == session_id and encoder.viewers == 0:
                del self._encoders[key]
                await encoder.aclose()
