"""The routes of view tokens: mint, list and revoke a session's tokens for viewers.

``POST /v1/sessions/{id}/view_tokens`` ``{"ttl_s": 3600}`` (optional; 60 s to 30 days, default
the server's ``AVATARCAST_VIEW_TOKEN_TTL``) answers ``201 {"id", "token", "expires",
"view_url", "obs_url"}``: the token is shown this once. ``GET`` lists the tokens (never their
values) with their ``state`` (``valid``, ``expired``, ``revoked``); ``DELETE
.../view_tokens/{token_id}`` revokes one and hangs up the viewers that joined with it. The
first token, ``t0``, is the session's ``view_token``. Only a key that controls the session
calls these (see :mod:`streamer.api.auth`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from streamer.api.auth import controlled_session, require_api_key
from streamer.api.errors import ApiError
from streamer.api.sessions import urls
from streamer.api.state import app_state
from streamer.api.viewtokens import MAX_TTL_S, TooManyTokens

router = APIRouter(
    prefix="/v1/sessions/{session_id}/view_tokens",
    tags=["view tokens"],
    dependencies=[Depends(require_api_key)],
)


class MintToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl_s: int | None = Field(default=None, ge=60, le=MAX_TTL_S)


@router.post("", status_code=201)
async def mint(request: Request, session_id: str, body: MintToken | None = None) -> dict[str, Any]:
    """A new view token for the session (shown once)."""
    session = controlled_session(request, session_id)
    try:
        made, token = app_state(request).access.views.mint(session, (body or MintToken()).ttl_s)
    except TooManyTokens as exc:
        raise ApiError(429, "too_many_view_tokens", str(exc)) from None
    links = urls(request, session, token)
    return {
        "id": made.id,
        "token": token,
        "expires": made.expires,
        "view_url": links["view_url"],
        "obs_url": links["obs_url"],
    }


@router.get("")
async def list_tokens(request: Request, session_id: str) -> dict[str, Any]:
    session = controlled_session(request, session_id)
    views = app_state(request).access.views
    now = views.clock()
    return {"view_tokens": [t.describe(now) for t in views.of(session).values()]}


@router.delete("/{token_id}", status_code=204)
async def revoke(request: Request, session_id: str, token_id: str) -> Response:
    """Revoke a token: no new viewer with it, and its viewers are hung up."""
    session = controlled_session(request, session_id)
    state = app_state(request)
    made = state.access.views.revoke(session, token_id)
    if made is None:
        raise ApiError(404, "view_token_not_found", f"no view token {token_id!r} in this session")
    for resource_id in list(made.peers):
        await state.webrtc.remove(resource_id, "its view token was revoked")
    made.peers.clear()
    return Response(status_code=204)
