"""Whose face it is: an avatar package's owner, origin and consent, signed.

A package made by ``avatarcast avatar create`` carries ``ownership.json``::

    {"format": 1, "avatar": "anna", "owner": "k_1a2b3c4d" | "local", "created": "...",
     "source": {"file": "anna.mp4", "sha256": "..."},
     "consent": {"kind": "statement", "statement": "I, Anna ..., consent ...", "given": "..."},
     "manifest_sha256": "...", "signature": "hmac-sha256:..."}

``owner`` is the id of the API key that made it, or ``local`` when the command line made it
without one. The signature is an HMAC-SHA256, with a secret that only this installation holds
(``HOME/signing.key``, created on first use, mode 0600), over every other field, including the
SHA-256 of ``manifest.json``: editing the owner, the consent or the manifest afterwards makes
:func:`read_ownership` refuse the package. An HMAC, not a public-key signature, because the
only party that ever verifies a record is the installation that wrote it.

The built-in ``default`` ships its own unsigned record (a public-domain photograph; see
:func:`bundled_record`), trusted only where it lies: inside the installed package.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.avatar import AvatarError, default_avatar_dir

OWNERSHIP_FILE = "ownership.json"
SIGNING_KEY_FILE = "signing.key"
LOCAL_OWNER = "local"  # made on the command line without an API key
BUNDLED_OWNER = "avatarcast"  # the built-in default
FORMAT = 1
MIN_STATEMENT_CHARS = 20
HOW_TO_CONSENT = (
    'add --consent "I, <full name>, consent to avatarcast making a speaking avatar of my face '
    'and voice" (the person shown, in their words) or --consent-file FILE'
)
# The default is skimage.data.astronaut(): a NASA portrait, which NASA places in the public
# domain. Public domain answers copyright, not the person's consent: said plainly here.
BUNDLED_SOURCE = ("skimage.data.astronaut()", "NASA portrait of astronaut Eileen Collins")
BUNDLED_STATEMENT = (
    "The built-in avatar animates a public-domain NASA photograph (skimage.data.astronaut(), "
    "astronaut Eileen Collins) for demonstration. It is not a generated face, and its subject "
    "gave no consent specific to avatarcast: do not present it as the person speaking."
)


class OwnershipError(AvatarError):
    """A missing consent, or a record that is malformed or fails its signature check."""


@dataclass(frozen=True)
class Consent:
    kind: str  # "statement" (the person's signed words) or "public_domain" (the default)
    statement: str
    given: str


@dataclass(frozen=True)
class Ownership:
    avatar: str
    owner: str
    created: str
    source_file: str
    source_sha256: str
    consent: Consent
    manifest_sha256: str
    signature: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "avatar": self.avatar,
            "owner": self.owner,
            "created": self.created,
            "source": {"file": self.source_file, "sha256": self.source_sha256},
            "consent": asdict(self.consent),
            "manifest_sha256": self.manifest_sha256,
            "signature": self.signature,
        }

    @classmethod
    def from_json(cls, data: Any) -> Ownership:
        try:
            if int(data["format"]) != FORMAT:
                raise OwnershipError(f"{OWNERSHIP_FILE} format {data['format']} is not supported")
            consent = data["consent"]
            signature = data.get("signature")
            return cls(
                avatar=str(data["avatar"]),
                owner=str(data["owner"]),
                created=str(data["created"]),
                source_file=str(data["source"]["file"]),
                source_sha256=str(data["source"]["sha256"]),
                consent=Consent(
                    str(consent["kind"]), str(consent["statement"]), str(consent["given"])
                ),
                manifest_sha256=str(data["manifest_sha256"]),
                signature=None if signature is None else str(signature),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, OwnershipError):
                raise
            raise OwnershipError(f"{OWNERSHIP_FILE} is malformed: {exc!r}") from None

    def describe(self) -> dict[str, Any]:
        """What ``avatar show`` and ``GET /v1/avatars/{name}`` print."""
        data = self.to_json()
        data["signed"] = self.signature is not None
        del data["format"], data["signature"], data["manifest_sha256"]
        return data


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def signing_key(home: Path, *, create: bool = False) -> bytes | None:
    """This installation's HMAC secret (32 random bytes, ``HOME/signing.key``, 0600)."""
    path = home / SIGNING_KEY_FILE
    if not path.is_file() and create:
        home.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: two first uses at once keep one secret
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        return None
    return key if len(key) >= 32 else None


