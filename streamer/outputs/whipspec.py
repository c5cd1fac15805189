"""What a ``whip`` output may be pointed at, checked before anything is fetched.

A WHIP endpoint is an HTTPS URL (RFC 9725 requires HTTPS). Plain ``http://`` is accepted only
for an endpoint on this machine (``localhost``, ``127.0.0.0/8``, ``::1``), such as a local
MediaMTX: anywhere else the Bearer token and the SDP, which carries the DTLS fingerprint that
keeps the media private, would cross the network in clear, so a man in the middle could take
the token or the stream. The same rule holds for every redirect the endpoint answers with.

The token is a secret: it goes only into the ``Authorization`` header, never into a log, an
event, an error or a ``GET`` answer (``target`` shows the host and hides the whole path, which
on some services holds a stream key too).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

from streamer.outputs.base import OutputRejected, split_url

MAX_TOKEN = 4096
# RFC 6750's b64token: what a Bearer token may hold (JWTs and stream keys fit).
TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
LOOPBACK_NAMES = ("localhost", "localhost.")


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_whip_url(url: object) -> str:
    """``url`` if it is a WHIP endpoint this server may POST to, else :class:`OutputRejected`."""
    parts, port = split_url(url, "a whip output needs a url: https://host/path/to/whip")
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise OutputRejected(
            400,
            "unsupported_scheme",
            f"a whip output takes https:// URLs, not {scheme or 'no scheme'}://",
        )
    host = parts.hostname or ""
    if not host:
        raise OutputRejected(400, "invalid_url", "the url has no host: https://host/path")
    if parts.username is not None or parts.password is not None:
        raise OutputRejected(
            400,
            "invalid_url",
            'the url must not hold credentials (user:password@): give the token as "token"',
        )
    if port == 0:
        raise OutputRejected(400, "invalid_url", "the url's port must be 1 to 65535")
    if parts.fragment:
        raise OutputRejected(400, "invalid_url", "the url must not have a #fragment")
    if scheme == "http" and not is_loopback(host):
        raise OutputRejected(
            400,
            "insecure_url",
            "a whip endpoint on another machine must be https://: over http:// the token and "
            "the SDP (the stream's encryption keys' fingerprint) would travel in clear "
            "(http:// is accepted for localhost only)",
        )
    return str(url)  # split_url checked it is one


def check_token(token: object) -> str | None:
    """The Bearer token if it is one (RFC 6750 characters, at most 4096), else rejected.
    The message never repeats the token."""
    if token is None:
        return None
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN or not TOKEN.fullmatch(token):
        raise OutputRejected(
            400,
            "invalid_token",
            f"the whip token must be 1 to {MAX_TOKEN} characters of letters, digits and "
            "-._~+/ (a Bearer token), with = only at its end",
        )
    return token


def redact_whip(url: str) -> str:
    """``scheme://host[:port]/****``: the path may hold a stream key, the query a token."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(invalid url)"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    path = "/****" if parts.path.strip("/") or parts.query else parts.path
    return urlunsplit((parts.scheme, netloc, path, "", ""))
