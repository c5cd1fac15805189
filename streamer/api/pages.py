"""The pages: the control page (``/``), a viewer (``/view/{id}``), the OBS page (``/obs/{id}``).

Plain HTML/JS/CSS from ``web/`` (nothing from a CDN, no build step). The viewer and OBS pages
take the session's view token as ``?token=`` when the server has an API key.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Response
from fastapi.responses import FileResponse, HTMLResponse

from streamer.api.auth import viewed_session
from streamer.api.errors import ApiError

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


# A session's pages are for its viewers: it must exist (404), then the token (401).
VIEWER = [Depends(viewed_session)]


@router.get("/")
async def control_page() -> Response:
    return _page("index.html")


@router.get("/view/{session_id}", dependencies=VIEWER)
async def view_page() -> Response:
    return _page("view.html")


@router.get("/obs/{session_id}", dependencies=VIEWER)
async def obs_page() -> Response:
    return _page("obs.html")


@router.get("/web/{name}")
async def asset(name: str) -> Response:
    root = web_root()
    path = (root / name).resolve()
    kind = ASSET_TYPES.get(path.suffix)
    if path.parent != root.resolve() or kind is None or not path.is_file():
        raise ApiError(404, "not_found", f"no asset {name!r}")
    return FileResponse(path, media_type=kind, headers={"Cache-Control": "no-cache"})
