"""``srt``: the session pushed as MPEG-TS over SRT to a platform or a media server.

The same stream as RTMP (:mod:`.rtmp`): the session's shared H.264 encode remuxed, AAC
encoded here, the session clock's timestamps, silence when idle, a reconnection with backoff
that starts at a key frame and carries the timestamps on. Only the container (MPEG-TS) and
the last hop differ: PyAV writes the TS into a ``srt-live-transmit`` child that sends it
(:mod:`.srt_link`, which says why). The output is ``live`` when the child reports the SRT
handshake done, not when the first bytes leave PyAV: a pipe accepts them either way.
"""

from __future__ import annotations

import threading

from streamer.outputs.base import Report
from streamer.outputs.mux import MuxError, Target
from streamer.outputs.muxed import MediaSource, MuxedOutput
from streamer.outputs.spec import OutputSpec
from streamer.outputs.srt_link import SrtLink
from streamer.outputs.srt_url import parse_srt_url, tool_path

# Flush each packet to the child at once (latency), and repeat PAT/PMT so a receiver that
# joins mid-stream finds the programme quickly.
TS_OPTIONS = {"flush_packets": "1", "mpegts_flags": "resend_headers"}


class SrtOutput(MuxedOutput):
    """Push to one ``srt://`` destination until removed; reconnects after network errors."""

    retry = True

    def __init__(
        self, output_id: str, spec: OutputSpec, source: MediaSource, report: Report
    ) -> None:
        if spec.url is None:
            raise ValueError("an srt output needs a url")
        self._address = parse_srt_url(spec.url)
        self._tool = tool_path()
        self._link: SrtLink | None = None
        self._link_lock = threading.Lock()
        super().__init__(output_id, "srt", spec, source, report, Target("", "mpegts"))

    def open_target(self) -> Target:
        try:
            link = SrtLink(self._tool, self._address, self._link_up)
        except OSError as exc:
            raise MuxError(f"cannot start {self._tool}: {exc.strerror or exc}") from exc
        with self._link_lock:
            self._link = link
        return Target(link, "mpegts", TS_OPTIONS)

    def header_written(self) -> None:
        """Nothing yet: the pipe took the header; the link says when SRT is connected."""

    def _link_up(self, link: SrtLink) -> None:  # from the link's stderr thread
        with self._link_lock:
            if link is not self._link or link.closed:
                return  # a connection already given up
            self._status.set("live")
            self._backoff.reset()

    def close_target(self) -> None:
        with self._link_lock:
            link, self._link = self._link, None
        if link is not None:
            link.close()
