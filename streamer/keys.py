"""API keys: scoped, stored hashed in ``HOME/keys.json`` (mode 0600), reloaded on change.

A key reads ``ack_<id>_<secret>``: the id (8 hex digits) names its record, the secret is 256
random bits. Only the SHA-256 of the whole key is stored. A slow hash (scrypt) would add
nothing: it protects guessable passwords, and 256 random bits cannot be guessed. A presented
key is found by its id and checked with :func:`hmac.compare_digest` on the digests, so the time
taken says nothing about how much of it was right.

Scopes: ``admin`` (everything), ``publisher`` (sessions of the avatars it names: create,
speak, interrupt, outputs, WebSocket, microphone, view tokens), ``creator`` (avatars: those
it owns it may create, train, export, delete, and stream). ``AVATARCAST_API_KEY`` is one more
admin key, with id ``env``. The server re-reads the file when it changes (one ``stat`` per
request), so ``avatarcast keys revoke`` takes effect at the next request without a restart;
:mod:`streamer.api.revocation` also ends, within a second, what a revoked key had opened.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

log = logging.getLogger(__name__)

Scope = Literal["admin", "publisher", "creator"]
SCOPES: tuple[Scope, ...] = ("admin", "publisher", "creator")
KEYS_FILE = "keys.json"
PREFIX = "ack_"
ID_HEX = 8
ENV_KEY_ID = "env"
LOCAL_ID = "local"  # the open server (no keys) and the command line without a key
_NO_MATCH = hashlib.sha256(b"no key has this digest").hexdigest()


class KeyFileError(ValueError):
    """A bad key command or an unreadable key file; the message says what to do."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One stored key: never the key itself, only its digest."""

    id: str
    scope: Scope
    avatars: tuple[str, ...]
    created: str
    digest: str
    revoked: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "scope": self.scope,
            "avatars": list(self.avatars),
            "created": self.created,
            "sha256": self.digest,
            "revoked": self.revoked,
        }

    @classmethod
    def from_json(cls, data: Any) -> ApiKey:
        scope = str(data["scope"])
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")
        return cls(
            id=str(data["id"]),
            scope=cast(Scope, scope),
            avatars=tuple(str(a) for a in data.get("avatars", ())),
            created=str(data["created"]),
            digest=str(data["sha256"]),
            revoked=None if data.get("revoked") is None else str(data["revoked"]),
        )


@dataclass(frozen=True)
class Principal:
    """Who acts: a key's id, scope and named avatars (``local`` when nothing is checked)."""

    key_id: str
    scope: Scope
    avatars: tuple[str, ...] = ()

    @property
    def admin(self) -> bool:
        return self.scope == "admin"


LOCAL = Principal(LOCAL_ID, "admin")


