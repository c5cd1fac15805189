"""Recorded human speech for eval: real voices, never trained on.

Everything the generator learns from is synthetic (espeak and festival voices, augmented). Real
speech differs from it in ways no augmentation fully covers: the voice source, coarticulation,
short and soft lip closures, the microphone and the room. These clips measure that gap. Each
is a person reading or speaking, with phone times from a forced aligner (``models/speech``'s
README says where each comes from and under what terms).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from models.audio import SAMPLE_RATE
from models.heldout import LEAD_SILENCE_S, TAIL_SILENCE_S, pad_silence
from models.synth.phonemes import Phone
from models.synth.speech import Speech, Voice, at_peak

SPEECH_DIR = Path(__file__).with_name("speech")


@dataclass(frozen=True)
class RecordedCase:
    name: str
    speaker: str
    text: str
    path: Path
    phones: tuple[Phone, ...]


@cache
def recorded_cases() -> tuple[RecordedCase, ...]:
    """The shipped clips, in file order."""
    index = json.loads((SPEECH_DIR / "cases.json").read_text())
    return tuple(
        RecordedCase(
            name=c["name"],
            speaker=c["speaker"],
            text=c["text"],
            path=SPEECH_DIR / c["file"],
            phones=tuple(Phone(s, float(a), float(b)) for s, a, b in c["phones"]),
        )
        for c in index["cases"]
    )


def load_case(case: RecordedCase) -> Speech:
    """One clip as :class:`Speech` (peak at the synthetic voices' level), with the same
    silences around it as the synthetic held-out cases."""
    from models.media import decode_audio

    samples = at_peak(np.concatenate(list(decode_audio(case.path))))
    # The aligner's last phone ends where the file ends; decoding may differ by a few samples.
    duration = len(samples) / SAMPLE_RATE
    last = case.phones[-1]
    phones = (*case.phones[:-1], Phone(last.symbol, min(last.start, duration), duration))
    speech = Speech(
        samples,
        phones,
        case.text,
        Voice("recorded", case.speaker, 1.0, 1.0),
    )
    return pad_silence(speech, LEAD_SILENCE_S, TAIL_SILENCE_S)


def recorded_speech() -> list[Speech]:
    """Every recorded case as speech, padded."""
    return [load_case(c) for c in recorded_cases()]
