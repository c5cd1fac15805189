"""WHEP viewers (draft-ietf-wish-whep) and the host's microphone uplink.

``POST /v1/sessions/{id}/whep`` takes a recvonly SDP offer and answers ``201`` with the SDP
answer, the WHEP resource in ``Location`` and its ICE session in ``ETag``. The resource takes
trickle ICE (``PATCH``, ``application/trickle-ice-sdpfrag``, ``204``) and ``DELETE`` (``200``).
Every answer carries CORS headers so a page on another origin (an OBS overlay, a player) can
play it. Viewers authenticate with the session's view token (Bearer or ``?token=``) or the API
key; the microphone uplink (``POST /v1/sessions/{id}/mic``) needs the API key, because it makes
the avatar speak.
"""

from __future__ import annotations

import secrets
from typing import Any

from aiortc import MediaStreamTrack
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from streamer.outputs.uplink import forward_microphone
from streamer.outputs.webrtc import Peer, PeerRegistry, SdpError

router = APIRouter(tags=["webrtc"])

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


class HTTPProblem(Exception):
    def __init__(self, status: int, code: str, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": {"code": self.code, "message": self.message}},
            status_code=self.status,
            headers={**CORS, **self.headers},
        )


def peers(request: Request) -> PeerRegistry:
    """The app's peer registry (the lifespan should create and close it; made here if not)."""
    registry = getattr(request.app.state, "webrtc", None)
    if registry is None:
        registry = PeerRegistry()
        request.app.state.webrtc = registry
    assert isinstance(registry, PeerRegistry)
    return registry


def _services(request: Request) -> tuple[Any, str | None]:
    """The session registry and the API key: live-core's typed ``app.state.avatarcast``, or
    ``app.state.sessions`` / ``app.state.settings`` in a bare app (tests, embedding)."""
    state = getattr(request.app.state, "avatarcast", None)
    if state is not None:
        return state.registry, state.settings.api_key
    settings = getattr(request.app.state, "settings", None)
    return getattr(request.app.state, "sessions", None), getattr(settings, "api_key", None)


def find_session(request: Request, session_id: str) -> Any | None:
    registry, _ = _services(request)
    return registry.get(session_id) if registry is not None else None


def _session(request: Request, session_id: str) -> Any:
    session = find_session(request, session_id)
    if session is None:
        raise HTTPProblem(404, "session_not_found", f"no session {session_id!r}")
    return session


def api_key(request: Request) -> str | None:
    return _services(request)[1]


def _presented_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.query_params.get("token")


def _authorize(request: Request, session: Any, *, viewer: bool) -> None:
    key = api_key(request)
    if key is None:
        return  # no key: the server is on loopback or the operator chose an open server
    token = _presented_token(request) or ""
    allowed = [key] + ([str(session.view_token)] if viewer else [])
    if not any(secrets.compare_digest(token.encode(), a.encode()) for a in allowed):
        what = "the session's view token or the API key" if viewer else "the API key"
        raise HTTPProblem(
            401,
            "unauthorized",
            f"send {what} as 'Authorization: Bearer ...'" + (" or ?token=" if viewer else ""),
            **{"WWW-Authenticate": "Bearer"},
        )


async def _body(request: Request, content_type: str) -> str:
    got = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if got != content_type:
        raise HTTPProblem(
            415, "unsupported_media_type", f"Content-Type must be {content_type}, not {got!r}"
        )
    raw = await request.body()
    if len(raw) > MAX_SDP_BYTES:
        raise HTTPProblem(413, "too_large", f"the body is over {MAX_SDP_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPProblem(400, "bad_sdp", "the body is not UTF-8 text") from None


def _ready(session: Any) -> None:
    if not getattr(session, "ready", True):
        raise HTTPProblem(
            409,
            "session_not_ready",
            "the session has not published its first frame yet: retry shortly",
            **{"Retry-After": str(RETRY_AFTER_S)},
        )


def _resource(request: Request, kind: str, session_id: str, resource_id: str) -> Peer:
    peer = peers(request).get(resource_id)
    if peer is None or peer.info.session_id != session_id or peer.info.kind != kind:
        raise HTTPProblem(404, "resource_not_found", f"no {kind} resource {resource_id!r}")
    return peer


def _created(request: Request, peer: Peer, answer: str, kind: str) -> Response:
    location = f"/v1/sessions/{peer.info.session_id}/{kind}/{peer.info.resource_id}"
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
)
async def whep_post(request: Request, session_id: str) -> Response:
    try:
        session = _session(request, session_id)
        _authorize(request, session, viewer=True)
        offer = await _body(request, SDP)
        _ready(session)
        try:
            peer, answer = await peers(request).add_viewer(session, offer)
        except SdpError as exc:
            raise HTTPProblem(400, "bad_sdp", str(exc)) from None
        return _created(request, peer, answer, "whep")
    except HTTPProblem as problem:
        return problem.response()


