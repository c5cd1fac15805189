"""Sessions: create, list, show, delete; speak (text or audio bytes), interrupt, outputs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from models.audio import SAMPLE_RATE
from models.avatar import Avatar, AvatarError
from models.matte import Matte, MatteError
from models.media import AudioDecodeError, decode_audio
from streamer.api.auth import (
    acting_key_id,
    check_avatar_use,
    controlled_session,
    may_control,
    require_api_key,
)
from streamer.api.errors import ApiError
from streamer.api.limits import RETRY_AFTER, too_large
from streamer.api.state import app_state
from streamer.engine.base import BackendError
from streamer.outputs.base import OutputRejected
from streamer.outputs.factory import attach_output
from streamer.outputs.spec import parse_spec
from streamer.pipeline.canvas import Canvas
from streamer.session import Session, SessionOptions, SpeechRejected, TooManySessions

router = APIRouter(
    prefix="/v1/sessions", tags=["sessions"], dependencies=[Depends(require_api_key)]
)

AUDIO_TYPES = ("audio/", "video/")
AUDIO_EXTRA = ("application/ogg", "application/octet-stream")
MAX_PIXELS = 1920 * 1080  # a session's picture, unless its avatar's own is larger
SIZE_DOC = "even: the session's picture size for its life; any avatar is fitted to it"
REJECTED_STATUS = {
    "buffer_full": 413,
    "text_too_long": 413,
    "audio_too_long": 413,
    "empty_text": 400,
    "empty_audio": 400,
    "session_closed": 409,
    "too_many_utterances": 429,
    "tts_unavailable": 503,
}


class CreateSession(BaseModel):
    """``width``/``height``: the session's picture size for its whole life (see
    :mod:`streamer.pipeline.canvas`); even (H.264's 4:2:0), 16 to 4096, else 422. Left out,
    the avatar's own size (rounded up to even); one alone keeps the avatar's aspect."""

    model_config = ConfigDict(extra="forbid")

    avatar: str | None = None
    video_codec: Literal["vp8", "h264"] = "vp8"
    width: int | None = Field(default=None, ge=16, le=4096, multiple_of=2, description=SIZE_DOC)
    height: int | None = Field(default=None, ge=16, le=4096, multiple_of=2, description=SIZE_DOC)
    # "transparent": colour and the person's alpha side by side in one picture twice as wide
    background: Literal["opaque", "transparent"] = "opaque"
    # The visible "AI-generated" label; left out, it comes on with an RTMP/SRT output.
    label: bool | None = None


async def load_matte(request: Request, avatar: Avatar) -> None:
    """Have ``avatar``'s alpha matte in memory before a transparent session composes with it:
    read (or, for a package that predates mattes, computed and stored) off the event loop."""
    matte = avatar.matte or Matte(avatar.path, avatar.frames)
    if matte.loaded:
        return
    try:
        await asyncio.get_running_loop().run_in_executor(app_state(request).decode_pool, matte.get)
    except MatteError as exc:
        raise ApiError(503, "matte_unavailable", f"no transparent background: {exc}") from None


def check_size(avatar: Avatar, options: SessionOptions) -> None:
    """Refuse a size larger than 1080p's pixel count, or the avatar's own if larger (422):
    every picture is scaled to it and encoded at it, and one session must not take the
    machine's CPU from the others."""
    height, width = avatar.frames.shape[1:3]
    canvas = Canvas.choose((width, height), options.width, options.height)
    if canvas.width * canvas.height <= max(MAX_PIXELS, width * height):
        return
    raise ApiError(
        422,
        "unsupported_size",
        f"{canvas.width}x{canvas.height} is more pixels than a session may stream: at most "
        f"1920x1080's, or the avatar's own size ({width}x{height}); leave width and height "
        "out for the avatar's own",
    )


def urls(request: Request, session: Session, view_token: str | None = None) -> dict[str, str]:
    """The session's URLs; the pages' carry ``view_token`` (default: the session's first)."""
    base = str(request.base_url).rstrip("/")
    ws_base = "ws" + base[4:] if base.startswith("http") else base
    # The pages learn from the URL that the picture is colour and alpha side by side.
    query = f"token={view_token or session.view_token}"
    if session.options.transparent:
        query += "&background=transparent"
    return {
        "whep_url": f"{base}/v1/sessions/{session.id}/whep",
        "view_url": f"{base}/view/{session.id}?{query}",
        "obs_url": f"{base}/obs/{session.id}?{query}",
        "ws_url": f"{ws_base}/v1/sessions/{session.id}/ws?sample_rate={SAMPLE_RATE}",
    }


@contextlib.contextmanager
def creation_errors() -> Iterator[None]:
    """What can stop a session from being made, as the API answers it."""
    try:
        yield
    except AvatarError as exc:
        raise ApiError(400, "unknown_avatar", str(exc)) from None
    except BackendError as exc:
        raise ApiError(503, "backend_unavailable", str(exc)) from None
    except TooManySessions as exc:
        headers = RETRY_AFTER if exc.status == 503 else None
        raise ApiError(exc.status, exc.code, str(exc), headers) from None


@router.post("", status_code=201)
async def create_session(
    request: Request, response: Response, body: CreateSession | None = None
) -> dict[str, Any]:
    state = app_state(request)
    spec = body or CreateSession()
    name = spec.avatar or state.settings.avatar
    who = require_api_key(request)
    await check_avatar_use(request, who, name)
    options = SessionOptions(
        video_codec=spec.video_codec,
        width=spec.width,
        height=spec.height,
        background=spec.background,
        key_id=who.key_id,
        label=spec.label,
    )
    with creation_errors():
        engine = await state.engines.get(name)
        check_size(engine.avatar, options)
        if options.transparent:
            await load_matte(request, engine.avatar)
        session = await state.registry.create(name, options, key=who.key_id)
    # 201's Location: a proxy in front of several servers learns from it which one holds
    # the session (docs/scaling.md).
    response.headers["Location"] = f"/v1/sessions/{session.id}"
    return {
        "id": session.id,
        "avatar": session.avatar.name,
        "view_token": session.view_token,
        **urls(request, session),
    }


@router.get("")
async def list_sessions(request: Request) -> dict[str, Any]:
    """Every session for an admin key; the caller's own for any other."""
    who = require_api_key(request)
    sessions = [s for s in app_state(request).registry.list() if may_control(who, s)]
    return {"sessions": [{**s.describe(), "key_id": s.options.key_id} for s in sessions]}


@router.get("/{session_id}")
async def show_session(request: Request, session_id: str) -> dict[str, Any]:
    session = controlled_session(request, session_id)
    return {
        **session.describe(),
        "key_id": session.options.key_id,
        "view_token": session.view_token,
        **urls(request, session),
    }


class UpdateSession(BaseModel):
    model_config = ConfigDict(extra="forbid")

    avatar: str


@router.patch("/{session_id}")
async def update_session(request: Request, session_id: str, body: UpdateSession) -> dict[str, Any]:
    """Switch the session to another avatar; its viewers and outputs stay connected, and its
    picture size stays (an avatar of another size is fitted: scaled, centred, padded)."""
    session = controlled_session(request, session_id)
    await check_avatar_use(request, require_api_key(request), body.avatar)
    try:
        engine = await app_state(request).engines.get(body.avatar)
    except AvatarError as exc:
        raise ApiError(400, "unknown_avatar", str(exc)) from None
    except BackendError as exc:
        raise ApiError(503, "backend_unavailable", str(exc)) from None
    if session.options.transparent:
        await load_matte(request, engine.avatar)
    session.switch_avatar(engine.avatar, engine.worker)
    return {**session.describe(), "view_token": session.view_token, **urls(request, session)}


@router.delete("/{session_id}", status_code=204)
async def delete_session(request: Request, session_id: str) -> Response:
    controlled_session(request, session_id)
    if not await app_state(request).registry.delete(session_id):
        raise ApiError(404, "session_not_found", f"no session {session_id!r}")
    return Response(status_code=204)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", too_large(limit))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", too_large(limit))
        chunks.append(chunk)
    return b"".join(chunks)


