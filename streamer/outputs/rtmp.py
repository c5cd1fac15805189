"""``rtmp`` / ``rtmps``: the session pushed as FLV to a live platform or a media server.

The URL (validated by :mod:`streamer.outputs.spec`) is the platform's ingest address with
the stream key as its last segment, e.g. ``rtmp://live.twitch.tv/app/KEY``. The video is the
session's shared H.264 encode, remuxed; the audio AAC, encoded here (:mod:`.mux`). A broken
link is retried with backoff, each new connection starting at a key frame with timestamps
that carry on from the last (:mod:`.muxed`).
"""

from __future__ import annotations

from streamer.outputs.base import Report
from streamer.outputs.mux import Target
from streamer.outputs.muxed import MediaSource, MuxedOutput
from streamer.outputs.spec import OutputSpec

# FLV's trailer seeks back to write the duration and file size; a network stream cannot seek.
FLV_OPTIONS = {"flvflags": "no_duration_filesize"}


class RtmpOutput(MuxedOutput):
    """Push to one RTMP(S) URL until removed; reconnects after network errors."""

    retry = True

    def __init__(
        self, output_id: str, spec: OutputSpec, source: MediaSource, report: Report
    ) -> None:
        if spec.url is None:
            raise ValueError("an rtmp output needs a url")
        super().__init__(
            output_id, "rtmp", spec, source, report, Target(spec.url, "flv", FLV_OPTIONS)
        )
