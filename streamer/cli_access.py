"""The command line's side of access: ``avatarcast keys``, consent for ``avatar create``, and
who may act on an avatar.

The command line trusts its local user: whoever runs it can read ``$AVATARCAST_HOME`` (the
key file, the signing secret, the packages), so without a key it acts as ``local``, with an
admin's rights. A script acting for an API key sets ``AVATARCAST_KEY=<key>``: the command then
acts only within that key's scope, as the server would. ``avatar create`` records the key's id
as the owner (a creator or admin key), and ``train``, ``export`` and ``delete`` need the
owner's key or an admin one. ``show`` and ``render`` need a key that may use the avatar.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from streamer.keys import LOCAL, SCOPES, KeyFile, Keyring, Principal

KEY_ENV = "AVATARCAST_KEY"
# (command, avatar subcommand) -> what the command does to the avatar named in its arguments
ACTIONS = {
    ("avatar", "train"): "manage",
    ("avatar", "delete"): "manage",
    ("export", None): "manage",
    ("avatar", "show"): "show",
    ("render", None): "use",
}


class AccessError(ValueError):
    """The acting key may not do this; one line for the user (exit status 2)."""


def _home() -> Path:
    from streamer.config import Settings

    return Settings.from_env().home


# --- keys -------------------------------------------------------------------------------------


def cmd_keys_create(args: argparse.Namespace) -> int:
    from models.avatar import check_name

    avatars = tuple(check_name(a) for a in args.avatar or ())
    record, token = KeyFile(_home()).create(args.scope, avatars)
    names = f" for {', '.join(record.avatars)}" if record.avatars else ""
    print(
        f"created {record.scope} key {record.id}{names}; it is shown this once, "
        "store it now (only its SHA-256 is kept):",
        file=sys.stderr,
    )
    print(token)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    keys = KeyFile(_home()).load()
    if not keys:
        print("no keys (avatarcast keys create --scope admin)", file=sys.stderr)
    for key in keys:
        state = f"revoked {key.revoked}" if key.revoked else "active"
        avatars = ",".join(key.avatars) or "-"
        print(f"{key.id}  {key.scope:<9}  {avatars:<20}  {key.created}  {state}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    key = KeyFile(_home()).revoke(args.id)
    print(f"revoked key {key.id} ({key.scope}); a running server refuses it from its next call")
    return 0


Command = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def add_commands(command: Command) -> None:
    """``avatarcast keys create|list|revoke`` under the main parser's ``command`` helper."""
    p = command("keys", lambda a: 0, "manage API keys (stored hashed)")
    sub = p.add_subparsers(dest="keys_command", required=True, parser_class=type(p))
    q = sub.add_parser("create", help="create a key (printed once)")
    q.set_defaults(handler=cmd_keys_create)
    q.add_argument("--scope", choices=SCOPES, required=True)
    q.add_argument(
        "--avatar", action="append", metavar="NAME", help="publisher: an avatar it may use"
    )
    q = sub.add_parser("list", help="list keys (never the keys themselves)")
    q.set_defaults(handler=cmd_keys_list)
    q = sub.add_parser("revoke", help="revoke a key by its id")
    q.set_defaults(handler=cmd_keys_revoke)
    q.add_argument("id")


def consent_arguments(parser: argparse.ArgumentParser) -> None:
    """``avatar create``'s consent: the person's own statement, signed into the package."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--consent", metavar="TEXT", help='"I, NAME, consent to ..." in the person\'s words'
    )
    group.add_argument("--consent-file", metavar="FILE", help="the statement, in a text file")


# --- who may act ------------------------------------------------------------------------------


def acting_key(home: Path) -> Principal:
    """The key in ``AVATARCAST_KEY``, or :data:`LOCAL` when none is set."""
    token = os.environ.get(KEY_ENV, "").strip()
    if not token:
        return LOCAL
    from streamer.config import Settings

    who = Keyring(home, Settings.from_env().api_key).authenticate(token)
    if who is None:
        raise AccessError(f"{KEY_ENV} is not a valid, unrevoked key: see `avatarcast keys list`")
    return who


def check(args: argparse.Namespace) -> None:
    """Before a command runs: consent for ``avatar create``, and the acting key's rights on
    the avatar it names. Sets ``args.consent_text`` and ``args.owner`` for ``create``."""
    command = str(getattr(args, "command", ""))
    sub: str | None = getattr(args, "avatar_command", None)
    if (command, sub) == ("avatar", "create"):
        _check_create(args)
        return
    action = ACTIONS.get((command, sub))
    if action is None:
        return
    from models.avatar import avatar_dir
    from models.ownership import owner_of, read_ownership
    from streamer.config import Settings

    settings = Settings.from_env()
    name = str(getattr(args, "name", None) or getattr(args, "avatar", None) or settings.avatar)
    who = acting_key(settings.home)
    if who.admin and action != "use":
        return  # an admin may see, train, export or delete even a package whose record broke
    # Using an avatar checks its record's signature: a tampered one is refused to everyone.
    owner = owner_of(read_ownership(avatar_dir(name, settings.home), settings.home))
    if who.admin:
        return
    allowed = owner == who.key_id or (
        action != "manage" and who.scope == "publisher" and name in who.avatars
    )
    if not allowed:
        raise AccessError(
            f"the {who.scope} key {who.key_id} in {KEY_ENV} may not "
            f"{'use' if action == 'use' else 'train, export or delete'} avatar {name!r}: "
            f"it belongs to {owner}"
        )


def _check_create(args: argparse.Namespace) -> None:
    from models.ownership import check_statement

    text = args.consent
    if args.consent_file:
        try:
            text = Path(args.consent_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AccessError(f"--consent-file {args.consent_file}: {exc}") from None
    args.consent_text = check_statement(text)
    who = acting_key(_home())
    if who.scope == "publisher":
        raise AccessError(
            f"a publisher key ({who.key_id}) cannot create avatars: use a creator key"
        )
    args.owner = who.key_id