def decode_bytes(data: bytes, suffix: str, max_seconds: float) -> np.ndarray:
    """Decode an uploaded file (blocking: run in an executor) to 16 kHz mono float32."""
    fd, name = tempfile.mkstemp(prefix="avatarcast-upload-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        limit = int(max_seconds * SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        total = 0
        for chunk in decode_audio(name):
            total += len(chunk)
            if total > limit:
                raise SpeechRejected(
                    "audio_too_long", f"the audio is longer than {max_seconds:.0f} s"
                )
            chunks.append(chunk)
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    except AudioDecodeError as exc:
        # The decoder names the server's temporary file; the client knows it as its upload.
        raise AudioDecodeError(str(exc).replace(name, "the upload")) from None
    finally:
        os.unlink(name)


def _rejected(exc: SpeechRejected) -> ApiError:
    return ApiError(REJECTED_STATUS.get(exc.code, 400), exc.code, str(exc))


# The route reads its body raw (JSON or an audio file), so /openapi.json learns it from here.
_AUDIO = {"schema": {"type": "string", "format": "binary"}}
SPEAK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"text": {"type": "string"}},
                    "required": ["text"],
                }
            },
            **{kind: _AUDIO for kind in ("audio/wav", "audio/mpeg", "audio/ogg")},
            "application/octet-stream": _AUDIO,
        },
    }
}