async def _patch(request: Request, kind: str, session_id: str, resource_id: str) -> Response:
    try:
        session = _session(request, session_id)
        _authorize(request, session, viewer=kind == "whep")
        peer = _resource(request, kind, session_id, resource_id)
        if_match = request.headers.get("if-match")
        if if_match not in (None, "*", f'"{peer.info.etag}"'):
            raise HTTPProblem(412, "etag_mismatch", "If-Match does not name this ICE session")
        fragment = await _body(request, SDPFRAG)
        if "a=ice-ufrag:" in fragment and "a=candidate:" not in fragment:
            raise HTTPProblem(
                422, "ice_restart_unsupported", "ICE restarts are not supported: POST again"
            )
        try:
            await peers(request).trickle(peer, fragment)
        except SdpError as exc:
            raise HTTPProblem(400, "bad_sdp", str(exc)) from None
        return Response(status_code=204, headers=CORS)
    except HTTPProblem as problem:
        return problem.response()


async def _delete(request: Request, kind: str, session_id: str, resource_id: str) -> Response:
    try:
        session = _session(request, session_id)
        _authorize(request, session, viewer=kind == "whep")
        peer = _resource(request, kind, session_id, resource_id)
        await peers(request).remove(peer.info.resource_id)
        return Response(status_code=200, headers=CORS)
    except HTTPProblem as problem:
        return problem.response()


@router.patch("/v1/sessions/{session_id}/whep/{resource_id}", status_code=204)
async def whep_patch(request: Request, session_id: str, resource_id: str) -> Response:
    """Trickle ICE: the client's candidates as an SDP fragment."""
    return await _patch(request, "whep", session_id, resource_id)


@router.delete("/v1/sessions/{session_id}/whep/{resource_id}", status_code=200)
async def whep_delete(request: Request, session_id: str, resource_id: str) -> Response:
    """Stop playing: closes the viewer's peer connection."""
    return await _delete(request, "whep", session_id, resource_id)


@router.post(
    "/v1/sessions/{session_id}/mic",
    status_code=201,
    response_class=Response,
    summary="The host's microphone: an SDP offer sending audio; the voice becomes speech",
)
async def mic_post(request: Request, session_id: str) -> Response:
    try:
        session = _session(request, session_id)
        _authorize(request, session, viewer=False)
        offer = await _body(request, SDP)

        def on_track(peer: Peer, track: MediaStreamTrack) -> None:
            peer.own(forward_microphone(session, track), "microphone")

        try:
            peer, answer = await peers(request).add_uplink(session, offer, on_track)
        except SdpError as exc:
            raise HTTPProblem(400, "bad_sdp", str(exc)) from None
        return _created(request, peer, answer, "mic")
    except HTTPProblem as problem:
        return problem.response()


@router.patch("/v1/sessions/{session_id}/mic/{resource_id}", status_code=204)
async def mic_patch(request: Request, session_id: str, resource_id: str) -> Response:
    return await _patch(request, "mic", session_id, resource_id)


@router.delete("/v1/sessions/{session_id}/mic/{resource_id}", status_code=200)
async def mic_delete(request: Request, session_id: str, resource_id: str) -> Response:
    """Microphone off: ends the live utterance."""
    return await _delete(request, "mic", session_id, resource_id)
