"""Settings, read once at the edge (flags and ``AVATARCAST_*`` variables) and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

# The INTERFACE names, then the device-pinned keys that `avatarcast bench` reports (onnx-int8
# is the reduced CPU model, offered where it keeps the eval figures).
BACKENDS = (
    "auto",
    "onnx",
    "tensorrt",
    "torch",
    "onnx-cpu",
    "onnx-cuda",
    "onnx-int8",
    "torch-cpu",
    "torch-cuda",
)


def default_home() -> Path:
    """``$AVATARCAST_HOME``, else ``~/.avatarcast``: where avatars, work and keys live."""
    return Path(os.environ.get("AVATARCAST_HOME") or Path.home() / ".avatarcast").expanduser()


class ConfigError(ValueError):
    """A bad setting from a flag or an environment variable."""


@dataclass(frozen=True)
class Limits:
    """What one client may take of the server: each refusal is a 4xx in the API's one error
    shape (docs/limits.md lists them with their codes). Each field is read from
    ``AVATARCAST_<FIELD>`` (e.g. ``AVATARCAST_SESSIONS_PER_KEY=4``)."""

    sessions_per_key: int = 8  # 429 too_many_sessions (the total is Settings.max_sessions)
    max_body_bytes: int = 1 << 20  # any JSON or SDP body: 413 too_large
    max_upload_bytes: int = 50 << 20  # an audio file to /speak: 413 too_large
    max_text_chars: int = 100_000  # one text to speak: 413 text_too_long
    max_queued_utterances: int = 32  # per session, queued and playing: 429 too_many_utterances
    ws_max_message_bytes: int = 1 << 20  # one WebSocket message: closed 1009
    ws_max_messages_per_s: float = 200.0  # sustained (a second's worth may burst): closed 1008
    max_viewers_per_session: int = 50  # WHEP viewers: 503 too_many_viewers
    max_outputs_per_session: int = 8  # RTMP, recordings...: 429 too_many_outputs
    idle_session_s: float = 600.0  # a session with nothing to do is closed; 0: never

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Limits:
        values: dict[str, float | int] = {}
        for f in fields(cls):
            raw = env.get(f"AVATARCAST_{f.name.upper()}")
            if not raw:
                continue
            kind = float if f.type in (float, "float") else int
            try:
                values[f.name] = kind(raw)
            except ValueError:
                what = "a number" if kind is float else "an integer"
                raise ConfigError(f"AVATARCAST_{f.name.upper()}={raw!r} is not {what}") from None
        limits = cls(**values)  # type: ignore[arg-type]
        low = [
            f"AVATARCAST_{f.name.upper()}"
            for f in fields(cls)
            if (value := getattr(limits, f.name)) < 0 or (value == 0 and f.name != "idle_session_s")
        ]
        if low:
            raise ConfigError(f"limits must be positive: {', '.join(low)}")
        return limits


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=default_home)
    host: str = "127.0.0.1"
    port: int = 8080
    avatar: str = "default"
    backend: str = "auto"
    threads: int = 2  # inference threads: the default machine has two cores
    api_key: str | None = None
    batch_size: int | None = None  # frames per generator call at most: 8 on a CPU, 64 on a GPU
    max_sessions: int = 16
    # Where `record` outputs write (INTERFACE.md: $AVATARCAST_RECORDINGS, else home/recordings).
    recordings: Path | None = None
    outputs: tuple[str, ...] = ()  # `serve --output URL`: pushes of the default session
    # The Bearer token of `--output whip+https://...` (a secret: from the environment only).
    whip_token: str | None = field(default=None, repr=False)
    insecure: bool = False  # `serve --insecure`: a public address even with no API key
    # Origins whose pages may call the API (AVATARCAST_CORS_ORIGINS, comma-separated; "*" for
    # any). Empty: same-origin only. WHEP answers every origin regardless (docs/security.md).
    cors_origins: tuple[str, ...] = ()
    view_token_ttl_s: int = 12 * 3600  # AVATARCAST_VIEW_TOKEN_TTL: a session's first view token
    limits: Limits = field(default_factory=Limits)
    # Where virtualcam outputs' audio FIFOs live ($AVATARCAST_AUDIO_PIPES, else home/pipes).
    audio_pipes: Path | None = None

    @property
    def recordings_dir(self) -> Path:
        return self.recordings or self.home / "recordings"

    @property
    def audio_pipes_dir(self) -> Path:
        return self.audio_pipes or self.home / "pipes"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Defaults, then ``AVATARCAST_*`` variables, then explicit overrides (flags) win."""
        env = os.environ if env is None else env
        settings = cls()
        values: dict[str, object] = {}
        for key in ("home", "recordings", "audio_pipes"):
            if env.get(f"AVATARCAST_{key.upper()}"):
                values[key] = Path(env[f"AVATARCAST_{key.upper()}"]).expanduser()
        for key in ("host", "avatar", "backend", "api_key", "whip_token"):
            if env.get(f"AVATARCAST_{key.upper()}"):
                values[key] = env[f"AVATARCAST_{key.upper()}"]
        for key in ("port", "threads", "batch_size", "max_sessions"):
            raw = env.get(f"AVATARCAST_{key.upper()}")
            if raw:
                try:
                    values[key] = int(raw)
                except ValueError:
                    raise ConfigError(
                        f"AVATARCAST_{key.upper()}={raw!r} is not an integer"
                    ) from None
        values.update(_access_env(env))
        values["limits"] = Limits.from_env(env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = replace(settings, **values)  # type: ignore[arg-type]
        if settings.backend not in BACKENDS:
            raise ConfigError(
                f"unknown backend {settings.backend!r}: use one of {', '.join(BACKENDS)}"
            )
        if settings.threads < 1 or (settings.batch_size or 1) < 1 or settings.max_sessions < 1:
            raise ConfigError("threads, batch size and max sessions must be at least 1")
        return settings


def _access_env(env: Mapping[str, str]) -> dict[str, object]:
    """The access settings' variables (see docs/security.md)."""
    values: dict[str, object] = {}
    if env.get("AVATARCAST_CORS_ORIGINS"):
        origins = env["AVATARCAST_CORS_ORIGINS"].split(",")
        values["cors_origins"] = tuple(o.strip().rstrip("/") for o in origins if o.strip())
    raw = env.get("AVATARCAST_VIEW_TOKEN_TTL")
    if raw:
        if not raw.isdigit() or int(raw) < 60:
            raise ConfigError(f"AVATARCAST_VIEW_TOKEN_TTL={raw!r}: give seconds, at least 60")
        values["view_token_ttl_s"] = int(raw)
    return values