@router.post("/{session_id}/speak", status_code=202, openapi_extra=SPEAK_BODY)
async def speak(request: Request, session_id: str) -> dict[str, str]:
    session = controlled_session(request, session_id)
    limits = app_state(request).settings.limits
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        text = _text_of(await read_body(request, limits.max_body_bytes))
        try:
            return {"utterance_id": session.speak_text(text, acting_key_id(request))}
        except SpeechRejected as exc:
            raise _rejected(exc) from None
    if not (content_type.startswith(AUDIO_TYPES) or content_type in AUDIO_EXTRA):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {content_type or '(none)'} is not accepted: send application/json "
            '{"text": ...} or the bytes of an audio file (audio/wav, audio/mpeg, audio/ogg, ...)',
        )
    data = await read_body(request, limits.max_upload_bytes)
    if not data:
        raise ApiError(400, "empty_audio", "the request body is empty: send an audio file")
    subtype = content_type.split("/")[-1]
    suffix = "." + "".join(c for c in subtype if c.isalnum())[:8]
    loop = asyncio.get_running_loop()
    state = app_state(request)
    try:
        samples = await loop.run_in_executor(
            state.decode_pool, decode_bytes, data, suffix, session.config.max_buffer_s
        )
        return {"utterance_id": session.speak_audio(samples, acting_key_id(request))}
    except AudioDecodeError as exc:
        raise ApiError(400, "bad_audio", f"the audio cannot be decoded: {exc}") from None
    except SpeechRejected as exc:
        raise _rejected(exc) from None


def _text_of(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # decoding, syntax, 4300+ digits, nesting
        raise ApiError(400, "invalid_json", f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "text" not in data:
        raise ApiError(422, "invalid_request", 'send {"text": "..."}')
    text = data["text"]
    if not isinstance(text, str):
        raise ApiError(422, "invalid_request", "text must be a string")
    return text


@router.post("/{session_id}/interrupt")
async def interrupt(request: Request, session_id: str) -> dict[str, list[str]]:
    return {"interrupted": controlled_session(request, session_id).interrupt()}


class AddOutput(BaseModel):
    """INTERFACE.md's output request; each type's own fields are checked by
    :func:`streamer.outputs.spec.parse_spec` (URL scheme allowlist, recordings folder)."""

    model_config = ConfigDict(extra="forbid")

    type: str
    url: str | None = None
    name: str | None = None
    token: str | None = None  # whip's Bearer token
    video_bitrate_kbps: int | None = None


@router.post("/{session_id}/outputs", status_code=201)
async def add_output(request: Request, session_id: str, body: AddOutput) -> dict[str, str]:
    """Push the session to a URL or record it: ``201 {"id", "type", "state"}``."""
    session = controlled_session(request, session_id)
    state = app_state(request)
    try:
        spec = parse_spec(
            body.type,
            recordings=state.settings.recordings_dir,
            audio_pipes=state.settings.audio_pipes_dir,
            url=body.url,
            name=body.name,
            video_bitrate_kbps=body.video_bitrate_kbps,
            token=body.token,
        )
        most = state.settings.limits.max_outputs_per_session
        output = attach_output(session, spec, state.metrics, most=most)
    except OutputRejected as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    return {"id": output.id, "type": output.kind, "state": output.state}


@router.get("/{session_id}/outputs")
async def list_outputs(request: Request, session_id: str) -> dict[str, Any]:
    """The session's outputs with their ``state`` and ``last_error``."""
    return {"outputs": controlled_session(request, session_id).outputs.describe()}


@router.delete("/{session_id}/outputs/{output_id}", status_code=204)
async def delete_output(request: Request, session_id: str, output_id: str) -> Response:
    session = controlled_session(request, session_id)
    if not await session.outputs.remove(output_id):
        raise ApiError(404, "output_not_found", f"no output {output_id!r} in this session")
    return Response(status_code=204)
