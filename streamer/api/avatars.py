"""The avatars a key may use, and whose face each is (read-only).

``GET /v1/avatars`` lists them: every installed avatar for an admin key, the named ones for a
publisher key, the owned ones for a creator key. ``GET /v1/avatars/{name}`` shows one: its
manifest and its ``ownership`` (owner, created, source, consent, and whether the record
verified), as ``avatarcast avatar show`` prints it. Avatars are made, trained and deleted on
the command line (docs/security.md: a creator key acts there through ``AVATARCAST_KEY``).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request

from models.avatar import AvatarError, Manifest, avatar_dir, check_name, list_avatars
from models.ownership import summary
from streamer.api.auth import may_use, not_allowed, require_api_key
from streamer.api.errors import ApiError
from streamer.api.state import app_state

router = APIRouter(prefix="/v1/avatars", tags=["avatars"], dependencies=[Depends(require_api_key)])


def _describe(name: str, home: Path) -> dict[str, Any] | None:
    """One avatar's manifest and ownership (blocking: a few small files); None if absent."""
    package = avatar_dir(name, home)
    try:
        manifest = Manifest.from_json(_read_json(package / "manifest.json"))
    except (AvatarError, FileNotFoundError):
        return None
    return {**manifest.to_json(), "ownership": summary(package, home)}


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AvatarError(f"{path} cannot be read: {exc}") from None


def _all(home: Path) -> list[dict[str, Any]]:
    found = (_describe(name, home) for name in list_avatars(home))
    return [info for info in found if info is not None]


def _owner(info: dict[str, Any]) -> str:
    return str(info["ownership"].get("owner", ""))


@router.get("")
async def list_usable(request: Request) -> dict[str, Any]:
    """The avatars this key may make speak."""
    who = require_api_key(request)
    infos = await asyncio.to_thread(_all, app_state(request).settings.home)
    usable = [i for i in infos if may_use(who, str(i["name"]), _owner(i))]
    return {"avatars": usable}


@router.get("/{name}")
async def show(request: Request, name: str) -> dict[str, Any]:
    """One avatar: manifest and ownership (404 if absent, 403 if not this key's to use)."""
    who = require_api_key(request)
    try:
        check_name(name)
    except AvatarError as exc:
        raise ApiError(404, "unknown_avatar", str(exc)) from None
    info = await asyncio.to_thread(_describe, name, app_state(request).settings.home)
    if info is None:
        if who.admin:
            raise ApiError(404, "unknown_avatar", f"no avatar named {name!r}")
        raise not_allowed(who, name)  # a key learns nothing of avatars it may not use
    if not may_use(who, name, _owner(info)):
        raise not_allowed(who, name)
    return info
