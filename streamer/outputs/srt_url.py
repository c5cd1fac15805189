"""``srt://`` output URLs: checked strictly before anything is sent, and shown without secrets.

An SRT URL names a caller's destination and its socket options as query parameters. Only
what a push to a platform or a media server needs is accepted (``streamid``, ``passphrase``,
``pbkeylen``, ``latency`` and ``mode=caller``), so a request cannot turn the server into a
listener or set options we have not looked at. The ``passphrase`` is a password and the
``streamid`` usually carries the stream key (``#!::r=live/KEY,m=publish``): both are hidden
wherever the URL is shown.

The values are handed to ``srt-live-transmit`` (see :mod:`.srt`), which reads them raw (it
does not percent-decode), so they are decoded here and may not contain what its parser
splits on.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from streamer.outputs.base import OutputRejected

SRT_TOOL = "srt-live-transmit"
OPTIONS = ("streamid", "passphrase", "pbkeylen", "latency", "mode")
SECRET = frozenset({"streamid", "passphrase"})
MAX_STREAMID = 512  # SRT's limit
PASSPHRASE_LENGTHS = range(10, 80)  # SRT refuses shorter or longer ones
KEY_LENGTHS = ("16", "24", "32")
MAX_LATENCY_MS = 10_000
EXAMPLE = "srt://host:port?streamid=...&passphrase=..."


@dataclass(frozen=True)
class SrtAddress:
    """A validated SRT destination: host, port and the accepted options (decoded)."""

    host: str
    port: int
    options: tuple[tuple[str, str], ...]

    def for_tool(self) -> str:
        """The URL as ``srt-live-transmit`` reads it: always a caller, values raw."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = "&".join(f"{k}={v}" for k, v in (("mode", "caller"), *self.options))
        return f"srt://{host}:{self.port}?{query}"

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(v for k, v in self.options if k in SECRET)


def tool_path() -> str:
    """Where ``srt-live-transmit`` is, or a 4xx saying how to install it."""
    path = shutil.which(SRT_TOOL)
    if path is None:
        raise OutputRejected(
            424,
            "output_unavailable",
            f"srt outputs need {SRT_TOOL} on the server, which is not installed "
            "(Debian/Ubuntu: apt-get install srt-tools)",
        )
    return path


def _bad(message: str) -> OutputRejected:
    return OutputRejected(400, "invalid_url", f"{message}: {EXAMPLE}")


def parse_srt_url(url: object) -> SrtAddress:
    """The destination ``url`` names, or :class:`OutputRejected` saying what to fix."""
    if not isinstance(url, str) or not url:
        raise _bad("an srt output needs a url")
    if len(url) > 2048 or any(c.isspace() or ord(c) < 32 for c in url):
        raise _bad("the url is too long or has spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _bad(f"the url cannot be parsed ({exc})") from None
    if parts.scheme.lower() != "srt":
        raise OutputRejected(
            400,
            "unsupported_scheme",
            f"an srt output takes srt:// URLs, not {parts.scheme or 'no scheme'}://",
        )
    if not parts.hostname or "@" in parts.netloc:
        raise _bad("the url needs a host (and no user name)")
    if not port:
        raise _bad("the url needs a port from 1 to 65535")
    if parts.path not in ("", "/") or parts.fragment:
        raise _bad("the url takes no path and no #fragment (a '#' in a streamid is %23)")
    return SrtAddress(parts.hostname, port, _options(parts.query))


def _options(query: str) -> tuple[tuple[str, str], ...]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise _bad("the url's query is malformed") from None
    keys = [k for k, _ in pairs]
    unknown = sorted(set(keys) - set(OPTIONS))
    if unknown:
        raise _bad(f"unsupported option {unknown[0]!r} (allowed: {', '.join(OPTIONS)})")
    if len(set(keys)) != len(keys):
        raise _bad("an option is given twice")
    options = dict(pairs)
    for key, value in options.items():
        if "&" in value or any(c.isspace() or not c.isprintable() for c in value):
            raise _bad(f"{key} may not contain '&', spaces or control characters")
    _check_values(options)
    return tuple((k, v) for k, v in pairs if k != "mode")


def _check_values(options: dict[str, str]) -> None:
    if options.get("mode", "caller") != "caller":
        raise _bad("an output connects to its destination: mode can only be caller")
    if "streamid" in options and not 0 < len(options["streamid"]) <= MAX_STREAMID:
        raise _bad(f"streamid must have 1 to {MAX_STREAMID} characters")
    if "passphrase" in options and len(options["passphrase"]) not in PASSPHRASE_LENGTHS:
        raise _bad("passphrase must have 10 to 79 characters (SRT's rule)")
    if "pbkeylen" in options and options["pbkeylen"] not in KEY_LENGTHS:
        raise _bad("pbkeylen must be 16, 24 or 32")
    latency = options.get("latency")
    if latency is not None and not (latency.isdigit() and int(latency) <= MAX_LATENCY_MS):
        raise _bad(f"latency is in milliseconds, 0 to {MAX_LATENCY_MS}")


def redact_srt(url: str) -> str:
    """The URL with its streamid and passphrase hidden, its other options shown."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
        pairs = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return "(invalid url)"
    netloc = f"[{host}]" if ":" in host else host
    netloc = f"{netloc}:{port}" if port else netloc
    query = "&".join(f"{k}={'****' if k in SECRET else v}" for k, v in pairs if k in OPTIONS)
    return urlunsplit(("srt", netloc, "", query, ""))
