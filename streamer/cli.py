"""``avatarcast``: the command line of INTERFACE.md.

User errors (bad input, missing avatar, missing optional dependency) end with one line on
stderr and exit status 2; only bugs show a traceback. Heavy modules (torch, the server,
training) are imported inside the handlers so that ``--help`` is fast and serving needs no torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from streamer import __version__, cli_access
from streamer.config import BACKENDS

EXIT_USAGE = 2


class UserError(Exception):
    """Anything the user can fix; printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage block; the contract is one line.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _user_errors() -> tuple[type[BaseException], ...]:
    from models.avatar import AvatarError
    from models.matte import MatteError
    from models.media import AudioDecodeError
    from streamer.config import ConfigError
    from streamer.credentials import CredentialsError
    from streamer.engine.base import BackendError
    from streamer.keys import KeyFileError
    from streamer.render import RenderError

    errors = (AvatarError, MatteError, BackendError, AudioDecodeError, RenderError, ConfigError)
    return (UserError, CredentialsError, *errors, cli_access.AccessError, KeyFileError)


def _require(module: str, extra: str) -> None:
    raise UserError(
        f"this command needs {module}, which is not installed here: "
        f"pip install 'avatarcast[{extra}]'"
    )


def _import(name: str, extra: str) -> object:
    import importlib

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or name
        if missing == name or missing.startswith(("models.", "streamer.")):
            raise UserError(f"{name} is not part of this build yet") from None
        _require(missing.split(".")[0], extra)
    raise AssertionError("unreachable")


def cmd_serve(args: argparse.Namespace) -> int:
    from streamer.app import serve
    from streamer.config import Settings

    settings = Settings.from_env(
        host=args.host,
        port=args.port,
        avatar=args.avatar,
        backend=args.backend,
        outputs=tuple(args.output or ()),
        insecure=args.insecure,
    )
    return int(serve(settings) or 0)


def _home() -> Path:
    """The server's home (``Settings.home``): where the avatars other than default live."""
    from streamer.config import Settings

    return Settings.from_env().home


def cmd_render(args: argparse.Namespace) -> int:
    from models.avatar import load_avatar
    from streamer.config import Settings
    from streamer.engine import backend_key, make_backend
    from streamer.progress import progress_bar
    from streamer.render import BATCH, render
    from streamer.render_file import ALPHA_SUFFIXES

    settings = Settings.from_env(avatar=args.avatar, backend=args.backend)
    if args.text is not None and not args.text.strip():
        raise UserError("--text is empty: give some words to say")
    out = Path(args.out)
    suffix = out.suffix.lower()
    transparent = args.transparent or suffix in ALPHA_SUFFIXES
    if transparent and suffix not in ALPHA_SUFFIXES:
        raise UserError(
            f"--out {out} must be a .webm (VP9) or .mov (ProRes 4444) file for --transparent"
        )
    if suffix not in (".mp4", *ALPHA_SUFFIXES):
        raise UserError(f"--out {out} must be an .mp4 file (or .webm or .mov for --transparent)")
    if args.audio is not None:
        # Fail on a bad input before the model loads.
        from models.media import decode_audio

        next(iter(decode_audio(args.audio)), None)
    avatar = load_avatar(settings.avatar, settings.home)
    backend = make_backend(settings.backend, avatar, threads=settings.threads)
    progress = progress_bar()
    try:
        result = render(
            out,
            avatar,
            backend,
            audio=args.audio,
            text=args.text,
            batch_size=settings.batch_size or BATCH,
            progress=progress.update,
            transparent=transparent,
            label=args.label,
            signing=settings.home,  # the C2PA chain lives (or is made) there
        )
    finally:
        progress.close()
    print(
        f"wrote {result.path}: {result.frames} frames, {result.duration_s:.2f} s of audio, "
        f"{result.ms_per_frame:.1f} ms/frame ({backend_key(backend)}), mark id {result.mark_id}",
        file=sys.stderr,
    )
    return 0


# These own their flags (their modules' main); argv is handed over unparsed.
FORWARDED = {
    "bench": ("streamer.measure.bench", "dev", "performance figures"),
    "eval": ("streamer.measure.eval", "eval", "lip-sync and quality figures"),
    "verify": ("streamer.verify", "dev", "whether a video carries the mark; its C2PA manifest"),
    "bench-watermark": ("streamer.measure.watermark", "dev", "the mark's robustness and cost"),
}


def run_forwarded(command: str, argv: Sequence[str]) -> int:
    module, extra, _ = FORWARDED[command]
    return int(_import(module, extra).main(list(argv)) or 0)  # type: ignore[attr-defined]


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="avatarcast", description="Real-time lip-synced streaming avatars.")
    parser.add_argument("--version", action="version", version=f"avatarcast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> _Parser:
        p: _Parser = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    p = command("serve", cmd_serve, "run the streaming server")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8080)")
    p.add_argument("--avatar", default=None, help="avatar name (default: default)")
    p.add_argument("--backend", choices=BACKENDS, default=None)
    p.add_argument(
        "--output",
        action="append",
        metavar="URL",
        help="also push the default session to URL (rtmp://, rtmps://, srt://, whip+https://; "
        "repeatable; a WHIP token comes from $AVATARCAST_WHIP_TOKEN)",
    )
    p.add_argument("--insecure", action="store_true", help="allow a public --host with no API key")

    p = command("render", cmd_render, "render a lip-synced MP4 from audio or text")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio", help="audio file in any format PyAV decodes")
    source.add_argument("--text", help="text spoken by the built-in TTS")
    p.add_argument("--out", required=True, help="output .mp4 file (.webm or .mov: transparent)")
    p.add_argument(
        "--transparent",
        action="store_true",
        help="the person over a transparent background: .webm (VP9 with alpha) or .mov "
        "(ProRes 4444 with alpha, signed C2PA manifest); see docs/obs.md",
    )
    p.add_argument("--label", action="store_true", help='draw an "AI-generated" label')
    p.add_argument("--avatar", default=None, help="avatar name (default: default)")
    p.add_argument("--backend", choices=BACKENDS, default=None)

    from streamer import cli_avatar

    cli_avatar.add_commands(command)
    cli_access.add_commands(command)
    for name, (*_, help) in FORWARDED.items():
        p = command(name, lambda a: 0, f"{help} (see avatarcast {name} --help)")
        p.add_argument("options", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    errors = _user_errors()
    try:
        if argv and argv[0] in FORWARDED:
            return run_forwarded(argv[0], argv[1:])
        args = build_parser().parse_args(argv)
        cli_access.check(args)  # consent for create; the AVATARCAST_KEY's rights on the avatar
        return int(args.handler(args))
    except errors as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("avatarcast: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`avatarcast avatar show NAME | head`): stop quietly, as Unix
        # tools do, and keep Python from failing again on the closed pipe at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _fail(message: str) -> int:
    line = " ".join(message.split()) or "failed"
    print(f"avatarcast: error: {line}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
