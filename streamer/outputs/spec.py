"""What a request for an output asks for, checked before anything is fetched or written.

An output makes the server connect to a host or write a file on a user's word, so each type
has an allowlist: ``rtmp`` takes only ``rtmp://`` and ``rtmps://`` URLs with an application
and a stream key; ``whip`` takes ``https://`` URLs (``http://`` only on this machine) and an
optional Bearer token (:mod:`streamer.outputs.whipspec`); ``record`` takes a bare file name
that lands in the server's recordings folder and nowhere else (no separators, no ``..``, no
hidden files, no overwriting).
"""

from __future__ import annotations

import importlib.util
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from streamer.outputs.base import OutputRejected, split_url
from streamer.outputs.srt_url import parse_srt_url, redact_srt, tool_path
from streamer.outputs.whipspec import check_token, check_whip_url, redact_whip
from streamer.pipeline.codecs import VIDEO_BITRATE

BUILT = ("rtmp", "record", "srt", "virtualcam", "whip")
RTMP_SCHEMES = ("rtmp", "rtmps")
URL_SCHEMES = {
    "rtmp": "rtmp",
    "rtmps": "rtmp",
    "srt": "srt",
    "whip+https": "whip",
    "whip+http": "whip",
}
RECORD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# The shared H.264 encode's bit rate (encode once): an output can cap it, never lower it.
SESSION_VIDEO_KBPS = VIDEO_BITRATE // 1000
MAX_VIDEO_KBPS = 100_000


@dataclass(frozen=True)
class OutputSpec:
    """A validated output: ``url`` for a push, ``path`` for a recording; ``token`` is a WHIP
    endpoint's Bearer token (a secret: left out of ``repr`` and never shown)."""

    kind: str
    url: str | None = None
    path: Path | None = None
    video_bitrate_kbps: int = SESSION_VIDEO_KBPS
    token: str | None = field(default=None, repr=False)

    @property
    def target(self) -> str:
        """Where it goes, safe to show: a stream key is a password and stays hidden."""
        if self.url is not None:
            return redact_whip(self.url) if self.kind == "whip" else redact(self.url)
        return self.path.name if self.path is not None else ""


def parse_spec(
    kind: object,
    *,
    recordings: Path,
    audio_pipes: Path | None = None,
    url: object = None,
    name: object = None,
    video_bitrate_kbps: object = None,
    token: object = None,
) -> OutputSpec:
    """The validated spec of a request, or :class:`OutputRejected` saying what to fix."""
    if kind not in BUILT:
        raise OutputRejected(400, "unknown_output_type", f"type must be one of {', '.join(BUILT)}")
    kbps = check_bitrate(video_bitrate_kbps)
    if token is not None and kind != "whip":
        raise OutputRejected(400, "invalid_request", "only a whip output takes a token")
    if kind == "whip":
        if name is not None:
            raise OutputRejected(400, "invalid_request", "a whip output takes a url, not a name")
        return OutputSpec(
            "whip", url=check_whip_url(url), video_bitrate_kbps=kbps, token=check_token(token)
        )
    if kind == "rtmp":
        if name is not None:
            raise OutputRejected(400, "invalid_request", "an rtmp output takes a url, not a name")
        return OutputSpec("rtmp", url=check_rtmp_url(url), video_bitrate_kbps=kbps)
    if kind == "srt":
        if name is not None:
            raise OutputRejected(400, "invalid_request", "an srt output takes a url, not a name")
        parse_srt_url(url)
        tool_path()
        return OutputSpec("srt", url=str(url), video_bitrate_kbps=kbps)
    if kind == "virtualcam":
        return virtualcam_spec(audio_pipes, url, name)
    if url is not None:
        raise OutputRejected(
            400, "invalid_request", "a record output takes a name (a file), not a url"
        )
    return OutputSpec("record", path=recording_path(recordings, name), video_bitrate_kbps=kbps)


def check_bitrate(value: object) -> int:
    """``video_bitrate_kbps`` is the most the destination may receive. The video is encoded
    once per session at :data:`SESSION_VIDEO_KBPS` and only remuxed per output, so a
    ceiling at or above it is honoured as is; a lower one would need a second encode."""
    if value is None:
        return SESSION_VIDEO_KBPS
    if isinstance(value, bool) or not isinstance(value, int) or value > MAX_VIDEO_KBPS:
        raise OutputRejected(
            422, "invalid_bitrate", f"video_bitrate_kbps must be an integer up to {MAX_VIDEO_KBPS}"
        )
    if value < SESSION_VIDEO_KBPS:
        raise OutputRejected(
            422,
            "bitrate_below_shared_encode",
            f"the session's video is encoded once for all its outputs at {SESSION_VIDEO_KBPS} "
            f"kbps; an output cannot get less ({value} kbps asked): leave video_bitrate_kbps "
            f"out or give at least {SESSION_VIDEO_KBPS}",
        )
    return value


