"""avatarcast's HTTP API, the part the video service needs: create and delete a session.

Every failure becomes an :class:`AvatarcastError` whose message names the call, the server's
status and its own ``{"error": {"code", "message"}}``, so the ``ErrorFrame`` a pipeline sees
says what went wrong and what to do, not just "HTTP 400".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


class AvatarcastError(Exception):
    """A call to the avatarcast server failed; the message says which and why."""


@dataclass(frozen=True)
class SessionInfo:
    """What ``POST /v1/sessions`` answers: where to send speech and where to watch."""

    id: str
    avatar: str
    view_token: str
    whep_url: str
    ws_url: str
    view_url: str

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> SessionInfo:
        try:
            return cls(
                id=str(body["id"]),
                avatar=str(body["avatar"]),
                view_token=str(body["view_token"]),
                whep_url=str(body["whep_url"]),
                ws_url=str(body["ws_url"]),
                view_url=str(body.get("view_url", "")),
            )
        except KeyError as exc:
            raise AvatarcastError(f"the server's session answer lacks {exc}: {body}") from None


def describe_failure(response: httpx.Response, what: str) -> str:
    """``what`` failed, with the server's error code and message when it sent them."""
    detail = response.text[:300]
    try:
        error = response.json().get("error", {})
        detail = f"{error.get('code', '?')}: {error.get('message', detail)}"
    except (ValueError, AttributeError):
        pass
    return f"{what} failed with HTTP {response.status_code} ({detail})"


class AvatarcastApi:
    """Sessions on one avatarcast server, through a caller-owned ``httpx.AsyncClient``."""

    def __init__(self, base_url: str, http: httpx.AsyncClient, api_key: str | None = None):
        self.base_url = base_url.rstrip("/")
        self._http = http
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = f"{self.base_url}{path}"
        try:
            return await self._http.request(method, url, headers=self._headers, **kwargs)
        except httpx.HTTPError as exc:
            raise AvatarcastError(
                f"cannot reach the avatarcast server at {self.base_url} ({method} {path}): "
                f"{exc!r}; is `avatarcast serve` running there?"
            ) from exc

    async def create_session(self, options: dict[str, Any]) -> SessionInfo:
        """``POST /v1/sessions`` with ``options`` (``avatar``, ``video_codec``, ...)."""
        response = await self._call("POST", "/v1/sessions", json=options)
        if response.status_code != 201:
            raise AvatarcastError(describe_failure(response, "creating an avatarcast session"))
        return SessionInfo.from_json(response.json())

    async def delete_session(self, session_id: str) -> None:
        """``DELETE /v1/sessions/{id}``; a session already gone (404) is not an error."""
        response = await self._call("DELETE", f"/v1/sessions/{session_id}")
        if response.status_code not in (204, 404):
            raise AvatarcastError(
                describe_failure(response, f"deleting avatarcast session {session_id}")
            )
