"""A revoked key's power ends at once, not only at its next call.

Each HTTP call checks its key (:mod:`streamer.api.auth`), so a revoked key's next call fails.
What the key opened before would go on without this module: a WebSocket pushing PCM, a
microphone uplink, a viewer, and the sessions it created with their outputs (RTMP pushes,
recordings, a LiveKit room). So the server watches the key file (``avatarcast keys revoke``
rewrites it) and, within :data:`POLL_S` of a key being revoked or removed:

- every connection opened with the key (:class:`KeyHolds`) is closed: a WebSocket gets an
  ``error`` event ``key_revoked`` and close code 4401; a WebRTC peer is hung up;
- every session the key created is closed as ``DELETE`` closes it (viewers hung up,
  recordings finalised, a LiveKit room left), with ``session_closed`` ``"reason":
  "key_revoked"``; its view tokens go with it. This holds for an admin key too: a revoked key
  is presumed leaked, so what it started ends. Sessions of other keys that an admin key only
  controlled go on; the connections it opened on them are closed, and the speech it queued
  or streamed into them is dropped (``playback_finished`` interrupted).

``AVATARCAST_API_KEY`` cannot be revoked while the server runs. The watch costs a ``stat`` of
the key file in a thread every :data:`POLL_S` while any session or connection is open; the
file is re-read only when it changed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from streamer.keys import Keyring
from streamer.session import SessionRegistry

log = logging.getLogger(__name__)

POLL_S = 0.25
REVOKED_REASON = "key_revoked"


@dataclass(frozen=True)
class _Hold:
    key_id: str
    close: Callable[[], Awaitable[object]]
    alive: Callable[[], bool]


class KeyHolds:
    """The connections each key opened that outlive the call that opened them."""

    def __init__(self) -> None:
        self._holds: dict[int, _Hold] = {}
        self._ids = itertools.count()

    def hold(
        self,
        key_id: str,
        close: Callable[[], Awaitable[object]],
        alive: Callable[[], bool] = lambda: True,
    ) -> int:
        """Remember that ``key_id`` opened something ``close`` ends; ``alive`` says whether it
        is still open (one that closed on its own is forgotten). Returns a handle for
        :meth:`release`."""
        handle = next(self._ids)
        self._holds[handle] = _Hold(key_id, close, alive)
        return handle

    def release(self, handle: int) -> None:
        self._holds.pop(handle, None)

    def __len__(self) -> int:
        return len(self._holds)

    def key_ids(self) -> set[str]:
        for handle in [h for h, held in self._holds.items() if not held.alive()]:
            del self._holds[handle]
        return {held.key_id for held in self._holds.values()}

    def take(self, ended: set[str]) -> list[_Hold]:
        """Forget and return what the ``ended`` keys hold."""
        taken = [h for h, held in self._holds.items() if held.key_id in ended]
        return [self._holds.pop(h) for h in taken]


async def sweep(keyring: Keyring, holds: KeyHolds, registry: SessionRegistry) -> set[str]:
    """End what revoked keys hold: their connections, then their sessions. Returns the keys
    found ended (empty when nothing was open)."""
    sessions = registry.list()
    held = holds.key_ids()
    if not sessions and not held:
        return set()
    await asyncio.to_thread(keyring.refresh)  # a stat; a read only when the file changed
    owners = {s.options.key_id for s in sessions}
    asking = set().union(*(s.asking_keys() for s in sessions))
    ended = {k for k in owners | held | asking if keyring.ended(k)}
    if not ended:
        return ended
    log.warning("API key(s) %s revoked: closing what they opened", ", ".join(sorted(ended)))
    # Its own sockets first, so they hear "key revoked" rather than "session closed".
    await _all(held.close() for held in holds.take(ended))
    await _all(registry.delete(s.id, REVOKED_REASON) for s in sessions if s.options.key_id in ended)
    for session in sessions:  # what they asked others' sessions to say stops
        if session.options.key_id not in ended and not session.closed:
            session.interrupt(ended)
    return ended


async def _all(closing: Iterable[Awaitable[object]]) -> None:
    """Await every closing at once; one that fails is logged and stops none of the others."""
    for result in await asyncio.gather(*closing, return_exceptions=True):
        if isinstance(result, Exception):
            log.error("closing what a revoked key opened failed", exc_info=result)


async def watch(
    keyring: Keyring,
    holds: KeyHolds,
    registry: SessionRegistry,
    on_swept: Callable[[], None] = lambda: None,
    poll_s: float = POLL_S,
) -> None:
    """:func:`sweep` every ``poll_s`` until cancelled; ``on_swept`` runs after a sweep that
    closed something (the app forgets the closed sessions' view tokens there)."""
    while True:
        await asyncio.sleep(poll_s)
        try:
            if await sweep(keyring, holds, registry):
                on_swept()
        except Exception:  # a failed sweep must not end the watch: the next one retries
            log.exception("the revocation watch failed; retrying")
