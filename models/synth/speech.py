"""Speech with phoneme timings for the teacher: espeak-ng (ctypes) and festival voices.

Both engines report their own phone sets; everything leaves this module as ARPAbet
(:mod:`models.synth.phonemes`) at 16 kHz, with phones that tile the whole audio and ``sil``
for every pause. espeak-ng gives each phoneme's start sample through its phoneme events;
festival writes its segment end times next to the wave. Either way the times are the
synthesiser's own, so they match the audio to within a frame (tests check the energy in
pauses and stop closures).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import tempfile
import unicodedata
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.io import wavfile
from scipy.signal import resample_poly

from models.audio import SAMPLE_RATE
from models.synth.espeak import PhonemeEvent, engine
from models.synth.phonemes import (
    ESPEAK_CONTINUATIONS,
    ESPEAK_TO_ARPABET,
    FESTIVAL_DELAY_S,
    FESTIVAL_TO_ARPABET,
    SILENCE,
    Phone,
)

Engine = Literal["espeak", "festival", "recorded"]
Split = Literal["train", "heldout"]
PEAK = 0.9
# espeak-ng is a library loaded in process (and required); festival is a program, its voices
# in Debian packages of their own.
FESTIVAL_PACKAGES = "festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts"

log = logging.getLogger("models.synth.speech")


@dataclass(frozen=True)
class Voice:
    """A synthetic speaker, or (engine ``"recorded"``) the person in a recording.

    espeak: ``name`` is a voice with an optional variant (``"en-us+f3"``), ``rate`` words
    per minute (80..450), ``pitch`` espeak's 0..100 base pitch. festival: ``name`` is the
    festival voice, ``rate`` a duration stretch (> 1 is slower), ``pitch`` a factor on the
    voice's mean F0 (ignored by the HTS voice, whose F0 comes from its own model).
    """

    engine: Engine
    name: str
    rate: float
    pitch: float

    def __post_init__(self) -> None:
        if self.engine not in ("espeak", "festival", "recorded"):
            raise ValueError(f"unknown engine {self.engine!r}")
        if self.rate <= 0 or self.pitch < 0:
            raise ValueError("rate must be > 0 and pitch >= 0")


@dataclass(frozen=True)
class Speech:
    """Audio (16 kHz mono float32, peak <= 1) with phones that tile all of it."""

    samples: np.ndarray
    phones: tuple[Phone, ...]
    text: str
    voice: Voice

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


# --- voices -------------------------------------------------------------------------------

_ESPEAK_DEFAULT = (175.0, 50.0)
_FESTIVAL_DEFAULT = (1.0, 1.0)
# Dialects and variants are held out as a whole: no held-out voice shares either part with a
# training voice, so the held-out set measures voices the model has never heard.
_ESPEAK_DIALECTS: dict[Split, tuple[str, ...]] = {
    "train": ("en-us", "en", "en-gb-x-rp", "en-gb-x-gbclan", "en-029"),
    "heldout": ("en-gb-scotland", "en-us-nyc", "en-gb-x-gbcwmd"),
}
_ESPEAK_VARIANTS: dict[Split, tuple[str, ...]] = {
    "train": (
        "",
        "m1",
        "m2",
        "m3",
        "m4",
        "m6",
        "m7",
        "f1",
        "f2",
        "f4",
        "f5",
        "klatt",
        "klatt3",
        "adam",
        "Alicia",
        "benjamin",
        "david",
        "Andy",
        "max",
        "linda",
        "john",
        "paul",
    ),
    "heldout": ("m5", "f3", "klatt2", "edward"),
}
_FESTIVAL_VOICES: dict[Split, tuple[str, ...]] = {
    "train": ("kal_diphone", "cmu_us_slt_arctic_hts"),
    "heldout": ("ked_diphone",),
}


def _check_split(split: str) -> None:
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}")


def voices(split: Split) -> list[Voice]:
    """Every voice of ``split`` at its default rate and pitch."""
    _check_split(split)
    out = [
        Voice("espeak", f"{dialect}+{variant}" if variant else dialect, *_ESPEAK_DEFAULT)
        for dialect in _ESPEAK_DIALECTS[split]
        for variant in _ESPEAK_VARIANTS[split]
    ]
    out += [Voice("festival", name, *_FESTIVAL_DEFAULT) for name in _FESTIVAL_VOICES[split]]
    return out


@functools.cache
def festival_installed() -> bool:
    """Whether festival can speak here (warned about once where it cannot)."""
    found = shutil.which("festival") is not None
    if not found:
        log.warning(
            "festival is not installed, so its voices are left out: create adapts a face on "
            "espeak-ng's voices only, and eval's festival cases are spoken by espeak-ng "
            "(apt install %s)",
            FESTIVAL_PACKAGES,
        )
    return found


def random_voice(split: Split, rng: np.random.Generator, festival_share: float = 0.35) -> Voice:
    """A voice of ``split`` with a rate and pitch drawn for one utterance.

    festival gets a fixed share because it has few voices but the most natural ones; where it
    is not installed, every voice is espeak-ng's.
    """
    pool = voices(split)
    engine_pool = [v for v in pool if v.engine == "festival" and festival_installed()]
    if not engine_pool or rng.random() >= festival_share:
        engine_pool = [v for v in pool if v.engine == "espeak"]
    base = engine_pool[int(rng.integers(len(engine_pool)))]
    if base.engine == "espeak":
        rate, pitch = float(rng.uniform(130, 230)), float(rng.uniform(25, 80))
    else:
        rate = float(rng.uniform(0.8, 1.25))
        pitch = 1.0 if base.name.endswith("_hts") else float(rng.uniform(0.85, 1.2))
    return Voice(base.engine, base.name, round(rate, 3), round(pitch, 3))


# --- synthesis ----------------------------------------------------------------------------


def synthesize(text: str, voice: Voice) -> Speech:
    """Speak ``text`` with ``voice``: 16 kHz audio and ARPAbet phones tiling it."""
    if not text.strip():
        raise ValueError("text is empty")
    if voice.engine == "recorded":
        raise ValueError("a recorded voice cannot synthesize")
    if voice.engine == "festival" and not festival_installed():
        raise RuntimeError(
            f"festival's voice {voice.name} is needed here and festival is not installed "
            f"(apt install {FESTIVAL_PACKAGES})"
        )
    if voice.engine == "espeak":
        samples, rate, phones = _espeak(text, voice)
    else:
        samples, rate, phones = _festival(text, voice)
    audio = _to_16k(samples, rate)
    return Speech(audio, _tile(phones, len(audio) / SAMPLE_RATE), text, voice)


def _to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    x = samples.astype(np.float32) / 32768.0
    if rate != SAMPLE_RATE:
        g = gcd(rate, SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, rate // g).astype(np.float32)
    return at_peak(x)


def at_peak(x: np.ndarray) -> np.ndarray:
    """float32 ``x`` scaled to peak at PEAK: one level for every engine and for recordings
    (gain is augmentation's job)."""
    x = np.asarray(x, dtype=np.float32)
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    return np.ascontiguousarray(x * np.float32(PEAK / peak) if peak > 0 else x)


def espeak_phones(name: str) -> tuple[str, ...]:
    """ARPAbet for one espeak mnemonic; () for a continuation mark. KeyError if unknown."""
    if name.startswith("_") or name in ("|", "||"):
        return (SILENCE,)
    if name in ESPEAK_CONTINUATIONS:
        return ()
    if name in ESPEAK_TO_ARPABET:
        return ESPEAK_TO_ARPABET[name]
    # Dialect files decorate base phonemes (e.g. "aI2", "t[", "l#"): try the bare form.
    stripped = name.rstrip("#;[/-!^023456789")
    if stripped and stripped in ESPEAK_TO_ARPABET:
        return ESPEAK_TO_ARPABET[stripped]
    raise KeyError(name)


def _espeak(text: str, voice: Voice) -> tuple[np.ndarray, int, list[tuple[str, float]]]:
    out = engine().synthesize(text, voice.name, rate=round(voice.rate), pitch=round(voice.pitch))
    return out.samples, out.rate, _espeak_starts(out.events, out.rate)


def _espeak_starts(events: tuple[PhonemeEvent, ...], rate: int) -> list[tuple[str, float]]:
    """(ARPAbet, start seconds); a two-phone mnemonic is split at its middle."""
    starts: list[tuple[str, float]] = []
    ordered = sorted(events, key=lambda e: e.sample)
    for i, event in enumerate(ordered):
        try:
            symbols = espeak_phones(event.name)
        except KeyError:
            symbols = ()  # unknown decoration: its time stays with the phone before
        start = event.sample / rate
        if len(symbols) == 2 and i + 1 < len(ordered):
            middle = (start + ordered[i + 1].sample / rate) / 2
            starts += [(symbols[0], start), (symbols[1], middle)]
        elif symbols:
            starts.append((symbols[0], start))
    return starts


def _scheme_string(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    ascii_text = " ".join(ascii_text.split())  # festival reads newlines as text too
    return '"' + ascii_text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _festival_script(text: str, voice: Voice, wav: Path, segs: Path) -> str:
    lines = [f"(voice_{voice.name})"]
    if voice.name.endswith("_hts"):
        # The HTS engine ignores Duration_Stretch; its "-r" is a speed factor instead.
        lines.append(
            f'(set! hts_engine_params (append hts_engine_params (list (list "-r" '
            f"{1.0 / voice.rate:.4f}))))"
        )
    else:
        lines.append(f"(Parameter.set 'Duration_Stretch {voice.rate:.4f})")
        lines.append(
            "(set! int_lr_params (mapcar (lambda (p) (if (string-matches (car p) "
            f'"target_f0_.*") (list (car p) (* {voice.pitch:.4f} (car (cdr p)))) p)) '
            "int_lr_params))"
        )
    lines += [
        f"(set! avatarcast_utt (Utterance Text {_scheme_string(text)}))",
        "(utt.synth avatarcast_utt)",
        f'(utt.save.wave avatarcast_utt "{wav}" \'riff)',
        f'(utt.save.segs avatarcast_utt "{segs}")',
    ]
    return "\n".join(lines) + "\n"


def _festival(text: str, voice: Voice) -> tuple[np.ndarray, int, list[tuple[str, float]]]:
    with tempfile.TemporaryDirectory(prefix="avatarcast-festival-") as tmp:
        folder = Path(tmp)
        wav, segs, script = folder / "out.wav", folder / "out.segs", folder / "run.scm"
        script.write_text(_festival_script(text, voice, wav, segs))
        result = subprocess.run(
            ["festival", "--batch", str(script)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "LC_ALL": "C"},
        )
        if result.returncode != 0 or not wav.exists() or not segs.exists():
            raise RuntimeError(
                f"festival failed for voice {voice.name}: {result.stderr.strip()[-500:]}"
            )
        rate, samples = wavfile.read(wav)
        ends = _read_segs(segs.read_text())
    if samples.ndim > 1:
        samples = samples[:, 0]
    delay = FESTIVAL_DELAY_S.get(voice.name, 0.0)
    starts: list[tuple[str, float]] = []
    previous_end = 0.0
    for symbol, end in ends:
        starts.append((symbol, previous_end + delay if starts else 0.0))
        previous_end = end
    return samples, int(rate), starts


def _read_segs(content: str) -> list[tuple[str, float]]:
    """festival's segment file: a header up to '#', then 'end_time colour phone' lines."""
    body = content.split("#", 1)[1] if "#" in content else content
    out = []
    for line in body.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        name = fields[2]
        symbol = FESTIVAL_TO_ARPABET.get(name, name.upper())
        out.append((symbol, float(fields[0])))
    return out


def _tile(starts: list[tuple[str, float]], duration: float) -> tuple[Phone, ...]:
    """Phones from start times: contiguous, merged pauses, from 0 to ``duration``."""
    cleaned: list[tuple[str, float]] = []
    for symbol, start in starts:
        start = min(max(start, 0.0), duration)
        if cleaned and start <= cleaned[-1][1]:
            # A zero-length phone: the later one replaces it at the same start.
            cleaned[-1] = (symbol, cleaned[-1][1])
            continue
        if cleaned and cleaned[-1][0] == symbol == SILENCE:
            continue
        cleaned.append((symbol, start))
    if not cleaned or cleaned[0][1] > 0.0:
        if cleaned and cleaned[0][0] == SILENCE:
            cleaned[0] = (SILENCE, 0.0)
        else:
            cleaned.insert(0, (SILENCE, 0.0))
    phones = []
    for i, (symbol, start) in enumerate(cleaned):
        end = cleaned[i + 1][1] if i + 1 < len(cleaned) else duration
        if end > start:
            phones.append(Phone(symbol, start, end))
    return tuple(phones)
