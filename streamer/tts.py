"""The built-in text-to-speech: espeak-ng, streamed sentence by sentence at 16 kHz.

Text is cut into sentences lazily and each one is synthesised only when the consumer asks
for more, so a 100,000-character text never holds more than one sentence of audio. espeak-ng
is one global engine in the library; its binding serialises calls with a lock, so several
sessions may stream at once and their sentences simply interleave.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from math import gcd

import numpy as np
from scipy.signal import resample_poly

from models.audio import SAMPLE_RATE
from models.synth.espeak import engine

MAX_CHUNK_CHARS = 400  # longer runs without punctuation are cut at a space
# Control characters become spaces: espeak-ng reads its text as a C string, so a NUL would
# silently end it there, and the others are not speech. Newlines still end a sentence.
_CONTROLS = {c: " " for c in [*range(0x20), *range(0x7F, 0xA0)] if c != ord("\n")}
_SENTENCE = re.compile(r"[^.!?;:\n]*(?:[.!?;:]+[\"')\]]*|\n|$)")


def split_sentences(text: str, max_chars: int = MAX_CHUNK_CHARS) -> Iterator[str]:
    """Non-empty sentences of ``text`` in order, none longer than ``max_chars``."""
    for match in _SENTENCE.finditer(text):
        sentence = " ".join(match.group().split())
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            yield sentence[:cut]
            sentence = sentence[cut:].strip()
        if any(c.isalnum() for c in sentence):
            yield sentence


class TextToSpeech:
    """espeak-ng speech as 16 kHz mono float32, one chunk per sentence."""

    def __init__(self, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> None:
        if not 80 <= rate <= 450:
            raise ValueError("rate must be 80..450 words per minute")
        if not 0 <= pitch <= 100:
            raise ValueError("pitch must be 0..100")
        self.voice = voice
        self.rate = rate
        self.pitch = pitch
        self._engine = engine()
        self._speak("a")  # fail here, not mid-stream, on an unknown voice

    def _speak(self, sentence: str) -> np.ndarray:
        out = self._engine.synthesize(sentence, self.voice, rate=self.rate, pitch=self.pitch)
        x = out.samples.astype(np.float32) / 32768.0
        if out.rate != SAMPLE_RATE:
            g = gcd(out.rate, SAMPLE_RATE)
            x = resample_poly(x, SAMPLE_RATE // g, out.rate // g)
        return np.clip(x, -1.0, 1.0).astype(np.float32)

    def stream(self, text: str) -> Iterator[np.ndarray]:
        """Audio chunks, one per sentence; raises ValueError at once for empty text."""
        if not isinstance(text, str) or not any(c.isalnum() for c in text):
            raise ValueError("text is empty: give at least one word to speak")
        return self._chunks(text)

    def _chunks(self, text: str) -> Iterator[np.ndarray]:
        for sentence in split_sentences(text.translate(_CONTROLS)):
            chunk = self._speak(sentence)
            if len(chunk):
                yield chunk

    def synthesize(self, text: str) -> np.ndarray:
        """The whole text as one array (for short texts; use :meth:`stream` for long ones)."""
        return np.concatenate(list(self.stream(text)))
