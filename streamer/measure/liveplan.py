"""How much the live bench measures: the plan of a quick or a full run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LivePlan:
    """Seconds and repeats of each live measure; ``quick`` keeps the whole part short."""

    main_s: float  # one session, two viewers, bursts of speech
    settle_s: float
    interrupts: int
    ttff_tries: int
    ramp_s: float
    ramp_max: int

    @classmethod
    def for_mode(cls, quick: bool) -> LivePlan:
        if quick:
            return cls(main_s=5.0, settle_s=1.0, interrupts=3, ttff_tries=2, ramp_s=3.0, ramp_max=3)
        return cls(main_s=20.0, settle_s=2.0, interrupts=8, ttff_tries=5, ramp_s=8.0, ramp_max=8)
