"""The invisible mark on every generated frame: who (avatar), which session, and when.

Design (docs/provenance.md has the measured robustness): 64 coded bits, a 48-bit
:class:`Payload` plus a CRC-16, each carried by its own fixed set of cells in a
``GRID x GRID`` grid laid over the whole picture (cells scale with the picture, so a
resized copy reads the same). A cell's value is the mean luma over it; the detector looks at
the cells' deviation from their 3x3 neighbourhood (a high-pass that removes most of the
picture), multiplies by each cell's key sign and sums per bit.

Embedding is informed (improved spread spectrum): the marker measures what the picture itself
already contributes to each bit's sum and adds just what brings the sum to ``+T`` or ``-T``
per cell, as a luma step over the whole cell (at most ``MAX_STEP`` grey levels; an 8x8 block
at 512 px, the size of a codec's transform, whose mean codecs keep best), identical on R, G
and B so colour is untouched. The picture no
longer masks the mark, so a static avatar does not hide it however long the video. Low
spatial frequencies and a pattern that changes only where the picture does make it cheap
for VP8/H.264 to keep. Reading accumulates the per-bit sums over many frames (a 2 s window),
so coding noise averages out; a window is marked only if its normalised correlation is far
above what unmarked video gives *and* its CRC holds, as read or with up to three of its
least reliable bits flipped (:func:`_corrected`).
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass

import cv2
import numpy as np

GRID = 64
BITS = 64
PAYLOAD_BITS = 48
TARGET = 1.0  # detector sum per cell, grey levels, before coding
MAX_STEP = 4.0  # the most a cell's mean moves
SPREAD = 3.0  # grey levels: high-passed cells much beyond this count less and less
ITERATIONS = 2
LUMA = (0.299, 0.587, 0.114)  # BT.601, as the encoders' RGB -> YUV
KEY = 0x61766374  # "avct": the public pattern key (the mark identifies, it is not a secret)
EPOCH = 1735689600  # 2025-01-01T00:00:00Z: hours count from here
# A window is marked when its CRC holds and the mean normalised correlation is at least this;
# unmarked video gives about 0.8 (the mean of |N(0, 1)|), marked video several times more.
MIN_CONFIDENCE = 1.5
WEAKEST = 3  # the least reliable bits a failed CRC may flip (see _corrected)


def _hash16(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:2], "big")


def crc16(value: int, nbits: int = PAYLOAD_BITS) -> int:
    """CRC-16/CCITT over the payload's ``nbits`` bits, most significant first."""
    crc = 0xFFFF
    for i in range(nbits - 1, -1, -1):
        top = ((crc >> 15) & 1) ^ ((value >> i) & 1)
        crc = (crc << 1) & 0xFFFF
        if top:
            crc ^= 0x1021
    return crc


