"""The outputs a session owns: what ``GET /v1/sessions/{id}`` lists, and what closing the
session stops.

An output (an RTMP push, a recording, a WHIP publisher, a virtual camera) only subscribes to
the session's AV or encoded frames; it never writes into the session. The session keeps the
set so that each output's state shows in the session's description and none outlives it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from streamer.session.events import SessionEvent

log = logging.getLogger(__name__)


class Output(Protocol):
    """One running output of a session."""

    id: str
    kind: str

    def describe(self) -> dict[str, Any]:
        """Its public state: at least ``state`` and ``last_error`` (INTERFACE.md)."""
        ...

    async def aclose(self) -> None: ...


class SessionOutputs:
    """A session's outputs by id, closed with it. ``emit`` sends their state changes to the
    session's listeners, as session events."""

    def __init__(
        self,
        emit: Callable[[SessionEvent], None] | None = None,
        on_add: Callable[[str], None] | None = None,
    ) -> None:
        self._outputs: dict[str, Output] = {}
        self._emit = emit
        self._on_add = on_add  # told each new output's kind (an RTMP push turns the label on)

    def emit(self, event: SessionEvent) -> None:
        if self._emit is not None:
            self._emit(event)

    def add(self, output: Output) -> None:
        if output.id in self._outputs:
            raise ValueError(f"output {output.id} is already attached")
        self._outputs[output.id] = output
        if self._on_add is not None:
            self._on_add(output.kind)

    def get(self, output_id: str) -> Output | None:
        return self._outputs.get(output_id)

    def __contains__(self, output_id: object) -> bool:
        return output_id in self._outputs

    def __len__(self) -> int:
        return len(self._outputs)

    def describe(self) -> list[dict[str, Any]]:
        return [{"id": o.id, "type": o.kind, **o.describe()} for o in self._outputs.values()]

    async def remove(self, output_id: str) -> bool:
        """Stop and forget one output; False when there is none by that id."""
        output = self._outputs.pop(output_id, None)
        if output is None:
            return False
        await output.aclose()
        return True

    async def aclose(self) -> None:
        """Stop every output; one that fails to stop does not keep the others running."""
        while self._outputs:
            _, output = self._outputs.popitem()
            try:
                await output.aclose()
            except Exception:
                log.exception("output %s (%s) failed to stop", output.id, output.kind)
