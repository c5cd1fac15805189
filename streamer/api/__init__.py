"""HTTP routes: sessions, the WebSocket, WHEP and the microphone uplink, pages, health, docs."""

from __future__ import annotations

from fastapi import APIRouter

from streamer.api import apidocs, health, livekit, pages, sessions, whep, ws


def core_routers() -> list[APIRouter]:
    return [
        sessions.router,
        ws.router,
        whep.router,
        livekit.router,
        pages.router,
        health.router,
        apidocs.router,
    ]


__all__ = ["core_routers"]