def check_statement(text: str | None) -> str:
    """The consent statement, refused unless it is an explicit sentence that says consent."""
    statement = " ".join((text or "").split())
    if not statement:
        raise OwnershipError(f"an avatar needs the consent of the person shown: {HOW_TO_CONSENT}")
    if len(statement) < MIN_STATEMENT_CHARS or "consent" not in statement.lower():
        raise OwnershipError(
            f"the consent statement {statement[:60]!r} is not explicit: it must be a sentence "
            f"of at least {MIN_STATEMENT_CHARS} characters that says the person consents; "
            + HOW_TO_CONSENT
        )
    return statement


def _payload(record: Ownership) -> bytes:
    data = record.to_json()
    del data["signature"]
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _sign(record: Ownership, key: bytes) -> str:
    return "hmac-sha256:" + hmac.new(key, _payload(record), hashlib.sha256).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def seal(package: Path, *, owner: str, source: Path, statement: str, home: Path) -> Ownership:
    """Write the signed record of the package at ``package`` (made from ``source`` with the
    given consent ``statement``); atomic, so a reader sees no record or a whole one."""
    name = json.loads((package / "manifest.json").read_text(encoding="utf-8"))["name"]
    key = signing_key(home, create=True)
    if key is None:
        raise OwnershipError(f"{home / SIGNING_KEY_FILE} is unreadable or too short")
    now = _now()
    record = Ownership(
        avatar=str(name),
        owner=owner,
        created=now,
        source_file=source.name,
        source_sha256=file_sha256(source),
        consent=Consent("statement", check_statement(statement), now),
        manifest_sha256=file_sha256(package / "manifest.json"),
    )
    record = Ownership(**{**record.__dict__, "signature": _sign(record, key)})
    _write(package / OWNERSHIP_FILE, record)
    return record


def bundled_record(package: Path) -> Ownership:
    """The built-in default's record (unsigned: written by ``python -m models.recipe``)."""
    record = Ownership(
        avatar="default",
        owner=BUNDLED_OWNER,
        created=_now(),
        source_file=BUNDLED_SOURCE[0],
        source_sha256="",
        consent=Consent("public_domain", BUNDLED_STATEMENT, _now()),
        manifest_sha256=file_sha256(package / "manifest.json"),
    )
    _write(package / OWNERSHIP_FILE, record)
    return record


def _write(path: Path, record: Ownership) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".ownership.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(record.to_json(), indent=2) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_ownership(package: Path, home: Path) -> Ownership | None:
    """The package's verified record; None for a package made before records existed.

    Raises :class:`OwnershipError` when the record is malformed, names another avatar, no
    longer matches ``manifest.json`` or fails its signature: it was changed afterwards."""
    path = package / OWNERSHIP_FILE
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise OwnershipError(f"{path} cannot be read: {exc}") from None
    try:
        record = Ownership.from_json(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise OwnershipError(f"{path} is not JSON: {exc}") from None
    tampered = f"avatar {package.name!r}: {OWNERSHIP_FILE} fails its check ({{}}): it was changed "
    tampered += "outside avatarcast; restore the package or create the avatar again"
    if record.manifest_sha256 != file_sha256(package / "manifest.json"):
        raise OwnershipError(tampered.format("manifest.json changed"))
    if record.signature is None:
        bundled = package.resolve() == default_avatar_dir().resolve()
        if bundled and record.owner == BUNDLED_OWNER:
            return record
        raise OwnershipError(tampered.format("unsigned"))
    key = signing_key(home)
    if key is None:
        raise OwnershipError(tampered.format(f"no {SIGNING_KEY_FILE} in {home} to verify it"))
    if not hmac.compare_digest(record.signature, _sign(record, key)):
        raise OwnershipError(tampered.format("bad signature"))
    return record


def summary(package: Path, home: Path) -> dict[str, Any]:
    """What ``avatar show`` and ``GET /v1/avatars/{name}`` say: the verified record, or why
    there is none (``valid`` false, with an ``error``)."""
    try:
        record = read_ownership(package, home)
    except OwnershipError as exc:
        return {"valid": False, "error": str(exc)}
    if record is None:
        return {
            "valid": False,
            "owner": LOCAL_OWNER,
            "error": "no ownership record (made before avatarcast kept them): "
            "only the local user and admin keys may use it",
        }
    return {"valid": True, **record.describe()}


def owner_of(record: Ownership | None) -> str:
    """The owner; a package without a record belongs to the local user (admin keys only)."""
    return LOCAL_OWNER if record is None else record.owner


__all__ = [
    "HOW_TO_CONSENT",
    "LOCAL_OWNER",
    "OWNERSHIP_FILE",
    "Consent",
    "Ownership",
    "OwnershipError",
    "bundled_record",
    "check_statement",
    "file_sha256",
    "owner_of",
    "read_ownership",
    "seal",
    "signing_key",
    "summary",
]
