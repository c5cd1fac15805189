"""``avatarcast``: the command line of INTERFACE.md.

User errors (bad input, missing avatar, missing optional dependency) end with one line on
stderr and exit status 2; only bugs show a traceback. Heavy modules (torch, the server,
training) are imported inside the handlers so that ``--help`` is fast and serving needs no torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from streamer import __version__
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
    from streamer.engine.base import BackendError
    from streamer.render import RenderError

    errors = (AvatarError, MatteError, BackendError, AudioDecodeError, RenderError, ConfigError)
    return (UserError, *errors)


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


# --- handlers -------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from streamer.app import serve
    from streamer.config import Settings

    settings = Settings.from_env(
        host=args.host,
        port=args.port,
        avatar=args.avatar,
        backend=args.backend,
        outputs=tuple(args.output or ()),
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
    from streamer.render import BATCH, render

    settings = Settings.from_env(avatar=args.avatar, backend=args.backend)
    if args.text is not None and not args.text.strip():
        raise UserError("--text is empty: give some words to say")
    out = Path(args.out)
    transparent = args.transparent or out.suffix.lower() == ".webm"
    if transparent and out.suffix.lower() != ".webm":
        raise UserError(f"--out {out} must be a .webm file for --transparent (VP9 with alpha)")
    if out.suffix.lower() not in (".mp4", ".webm"):
        raise UserError(f"--out {out} must be an .mp4 file (or .webm for --transparent)")
    if args.audio is not None:
        # Fail on a bad input before the model loads.
        from models.media import decode_audio

        next(iter(decode_audio(args.audio)), None)
    avatar = load_avatar(settings.avatar, settings.home)
    backend = make_backend(settings.backend, avatar, threads=settings.threads)
    progress = _progress_bar()
    try:
        result = render(
            out,
            avatar,
            backend,
            audio=args.audio,
            text=args.text,
            batch_size=settings.batch_size or BATCH,
            progress=progress.update if progress else None,
            transparent=transparent,
        )
    finally:
        if progress is not None:
            progress.close()
    print(
        f"wrote {result.path}: {result.frames} frames, {result.duration_s:.2f} s of audio, "
        f"{result.ms_per_frame:.1f} ms per frame ({backend_key(backend)})",
        file=sys.stderr,
    )
    return 0


class _Progress:
    def __init__(self) -> None:
        from tqdm import tqdm

        self._bar = tqdm(unit="frame", desc="render", file=sys.stderr, leave=False)
        self._done = 0

    def update(self, frames: int) -> None:
        self._bar.update(frames - self._done)
        self._done = frames

    def close(self) -> None:
        self._bar.close()


def _progress_bar() -> _Progress | None:
    return _Progress() if sys.stderr.isatty() else None


def cmd_avatar_list(args: argparse.Namespace) -> int:
    from models.avatar import list_avatars

    for name in list_avatars(_home()):
        print(name)
    return 0


def cmd_avatar_show(args: argparse.Namespace) -> int:
    import json

    from models.avatar import load_avatar

    avatar = load_avatar(args.name, _home())
    info = avatar.manifest.to_json()
    info["path"] = str(avatar.path)
    info["base_frames"] = len(avatar.frames)
    info["checkpoint"] = avatar.checkpoint_path is not None
    print(json.dumps(info, indent=2))
    return 0


def cmd_avatar_delete(args: argparse.Namespace) -> int:
    from models.avatar import delete_avatar

    delete_avatar(args.name, _home())
    print(f"deleted avatar {args.name}", file=sys.stderr)
    return 0


def cmd_avatar_create(args: argparse.Namespace) -> int:
    from models.avatar import check_name

    check_name(args.name)
    source = Path(args.video or args.image)
    if not source.is_file():
        raise UserError(f"{source} does not exist")
    creator = _import("models.create", "train")
    create = getattr(creator, "create_avatar", None)
    if create is None:
        raise UserError("`avatarcast avatar create` is not implemented yet in this build")
    adapt = None
    if args.steps is not None:
        if args.steps < 0:
            raise UserError("--steps must be 0 or more")
        from models.adapt import AdaptConfig

        adapt = AdaptConfig(steps=args.steps)
    check = None
    if not args.no_check:
        from streamer.measure.selfcheck import self_check

        check = self_check
    create(args.name, video=args.video, image=args.image, home=_home(), adapt=adapt, check=check)
    return 0


def cmd_avatar_train(args: argparse.Namespace) -> int:
    from models.avatar import DEFAULT_NAME, avatar_dir, check_name

    check_name(args.name)
    if args.name != DEFAULT_NAME:
        if not (avatar_dir(args.name, _home()) / "manifest.json").is_file():
            raise UserError(
                f"no avatar named {args.name!r}: create it with `avatarcast avatar create`"
            )
        return _train_person(args)
    recipe = _import("models.recipe", "train")
    argv = ["--device", args.device or "auto"]
    if args.steps is not None:
        argv += ["--steps", str(args.steps)]
    if args.resume:
        argv.append("--resume")
    return int(recipe.main(argv) or 0)  # type: ignore[attr-defined]


def _train_person(args: argparse.Namespace) -> int:
    """Fine-tune a created avatar on its person's video (models/finetune.py)."""
    finetune = _import("models.finetune", "train")
    report = finetune.train_avatar(  # type: ignore[attr-defined]
        args.name,
        home=_home(),
        device=args.device or "auto",
        steps=args.steps,
        resume=args.resume,
        force=args.force,
        progress=sys.stderr.isatty(),
    )
    print(report.summary(), file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from models.avatar import avatar_dir, check_name

    check_name(args.name)
    root = avatar_dir(args.name, _home())
    if args.to == "tensorrt":
        return _export_tensorrt(args.name)
    checkpoint = root / "checkpoint.pt"
    if not checkpoint.is_file():
        raise UserError(
            f"avatar {args.name!r} has no checkpoint.pt in {root}: "
            f"train it first (avatarcast avatar train {args.name})"
        )
    export = _import("models.export", "train")
    diff = export.export_onnx(checkpoint, root / "generator.onnx")  # type: ignore[attr-defined]
    print(f"wrote {root / 'generator.onnx'} (parity max abs diff {diff:.2e})", file=sys.stderr)
    return 0


def _export_tensorrt(name: str) -> int:
    """Build (or rebuild) the avatar's TensorRT engine on this GPU from its ONNX model."""
    from models.avatar import load_avatar
    from streamer.engine.tensorrt import build_engine, current_key

    avatar = load_avatar(name, _home())
    key = current_key(avatar.model_path)  # TensorRT and a GPU are here, or a clear error now
    print(
        f"building the TensorRT engine for {name!r} on {key.describe()} "
        "(FP16, batch 1..64; minutes)",
        file=sys.stderr,
    )
    path = build_engine(avatar.model_path)
    print(f"wrote {path}", file=sys.stderr)
    return 0


# bench and eval own their flags (their modules' build_parser); argv is handed over unparsed.
FORWARDED = {"bench": ("streamer.measure.bench", "dev"), "eval": ("streamer.measure.eval", "eval")}


def run_forwarded(command: str, argv: Sequence[str]) -> int:
    module, extra = FORWARDED[command]
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
        help="also push the default session to URL (rtmp://, rtmps:// or srt://; repeatable)",
    )

    p = command("render", cmd_render, "render a lip-synced MP4 from audio or text")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio", help="audio file in any format PyAV decodes")
    source.add_argument("--text", help="text spoken by the built-in TTS")
    p.add_argument("--out", required=True, help="output .mp4 file (.webm: transparent)")
    p.add_argument(
        "--transparent",
        action="store_true",
        help="the person over a transparent background: WebM, VP9 with alpha (see docs/obs.md)",
    )
    p.add_argument("--avatar", default=None, help="avatar name (default: default)")
    p.add_argument("--backend", choices=BACKENDS, default=None)

    p = command("avatar", lambda a: 0, "manage avatars")
    avatar_sub = p.add_subparsers(dest="avatar_command", required=True, parser_class=_Parser)

    def avatar_command(
        name: str, handler: Callable[[argparse.Namespace], int], help: str
    ) -> _Parser:
        q: _Parser = avatar_sub.add_parser(name, help=help, description=help)
        q.set_defaults(handler=handler)
        return q

    q = avatar_command("create", cmd_avatar_create, "build an avatar from a video or photo")
    q.add_argument("name")
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--video")
    src.add_argument("--image")
    q.add_argument(
        "--steps",
        type=int,
        default=None,
        help="photo: steps adapting the model to the face (default 700, at most ~3 min on a "
        "CPU; 0 keeps the default model)",
    )
    q.add_argument(
        "--no-check",
        action="store_true",
        help="skip the closing self-check on held-out voices (about 30 s)",
    )
    q = avatar_command("train", cmd_avatar_train, "fit the lip-sync GAN to an avatar")
    q.add_argument("name")
    q.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if any")
    q.add_argument("--steps", type=int, default=None)
    q.add_argument("--resume", action="store_true")
    q.add_argument(
        "--force", action="store_true", help="keep the new model even if it is not better"
    )
    avatar_command("list", cmd_avatar_list, "list installed avatars")
    q = avatar_command("show", cmd_avatar_show, "show an avatar's manifest")
    q.add_argument("name")
    q = avatar_command("delete", cmd_avatar_delete, "delete an avatar (not default)")
    q.add_argument("name")

    p = command("export", cmd_export, "write the runtime model of an avatar for a backend")
    p.add_argument("name")
    p.add_argument("--to", choices=("onnx", "tensorrt"), required=True)

    for name, help in (("bench", "performance figures"), ("eval", "lip-sync and quality figures")):
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
        return int(args.handler(args))
    except errors as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("avatarcast: interrupted", file=sys.stderr)
        return 130


def _fail(message: str) -> int:
    line = " ".join(message.split()) or "failed"
    print(f"avatarcast: error: {line}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
