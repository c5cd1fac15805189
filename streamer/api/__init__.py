"""HTTP routes: sessions, the WebSocket, WHEP and the microphone uplink, pages, health, docs."""

from __future__ import annotations

from fastapi import APIRouter

from streamer.api import apidocs, avatars, health, livekit, pages, sessions, tokens, whep, ws


def core_routers() -> list[APIRouter]:
    return [
        sessions.router,
        avatars.router,
        tokens.router,
        ws.router,
        whep.router,
        livekit.router,
        pages.router,
        health.router,
        apidocs.router,
    ]


__all__ = ["core_routers"]
