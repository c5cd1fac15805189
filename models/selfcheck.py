"""The self-check that ends ``avatar create``: how its figures are judged, and installing a
package only once it has passed.

The figures are the eval's on held-out voices and sentences, measured on the new package
before it is put in place. Measuring needs the server's frame path, so the measure comes in
as a :data:`Checker` (``avatarcast avatar create`` passes
:func:`streamer.measure.selfcheck.self_check`); this module only judges: a result below the
targets is a warning that says which figure and what it means, and a mouth that does not
follow speech at all is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CASES = 6
# (key path, target, what a miss means); the targets for a new face.
TARGETS: tuple[tuple[str, str, float, str], ...] = (
    ("lipsync", "r", 0.75, "the mouth follows the voice only loosely"),
    ("lipsync", "bilabial_closed", 0.85, "the lips do not always close on p, b and m"),
    ("image", "ssim", 0.80, "the mouth differs from the face's own (a patch or a smear)"),
    ("image", "sharpness", 0.70, "the mouth is blurrier than the rest of the face"),
)
MAX_STILLNESS = 0.25
REFUSE_R = 0.4  # below this the avatar would not lip-sync at all


@dataclass(frozen=True)
class SelfCheck:
    figures: dict[str, Any]  # the eval object
    warnings: tuple[str, ...]
    refused: str | None  # why the avatar is not usable, or None

    def lines(self) -> list[str]:
        ls, im = self.figures["lipsync"], self.figures["image"]
        return [
            "self-check on held-out voices and sentences "
            f"({self.figures['cases']} cases): "
            f"r {_fmt(ls['r'])}, lag {_fmt(ls['lag_ms'])} ms, "
            f"p/b/m closed {_fmt(ls['bilabial_closed'])}, stillness {_fmt(ls['stillness'])}, "
            f"SSIM {_fmt(im['ssim'])}, sharpness {_fmt(im.get('sharpness'))}"
        ]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def judge(figures: dict[str, Any]) -> SelfCheck:
    """Warnings for each figure under its target; a refusal when lip sync is absent."""
    warnings = []
    for group, key, target, meaning in TARGETS:
        value = figures[group].get(key)
        if value is not None and value < target:
            warnings.append(f"{key} {value:.3g} is under {target:g}: {meaning}")
    stillness = figures["lipsync"].get("stillness")
    if stillness is not None and stillness > MAX_STILLNESS:
        warnings.append(
            f"stillness {stillness:.3g} is over {MAX_STILLNESS:g}: the mouth moves in silence"
        )
    r = figures["lipsync"].get("r")
    refused = None
    if r is None or r < REFUSE_R:
        refused = (
            "the mouth does not follow speech on this face (lip-sync r "
            f"{_fmt(r)}): use a sharper, frontal photo with the mouth in full view"
        )
    return SelfCheck(figures, tuple(warnings), refused)


def install_checked(
    staged: Path, target: Path, check: Checker | None, source: Path
) -> SelfCheck | None:
    """Self-check the package built at ``staged`` (when a ``check`` is given), then rename it
    to ``target``; a refused package is never installed (AvatarError naming ``source``)."""
    from models.avatar import AvatarError, read_avatar, replace_package

    verdict = check(read_avatar(staged)) if check is not None else None
    if verdict is not None and verdict.refused is not None:
        raise AvatarError(f"{source}: {verdict.refused}")
    replace_package(staged, target)
    return verdict


# Measures a loaded, not yet installed package and judges it.
Checker = Callable[[Any], SelfCheck]
