"""The one access check of the API: who is calling, and what that caller may do.

When keys exist (``HOME/keys.json`` or ``AVATARCAST_API_KEY``; see :mod:`streamer.keys`),
every ``/v1/*`` call needs ``Authorization: Bearer <key>``, and a key acts only within its
scope. A browser's WebSocket cannot set that header, so the WebSocket alone also takes the key
as the subprotocol ``avatarcast.bearer.<key>`` (offered with ``avatarcast``, which the server
picks; what the control page does) or, for older clients, ``?token=<key>``. Anywhere else an
API key in the URL is refused (401 ``key_in_url``): query strings end up in proxy logs and
browser history. View tokens, made to be put in a viewer's link, stay accepted as ``?token=``
on WHEP and the pages.

- an ``admin`` key controls everything;
- a ``publisher`` key creates sessions with the avatars it names; a ``creator`` key with the
  avatars it owns (``models.ownership``); either controls only the sessions it created;
- a session's view token (:mod:`streamer.api.viewtokens`) only watches: WHEP and the pages;
  any control route answers it 403.

No credential, or a wrong, revoked or expired one, is 401; a valid one out of its scope is
403. With no keys at all, nothing is checked and the caller is :data:`~streamer.keys.LOCAL`
(``serve`` then binds to loopback only, unless ``--insecure``).
"""

from __future__ import annotations

import asyncio

from fastapi import Request
from starlette.requests import HTTPConnection

from models.avatar import AvatarError, avatar_dir
from models.ownership import OwnershipError, owner_of, read_ownership
from streamer.api.errors import ApiError
from streamer.api.state import app_state
from streamer.keys import LOCAL, Principal
from streamer.session import Session

CHALLENGE = {"WWW-Authenticate": "Bearer"}
VIEW_TOKEN_ONLY_WATCHES = (
    "a view token only lets its holder watch (WHEP and the viewer pages): "
    "this call needs an API key"
)


WS_SUBPROTOCOL = "avatarcast"  # the subprotocol the server picks when a client offers it
WS_BEARER = "avatarcast.bearer."  # + the API key: a WebSocket's Authorization
KEY_IN_URL = (
    "an API key is not accepted in the URL (?token= ends up in proxy logs and browser "
    "history): send Authorization: Bearer <key>"
)


def bearer_token(conn: HTTPConnection) -> str | None:
    """The Bearer token of the Authorization header."""
    scheme, _, value = conn.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def query_token(conn: HTTPConnection) -> str | None:
    return conn.query_params.get("token") or None


def offered_protocols(conn: HTTPConnection) -> list[str]:
    raw = conn.headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def presented_token(conn: HTTPConnection) -> str | None:
    """The API key as a control call may send it: the Bearer header; on a WebSocket also the
    ``avatarcast.bearer.<key>`` subprotocol, else ``?token=``."""
    token = bearer_token(conn)
    if token is not None or conn.scope["type"] != "websocket":
        return token
    for offered in offered_protocols(conn):
        if offered.startswith(WS_BEARER) and len(offered) > len(WS_BEARER):
            return offered[len(WS_BEARER) :]
    return query_token(conn)


def _unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, CHALLENGE)


def principal(conn: HTTPConnection) -> Principal:
    """The key making a control call (:data:`LOCAL` when the server has no keys); 401 for
    none or a bad one, 403 for a view token."""
    state = app_state(conn)
    keyring = state.access.keyring
    if not keyring.has_keys():
        return LOCAL
    token = presented_token(conn)
    if token is None:
        in_url = query_token(conn)
        if in_url is not None and state.access.views.is_view_token(in_url, state.registry.list()):
            raise ApiError(403, "view_token_cannot_control", VIEW_TOKEN_ONLY_WATCHES)
        if in_url is not None:
            raise _unauthorized("key_in_url", KEY_IN_URL)
        raise _unauthorized("unauthorized", "send Authorization: Bearer <API key>")
    found = keyring.authenticate(token)
    if found is not None:
        return found
    if keyring.revoked(token):
        raise _unauthorized("key_revoked", "this API key was revoked: ask an admin for a new one")
    if state.access.views.is_view_token(token, state.registry.list()):
        raise ApiError(403, "view_token_cannot_control", VIEW_TOKEN_ONLY_WATCHES)
    raise _unauthorized(
        "unauthorized", "the API key is not valid: send Authorization: Bearer <key>"
    )