class KeyFile:
    """``HOME/keys.json``: what ``avatarcast keys`` edits. Written whole to a temporary file
    (0600) and renamed over the old one, so the server never reads half a file."""

    def __init__(self, home: Path) -> None:
        self.path = home / KEYS_FILE

    def load(self) -> list[ApiKey]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return [ApiKey.from_json(item) for item in data["keys"]]
        except FileNotFoundError:
            return []
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise KeyFileError(f"{self.path} cannot be read ({exc}): fix or remove it") from None

    def create(self, scope: str, avatars: tuple[str, ...] = ()) -> tuple[ApiKey, str]:
        """A new key of ``scope``: its record, and the key itself (shown once, never stored)."""
        if scope not in SCOPES:
            raise KeyFileError(f"unknown scope {scope!r}: use one of {', '.join(SCOPES)}")
        if scope == "publisher" and not avatars:
            raise KeyFileError("a publisher key names its avatars: add --avatar NAME (repeatable)")
        if scope != "publisher" and avatars:
            raise KeyFileError(f"--avatar is for publisher keys; a {scope} key names no avatars")
        keys = self.load()
        taken = {k.id for k in keys}
        key_id = secrets.token_hex(ID_HEX // 2)
        while key_id in taken:
            key_id = secrets.token_hex(ID_HEX // 2)
        token = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(
            id=key_id,
            scope=cast(Scope, scope),
            avatars=tuple(dict.fromkeys(avatars)),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            digest=digest(token),
        )
        self._write([*keys, record])
        return record, token

    def revoke(self, key_id: str) -> ApiKey:
        """Mark a key revoked (the record stays, for the record)."""
        keys = self.load()
        for i, key in enumerate(keys):
            if key.id == key_id:
                if key.revoked is None:
                    now = datetime.now(UTC).isoformat(timespec="seconds")
                    keys[i] = ApiKey(**{**key.__dict__, "revoked": now})
                    self._write(keys)
                return keys[i]
        raise KeyFileError(f"no key {key_id!r}: see `avatarcast keys list`")

    def _write(self, keys: list[ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".keys.", dir=self.path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"format": 1, "keys": [k.to_json() for k in keys]}, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass(frozen=True)
class _Snapshot:
    """The key file as last read: replaced whole, so a reader never sees half an update."""

    stamp: tuple[int, int, int, int] | None = None
    keys: dict[str, ApiKey] = field(default_factory=dict)
    broken: bool = False


class Keyring:
    """The server's view of the keys: the file (re-read when its stat changes) and the
    environment's admin key. Fails closed: an unreadable file admits no file key.

    Requests refresh it on the event loop (a ``stat``); the revocation watch refreshes it in a
    thread. One lock orders the two, so an older read never replaces a newer one."""

    def __init__(self, home: Path, env_key: str | None = None) -> None:
        self._file = KeyFile(home)
        self._env_digest = digest(env_key) if env_key else None
        self._view = _Snapshot()
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Re-read the key file if it changed since the last read."""
        with self._lock:
            try:
                st = os.stat(self._file.path)
            except FileNotFoundError:
                self._view = _Snapshot()
                return
            stamp = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
            if stamp == self._view.stamp:
                return
            try:
                self._view = _Snapshot(stamp, {k.id: k for k in self._file.load()})
            except KeyFileError as exc:
                log.error("no key from the key file is accepted: %s", exc)
                self._view = _Snapshot(stamp, broken=True)

    def has_keys(self) -> bool:
        """Whether calls need a key: the environment's, or a key file with any record in it
        (revoked ones too: revoking the last key locks the server, it does not open it)."""
        self.refresh()
        view = self._view
        return self._env_digest is not None or bool(view.keys) or view.broken

    def ended(self, key_id: str) -> bool:
        """Whether a key that made sessions or opened connections has lost its power, on the
        file as last read (no refresh): revoked, or its record gone from a readable file.
        ``env`` and ``local`` never end while the server runs. An unreadable file ends
        nothing already running: it refuses every new call, but a half-edited file must not
        hang up every stream."""
        view = self._view
        if key_id in (ENV_KEY_ID, LOCAL_ID) or view.broken:
            return False
        record = view.keys.get(key_id)
        return record is None or record.revoked is not None

    def _match(self, token: str) -> ApiKey | None:
        key_id = token[len(PREFIX) : len(PREFIX) + ID_HEX] if token.startswith(PREFIX) else ""
        record = self._view.keys.get(key_id)
        expected = record.digest if record is not None else _NO_MATCH
        return record if hmac.compare_digest(digest(token), expected) else None

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a valid, unrevoked key; None otherwise."""
        self.refresh()
        if self._env_digest is not None and hmac.compare_digest(digest(token), self._env_digest):
            return Principal(ENV_KEY_ID, "admin")
        record = self._match(token)
        if record is None or record.revoked is not None:
            return None
        return Principal(record.id, record.scope, record.avatars)

    def revoked(self, token: str) -> bool:
        """Whether ``token`` is a key that was revoked (to say so instead of "unknown")."""
        record = self._match(token)
        return record is not None and record.revoked is not None
