"""WebRTC outputs: one module per protocol object.

``tracks`` (what a viewer's tracks forward), ``peer`` (one peer connection), ``registry``
(every peer, made from offers), ``sdp`` (offers parsed and checked, codecs chosen) and
``compat`` (the guarded reaches into aiortc/aioice). Encoding happens once per session, in the
session's own encode stage (:mod:`streamer.pipeline.encode`); viewers only subscribe to it.
"""

from streamer.outputs.webrtc.compat import (
    add_loopback_candidates,
    route_keyframe_requests,
    warm_up,
)
from streamer.outputs.webrtc.peer import Peer, PeerInfo, Viewable
from streamer.outputs.webrtc.registry import PeerRegistry
from streamer.outputs.webrtc.sdp import Offer, SdpError, parse_offer
from streamer.outputs.webrtc.tracks import (
    AVAudioTrack,
    AVVideoTrack,
    EncodedAudioTrack,
    EncodedStream,
    EncodedVideoTrack,
    SharedStart,
)

__all__ = [
    "AVAudioTrack",
    "AVVideoTrack",
    "EncodedAudioTrack",
    "EncodedStream",
    "EncodedVideoTrack",
    "Offer",
    "Peer",
    "PeerInfo",
    "PeerRegistry",
    "SdpError",
    "SharedStart",
    "Viewable",
    "add_loopback_candidates",
    "parse_offer",
    "route_keyframe_requests",
    "warm_up",
]
