"""The speed of the parts that feed the generator: the built-in TTS voices and the teacher.

They used to be timed inside unit tests, which failed whenever the test machine was busy;
timings belong here. ``avatarcast bench`` reports them under ``components``:

- ``tts_seconds_per_speech_second``: synthesis time over the speech's duration, per voice
  (espeak-ng, which the server's TTS speaks with, and the festival voices the teacher and the
  held-out checks use), best of three after a warm-up call;
- ``teacher_ms_per_frame``: the teacher drawing one 512x512 frame of the default face with a
  blink and head motion (best of three runs of 40 frames), what ``create`` and training pay
  per frame.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

SENTENCE = "Maybe Peter will bring 12 purple balloons to the museum before lunch."
VOICES = (
    ("espeak", "en-us", 175.0, 50.0),
    ("festival", "kal_diphone", 1.0, 1.0),
    ("festival", "cmu_us_slt_arctic_hts", 1.0, 1.0),
)


def _best(run: Callable[[], float], repeats: int = 3) -> float:
    return min(run() for _ in range(repeats))


def tts_speed() -> dict[str, float]:
    """Seconds of synthesis per second of speech, per voice ("engine:name")."""
    from models.synth.speech import Voice, synthesize

    figures: dict[str, float] = {}
    for engine, name, rate, pitch in VOICES:
        voice = Voice(engine, name, rate, pitch)  # type: ignore[arg-type]
        synthesize(SENTENCE, voice)  # warm caches

        def once(voice: Voice = voice) -> float:
            started = time.perf_counter()
            speech = synthesize(SENTENCE, voice)
            return (time.perf_counter() - started) / speech.duration

        figures[f"{engine}:{name}"] = round(_best(once), 4)
    return figures


def teacher_speed(frames: int = 40) -> float:
    """Milliseconds per frame the teacher takes to draw the default face."""
    from models.synth.clip import teacher

    face = teacher()
    params = np.random.default_rng(0).uniform(0, 1, (frames, 4)).astype(np.float32)

    def once() -> float:
        started = time.perf_counter()
        for p in params:
            face.render(p, blink=0.5, head=(1.0, 0.5, 0.3, 1.005))
        return (time.perf_counter() - started) / frames * 1000.0

    return round(_best(once), 2)


def component_figures() -> dict[str, object]:
    return {"tts_seconds_per_speech_second": tts_speed(), "teacher_ms_per_frame": teacher_speed()}
