"""The eval's lip-sync figures voice by voice: which voices the generator's lips follow and
close on, against the teacher's on the same cases.

``python -m streamer.measure.voices [--avatar NAME] [--cases N] [--model FILE] [--json]``
runs ``avatarcast eval``'s held-out cases and prints r and p/b/m closure per voice (the
espeak-ng variants grouped by speaker and by variant, each festival voice on its own), with
the closed-lip threshold calibrated on all cases together, as the eval does.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.avatar import AvatarError
from models.lipsync import summarise
from streamer.measure.eval import CaseResult, case_threshold, run_eval


def groups(name: str) -> list[str]:
    """The groups a voice counts in: ``en-us-nyc+f3`` in ``speaker en-us-nyc`` and ``variant
    f3``; a voice with no variant (festival's) in its own name."""
    speaker, _, variant = name.partition("+")
    return [f"speaker {speaker}", f"variant {variant}"] if variant else [f"voice {name}"]


def by_voice(cases: Sequence[tuple[str, CaseResult]]) -> dict[str, dict[str, Any]]:
    """For each group of :func:`groups`: its case count, and the generated and the teacher's
    lip-sync figures on those cases."""
    threshold = case_threshold([r for _, r in cases])
    members: dict[str, list[CaseResult]] = defaultdict(list)
    for name, result in cases:
        for group in groups(name):
            members[group].append(result)
    return {
        group: {
            "cases": len(results),
            "generated": summarise([r.generated for r in results], threshold),
            "teacher": summarise([r.teacher for r in results], threshold),
        }
        for group, results in sorted(members.items())
    }


def format_text(table: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'':28}{'cases':>6}{'r':>8}{'p/b/m':>8}{'teacher p/b/m':>15}"]
    for group, row in table.items():
        gen, teacher = row["generated"], row["teacher"]
        lines.append(
            f"{group:28}{row['cases']:>6}{_fmt(gen['r']):>8}{_fmt(gen['bilabial_closed']):>8}"
            f"{_fmt(teacher['bilabial_closed']):>15}"
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamer.measure.voices", description=__doc__)
    parser.add_argument("--avatar", default="default")
    parser.add_argument("--cases", type=int, default=48)
    parser.add_argument("--model", type=Path, help="an ONNX generator in place of the avatar's")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error("--cases must be at least 1")
    if args.model is not None and not args.model.is_file():
        parser.error(f"--model {args.model}: no such file")
    cases: list[tuple[str, CaseResult]] = []
    try:
        run_eval(args.avatar, "onnx-cpu", args.cases, model_path=args.model, cases=cases)
    except AvatarError as exc:
        parser.error(str(exc))
    table = by_voice(cases)
    print(json.dumps(table, indent=2) if args.json else format_text(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
