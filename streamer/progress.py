"""`avatarcast render`'s progress: a bar on stderr on a terminal, else a line on stdout every
10 s (:mod:`models.progress_lines`), so logs stay clean and a long render is never silent."""

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


class Lines:
    """Frames rendered so far, as a line every 10 s."""

    def __init__(self) -> None:
        from models.progress_lines import ProgressLines

        self._lines = ProgressLines(unit="frames")

    def update(self, frames: int) -> None:
        self._lines.update("render", frames, 0)

    def close(self) -> None:
        pass


def progress_bar() -> Progress | Lines:
    return Progress() if sys.stderr.isatty() else Lines()