@dataclass(frozen=True)
class Payload:
    """What a mark says: 16 bits each of the avatar's and the session's hashes, and the hour."""

    avatar: int  # sha256(avatar name)[:2]
    session: int  # sha256(session id)[:2]
    hour: int  # hours since 2025-01-01 UTC, modulo 2**16 (about 7.5 years)

    @classmethod
    def make(cls, avatar: str, session: str, when: float | None = None) -> Payload:
        now = time.time() if when is None else when
        return cls(_hash16(avatar), _hash16(session), int((now - EPOCH) // 3600) & 0xFFFF)

    @staticmethod
    def avatar_id(name: str) -> int:
        return _hash16(name)

    @staticmethod
    def session_id(session: str) -> int:
        return _hash16(session)

    def hour_utc(self, now: float | None = None) -> float:
        """The hour's start as a Unix time: the latest one at or before ``now`` that fits."""
        current = int(((time.time() if now is None else now) - EPOCH) // 3600)
        hours = current - ((current - self.hour) & 0xFFFF)
        return EPOCH + hours * 3600.0

    def value(self) -> int:
        return (self.avatar << 32) | (self.session << 16) | self.hour

    def bits(self) -> np.ndarray:
        """The 64 coded bits as +1/-1: the payload's 48 then its CRC's 16."""
        word = (self.value() << 16) | crc16(self.value())
        return np.array([1.0 if (word >> (BITS - 1 - i)) & 1 else -1.0 for i in range(BITS)])

    @classmethod
    def from_bits(cls, bits: np.ndarray) -> Payload | None:
        """The payload of 64 hard bits (True = 1), or None when its CRC does not hold."""
        word = 0
        for bit in bits:
            word = (word << 1) | int(bool(bit))
        value, crc = word >> 16, word & 0xFFFF
        if crc16(value) != crc:
            return None
        return cls((value >> 32) & 0xFFFF, (value >> 16) & 0xFFFF, value & 0xFFFF)


class _Layout:
    """The key: which bit each cell carries (a balanced split) and the cell's sign."""

    def __init__(self) -> None:
        rng = np.random.default_rng(KEY)
        cells = GRID * GRID
        self.bit = rng.permutation(np.arange(cells) % BITS).astype(np.intp)
        self.sign = np.where(rng.random(cells) < 0.5, -1.0, 1.0)
        self.per_bit = cells // BITS

    def sums(self, cells: np.ndarray, robust: bool = True) -> np.ndarray:
        """Per bit: the signed sum of the high-passed cells. ``robust`` bounds each cell's
        say (a redescending weight): edges in the picture then barely count, flat areas, where
        the mark is, fully."""
        high = high_pass(cells)
        weighted = _bounded(high) if robust else high
        return np.bincount(self.bit, weighted.reshape(-1) * self.sign, minlength=BITS)

    def spread(self, per_bit: np.ndarray) -> np.ndarray:
        """A (GRID, GRID) cell pattern carrying ``per_bit`` on each bit's cells."""
        return (per_bit[self.bit] * self.sign).reshape(GRID, GRID).astype(np.float32)


def high_pass(cells: np.ndarray) -> np.ndarray:
    """Each cell less its 3x3 neighbourhood's mean: the picture's smooth part gone."""
    blurred = cv2.blur(cells, (3, 3), borderType=cv2.BORDER_REFLECT)
    return np.asarray(cells - blurred, np.float32)


def _bounded(high: np.ndarray) -> np.ndarray:
    return np.asarray(high / (1.0 + (high / SPREAD) ** 2), np.float32)


LAYOUT = _Layout()


def cells_of(luma: np.ndarray) -> np.ndarray:
    """The (GRID, GRID) mean luma of each cell of a (H, W) picture."""
    cells = cv2.resize(luma, (GRID, GRID), interpolation=cv2.INTER_AREA)
    return np.asarray(cells, np.float32)


def luma_of(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


class _Grid:
    """The cells of one picture size as whole pixels: pixel p of an axis of n belongs to
    cell floor(p * GRID / n). Only single-threaded OpenCV calls and numpy indexing: OpenCV's
    parallel resize and colour conversion, called from the compositing threads of a busy
    2-core machine, wait on its thread pool and made live frames late."""

    def __init__(self, height: int, width: int) -> None:
        self.rows = -(-np.arange(GRID + 1) * height // GRID)  # ceil: the cells' first rows
        self.cols = -(-np.arange(GRID + 1) * width // GRID)
        self._heights, self._widths = np.diff(self.rows), np.diff(self.cols)
        self._shape = (height, width, 3)
        self._inverse_area = 1.0 / np.outer(self._heights, self._widths).astype(np.float32)
        regular = len(set(self._heights)) == 1 and len(set(self._widths)) == 1
        # Whole multiples (512 px: 8x8 cells) take the corners by a strided view.
        self._corners: tuple[slice, slice] | tuple[np.ndarray, ...] = (
            (slice(None, None, self._heights[0]), slice(None, None, self._widths[0]))
            if regular
            else np.ix_(self.rows, self.cols)
        )

    def cells(self, rgb: np.ndarray) -> np.ndarray:
        """(GRID, GRID) mean luma (BT.601, as cv2's RGB2GRAY) of each cell, by the picture's
        integral image."""
        corners = cv2.integral(rgb, sdepth=cv2.CV_32S)[self._corners]
        sums = corners[1:, 1:] - corners[:-1, 1:] - corners[1:, :-1] + corners[:-1, :-1]
        luma = sums.astype(np.float32) @ np.array(LUMA, np.float32)
        return np.asarray(luma * self._inverse_area, np.float32)

    def upsample(self, cells: np.ndarray) -> np.ndarray:
        """A (GRID, GRID) uint8 plane as whole cells of the picture (H, W, 3), equal on the
        three channels (each column repeated three times over: no merge needed)."""
        rows = np.repeat(cells, self._heights, axis=0)
        return np.repeat(rows, self._widths * 3, axis=1).reshape(self._shape)


def _inverse_response() -> np.ndarray:
    """The inverse of how each bit's (linear) sum answers a unit step on each bit's cells:
    the high-pass leaks a little between bits."""
    response = np.empty((BITS, BITS))
    for j in range(BITS):
        unit = np.zeros(BITS)
        unit[j] = 1.0
        response[:, j] = LAYOUT.sums(LAYOUT.spread(unit), robust=False)
    return np.linalg.inv(response).astype(np.float32)


INVERSE = _inverse_response()


class Marker:
    """Marks pictures in place with one payload; cheap enough for every live frame."""

    def __init__(self, payload: Payload) -> None:
        self.payload = payload
        self._goal = payload.bits() * TARGET * LAYOUT.per_bit
        self._grids: dict[tuple[int, int], _Grid] = {}

    def _grid(self, height: int, width: int) -> _Grid:
        grid = self._grids.get((height, width))
        if grid is None:
            grid = self._grids[(height, width)] = _Grid(height, width)
        return grid

    def steps(self, cells: np.ndarray) -> np.ndarray:
        """Per bit, the step on its cells that brings its sum to the goal in this picture."""
        steps = np.zeros(BITS, np.float32)
        for _ in range(ITERATIONS):  # the robust sums are not linear: a few Newton-like steps
            steps += INVERSE @ (self._goal - LAYOUT.sums(cells + LAYOUT.spread(steps)))
            np.clip(steps, -MAX_STEP, MAX_STEP, out=steps)
        return steps

    def mark(self, rgb: np.ndarray) -> np.ndarray:
        """Add the mark to an (H, W, 3) uint8 picture in place; returns it.

        Saturating uint8 adds of the positive and the negative part, the same on R, G and B:
        about a tenth of the time of one int16 pass over the picture.
        """
        grid = self._grid(*rgb.shape[:2])
        steps = np.rint(LAYOUT.spread(self.steps(grid.cells(rgb))))
        for part, apply in ((steps, cv2.add), (-steps, cv2.subtract)):
            grey = np.clip(part, 0, 255).astype(np.uint8)
            apply(rgb, grid.upsample(grey), dst=rgb)
        return rgb


@dataclass(frozen=True)
class Reading:
    """What one window of frames says."""

    frames: int
    payload: Payload | None  # None: no mark (CRC failed, or too weak to trust)
    confidence: float  # mean normalised correlation of the bits (about 0.8 when unmarked)
    bits: np.ndarray  # the hard bits read (True = 1)

    @property
    def marked(self) -> bool:
        return self.payload is not None


def frame_statistic(luma: np.ndarray) -> tuple[np.ndarray, float]:
    """One decoded frame's per-bit sums and its texture scale (what a window adds up)."""
    cells = cells_of(luma)
    robust = _bounded(high_pass(cells))
    return LAYOUT.sums(cells), float(np.sqrt(np.mean(robust * robust))) + 1e-6


def decide(sums: np.ndarray, scale: float, frames: int) -> Reading:
    """A window's verdict from its frames' summed statistics."""
    bits = sums > 0
    if not frames:
        return Reading(0, None, 0.0, bits)
    # Each bit's sum against what an unmarked picture of this texture would give.
    z = np.abs(sums) / (scale * np.sqrt(LAYOUT.per_bit))
    confidence = float(np.mean(z))
    payload = None
    if confidence >= MIN_CONFIDENCE:
        payload, bits = _corrected(bits, z)
    return Reading(frames, payload, confidence, bits)


def _corrected(bits: np.ndarray, z: np.ndarray) -> tuple[Payload | None, np.ndarray]:
    """The payload of ``bits``, or else of ``bits`` with some of its :data:`WEAKEST` least
    reliable bits flipped, fewest flips first (a soft decision: a bit read wrong is almost
    always one read weakly). Each try passes a wrong word with odds 2^-16, so the 7 tries
    add about 1e-4 to a damaged window's odds of a wrong payload. Unmarked video never gets
    here: its confidence stays far under :data:`MIN_CONFIDENCE`."""
    weakest = np.argsort(z)[:WEAKEST]
    tries = [()] + [c for n in range(1, WEAKEST + 1) for c in itertools.combinations(weakest, n)]
    for flips in tries:
        trial = bits.copy()
        trial[list(flips)] ^= True
        payload = Payload.from_bits(trial)
        if payload is not None:
            return payload, trial
    return None, bits


class Reader:
    """Accumulates frames' per-bit sums; :meth:`read` decodes what has been added so far."""

    def __init__(self) -> None:
        self._sums = np.zeros(BITS)
        self._scale = 0.0
        self.frames = 0

    def add(self, luma: np.ndarray) -> None:
        """One decoded frame's luma, any size (the mark scales with the picture)."""
        sums, scale = frame_statistic(luma)
        self._sums += sums
        self._scale += scale
        self.frames += 1

    def read(self) -> Reading:
        return decide(self._sums, self._scale, self.frames)
