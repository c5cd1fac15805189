"""WHEP viewers (draft-ietf-wish-whep) and the host's microphone uplink.

``POST /v1/sessions/{id}/whep`` takes a recvonly SDP offer and answers ``201`` with the SDP
answer, the WHEP resource in ``Location`` and its ICE session in ``ETag``. The resource takes
trickle ICE (``PATCH``, ``application/trickle-ice-sdpfrag``, ``204``) and ``DELETE`` (``200``).
Every answer, errors included, carries CORS headers so a page on another origin (an OBS
overlay, a player) can play it. Viewers authenticate with the session's view token (Bearer or
``?token=``) or a key that controls the session; the microphone uplink (``POST
/v1/sessions/{id}/mic``) needs such a key, because it makes the avatar speak. A viewer that
joined with a view token is hung up when that token is revoked; a viewer or an uplink
opened with an API key, when that key is revoked (:mod:`streamer.api.revocation`). An API
key is taken here as a Bearer token only, never in the URL.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from aiortc import MediaStreamTrack
from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute

from streamer.api.auth import (
    acting_key_id,
    controlled_session,
    require_api_key,
    viewed_session,
)
from streamer.api.errors import ApiError
from streamer.api.limits import check_viewers
from streamer.api.state import app_state
from streamer.outputs.uplink import forward_microphone
from streamer.outputs.webrtc import Peer, SdpError
from streamer.session import Session

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
MAX_SDP_BYTES = 64 * 1024
RETRY_AFTER_S = 1
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "OPTIONS, POST, PATCH, DELETE",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Patch, Accept-Post, Retry-After",
    "Access-Control-Max-Age": "600",
}


class CorsRoute(APIRoute):
    """A route whose errors (from its dependencies too) carry the CORS headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_cors(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                raise exc.with_headers(CORS) from None

        return with_cors


def raw_body(media_type: str, what: str) -> dict[str, Any]:
    """An ``openapi_extra`` request body. These routes read their body raw (SDP is not JSON),
    so FastAPI cannot describe it; /openapi.json (and so /docs and schemathesis) learns it here."""
    return {
        "requestBody": {
            "required": True,
            "description": what,
            "content": {media_type: {"schema": {"type": "string"}}},
        }
    }


OFFER = raw_body(SDP, "an SDP offer (at most 64 KiB, UTF-8)")
FRAGMENT = raw_body(SDPFRAG, "trickle ICE: a=candidate lines, a=end-of-candidates")
ANSWERED: dict[int | str, dict[str, Any]] = {
    201: {
        "description": "the SDP answer; the resource in Location, its ICE session in ETag",
        "content": {SDP: {"schema": {"type": "string"}}},
    }
}

router = APIRouter(tags=["webrtc"], route_class=CorsRoute)
Kind = Literal["whep", "mic"]
Viewed = Annotated[Session, Depends(viewed_session)]
KEY = [Depends(require_api_key)]


async def _body(request: Request, content_type: str) -> str:
    got = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if got != content_type:
        raise ApiError(
            415, "unsupported_media_type", f"Content-Type must be {content_type}, not {got!r}"
        )
    raw = await request.body()
    if len(raw) > MAX_SDP_BYTES:
        raise ApiError(413, "too_large", f"the body is over {MAX_SDP_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_sdp", "the body is not UTF-8 text") from None


def _ready(session: Session) -> None:
    if not session.ready:
        raise ApiError(
            409,
            "session_not_ready",
            "the session has not published its first frame yet: retry shortly",
            {"Retry-After": str(RETRY_AFTER_S)},
        )


def _resource(request: Request, kind: Kind, session_id: str, resource_id: str) -> Peer:
    webrtc = app_state(request).webrtc
    peer = webrtc.get(resource_id)
    if peer is None or peer.info.session_id != session_id or peer.info.kind != kind:
        why = webrtc.ended(resource_id, session_id, kind)
        said = f"the {kind} resource {resource_id!r} has ended: {why}" if why else None
        raise ApiError(404, "resource_not_found", said or f"no {kind} resource {resource_id!r}")
    return peer


def _created(peer: Peer, answer: str) -> Response:
    location = f"/v1/sessions/{peer.info.session_id}/{peer.info.kind}/{peer.info.resource_id}"
    return Response(
        answer,
        status_code=201,
        media_type=SDP,
        headers={
            **CORS,
            "Location": location,
            "ETag": f'"{peer.info.etag}"',
            "Accept-Patch": SDPFRAG,
        },
    )


def _options(accept_post: bool) -> Response:
    headers = dict(CORS)
    if accept_post:
        headers["Accept-Post"] = SDP
    else:
        headers["Accept-Patch"] = SDPFRAG
    return Response(status_code=204, headers=headers)


@router.options("/v1/sessions/{session_id}/whep", include_in_schema=False)
@router.options("/v1/sessions/{session_id}/mic", include_in_schema=False)
async def endpoint_options(session_id: str) -> Response:
    return _options(accept_post=True)


@router.options("/v1/sessions/{session_id}/whep/{resource_id}", include_in_schema=False)
@router.options("/v1/sessions/{session_id}/mic/{resource_id}", include_in_schema=False)
async def resource_options(session_id: str, resource_id: str) -> Response:
    return _options(accept_post=False)


@router.post(
    "/v1/sessions/{session_id}/whep",
    status_code=201,
    response_class=Response,
    summary="WHEP: play a session (an SDP recvonly offer in, the SDP answer out)",
    openapi_extra=OFFER,
    responses=ANSWERED,
)
async def whep_post(request: Request, session: Viewed) -> Response:
    offer = await _body(request, SDP)
    _ready(session)
    state = app_state(request)
    check_viewers(request, session)
    try:
        peer, answer = await state.webrtc.add_viewer(session, offer)
    except SdpError as exc:
        raise ApiError(400, "bad_sdp", str(exc)) from None
    token_id = request.state.view_token_id
    if token_id is not None:
        state.access.views.of(session)[token_id].peers.add(peer.info.resource_id)
    if request.state.key_id is not None:
        _held_by(request, request.state.key_id, peer)
    return _created(peer, answer)


def _held_by(request: Request, key_id: str, peer: Peer) -> None:
    """Revoking ``key_id`` hangs ``peer`` up (:mod:`streamer.api.revocation`)."""
    webrtc, resource_id = app_state(request).webrtc, peer.info.resource_id
    app_state(request).access.holds.hold(
        key_id,
        lambda: webrtc.remove(resource_id, "its API key was revoked"),
        lambda: webrtc.get(resource_id) is not None,
    )


async def _patch(request: Request, kind: Kind, session_id: str, resource_id: str) -> Response:
    peer = _resource(request, kind, session_id, resource_id)
    if_match = request.headers.get("if-match")
    if if_match not in (None, "*", f'"{peer.info.etag}"'):
        raise ApiError(412, "etag_mismatch", "If-Match does not name this ICE session")
    fragment = await _body(request, SDPFRAG)
    if "a=ice-ufrag:" in fragment and "a=candidate:" not in fragment:
        raise ApiError(422, "ice_restart_unsupported", "ICE restarts are not supported: POST again")
    try:
        await app_state(request).webrtc.trickle(peer, fragment)
    except SdpError as exc:
        raise ApiError(400, "bad_sdp", str(exc)) from None
    return Response(status_code=204, headers=CORS)


async def _delete(request: Request, kind: Kind, session_id: str, resource_id: str) -> Response:
    peer = _resource(request, kind, session_id, resource_id)
    await app_state(request).webrtc.remove(peer.info.resource_id)
    return Response(status_code=200, headers=CORS)


@router.patch(
    "/v1/sessions/{session_id}/whep/{resource_id}", status_code=204, openapi_extra=FRAGMENT
)
async def whep_patch(request: Request, session: Viewed, resource_id: str) -> Response:
    """Trickle ICE: the client's candidates as an SDP fragment."""
    return await _patch(request, "whep", session.id, resource_id)


@router.delete("/v1/sessions/{session_id}/whep/{resource_id}", status_code=200)
async def whep_delete(request: Request, session: Viewed, resource_id: str) -> Response:
    """Stop playing: closes the viewer's peer connection."""
    return await _delete(request, "whep", session.id, resource_id)


@router.post(
    "/v1/sessions/{session_id}/mic",
    status_code=201,
    response_class=Response,
    dependencies=KEY,
    summary="The host's microphone: an SDP offer sending audio; the voice becomes speech",
    openapi_extra=OFFER,
    responses=ANSWERED,
)
async def mic_post(request: Request, session_id: str) -> Response:
    session = controlled_session(request, session_id)
    offer = await _body(request, SDP)

    def on_track(peer: Peer, track: MediaStreamTrack) -> None:
        peer.own(forward_microphone(session, track), "microphone")

    try:
        peer, answer = await app_state(request).webrtc.add_uplink(session, offer, on_track)
    except SdpError as exc:
        raise ApiError(400, "bad_sdp", str(exc)) from None
    _held_by(request, acting_key_id(request), peer)
    return _created(peer, answer)


@router.patch(
    "/v1/sessions/{session_id}/mic/{resource_id}",
    status_code=204,
    dependencies=KEY,
    openapi_extra=FRAGMENT,
)
async def mic_patch(request: Request, session_id: str, resource_id: str) -> Response:
    controlled_session(request, session_id)
    return await _patch(request, "mic", session_id, resource_id)


@router.delete("/v1/sessions/{session_id}/mic/{resource_id}", status_code=200, dependencies=KEY)
async def mic_delete(request: Request, session_id: str, resource_id: str) -> Response:
    """Microphone off: ends the live utterance."""
    controlled_session(request, session_id)
    return await _delete(request, "mic", session_id, resource_id)
