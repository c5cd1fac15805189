"""The one access check of the API: the API key, or a session's view token for viewers.

With an API key set (``AVATARCAST_API_KEY``), every ``/v1/*`` call needs
``Authorization: Bearer <key>``; viewer routes (WHEP, pages) also take the session's
``view_token``, as a Bearer token or ``?token=``. With no key set, nothing is checked (the
server then binds to loopback only). Every route goes through :func:`authorize`, through one
of the dependencies below.
"""

from __future__ import annotations

import secrets

from fastapi import Request
from starlette.requests import HTTPConnection

from streamer.api.errors import ApiError
from streamer.api.state import app_state
from streamer.session import Session

CHALLENGE = {"WWW-Authenticate": "Bearer"}


def presented_token(conn: HTTPConnection) -> str | None:
    """The Bearer token of the Authorization header, else the ``token`` query parameter."""
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return conn.query_params.get("token") or None


def _matches(token: str | None, expected: str) -> bool:
    return token is not None and secrets.compare_digest(token.encode(), expected.encode())


def is_authorized(conn: HTTPConnection, session: Session | None = None) -> bool:
    """True without an API key; else for the key, or for ``session``'s view token."""
    key = app_state(conn).settings.api_key
    if not key:
        return True
    token = presented_token(conn)
    return _matches(token, key) or (session is not None and _matches(token, session.view_token))


def authorize(conn: HTTPConnection, session: Session | None = None) -> None:
    """Refuse with 401 unless :func:`is_authorized`; ``session`` admits its view token."""
    if is_authorized(conn, session):
        return
    if session is None:
        message = "send Authorization: Bearer <API key>"
    else:
        message = "send the session's view_token (or the API key) as a Bearer token or ?token="
    raise ApiError(401, "unauthorized", message, CHALLENGE)


def session_or_404(conn: HTTPConnection, session_id: str) -> Session:
    session = app_state(conn).registry.get(session_id)
    if session is None:
        raise ApiError(404, "session_not_found", f"no session {session_id!r}")
    return session


def require_api_key(request: Request) -> None:
    """The dependency of every ``/v1/*`` control route."""
    authorize(request)


def viewed_session(request: Request, session_id: str) -> Session:
    """The dependency of viewer routes (it must exist; the API key or its view token)."""
    session = session_or_404(request, session_id)
    authorize(request, session)
    return session
