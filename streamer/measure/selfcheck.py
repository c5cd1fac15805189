"""The measure behind ``avatar create``'s self-check: ``avatarcast eval`` on a new package.

Fewer cases than a full eval (:data:`models.selfcheck.CASES`), so that ``create`` keeps its
time; :func:`models.selfcheck.judge` turns the figures into warnings or a refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from models.selfcheck import CASES, SelfCheck, judge
from streamer.measure.eval import run_eval


def self_check(
    avatar: Any, cases: int = CASES, progress: Callable[[str], None] | None = None
) -> SelfCheck:
    """Run the eval on a loaded (not yet installed) package, on the server's frame path
    with the CPU backend, and judge it."""
    figures = run_eval(
        avatar.name, "onnx-cpu", n_cases=cases, progress=progress or (lambda _: None), avatar=avatar
    )
    return judge(figures)
