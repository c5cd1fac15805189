"""``rtmp`` / ``rtmps``: the session pushed as FLV to a live platform or a media server.

The URL (validated by :mod:`streamer.outputs.spec`) is the platform's ingest address with
the stream key as its last segment, e.g. ``rtmp://live.twitch.tv/app/KEY``. The video is the
session's shared H.264 encode, remuxed; the audio AAC (:mod:`.mux`). A broken link is
retried with backoff, each new connection starting at a key frame with timestamps that carry
on from the last (:mod:`.muxed`).

The container and the network live in a child process (:mod:`.rtmp_link`, which says why
and how it is watched): the output's thread only hands it the frames, so nothing the network
does can stall the server, and a connection that stalls is killed after a deadline.
"""

from __future__ import annotations

import contextlib

from streamer.outputs.base import Report
from streamer.outputs.mux import Container, MuxError, Target
from streamer.outputs.muxed import MediaSource, MuxedOutput
from streamer.outputs.rtmp_link import RtmpLink
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
        self._link = RtmpLink(self._stop)

    @property
    def child_pid(self) -> int | None:
        """The muxing child's process id while one runs."""
        return self._link.pid

    def prepare(self) -> None:
        with contextlib.suppress(MuxError):  # the first connection tries again, and says why
            self._link.start()

    def open_container(self, target: Target, origin: int, size: tuple[int, int]) -> Container:
        return self._link.connect(target, origin, size)

    def child_cpu_s(self) -> float:
        return self._link.cpu_s()

    def finish(self) -> None:
        """The output is done: end its child (its last trailer, then exit)."""
        self._link.close()
