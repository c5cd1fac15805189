"""The runtime TTS: sentence streaming, long texts in bounded memory, threads, errors."""

from __future__ import annotations

import itertools
import threading
import time
import tracemalloc

import numpy as np
import pytest

from models.audio import SAMPLE_RATE
from streamer.tts import MAX_CHUNK_CHARS, TextToSpeech, split_sentences


@pytest.fixture(scope="module")
def tts() -> TextToSpeech:
    return TextToSpeech()


def test_stream_yields_one_chunk_per_sentence(tts: TextToSpeech) -> None:
    chunks = list(tts.stream("Hello there. How are you today? Bob paid me a map!"))
    assert len(chunks) == 3
    for chunk in chunks:
        assert chunk.dtype == np.float32 and chunk.ndim == 1
        assert 0.3 * SAMPLE_RATE < len(chunk) < 3 * SAMPLE_RATE
        assert 0.05 < np.max(np.abs(chunk)) <= 1.0


def test_synthesize_concatenates_the_stream(tts: TextToSpeech) -> None:
    audio = tts.synthesize("One sentence. And another one.")
    assert audio.dtype == np.float32 and 1.0 < len(audio) / SAMPLE_RATE < 4.0


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "...!?"])
def test_empty_text_is_a_clear_error(tts: TextToSpeech, text: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        tts.stream(text)
    with pytest.raises(ValueError, match="empty"):
        tts.synthesize(text)


def test_unknown_voice_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="voice"):
        TextToSpeech(voice="no-such-voice")
    with pytest.raises(ValueError):
        TextToSpeech(rate=5)


def test_split_sentences_bounds_every_chunk() -> None:
    no_punctuation = "word " * 20_000  # 100,000 characters, no sentence end at all
    parts = split_sentences(no_punctuation)
    first = list(itertools.islice(parts, 3))
    assert all(0 < len(p) <= MAX_CHUNK_CHARS for p in first)
    assert list(split_sentences("A b. C d?\nE f! ; : G")) == ["A b.", "C d?", "E f!", "G"]


def test_100k_characters_stream_lazily_in_bounded_memory(tts: TextToSpeech) -> None:
    text = ("Peter bought 12 purple balloons in May. Did Bob pay? " * 2000)[:100_000]
    assert len(text) == 100_000
    start = time.perf_counter()
    stream = tts.stream(text)
    first = next(stream)
    assert time.perf_counter() - start < 1.0  # the first sentence comes at once
    assert len(first) > 0
    tracemalloc.start()
    total = 0
    for chunk in itertools.islice(stream, 40):
        total += len(chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total > 40 * SAMPLE_RATE  # 40 sentences of audio went through ...
    assert peak < 4_000_000  # ... holding about one sentence at a time


def test_concurrent_streams_do_not_mix(tts: TextToSpeech) -> None:
    texts = ["Bob bought a map. " * 3, "A long and winding sentence about nothing. " * 2, "Hi."]
    alone = [len(tts.synthesize(t)) for t in texts]
    results: dict[int, int] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                results[i] = len(TextToSpeech().synthesize(texts[i]))
        except BaseException as exc:  # reported to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    for i, n in enumerate(alone):
        # espeak's leading pause depends on the sentence before (tens of ms), never more.
        assert results[i] == pytest.approx(n, abs=0.06 * SAMPLE_RATE)