def check_rtmp_url(url: object) -> str:
    parts, port = split_url(url, "an rtmp output needs a url: rtmp://host/app/KEY")
    scheme = parts.scheme.lower()
    if scheme not in RTMP_SCHEMES:
        raise OutputRejected(
            400,
            "unsupported_scheme",
            f"an rtmp output takes rtmp:// or rtmps:// URLs, not {scheme or 'no scheme'}://",
        )
    if not parts.hostname:
        raise OutputRejected(400, "invalid_url", "the url has no host: rtmp://host/app/KEY")
    if port == 0:
        raise OutputRejected(400, "invalid_url", "the url's port must be 1 to 65535")
    if not parts.path.strip("/") or parts.fragment:
        raise OutputRejected(
            400,
            "invalid_url",
            "the url needs an application and a stream key, and no #fragment: rtmp://host/app/KEY",
        )
    return str(url)  # split_url checked it is one


def file_name(name: object, what: str, where: str) -> str:
    """A bare file name for a file in one of the server's folders, nothing else."""
    if not isinstance(name, str) or not RECORD_NAME.fullmatch(name) or ".." in name:
        raise OutputRejected(
            400,
            "invalid_name",
            f"{what} needs a name of letters, digits, '.', '_' and '-' (at most 128, starting "
            f"with a letter or digit, no '..'): it is a file in {where}",
        )
    return name


def recording_path(recordings: Path, name: object) -> Path:
    """``recordings/name`` (``.mp4`` added when absent); nothing else can be named."""
    name = file_name(name, "a record output", "the recordings folder")
    suffix = Path(name).suffix.lower()
    if suffix not in ("", ".mp4"):
        raise OutputRejected(
            400, "invalid_name", f"recordings are fragmented MP4: name {name!r} must end in .mp4"
        )
    folder = recordings.expanduser().resolve()
    path = folder / (name if suffix else f"{name}.mp4")
    if path.resolve().parent != folder:  # e.g. a symlink planted in the folder
        raise OutputRejected(400, "invalid_name", f"{name!r} points outside the recordings folder")
    if path.exists():
        raise OutputRejected(
            409, "recording_exists", f"a recording named {path.name!r} exists: choose another name"
        )
    return path


def whip_endpoint(url: str) -> str:
    """A ``serve --output`` URL's endpoint: ``whip+https://`` → ``https://``."""
    return url[len("whip+") :] if url[:5].lower() == "whip+" else url


def virtualcam_spec(audio_pipes: Path | None, url: object, name: object) -> OutputSpec:
    """A virtual camera; ``name``, when given, is its voice's FIFO in the audio-pipes
    folder (a file name only, like a recording's)."""
    if importlib.util.find_spec("pyvirtualcam") is None:
        raise OutputRejected(
            424,
            "output_unavailable",
            "virtualcam outputs need pyvirtualcam on the server: "
            "pip install 'avatarcast[virtualcam]'",
        )
    if url is not None:
        raise OutputRejected(
            400, "invalid_request", "a virtualcam output takes no url (name: its audio pipe)"
        )
    if name is None:
        return OutputSpec("virtualcam")
    if audio_pipes is None:
        raise OutputRejected(400, "invalid_request", "this server has no audio-pipes folder")
    name = file_name(name, "a virtualcam output (its audio pipe)", "the audio-pipes folder")
    folder = audio_pipes.expanduser().resolve()
    path = folder / name
    if path.resolve().parent != folder:
        raise OutputRejected(400, "invalid_name", f"{name!r} points outside the audio-pipes folder")
    if path.exists() and not stat.S_ISFIFO(path.stat().st_mode):
        raise OutputRejected(409, "not_a_fifo", f"{name!r} exists and is not a FIFO")
    return OutputSpec("virtualcam", path=path)


def kind_of_url(url: str) -> str:
    """The output type a ``serve --output`` URL asks for, by its scheme."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    kind = URL_SCHEMES.get(scheme)
    if kind is None:
        raise OutputRejected(
            400,
            "unsupported_scheme",
            f"--output {redact(url)}: use an rtmp://, rtmps://, srt:// or whip+https:// URL",
        )
    return kind


def redact(url: str) -> str:
    """The URL with its stream key (the last path segment), password and query hidden."""
    if url[:6].lower() == "srt://":
        return redact_srt(url)
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(invalid url)"
    netloc = f"{host}:{port}" if port else host
    head, _, key = parts.path.rpartition("/")
    path = f"{head}/****" if key and head else parts.path
    return urlunsplit((parts.scheme, netloc, path, "", ""))


def specs_from_urls(
    urls: tuple[str, ...], recordings: Path, whip_token: str | None = None
) -> list[OutputSpec]:
    """``serve --output URL``...: one spec per URL, or :class:`OutputRejected` for the first
    that cannot be served (a scheme not built yet says so). ``whip_token`` is the Bearer
    token of the ``whip+https://`` URLs (from the environment: a command line is public)."""
    specs = []
    for url in urls:
        kind = kind_of_url(url)
        if kind == "whip":
            specs.append(
                parse_spec(kind, recordings=recordings, url=whip_endpoint(url), token=whip_token)
            )
        else:
            specs.append(parse_spec(kind, recordings=recordings, url=url))
    return specs
