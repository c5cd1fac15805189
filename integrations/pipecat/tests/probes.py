"""What the tests put around the avatar service in a real pipecat pipeline, and their measures.

``Probe`` records each frame the service lets out (when, its pts, the mouth's openness or the
audio's loudness) and passes everything on; ``ErrorLog`` sits before the service and keeps
the ``ErrorFrame``s it sends upstream; ``MemoryOutput`` is an output transport that keeps
what it would send, so the service runs behind a real ``BaseOutputTransport`` (which says
when it is ready, queues audio and shows images in step with it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    StartFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams

REPO = Path(__file__).resolve().parents[3]
LOUD = 0.01  # RMS (of full scale) above which audio counts as speech


@dataclass(frozen=True)
class MouthRegion:
    """Where the default avatar's lips are, in its generator's box (models/default/boxes.npy):
    rows 15-50 % and the middle half of the columns. Open lips show dark and bright together,
    so the grey-level spread there rises with the mouth's opening. On `avatarcast render`'s
    own output (every frame generated) it follows the voice's loudness with r = 0.59."""

    rows: slice
    cols: slice

    @classmethod
    def default_avatar(cls) -> MouthRegion:
        x0, y0, x1, y1 = (int(v) for v in np.load(REPO / "models/default/boxes.npy")[0])
        w, h = x1 - x0, y1 - y0
        return cls(
            slice(y0 + int(0.15 * h), y0 + int(0.50 * h)),
            slice(x0 + int(0.25 * w), x0 + int(0.75 * w)),
        )

    def openness(self, rgb: np.ndarray) -> float:
        return float(rgb[self.rows, self.cols].astype(np.float32).mean(axis=2).std())


@dataclass
class Record:
    images: list[tuple[float, float, float]] = field(default_factory=list)  # wall, pts, mouth
    sizes: set[tuple[int, int]] = field(default_factory=set)
    audio: list[tuple[float, float, float, float]] = field(default_factory=list)  # +rms, s
    rates: set[int] = field(default_factory=set)

    def loud_after(self, t: float) -> list[float]:
        """Wall times of loud audio frames let out after ``t``."""
        return [w for w, _, rms, _ in self.audio if w > t and rms > LOUD]


class Probe(FrameProcessor):
    def __init__(self, region: MouthRegion) -> None:
        super().__init__()
        self.region = region
        self.record = Record()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        now = time.monotonic()
        pts = (frame.pts or 0) / 1e9
        if isinstance(frame, OutputImageRawFrame) and direction == FrameDirection.DOWNSTREAM:
            w, h = frame.size
            rgb = np.frombuffer(frame.image, np.uint8).reshape(h, w, 3)
            self.record.images.append((now, pts, self.region.openness(rgb)))
            self.record.sizes.add(frame.size)
        elif isinstance(frame, OutputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            x = np.frombuffer(frame.audio, "<i2").astype(np.float32) / 32768.0
            rms = float(np.sqrt(np.mean(x * x))) if len(x) else 0.0
            self.record.audio.append((now, pts, rms, len(x) / frame.sample_rate))
            self.record.rates.add(frame.sample_rate)
        await self.push_frame(frame, direction)


class ErrorLog(FrameProcessor):
    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, ErrorFrame):
            self.errors.append(frame.error)
        await self.push_frame(frame, direction)


class MemoryOutput(BaseOutputTransport):
    """An output transport that keeps counts of what it would send."""

    def __init__(self, size: tuple[int, int]) -> None:
        params = TransportParams(
            audio_out_enabled=True,
            video_out_enabled=True,
            video_out_width=size[0],
            video_out_height=size[1],
            video_out_framerate=25,
        )
        super().__init__(params)
        self.audio_bytes = 0
        self.images = 0

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        self.audio_bytes += len(frame.audio)
        return True

    async def write_video_frame(self, frame: OutputImageRawFrame) -> bool:
        self.images += 1
        return True


def mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else 0.0


def lips_against_voice(record: Record, lo: float, hi: float) -> tuple[float, int]:
    """Correlation of the mouth's opening with the voice's loudness over pts [lo, hi), at
    the best shift of the mouth within ±4 frames; returns (r, shift in frames)."""
    images = [(pts, m) for _, pts, m in record.images if lo <= pts < hi]
    pts = np.array([p for p, _ in images])
    movement = np.array([m for _, m in images])
    audio_pts = np.array([p for _, p, _, _ in record.audio])
    audio_rms = np.array([r for _, _, r, _ in record.audio])
    voice = np.array([mean(audio_rms[(audio_pts >= p) & (audio_pts < p + 0.04)]) for p in pts])
    best = (-1.0, 0)
    for shift in range(-4, 5):  # mouth k against voice k - shift
        a = movement[max(shift, 0) : len(movement) + min(shift, 0)]
        b = voice[max(-shift, 0) : len(voice) + min(-shift, 0)]
        if a.std() > 0 and b.std() > 0:
            r = float(np.corrcoef(a, b)[0, 1])
            best = max(best, (r, shift))
    return best
