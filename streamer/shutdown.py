"""Stopping gracefully (SIGTERM, Ctrl-C): every session is told, then closed, before the
connections go.

uvicorn's own shutdown closes the open connections first and runs the app's lifespan
shutdown last, so a WebSocket client would only see its socket drop and a recording would be
finalised after its listeners had gone. :class:`DrainingServer` stops accepting connections,
then closes every session with the reason ``shutdown`` (each WebSocket client gets
``session_closed`` and a 1001 close; each recording is finished, its file complete), then
lets uvicorn close what is left and run the lifespan.
"""

from __future__ import annotations

import logging
import socket

import uvicorn
from fastapi import FastAPI

from streamer.api.state import AppState

log = logging.getLogger(__name__)


async def drain(app: FastAPI) -> None:
    """Close every session and WebRTC peer of ``app``, telling them why. Idempotent."""
    state = getattr(app.state, "avatarcast", None)
    if not isinstance(state, AppState):
        return
    log.info("shutting down: closing %d sessions", len(state.registry))
    await state.registry.aclose("shutdown")
    await state.webrtc.aclose()


class DrainingServer(uvicorn.Server):
    """uvicorn, draining the app's sessions between refusing new connections and closing
    the open ones."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # no new connections while the sessions drain
        app = self.config.app
        if isinstance(app, FastAPI):
            try:
                await drain(app)
            except Exception:
                log.exception("draining the sessions failed; stopping anyway")
        await super().shutdown(sockets)
