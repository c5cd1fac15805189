"""C2PA Content Credentials: a signed manifest in every render and finished recording that
says the video was made by AI (``c2pa.actions``, digitalSourceType trainedAlgorithmicMedia)
and whose face it shows (the avatar's owner).

Signing is offline, with a certificate chain avatarcast makes itself on first use under
``$AVATARCAST_HOME/c2pa/``: a local CA (10 years) and a leaf signed by it (2 years), both
P-256 ECDSA (ES256); the keys are written 0600. The C2PA SDK refuses a self-signed leaf, and
a leaf without the document-signing uses; that is why there are two certificates. A reader
that does not trust the local CA reports the signature as valid but its signer as untrusted
(``signingCredential.untrusted``), as for any private CA; put ``ca.pem`` in a trust list to
change that. Replace ``chain.pem`` and ``leaf.key`` with a certificate from a real CA to sign
under that name.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

GENERATOR = "avatarcast"
AI_SOURCE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
CLAIM_SIGNING = x509.ObjectIdentifier("1.3.6.1.4.1.62558.2.1")  # c2pa-kp-claimSigning


class CredentialsError(ValueError):
    """Signing or reading Content Credentials failed (a user-facing error)."""


@dataclass(frozen=True)
class SigningChain:
    """The leaf certificate followed by the CA (PEM), and the leaf's private key (PEM)."""

    chain: bytes
    key: bytes

    @classmethod
    def load_or_create(cls, home: Path) -> SigningChain:
        """The chain under ``home/c2pa``, made now if it is not there yet."""
        folder = home / "c2pa"
        chain, key = folder / "chain.pem", folder / "leaf.key"
        if not (chain.is_file() and key.is_file()):
            _create(folder)
        return cls(chain.read_bytes(), key.read_bytes())


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "avatarcast (local)"),
        ]
    )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _create(folder: Path) -> None:
    """A local CA and a claim-signing leaf it issues (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("avatarcast local CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("avatarcast signer"))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=730))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), True
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION, CLAIM_SIGNING]), False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    plain = serialization.NoEncryption()
    _write_private(folder / "ca.key", ca_key.private_bytes(pem, pkcs8, plain))
    _write_private(folder / "leaf.key", leaf_key.private_bytes(pem, pkcs8, plain))
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "chain.pem").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))


def manifest_definition(
    title: str, avatar: str, owner: str, mark: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The manifest: created by AI (trainedAlgorithmicMedia), by avatarcast, showing
    ``avatar`` whose owner is ``owner``; ``mark`` repeats what the invisible mark says."""
    from streamer import __version__

    about: dict[str, Any] = {"avatar": avatar, "owner": owner}
    if mark:
        about["watermark"] = mark
    return {
        "claim_generator_info": [{"name": GENERATOR, "version": __version__}],
        "title": title,
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": AI_SOURCE,
                            "softwareAgent": {"name": GENERATOR, "version": __version__},
                        }
                    ]
                },
            },
            {
                "label": "stds.schema-org.CreativeWork",
                "data": {
                    "@context": "https://schema.org",
                    "@type": "CreativeWork",
                    "author": [{"@type": "Person", "name": owner}],
                },
            },
            {"label": "org.avatarcast.avatar", "data": about},
        ],
    }


def sign(
    source: Path, dest: Path, chain: SigningChain, definition: dict[str, Any], mime: str
) -> None:
    """Write ``source`` to ``dest`` with ``definition`` embedded and signed."""
    import c2pa

    try:
        info = c2pa.C2paSignerInfo(b"es256", chain.chain, chain.key, None)
        with (
            c2pa.Signer.from_info(info) as signer,
            c2pa.Builder(json.dumps(definition)) as builder,
            open(source, "rb") as src,
            open(dest, "w+b") as out,
        ):
            builder.sign(signer, mime, src, out)
    except c2pa.C2paError as exc:
        raise CredentialsError(f"cannot sign {source.name}: {exc}") from None


def read(path: Path) -> dict[str, Any] | None:
    """The file's manifest store as C2PA's reader gives it (with ``validation_state``), or
    None when it has none."""
    import c2pa

    try:
        with c2pa.Reader(str(path)) as reader:
            store: dict[str, Any] = json.loads(reader.json())
            return store
    except c2pa.C2paError.ManifestNotFound:
        return None
    except c2pa.C2paError as exc:
        raise CredentialsError(f"cannot read the C2PA manifest of {path.name}: {exc}") from None


def avatar_owner(package: Path) -> str:
    """The avatar's owner as its manifest.json records it (``owner``), else "local"."""
    try:
        manifest = json.loads((package / "manifest.json").read_text())
    except (OSError, ValueError):
        return "local"
    owner = manifest.get("owner") if isinstance(manifest, dict) else None
    if isinstance(owner, dict):
        owner = owner.get("name") or owner.get("id")
    return str(owner) if owner else "local"


def sign_in_place(
    path: Path,
    title: str,
    avatar: str,
    package: Path,
    mark: dict[str, Any],
    home: Path,
    mime: str = "video/mp4",
) -> None:
    """Replace the finished file ``path`` (MP4, or QuickTime with ``mime``) by a copy carrying
    the signed manifest titled ``title`` for ``avatar`` (its package at ``package``, for the
    owner), made with the chain under ``home``."""
    definition = manifest_definition(title, avatar, avatar_owner(package), mark)
    signed = path.with_name(path.name + ".signed")
    try:
        sign(path, signed, SigningChain.load_or_create(home), definition, mime)
        os.replace(signed, path)
    finally:
        signed.unlink(missing_ok=True)
