"""What a session tells its listeners (the WebSocket): one dataclass per event.

``to_json()`` gives the exact JSON object the WebSocket sends, ``type`` first.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class SessionEvent:
    type: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class SpeakingStarted(SessionEvent):
    type: ClassVar[str] = "speaking_started"
    utterance_id: str


@dataclass(frozen=True)
class PlaybackFinished(SessionEvent):
    type: ClassVar[str] = "playback_finished"
    utterance_id: str
    position_s: float
    interrupted: bool


@dataclass(frozen=True)
class SpeechFailed(SessionEvent):
    """An utterance that could not be played (its TTS or stream failed)."""

    type: ClassVar[str] = "error"
    code: str
    utterance_id: str
    message: str


@dataclass(frozen=True)
class AvatarChanged(SessionEvent):
    type: ClassVar[str] = "avatar_changed"
    avatar: str


@dataclass(frozen=True)
class OutputState(SessionEvent):
    """An output (RTMP push, recording) changed state; ``error`` says why when it is
    ``retrying`` or ``failed``."""

    type: ClassVar[str] = "output_state"
    output_id: str
    output_type: str
    state: str
    error: str | None = None


@dataclass(frozen=True)
class SessionFailed(SessionEvent):
    """The session's own pipeline failed: it closes (``session_closed`` follows); every
    other session goes on."""

    type: ClassVar[str] = "error"
    code: str
    message: str


@dataclass(frozen=True)
class SessionClosed(SessionEvent):
    """The last event of a session. ``reason``: ``deleted`` (DELETE), ``idle`` (nothing to
    do for ``idle_session_s``), ``failed`` (after an ``error``), ``shutdown`` (the server
    is stopping: its recordings are finalised), ``key_revoked`` (the key that created it
    was revoked: :mod:`streamer.api.revocation`)."""

    type: ClassVar[str] = "session_closed"
    session_id: str
    reason: str = "deleted"


class EventHub:
    """Fan-out of a session's events to bounded queues; a listener that stopped reading
    loses its oldest events, never blocks the session."""

    def __init__(self, depth: int) -> None:
        self._depth = depth
        self._queues: set[asyncio.Queue[SessionEvent]] = set()

    def subscribe(self) -> asyncio.Queue[SessionEvent]:
        queue: asyncio.Queue[SessionEvent] = asyncio.Queue(self._depth)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[SessionEvent]) -> None:
        self._queues.discard(queue)

    @property
    def listeners(self) -> int:
        return len(self._queues)

    def emit(self, event: SessionEvent) -> None:
        for queue in tuple(self._queues):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)
