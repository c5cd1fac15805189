"""Progress as plain lines, for a long command whose stderr is no terminal.

``avatar create`` and ``avatar train`` show tqdm bars on a terminal. In a log file, or under
``docker run`` without ``-t``, a bar would be silent (or a smear of carriage returns) for
minutes; there they print each stage's start and end and, in between, one line every
:data:`LINE_EVERY_S` with the share done and the time left. The lines go to stdout: stderr
keeps the command's summary, or the one line of an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable

LINE_EVERY_S = 10.0


class ProgressLines:
    """``update(stage, done, total)`` as lines; a new ``stage`` starts its own clock. A
    ``total`` of 0 is unknown: the lines count ``unit`` then."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, unit: str = "") -> None:
        self._clock = clock
        self._unit = unit
        self._stage = ""
        self._started = self._said = 0.0

    def update(self, stage: str, done: int, total: int) -> None:
        now = self._clock()
        if stage != self._stage:
            self._stage, self._started, self._said = stage, now, now
            print(f"{stage}: started", flush=True)
        finished = total > 0 and done >= total
        if finished or now - self._said >= LINE_EVERY_S:
            self._said = now
            elapsed = now - self._started
            line = f"{stage}: {done}/{total}" if total > 0 else f"{stage}: {done} {self._unit}"
            if finished:
                line += f", done in {elapsed:.0f} s"
            elif total > 0 and done > 0:
                left = elapsed / done * (total - done)
                line += f" ({100 * done / total:.0f} %, about {left:.0f} s left)"
            print(line, flush=True)

    def close(self) -> None:
        pass
