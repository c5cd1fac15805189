"""How long before its due time a live frame is prepared: short when the machine keeps up,
longer when it does not.

A frame's audio window is taken ``lead`` seconds before the frame is published; in that time
the generator and the compositor must finish its picture, or the frame goes out with the
previous one (a repeated picture: the mouth stutters). The base lead (25 ms) keeps
speech-to-mouth latency low, and an idle machine renders a frame in well under it. A loaded
one does not: other sessions, viewers' packets and encoders delay the event loop and the
worker by more than the slack, and on this project's 2-core machine one session watched by
ten viewers repeated 12 % of its pictures at 25 ms and none at 65 ms.

:class:`AdaptiveLead` watches which frames came out fresh. Two late pictures within a second
raise the lead by a step (up to a ceiling); ten seconds without a late one lower it a little,
back towards the base. A session's first two seconds are not judged (a model's first calls are
slow). The speech latency budget grows with the lead (the session's feeder
adds :attr:`AdaptiveLead.extra_s`), so windows taken earlier still see the audio they need:
under load the mouth follows a few tens of milliseconds later instead of stuttering.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, replace

from models.audio import FPS


@dataclass(frozen=True)
class LeadPolicy:
    max_extra_s: float = 0.08  # two frames more than the base, at most
    up_s: float = 0.02
    down_s: float = 0.005
    window: int = FPS  # frames judged together: one second
    late_in_window: int = 2  # this many late pictures in a window raise the lead
    calm_frames: int = 10 * FPS  # this many fresh pictures in a row lower it
    # A session's first pictures come late anyway (the first calls of a model, the viewers'
    # encoders starting): they say nothing about the lead the machine needs.
    warmup_frames: int = 2 * FPS


class AdaptiveLead:
    """The lead of one live session's frames (see the module docstring)."""

    def __init__(self, base_s: float, max_extra_s: float, policy: LeadPolicy | None = None):
        self.base_s = base_s
        self.policy = replace(policy or LeadPolicy(), max_extra_s=max_extra_s)
        self.extra_s = 0.0
        self._frame = 0
        self._late: collections.deque[int] = collections.deque()
        self._calm = 0

    @property
    def lead_s(self) -> float:
        return self.base_s + self.extra_s

    def observe(self, fresh: bool) -> bool:
        """One published frame, fresh or with the previous picture; whether the lead changed."""
        policy = self.policy
        self._frame += 1
        if self._frame <= policy.warmup_frames:
            return False
        if fresh:
            self._calm += 1
            if self._calm < policy.calm_frames or self.extra_s <= 0.0:
                return False
            self._calm = 0
            self.extra_s = max(0.0, round(self.extra_s - policy.down_s, 6))
            return True
        self._calm = 0
        self._late.append(self._frame)
        while self._late[0] <= self._frame - policy.window:
            self._late.popleft()
        if len(self._late) < policy.late_in_window or self.extra_s >= policy.max_extra_s:
            return False
        self._late.clear()  # the next step is judged on frames prepared with the new lead
        self.extra_s = min(policy.max_extra_s, round(self.extra_s + policy.up_s, 6))
        return True
