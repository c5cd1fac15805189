"""Held-out speech for eval: sentences and voices never used in training, with silence
around each utterance (a talking head spends much of its time between sentences)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from models.synth.phonemes import BILABIALS, SILENCE, Phone

EVAL_SEED = 20_240_611
N_CASES = 12
MIN_SECONDS, MAX_SECONDS = 2.5, 5.5
# TTS leaves almost no silence around a sentence; a talking head spends much of its time
# between sentences, so every case gets silence before and after (the stillness test).
LEAD_SILENCE_S, TAIL_SILENCE_S = 0.4, 0.6


def stderr_progress(message: str) -> None:
    """The eval's progress lines, on stderr."""
    print(f"eval: {message}", file=sys.stderr, flush=True)


def case_voices(n: int) -> list[Any]:
    """``n`` held-out voices, deterministic: espeak voices spread over dialects and variants at
    three speaking rates, with every fourth case from the held-out festival voice (an espeak
    voice where festival is not installed: the figures then differ from docs/benchmarks.md's,
    and a warning says why)."""
    from models.synth.speech import Voice, festival_installed, voices

    pool = voices("heldout")
    espeak = [v for v in pool if v.engine == "espeak"]
    festival = [v for v in pool if v.engine == "festival" and festival_installed()]
    out = []
    for i in range(n):
        if festival and i % 4 == 3:
            out.append(festival[(i // 4) % len(festival)])
            continue
        # A stride coprime with the pool size visits dialects and variants in turn.
        base = espeak[(i * 5) % len(espeak)]
        out.append(Voice(base.engine, base.name, (150.0, 175.0, 200.0)[i % 3], base.pitch))
    return out


def select_speech(
    n: int = N_CASES, seed: int = EVAL_SEED, progress: Callable[[str], None] = stderr_progress
) -> list[Any]:
    """``n`` held-out utterances of 2.5-5.5 s, the same on every run."""
    from models.synth.corpus import sentences
    from models.synth.speech import synthesize

    candidates = sentences("heldout", 6 * n, seed)
    chosen: list[Any] = []
    spare: list[Any] = []
    voice_list = case_voices(n)
    for text in candidates:
        if len(chosen) == n:
            break
        speech = synthesize(text, voice_list[len(chosen)])
        if MIN_SECONDS <= speech.duration <= MAX_SECONDS:
            chosen.append(speech)
        else:
            spare.append(speech)
    # A corpus without enough sentences of the right length still gives n cases.
    chosen += spare[: n - len(chosen)]
    chosen = [pad_silence(s, LEAD_SILENCE_S, TAIL_SILENCE_S) for s in chosen]
    bilabials = sum(p.symbol in BILABIALS for s in chosen for p in s.phones)
    progress(
        f"{len(chosen)} cases, {sum(s.duration for s in chosen):.1f} s with silences, "
        f"{bilabials} p/b/m phones"
    )
    return chosen


def pad_silence(speech: Any, before: float, after: float) -> Any:
    """``speech`` with digital silence added at both ends, its phones shifted to match."""
    from dataclasses import replace

    from models.audio import SAMPLE_RATE

    lead = round(before * SAMPLE_RATE)
    tail = round(after * SAMPLE_RATE)
    samples = np.concatenate(
        [np.zeros(lead, np.float32), speech.samples, np.zeros(tail, np.float32)]
    )
    shift = lead / SAMPLE_RATE
    end = len(samples) / SAMPLE_RATE
    phones = [Phone(p.symbol, p.start + shift, p.end + shift) for p in speech.phones]
    # Merge into the utterance's own edge silences so a pause stays one phone.
    if phones and phones[0].symbol == SILENCE:
        phones[0] = Phone(SILENCE, 0.0, phones[0].end)
    else:
        phones.insert(0, Phone(SILENCE, 0.0, shift))
    if phones[-1].symbol == SILENCE:
        phones[-1] = Phone(SILENCE, phones[-1].start, end)
    else:
        phones.append(Phone(SILENCE, phones[-1].end, end))
    return replace(speech, samples=samples, phones=tuple(phones))
