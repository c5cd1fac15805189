"""HTTP routes, the WebSocket, and (from their own modules) WHEP and the pages."""

from __future__ import annotations

from fastapi import APIRouter

from streamer.api import health, sessions, ws


def core_routers() -> list[APIRouter]:
    return [sessions.router, ws.router, health.router]


__all__ = ["core_routers"]
