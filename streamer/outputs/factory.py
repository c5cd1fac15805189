"""Making an output of a validated spec, attached to its session and reporting its state
as session events and in the app's metrics."""

from __future__ import annotations

import secrets

from streamer.metrics import Metrics
from streamer.outputs.base import MAX_OUTPUTS_PER_SESSION, OutputRejected, StateChange
from streamer.outputs.muxed import MuxedOutput
from streamer.outputs.record import RecordOutput
from streamer.outputs.rtmp import RtmpOutput
from streamer.outputs.spec import OutputSpec
from streamer.outputs.srt import SrtOutput
from streamer.outputs.virtualcam import VirtualcamOutput
from streamer.outputs.whip import WhipOutput
from streamer.session import Session
from streamer.session.events import OutputState

Output = MuxedOutput | WhipOutput | VirtualcamOutput
KINDS: dict[
    str,
    type[RtmpOutput]
    | type[RecordOutput]
    | type[SrtOutput]
    | type[VirtualcamOutput]
    | type[WhipOutput],
] = {
    "rtmp": RtmpOutput,
    "record": RecordOutput,
    "srt": SrtOutput,
    "virtualcam": VirtualcamOutput,
    "whip": WhipOutput,
}


def attach_output(
    session: Session,
    spec: OutputSpec,
    metrics: Metrics | None,
    most: int = MAX_OUTPUTS_PER_SESSION,
) -> Output:
    """Start an output of ``spec`` on ``session`` and hand it to the session, which lists
    it and stops it when it closes (call on the event loop); ``most`` outputs at once."""
    if session.closed:
        raise OutputRejected(409, "session_closed", f"session {session.id} is closed")
    if len(session.outputs) >= most:
        raise OutputRejected(
            429,
            "too_many_outputs",
            f"a session holds at most {most} outputs: delete one first "
            "(DELETE /v1/sessions/{id}/outputs/{oid})",
        )

    def report(change: StateChange) -> None:
        session.outputs.emit(
            OutputState(change.output_id, change.output_type, change.state, change.error)
        )
        if metrics is not None:
            metrics.output_changes.labels(change.output_type, change.state).inc()

    output = KINDS[spec.kind](f"out_{secrets.token_hex(4)}", spec, session, report)
    report(StateChange(output.id, output.kind, "connecting", None))
    output.start()
    session.outputs.add(output)
    return output
