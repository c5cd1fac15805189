"""The canonical phoneme set (ARPAbet without stress) that every speech source maps to."""

from __future__ import annotations

from dataclasses import dataclass

SILENCE = "sil"

VOWELS = frozenset(
    {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}
)
CONSONANTS = frozenset(
    {
        "B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG", "P", "R",
        "S", "SH", "T", "TH", "V", "W", "Y", "Z", "ZH",
    }
)
PHONEMES = frozenset({SILENCE}) | VOWELS | CONSONANTS
BILABIALS = frozenset({"P", "B", "M"})


@dataclass(frozen=True)
class Phone:
    """One phoneme of an utterance, times in seconds from the start of its audio."""

    symbol: str
    start: float
    end: float

    def __post_init__(self) -> None:
        if self.symbol not in PHONEMES:
            raise ValueError(f"unknown phoneme {self.symbol!r}")
        if self.end < self.start:
            raise ValueError(f"phone {self.symbol} ends before it starts")

    @property
    def duration(self) -> float:
        return self.end - self.start
