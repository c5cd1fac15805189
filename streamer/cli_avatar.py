"""``avatarcast avatar ...`` and ``avatarcast export``: making, training and exporting a
person's avatar. Split from :mod:`streamer.cli` (which imports it when it builds its parser)
so that each stays one screenful of commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from streamer import cli_access
from streamer.cli import UserError, _home, _import, _Parser

Command = Callable[[str, Callable[[argparse.Namespace], int], str], _Parser]


def cmd_avatar_list(args: argparse.Namespace) -> int:
    from models.avatar import list_avatars

    for name in list_avatars(_home()):
        print(name)
    return 0


def cmd_avatar_show(args: argparse.Namespace) -> int:
    import json

    from models.avatar import load_avatar
    from models.ownership import summary

    avatar = load_avatar(args.name, _home())
    info = avatar.manifest.to_json()
    info["path"] = str(avatar.path)
    info["base_frames"] = len(avatar.frames)
    info["checkpoint"] = avatar.checkpoint_path is not None
    info["ownership"] = summary(avatar.path, _home())  # whose face: models/ownership.py
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
    owned = {"consent": args.consent_text, "owner": args.owner}  # set by cli_access.check
    create(
        args.name,
        video=args.video,
        image=args.image,
        home=_home(),
        adapt=adapt,
        check=check,
        **owned,
    )
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
        progress=True,  # a bar on a terminal, else lines
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


def add_commands(command: Command) -> None:
    """The ``avatar`` command group and ``export``, on the main parser's ``command`` maker."""
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
    cli_access.consent_arguments(q)
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
