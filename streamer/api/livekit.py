"""``POST /v1/livekit/sessions``: a session that joins a LiveKit room as an agent's avatar.

LiveKit Agents' avatar plugins call a provider's dispatch endpoint with the room's URL and a
token minted for the avatar participant (``lk.publish_on_behalf`` naming the agent). Here that
makes a session and a :class:`~streamer.outputs.livekit.worker.LiveKitWorker` for it; the
session lives as long as the worker is in the room, and deleting either ends both.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict

from streamer.api.auth import check_avatar_use, controlled_session, require_api_key
from streamer.api.errors import ApiError
from streamer.api.sessions import creation_errors
from streamer.api.state import AppState, app_state
from streamer.session import Session, SessionOptions

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/v1/livekit/sessions", tags=["livekit"], dependencies=[Depends(require_api_key)]
)

CONNECT_TIMEOUT_S = 20.0
NOT_INSTALLED = (
    "this server has no LiveKit support: install its livekit extra "
    "(pip install 'avatarcast[livekit]') and restart it"
)


class DispatchLiveKit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    token: str = ""
    avatar: str | None = None


def _check(body: DispatchLiveKit) -> None:
    scheme = urlsplit(body.url).scheme.lower()
    if scheme not in ("ws", "wss") or not urlsplit(body.url).hostname:
        raise ApiError(
            400, "bad_url", f"url must be a LiveKit server's ws:// or wss:// URL, not {body.url!r}"
        )
    if not body.token.strip():
        raise ApiError(400, "missing_token", "token is empty: mint one for the avatar participant")


async def _session(state: AppState, avatar: str, key_id: str) -> Session:
    with creation_errors():
        await state.engines.get(avatar)
        return await state.registry.create(avatar, SessionOptions(key_id=key_id), key=key_id)


@router.post("", status_code=201)
async def dispatch(request: Request, body: DispatchLiveKit) -> dict[str, Any]:
    """Join the room as the avatar: ``201 {"id", "avatar", "output_id"}`` once it is in."""
    state = app_state(request)
    who = require_api_key(request)
    name = body.avatar or state.settings.avatar
    await check_avatar_use(request, who, name)  # a publisher key names its avatars
    _check(body)
    try:
        from streamer.outputs.livekit.worker import LiveKitWorker, default_room
    except ImportError:
        raise ApiError(501, "livekit_unavailable", NOT_INSTALLED) from None
    session = await _session(state, name, who.key_id)
    room = (state.livekit_room or default_room)()
    worker = LiveKitWorker(
        session, room, body.url, body.token, ended=lambda: state.registry.delete(session.id)
    )
    session.outputs.add(worker)
    try:
        await asyncio.wait_for(worker.start(), CONNECT_TIMEOUT_S)
    except Exception as exc:
        await state.registry.delete(session.id)
        why = str(exc) or f"no answer within {CONNECT_TIMEOUT_S:g} s"
        raise ApiError(
            502, "livekit_connect_failed", f"could not join the LiveKit room at {body.url}: {why}"
        ) from None
    return {"id": session.id, "avatar": session.avatar.name, "output_id": worker.id}


@router.delete("/{session_id}", status_code=204)
async def leave(request: Request, session_id: str) -> Response:
    """Leave the room and close the session."""
    session = controlled_session(request, session_id)
    if not any(o["type"] == "livekit" for o in session.outputs.describe()):
        raise ApiError(404, "session_not_found", f"session {session_id!r} is not in a LiveKit room")
    await app_state(request).registry.delete(session_id)
    return Response(status_code=204)
