"""The app's typed state, owned by the lifespan and reached from any request."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import HTTPConnection

from streamer.api.access import Access
from streamer.config import Settings
from streamer.engine.pool import EnginePool
from streamer.metrics import Metrics
from streamer.outputs.webrtc import PeerRegistry
from streamer.session import SessionRegistry


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    engines: EnginePool
    registry: SessionRegistry
    webrtc: PeerRegistry  # every WHEP viewer and microphone uplink of every session
    compose_pool: ThreadPoolExecutor  # compositing (cv2 releases the GIL)
    speech_pool: ThreadPoolExecutor  # TTS (espeak is one engine: one thread)
    decode_pool: ThreadPoolExecutor  # uploaded audio files
    # Makes the Room a LiveKit worker joins (livekit.rtc.Room when None; tests: a fake)
    livekit_room: Callable[[], Any] | None = None
    access: Access = field(init=False)  # API keys and view tokens, from the settings

    def __post_init__(self) -> None:
        self.access = Access.from_settings(self.settings)


def app_state(conn: HTTPConnection) -> AppState:
    state = getattr(conn.app.state, "avatarcast", None)
    if not isinstance(state, AppState):
        raise RuntimeError("the app is not started (its lifespan has not run)")
    return state
