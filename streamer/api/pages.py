"""The pages: the control page (``/``), a viewer (``/view/{id}``), the OBS page (``/obs/{id}``).

Plain HTML/JS/CSS from ``web/`` (nothing from a CDN, no build step). The viewer and OBS pages
take the session's view token as ``?token=`` when the server has an API key.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from streamer.api.whep import api_key, find_session

router = APIRouter(include_in_schema=False)

ASSET_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


def web_root() -> Path:
    """``web/`` next to the package in a checkout, or ``streamer/web`` when installed."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "web", here / "web"):
        if (candidate / "index.html").is_file():
            return candidate
    raise FileNotFoundError("the web/ pages are missing from this installation")


def _page(name: str) -> Response:
    html = (web_root() / name).read_text(encoding="utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _viewer_page(request: Request, session_id: str, name: str) -> Response:
    session = find_session(request, session_id)
    if session is None:
        return _error(404, "session_not_found", f"no session {session_id!r}")
    key = api_key(request)
    if key:
        token = request.query_params.get("token", "")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        allowed = (key, str(session.view_token))
        if not any(secrets.compare_digest(token.encode(), a.encode()) for a in allowed):
            return _error(401, "unauthorized", "add ?token=<the session's view_token>")
    return _page(name)


@router.get("/")
async def control_page() -> Response:
    return _page("index.html")


@router.get("/view/{session_id}")
async def view_page(request: Request, session_id: str) -> Response:
    return _viewer_page(request, session_id, "view.html")


@router.get("/obs/{session_id}")
async def obs_page(request: Request, session_id: str) -> Response:
    return _viewer_page(request, session_id, "obs.html")


@router.get("/web/{name}")
async def asset(name: str) -> Response:
    root = web_root()
    path = (root / name).resolve()
    kind = ASSET_TYPES.get(path.suffix)
    if path.parent != root.resolve() or kind is None or not path.is_file():
        return _error(404, "not_found", f"no asset {name!r}")
    return FileResponse(path, media_type=kind, headers={"Cache-Control": "no-cache"})
