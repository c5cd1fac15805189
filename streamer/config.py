"""Settings, read once at the edge (flags and ``AVATARCAST_*`` variables) and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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
        if env.get("AVATARCAST_HOME"):
            values["home"] = Path(env["AVATARCAST_HOME"]).expanduser()
        for key in ("host", "avatar", "backend"):
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
        if env.get("AVATARCAST_RECORDINGS"):
            values["recordings"] = Path(env["AVATARCAST_RECORDINGS"]).expanduser()
        if env.get("AVATARCAST_AUDIO_PIPES"):
            values["audio_pipes"] = Path(env["AVATARCAST_AUDIO_PIPES"]).expanduser()
        if env.get("AVATARCAST_API_KEY"):
            values["api_key"] = env["AVATARCAST_API_KEY"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = replace(settings, **values)  # type: ignore[arg-type]
        if settings.backend not in BACKENDS:
            raise ConfigError(
                f"unknown backend {settings.backend!r}: use one of {', '.join(BACKENDS)}"
            )
        if settings.threads < 1 or (settings.batch_size or 1) < 1 or settings.max_sessions < 1:
            raise ConfigError("threads, batch size and max sessions must be at least 1")
        return settings
