"""``record``: the session written to a fragmented MP4 in the server's recordings folder.

Fragmented (``frag_keyframe+empty_moov+default_base_moof``): the header is written first and
each 2 s GOP is appended as a self-contained fragment, so a file cut short by a crash or a
kill plays up to its last whole fragment. Same muxing code as RTMP (:mod:`.mux`). A write
error (a full disk) fails the output with the error; nothing is retried, so a recording is
never silently overwritten, and the session goes on.

A recording stopped normally (DELETE, or the session closing) is then signed in this output's
thread: the finished file gets the C2PA manifest a render gets (:mod:`streamer.credentials`;
the SDK signs a fragmented MP4 whole), with the chain under ``$AVATARCAST_HOME/c2pa``. A failed
recording is left as it is, unsigned. One stopped before its first frame leaves no file.
"""

from __future__ import annotations

import logging

from streamer.outputs.base import Report
from streamer.outputs.mux import FRAGMENTED_MP4, Target
from streamer.outputs.muxed import MediaSource, MuxedOutput
from streamer.outputs.spec import OutputSpec

log = logging.getLogger(__name__)


class RecordOutput(MuxedOutput):
    """Record to ``spec.path`` until removed or failed."""

    retry = False

    def __init__(
        self, output_id: str, spec: OutputSpec, source: MediaSource, report: Report
    ) -> None:
        if spec.path is None:
            raise ValueError("a record output needs a path")
        self.path = spec.path
        target = Target(str(spec.path), "mp4", FRAGMENTED_MP4)
        super().__init__(output_id, "record", spec, source, report, target)

    def prepare(self) -> None:
        """Claim the file: create the folder, then the file, failing if it exists (two
        requests for one name race here, not in the muxer)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "xb"):
            pass

    def finish(self) -> None:
        """Sign the finished file (see the module docstring). A recording stopped before its
        first frame has nothing in it: its empty file is removed rather than left unplayable."""
        if self.state != "stopped" or not self.path.is_file():
            return
        if not self.path.stat().st_size:
            self.path.unlink(missing_ok=True)
            log.info("output %s: stopped before its first frame; %s removed", self.id, self.path)
            return
        from streamer.config import default_home
        from streamer.credentials import CredentialsError, sign_in_place

        avatar = getattr(self._source, "avatar", None)
        provenance = getattr(self._source, "provenance", None)
        if avatar is None or provenance is None:
            return
        mark = provenance.describe()
        try:
            sign_in_place(self.path, self.path.name, avatar.name, avatar.path, mark, default_home())
        except CredentialsError as exc:
            log.warning("output %s: recording %s left unsigned: %s", self.id, self.path, exc)
