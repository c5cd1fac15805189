"""`avatarcast render`'s progress bar on stderr (only on a terminal: logs stay clean)."""

from __future__ import annotations

import sys


class Progress:
    """Frames rendered so far, as a tqdm bar."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._bar = tqdm(unit="frame", desc="render", file=sys.stderr, leave=False)
        self._done = 0

    def update(self, frames: int) -> None:
        self._bar.update(frames - self._done)
        self._done = frames

    def close(self) -> None:
        self._bar.close()


def progress_bar() -> Progress | None:
    return Progress() if sys.stderr.isatty() else None
