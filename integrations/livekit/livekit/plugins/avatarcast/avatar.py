"""``AvatarSession``: an avatarcast server joins the agent's room as its avatar.

The same steps as LiveKit's other avatar plugins, against a server you run yourself:

1. mint a token for the avatar participant, with ``lk.publish_on_behalf`` naming the agent
   (so the room shows the avatar's tracks as the agent's own);
2. ask the avatarcast server to join the room with it (``POST /v1/livekit/sessions``);
3. send the agent's speech to the avatar instead of the room (``DataStreamAudioOutput``),
   holding it until the avatar's video track is published.

The server then speaks it with a lip-synced face and reports playback back to the agent;
interruptions reach it as ``lk.clear_buffer``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
from livekit import api, rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    AgentSession,
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    get_job_context,
)
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
from livekit.agents.voice.avatar import AvatarSession as BaseAvatarSession
from livekit.agents.voice.avatar import DataStreamAudioOutput

from .log import logger

DEFAULT_API_URL = "http://127.0.0.1:8080"
# What the server works at internally: the agent resamples once, the server not at all.
SAMPLE_RATE = 16_000


class AvatarcastException(Exception):
    """The avatar cannot be started as configured (a missing URL or key)."""


def mint_avatar_token(
    *,
    api_key: str,
    api_secret: str,
    room: str,
    identity: str,
    name: str,
    publish_on_behalf: str,
) -> str:
    """A token for the avatar participant: joins ``room`` as an agent that publishes on
    behalf of ``publish_on_behalf`` (the agent's own identity)."""
    return (
        api.AccessToken(api_key=api_key, api_secret=api_secret)
        .with_kind("agent")
        .with_identity(identity)
        .with_name(name)
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .with_attributes({ATTRIBUTE_PUBLISH_ON_BEHALF: publish_on_behalf})
        .to_jwt()
    )


class AvatarSession(BaseAvatarSession):
    """An avatarcast avatar for an ``AgentSession``.

    ``api_url`` and ``api_key`` name the avatarcast server (``AVATARCAST_URL`` and
    ``AVATARCAST_API_KEY`` by default); ``avatar`` is one of its avatars.
    """

    def __init__(
        self,
        *,
        api_url: str | None = None,
        api_key: str | None = None,
        avatar: str = "default",
        avatar_participant_identity: str = "avatarcast-avatar",
        avatar_participant_name: str = "avatarcast",
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        http_session: aiohttp.ClientSession | None = None,
    ) -> None:
        super().__init__()
        self._api_url = (api_url or os.getenv("AVATARCAST_URL") or DEFAULT_API_URL).rstrip("/")
        self._api_key = api_key if api_key is not None else os.getenv("AVATARCAST_API_KEY")
        self._avatar = avatar
        self._identity = avatar_participant_identity
        self._name = avatar_participant_name
        self._conn_options = conn_options
        self._http_session = http_session
        self.session_id: str | None = None  # the avatarcast session, once dispatched

    @property
    def avatar_identity(self) -> str:
        return self._identity

    @property
    def provider(self) -> str:
        return "avatarcast"

    async def start(
        self,
        agent_session: AgentSession,
        room: rtc.Room,
        *,
        livekit_url: str | None = None,
        livekit_api_key: str | None = None,
        livekit_api_secret: str | None = None,
    ) -> None:
        """Dispatch the avatar into ``room`` and route ``agent_session``'s audio to it."""
        url = livekit_url or os.getenv("LIVEKIT_URL")
        key = livekit_api_key or os.getenv("LIVEKIT_API_KEY")
        secret = livekit_api_secret or os.getenv("LIVEKIT_API_SECRET")
        if not (url and key and secret):
            raise AvatarcastException(
                "the LiveKit URL, API key and secret are needed to send the avatar into the "
                "room: pass livekit_url, livekit_api_key and livekit_api_secret, or set "
                "LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET"
            )
        await super().start(agent_session, room)
        job = get_job_context(required=False)
        agent = job.local_participant_identity if job else room.local_participant.identity
        token = mint_avatar_token(
            api_key=key,
            api_secret=secret,
            room=room.name,
            identity=self._identity,
            name=self._name,
            publish_on_behalf=agent,
        )
        self.session_id = await self.dispatch(url, token)
        logger.info("avatarcast session %s joins room %s", self.session_id, room.name)
        agent_session.output.audio = DataStreamAudioOutput(
            room,
            destination_identity=self._identity,
            sample_rate=SAMPLE_RATE,
            wait_remote_track=rtc.TrackKind.KIND_VIDEO,
        )

    async def dispatch(self, livekit_url: str, token: str) -> str:
        """``POST /v1/livekit/sessions``; returns the avatarcast session id. Network errors
        and 5xx answers are retried as ``conn_options`` says; a 4xx is not."""
        body = {"url": livekit_url, "token": token, "avatar": self._avatar}
        options = self._conn_options
        for attempt in range(options.max_retry + 1):
            try:
                answer = await self._post("/v1/livekit/sessions", body)
                return str(answer["id"])
            except APIStatusError as exc:
                if not exc.retryable or attempt == options.max_retry:
                    raise
                failure: Exception = exc
            except (TimeoutError, aiohttp.ClientError) as exc:
                if attempt == options.max_retry:
                    raise APIConnectionError(
                        f"the avatarcast server at {self._api_url} did not answer: {exc}"
                    ) from exc
                failure = exc
            wait = options._interval_for_retry(attempt)
            logger.warning("avatarcast dispatch failed (%s), retrying in %.1f s", failure, wait)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, data = await self._request("POST", path, body)
        if status >= 400:
            error = data.get("error", {}) if isinstance(data, dict) else {}
            raise APIStatusError(
                f"avatarcast refused to join the room: {error.get('message', data)}",
                status_code=status,
                body=data,
                retryable=status >= 500,
            )
        return dict(data)

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        """One call to the server: its status and JSON answer (None when it has none)."""
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        timeout = aiohttp.ClientTimeout(total=self._conn_options.timeout)
        session = self._http_session or aiohttp.ClientSession()
        try:
            async with session.request(
                method, self._api_url + path, json=body, headers=headers, timeout=timeout
            ) as response:
                try:
                    return response.status, await response.json(content_type=None)
                except ValueError:  # not JSON: a proxy's error page
                    return response.status, await response.text()
        finally:
            if self._http_session is None:
                await session.close()

    async def aclose(self) -> None:
        """Take the avatar out of the room and end its avatarcast session."""
        session_id, self.session_id = self.session_id, None
        if session_id is not None:
            try:
                # a 404 is fine: the server ended it when the agent left
                await self._request("DELETE", f"/v1/livekit/sessions/{session_id}")
            except (TimeoutError, aiohttp.ClientError) as exc:
                logger.warning("could not end avatarcast session %s: %s", session_id, exc)
        await super().aclose()
