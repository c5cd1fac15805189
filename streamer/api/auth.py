"""API-key and view-token checks.

With ``AVATARCAST_API_KEY`` set, every ``/v1/*`` call needs ``Authorization: Bearer <key>``;
viewers (WHEP, pages) may use the session's ``view_token`` instead, as a Bearer token or
``?token=``. With no key set, nothing is checked (the server then binds to loopback only).
"""

from __future__ import annotations

import secrets

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
    if _matches(token, key):
        return True
    return session is not None and _matches(token, session.view_token)


def require_api_key(conn: HTTPConnection) -> None:
    """The dependency of every ``/v1/*`` control route."""
    if not is_authorized(conn):
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <API key>", CHALLENGE)


def require_viewer(conn: HTTPConnection, session: Session) -> None:
    """For viewer routes (WHEP, pages): the API key or the session's view token."""
    if not is_authorized(conn, session):
        raise ApiError(
            401, "unauthorized", "send the session's view_token as a Bearer token", CHALLENGE
        )
