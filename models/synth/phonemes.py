"""The canonical phoneme set (ARPAbet without stress) that every speech source maps to."""

from __future__ import annotations

from dataclasses import dataclass

SILENCE = "sil"

VOWELS = frozenset(
    {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}
)
CONSONANTS = frozenset(
    {
        "B",
        "CH",
        "D",
        "DH",
        "F",
        "G",
        "HH",
        "JH",
        "K",
        "L",
        "M",
        "N",
        "NG",
        "P",
        "R",
        "S",
        "SH",
        "T",
        "TH",
        "V",
        "W",
        "Y",
        "Z",
        "ZH",
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


# --- the synthesisers' phone sets, mapped to ARPAbet (models.synth.speech) ------------------

# espeak-ng's English mnemonics (all dialects) -> ARPAbet. A pair is one espeak phoneme that
# is two ARPAbet phones (r-coloured diphthongs, syllabic l); its time is split between them.
ESPEAK_TO_ARPABET: dict[str, tuple[str, ...]] = {
    "0": ("AA",),
    "3": ("ER",),
    "3:": ("ER",),
    "3:r": ("ER",),
    "@": ("AH",),
    "@2": ("AH",),
    "@5": ("AH",),
    "@r": ("ER",),
    "@L": ("AH", "L"),
    "@U": ("OW",),
    "A:": ("AA",),
    "A@": ("AA", "R"),
    "A": ("AA",),
    "aa": ("AE",),
    "a": ("AE",),
    "a#": ("AH",),
    "a2": ("AH",),
    "aI": ("AY",),
    "aI2": ("AY",),
    "aI3": ("AY",),
    "aI@": ("AY", "ER"),
    "aU": ("AW",),
    "aU@": ("AW", "ER"),
    "E": ("EH",),
    "e": ("EH",),
    "e@": ("EH", "R"),
    "eI": ("EY",),
    "I": ("IH",),
    "I#": ("IH",),
    "I2": ("IH",),
    "IR": ("IH", "R"),
    "i": ("IY",),
    "i:": ("IY",),
    "i@": ("IY", "AH"),
    "i@3": ("IH", "R"),
    "O": ("AO",),
    "O2": ("AO",),
    "O:": ("AO",),
    "O@": ("AO", "R"),
    "o@": ("AO", "R"),
    "o:": ("OW",),
    "oU": ("OW",),
    "OI": ("OY",),
    "U": ("UH",),
    "U@": ("UH", "R"),
    "u": ("UW",),
    "u:": ("UW",),
    "V": ("AH",),
    "VR": ("AH", "R"),
    "Q": ("AA",),
    "b": ("B",),
    "d": ("D",),
    "D": ("DH",),
    "dZ": ("JH",),
    "f": ("F",),
    "g": ("G",),
    "h": ("HH",),
    "j": ("Y",),
    "k": ("K",),
    "l": ("L",),
    "l/": ("L",),
    "m": ("M",),
    "m-": ("M",),
    "n": ("N",),
    "n-": ("N",),
    "N": ("NG",),
    "p": ("P",),
    "r": ("R",),
    "r-": ("R",),
    "s": ("S",),
    "S": ("SH",),
    "t": ("T",),
    "t#": ("T",),
    "t2": ("T",),
    "t[": ("T",),
    "?": ("T",),
    "T": ("TH",),
    "tS": ("CH",),
    "v": ("V",),
    "w": ("W",),
    "w#": ("W",),
    "hw": ("W",),
    "x": ("HH",),
    "z": ("Z",),
    "Z": ("ZH",),
    "ts": ("T", "S"),
    "dz": ("D", "Z"),
}
# espeak markers that take time but are no phoneme of their own (';' is its linking mark
# between words): their time belongs to the phone before.
ESPEAK_CONTINUATIONS = frozenset({";", "'", ",", "=", "#"})

# festival's radio phone set (all three voices) -> ARPAbet.
FESTIVAL_TO_ARPABET: dict[str, str] = {
    "pau": SILENCE,
    "h#": SILENCE,
    "brth": SILENCE,
    "ax": "AH",
    "axr": "ER",
}
# The HTS voice's audio lags its segment times by about two of its 5 ms frames (measured as
# the lag that best aligns speech energy with non-silent phones); the diphone voices by none.
FESTIVAL_DELAY_S: dict[str, float] = {"cmu_us_slt_arctic_hts": 0.010}
