"""What every pushed output shares: its states, its last error, and how it reports them.

An output (an RTMP push, a recording) moves through ``connecting`` → ``live``, then
``retrying`` after a network error (and back to ``connecting``), ``failed`` when it cannot go
on (a full disk, a destination that is not a server), and ``stopped`` when it is removed or
its session closes. Each change is told once, on the event loop, to a ``report`` callback
that the factory wires to the session's events and the app's metrics; the muxing thread
never touches either directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import SplitResult, urlsplit

log = logging.getLogger(__name__)

StateName = Literal["connecting", "live", "retrying", "failed", "stopped"]
STATES: tuple[StateName, ...] = ("connecting", "live", "retrying", "failed", "stopped")
FINAL: frozenset[StateName] = frozenset({"failed", "stopped"})

# Outputs one session may hold: each costs a muxer thread and its network link (the video
# encode is shared), so a runaway script cannot make the server open hundreds of sockets.
MAX_OUTPUTS_PER_SESSION = 8


class OutputRejected(ValueError):
    """A request for an output that cannot be honoured: ``status`` and ``code`` are what
    the API answers (the outputs package does not import the API)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class StateChange:
    """One transition, as the report callback receives it."""

    output_id: str
    output_type: str
    state: StateName
    error: str | None


Report = Callable[[StateChange], None]


class OutputStatus:
    """An output's state and last error, written from its muxing thread, reported on the
    loop. ``last_error`` stays after a recovery, so a user can see why it had been down."""

    def __init__(
        self, output_id: str, kind: str, report: Report, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.output_id = output_id
        self.kind = kind
        self.state: StateName = "connecting"
        self.last_error: str | None = None
        self._report = report
        self._loop = loop
        self._lock = threading.Lock()

    def set(self, state: StateName, error: str | None = None) -> bool:
        """Move to ``state`` (from any thread); False once stopped or failed for good."""
        with self._lock:
            if self.state in FINAL or (state == self.state and error is None):
                return False
            self.state = state
            if error is not None:
                self.last_error = error
            change = StateChange(self.output_id, self.kind, state, error)
        if error is not None:
            log.warning("output %s (%s): %s: %s", self.output_id, self.kind, state, error)
        else:
            log.info("output %s (%s): %s", self.output_id, self.kind, state)
        self._call_on_loop(change)
        return True

    def _call_on_loop(self, change: StateChange) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._deliver(change)
        elif not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._deliver, change)

    def _deliver(self, change: StateChange) -> None:
        try:
            self._report(change)
        except Exception:
            log.exception("output %s: reporting its state failed", self.output_id)


MAX_URL = 2048


def split_url(url: object, needs: str) -> tuple[SplitResult, int | None]:
    """A push URL's parts and port, checked for what every scheme refuses (``needs`` says
    what a missing URL should have been): too long, spaces or control characters, unparsable."""
    if not isinstance(url, str) or not url:
        raise OutputRejected(400, "invalid_url", needs)
    if len(url) > MAX_URL or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise OutputRejected(
            400, "invalid_url", "the url is too long or has spaces or control characters"
        )
    try:
        parts = urlsplit(url)
        return parts, parts.port
    except ValueError as exc:
        raise OutputRejected(400, "invalid_url", f"the url cannot be parsed: {exc}") from None


class HasStatus:
    """What every output says of itself from its :class:`OutputStatus`: the ``state`` and
    ``last_error`` the session's listing, events and metrics read."""

    _status: OutputStatus

    @property
    def state(self) -> str:
        return self._status.state

    @property
    def last_error(self) -> str | None:
        return self._status.last_error

    def _status_fields(self) -> dict[str, Any]:
        """The first fields of ``describe()``, common to every output."""
        return {"state": self._status.state, "last_error": self._status.last_error}


class Backoff:
    """Waits between reconnections: 0.5 s doubling to 10 s, back to 0.5 s once live."""

    def __init__(self, first_s: float = 0.5, most_s: float = 10.0) -> None:
        self.first_s = first_s
        self.most_s = most_s
        self._next = first_s

    def next(self) -> float:
        wait = self._next
        self._next = min(self.most_s, self._next * 2)
        return wait

    def reset(self) -> None:
        self._next = self.first_s
