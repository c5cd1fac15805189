"""A fake LiveKit room: the parts of the ``livekit.rtc`` SDK the avatar worker uses.

No LiveKit server runs here, so the worker's protocol is tested against this fake. Each
method the worker calls has the real method's exact parameters (``MIRRORS`` lists them, and
``test_livekit.py`` compares them with ``inspect.signature`` against the installed SDK), so
an SDK change the worker would trip over fails a test instead of passing unnoticed. The data
classes (``ByteStreamInfo``, ``RpcInvocationData``, ``RoomOptions``, ``TrackPublishOptions``)
and the event emitter are the SDK's own.

The other side, the agent, is played by the test through the ``agent_*`` methods: join and
leave, send a byte stream, call ``lk.clear_buffer``. What the avatar sends back through
``perform_rpc`` is recorded in ``calls``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from livekit import rtc

AGENT = "agent-1"
# The SDK's defaults (its options compare by value), for the mirrored signatures
DEFAULT_PUBLISH = rtc.TrackPublishOptions()
DEFAULT_ROOM_OPTIONS = rtc.RoomOptions()


class FakeByteStreamReader:
    """An incoming byte stream, as ``rtc.ByteStreamReader``: an async iterator of chunks."""

    def __init__(self, info: rtc.ByteStreamInfo) -> None:
        self._info = info
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()

    @property
    def info(self) -> rtc.ByteStreamInfo:
        return self._info

    def __aiter__(self) -> FakeByteStreamReader:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._chunks.get()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    # the sender's side
    def feed(self, chunk: bytes) -> None:
        self._chunks.put_nowait(chunk)

    def close(self) -> None:
        self._chunks.put_nowait(None)


@dataclass
class FakeRemoteParticipant:
    identity: str
    kind: int = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT


@dataclass
class RpcCall:
    destination_identity: str
    method: str
    payload: str
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        return json.loads(self.payload)


class FakeLocalParticipant:
    def __init__(self, room: FakeRoom, identity: str, attributes: dict[str, str]) -> None:
        self._room = room
        self._identity = identity
        self._attributes = attributes
        self.rpc_handlers: dict[str, Callable[[rtc.RpcInvocationData], Any]] = {}
        self.published: list[tuple[Any, rtc.TrackPublishOptions]] = []

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def attributes(self) -> dict[str, str]:
        return dict(self._attributes)

    def register_rpc_method(
        self, method_name: str, handler: Callable[[rtc.RpcInvocationData], Any] | None = None
    ) -> Any:
        assert handler is not None, "the worker registers handlers directly, not as a decorator"
        self.rpc_handlers[method_name] = handler
        return handler

    def unregister_rpc_method(self, method: str) -> None:
        self.rpc_handlers.pop(method, None)

    async def perform_rpc(
        self,
        *,
        destination_identity: str,
        method: str,
        payload: str,
        response_timeout: float | None = None,
        max_round_trip_latency: float | None = None,
    ) -> str:
        if destination_identity not in self._room.remote_participants:
            raise rtc.RpcError(rtc.RpcError.ErrorCode.RECIPIENT_NOT_FOUND, "no such participant")
        self._room.calls.append(RpcCall(destination_identity, method, payload))
        self._room.called.set()
        return "ok"

    async def publish_track(
        self, track: Any, options: rtc.TrackPublishOptions = DEFAULT_PUBLISH
    ) -> Any:
        assert isinstance(track, rtc.LocalAudioTrack | rtc.LocalVideoTrack)
        self.published.append((track, options))
        return track


class FakeRoom(rtc.EventEmitter[Any]):
    """One room as the avatar sees it; ``agent_*`` methods act as the agent."""

    def __init__(
        self,
        *,
        name: str = "room-1",
        identity: str = "avatarcast-avatar",
        on_behalf: str | None = AGENT,
        agent_present: bool = True,
        refuse: str | None = None,
    ) -> None:
        super().__init__()
        self._name = name
        attributes = {"lk.publish_on_behalf": on_behalf} if on_behalf else {}
        self._local = FakeLocalParticipant(self, identity, attributes)
        self._remote: dict[str, FakeRemoteParticipant] = {}
        if agent_present:
            self._remote[AGENT] = FakeRemoteParticipant(AGENT)
        self._refuse = refuse
        self._connected = False
        self.connected_with: tuple[str, str, rtc.RoomOptions] | None = None
        self.disconnects = 0
        self.byte_handlers: dict[str, Callable[[Any, str], None]] = {}
        self.calls: list[RpcCall] = []
        self.called = asyncio.Event()

    # --- the SDK's surface -----------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def local_participant(self) -> FakeLocalParticipant:
        return self._local

    @property
    def remote_participants(self) -> dict[str, FakeRemoteParticipant]:
        return dict(self._remote)

    def isconnected(self) -> bool:
        return self._connected

    async def connect(
        self, url: str, token: str, options: rtc.RoomOptions = DEFAULT_ROOM_OPTIONS
    ) -> None:
        if self._refuse is not None:
            raise rtc.ConnectError(self._refuse)
        self._connected = True
        self.connected_with = (url, token, options)

    async def disconnect(
        self,
        *,
        reason: int = rtc.DisconnectReason.CLIENT_INITIATED,
    ) -> None:
        if not self._connected:
            return
        self._connected = False
        self.disconnects += 1
        self.emit("disconnected", reason)

    def register_byte_stream_handler(self, topic: str, handler: Callable[[Any, str], None]) -> None:
        self.byte_handlers[topic] = handler

    def unregister_byte_stream_handler(self, topic: str) -> None:
        self.byte_handlers.pop(topic, None)

    # --- the agent's side ------------------------------------------------------------------

    def agent_join(self, identity: str = AGENT, kind: int = FakeRemoteParticipant.kind) -> None:
        participant = FakeRemoteParticipant(identity, kind)
        self._remote[identity] = participant
        self.emit("participant_connected", participant)

    def agent_leave(self, identity: str = AGENT) -> None:
        participant = self._remote.pop(identity)
        self.emit("participant_disconnected", participant)

    def server_closes(self) -> None:
        """The room is deleted on the server: the SDK emits ``disconnected``."""
        self._connected = False
        self.emit("disconnected", rtc.DisconnectReason.ROOM_DELETED)

    def agent_stream(
        self, attributes: dict[str, str] | None, sender: str = AGENT
    ) -> FakeByteStreamReader:
        """Open an ``lk.audio_stream`` byte stream to the avatar, as DataStreamAudioOutput."""
        info = rtc.ByteStreamInfo(
            stream_id=secrets.token_hex(4),
            mime_type="application/octet-stream",
            topic="lk.audio_stream",
            timestamp=int(time.time() * 1000),
            size=None,
            attributes=attributes,
            name="AUDIO_" + secrets.token_hex(3),
        )
        reader = FakeByteStreamReader(info)
        handler = self.byte_handlers.get("lk.audio_stream")
        if handler is not None:
            handler(reader, sender)
        return reader

    def agent_send(
        self, attributes: dict[str, str] | None, chunks: Iterable[bytes], sender: str = AGENT
    ) -> FakeByteStreamReader:
        reader = self.agent_stream(attributes, sender)
        for chunk in chunks:
            reader.feed(chunk)
        reader.close()
        return reader

    async def agent_rpc(self, method: str, payload: str = "", caller: str = AGENT) -> Any:
        """Call one of the avatar's RPC methods, as the SDK's dispatcher does."""
        handler = self._local.rpc_handlers[method]
        data = rtc.RpcInvocationData(secrets.token_hex(4), caller, payload, 5.0, method)
        result = handler(data)
        return await result if asyncio.iscoroutine(result) else result

    def calls_to(self, method: str) -> list[RpcCall]:
        return [c for c in self.calls if c.method == method]


# Each fake method that stands for an SDK method, and the SDK class it mirrors.
MIRRORS: dict[type, tuple[type, tuple[str, ...]]] = {
    FakeRoom: (
        rtc.Room,
        (
            "connect",
            "disconnect",
            "isconnected",
            "on",
            "off",
            "register_byte_stream_handler",
            "unregister_byte_stream_handler",
        ),
    ),
    FakeLocalParticipant: (
        rtc.LocalParticipant,
        ("register_rpc_method", "unregister_rpc_method", "perform_rpc", "publish_track"),
    ),
    FakeByteStreamReader: (rtc.ByteStreamReader, ("__aiter__", "__anext__")),
}
# Properties the worker reads, and the SDK class that has them.
PROPERTIES: dict[type, tuple[type, tuple[str, ...]]] = {
    FakeRoom: (rtc.Room, ("name", "local_participant", "remote_participants")),
    FakeLocalParticipant: (rtc.LocalParticipant, ("identity", "attributes")),
    FakeRemoteParticipant: (rtc.RemoteParticipant, ("identity", "kind")),
    FakeByteStreamReader: (rtc.ByteStreamReader, ("info",)),
}
