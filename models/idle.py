"""Idle motion of a photo avatar: blinks, breathing and a slight head sway.

Every value is a pure function of (seed, frame index), so a session can run for hours with no
growing state, and a frame can be recomputed (e.g. after an interrupt) with the same result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.audio import FPS

BLINK_SLOT_S = 4.0  # one blink per slot, at a random offset: intervals of about 2-6 s


@dataclass(frozen=True)
class Pose:
    """Where the idle motion puts frame k: which base frame, and a similarity warp."""

    base: int  # 0 = eyes open, else one of the avatar's blink frames
    dx: float  # pixels
    dy: float
    rotation_deg: float
    scale: float

    @property
    def still(self) -> bool:
        return self.dx == 0 and self.dy == 0 and self.rotation_deg == 0 and self.scale == 1


class IdleMotion:
    def __init__(self, blink_frames: tuple[int, ...], seed: int = 0, fps: int = FPS) -> None:
        # Closing then opening through the same frames: 3 blink frames give 240 ms at 25 fps.
        self._blink = (*blink_frames, *reversed(blink_frames))
        self._seed = seed
        self._fps = fps
        self._slot = fps * BLINK_SLOT_S
        self._phases = np.random.default_rng([seed, 1]).uniform(0, 2 * math.pi, 6)
        self._cached_slot = -1
        self._cached_start = 0

    def _blink_start(self, slot: int) -> int:
        if slot != self._cached_slot:
            offset = np.random.default_rng([self._seed, 2, slot]).uniform(0.1, 0.9)
            self._cached_slot, self._cached_start = slot, int((slot + offset) * self._slot)
        return self._cached_start

    def base(self, k: int) -> int:
        if not self._blink:
            return 0
        slot = int(k // self._slot)
        for s in (slot, slot - 1):  # a blink near a slot's end may run into the next slot
            if s < 0:
                continue
            i = k - self._blink_start(s)
            if 0 <= i < len(self._blink):
                return self._blink[i]
        return 0

    def pose(self, k: int) -> Pose:
        t = k / self._fps
        p = self._phases
        tau = 2 * math.pi
        breath = math.sin(tau * t / 4.2 + p[0])  # ~14 breaths a minute
        return Pose(
            base=self.base(k),
            dx=1.2 * math.sin(tau * t / 7.3 + p[1]) + 0.5 * math.sin(tau * t / 3.1 + p[2]),
            dy=1.0 * breath + 0.4 * math.sin(tau * t / 5.9 + p[3]),
            rotation_deg=0.5 * math.sin(tau * t / 9.7 + p[4])
            + 0.2 * math.sin(tau * t / 4.7 + p[5]),
            scale=1.0 + 0.003 * breath,
        )


STILL = Pose(base=0, dx=0.0, dy=0.0, rotation_deg=0.0, scale=1.0)