def require_api_key(request: Request) -> Principal:
    """The dependency of every ``/v1/*`` control route."""
    return principal(request)


def acting_key_id(conn: HTTPConnection) -> str:
    """The id of the key making this call (``local`` on a server without keys, ``env`` for
    ``AVATARCAST_API_KEY``): what per-key limits count by. Raises like :func:`principal`."""
    return principal(conn).key_id


def session_or_404(conn: HTTPConnection, session_id: str) -> Session:
    session = app_state(conn).registry.get(session_id)
    if session is None:
        raise ApiError(404, "session_not_found", f"no session {session_id!r}")
    return session


def may_control(who: Principal, session: Session) -> bool:
    return who.admin or session.options.key_id == who.key_id


def _not_yours(who: Principal, session: Session) -> ApiError:
    return ApiError(
        403,
        "not_your_session",
        f"session {session.id!r} was created by another key: a {who.scope} key "
        f"({who.key_id}) controls only the sessions it created",
    )


def controlled_session(conn: HTTPConnection, session_id: str) -> Session:
    """The session a control call names: the caller's own, or any for an admin key."""
    who = principal(conn)
    session = session_or_404(conn, session_id)
    if not may_control(who, session):
        raise _not_yours(who, session)
    return session


def viewed_session(request: Request, session_id: str) -> Session:
    """The dependency of viewer routes: the session must exist (404), then a valid view
    token of it, or a key that controls it (as Bearer only). The token's id is left in
    ``request.state.view_token_id`` (None for a key), so WHEP can tie its viewer to it, and a
    key's id in ``request.state.key_id`` (None for a token), so revoking the key hangs it up."""
    session = session_or_404(request, session_id)
    request.state.view_token_id = None
    request.state.key_id = None
    access = app_state(request).access
    if not access.keyring.has_keys():
        return session
    header = bearer_token(request)
    token = header or query_token(request)
    if token is None:
        raise _unauthorized(
            "unauthorized", "send the session's view_token as Bearer or ?token= (or an API key)"
        )
    who = access.keyring.authenticate(token)
    if who is not None:
        if header is None:
            raise _unauthorized("key_in_url", f"{KEY_IN_URL}, or use the session's view_token")
        if not may_control(who, session):
            raise _not_yours(who, session)
        request.state.key_id = who.key_id
        return session
    view = access.views.match(session, token)
    if view is None:
        raise _unauthorized("unauthorized", "not a view token of this session, nor an API key")
    state = view.state(access.views.clock())
    if state != "valid":
        raise _unauthorized(
            f"view_token_{state}",
            f"this view token {'has expired' if state == 'expired' else 'was revoked'}: ask "
            f"the session's owner for a new one (POST /v1/sessions/{session.id}/view_tokens)",
        )
    request.state.view_token_id = view.id
    return session


async def check_avatar_use(conn: HTTPConnection, who: Principal, name: str) -> None:
    """Whether ``who`` may make avatar ``name`` speak: an admin key any, a publisher key those
    it names, a creator key those it owns (403 ``avatar_not_allowed``). An avatar whose
    ownership record fails its signature is refused to everyone (403 ``avatar_tampered``)."""
    if who.scope == "publisher" and name not in who.avatars:
        raise not_allowed(who, name)
    home = app_state(conn).settings.home
    try:
        record = await asyncio.to_thread(read_ownership, avatar_dir(name, home), home)
    except OwnershipError as exc:
        raise ApiError(403, "avatar_tampered", str(exc)) from None
    except AvatarError as exc:
        raise ApiError(400, "unknown_avatar", str(exc)) from None
    if not may_use(who, name, owner_of(record)):
        raise not_allowed(who, name)


def may_use(who: Principal, name: str, owner: str) -> bool:
    """The scope rule for avatars, given the avatar's owner (``models.ownership.owner_of``)."""
    if who.scope == "publisher":
        return name in who.avatars
    return who.admin or owner == who.key_id


def not_allowed(who: Principal, name: str) -> ApiError:
    what = (
        f"names only {', '.join(who.avatars)}"
        if who.scope == "publisher"
        else "may use only the avatars it owns"
    )
    return ApiError(
        403, "avatar_not_allowed", f"avatar {name!r}: this {who.scope} key ({who.key_id}) {what}"
    )
