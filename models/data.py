"""Training data from the teacher: mouth crops, mel windows and mouth params, cached as shards.

Two kinds of shard:
- ``render-NNN.npz``: rendered utterances, per video frame a 160 px mouth crop, the mel window
  and the teacher's mouth params (for the generator, the SyncNet and the discriminator);
- ``audio-NNN.npz``: audio-only utterances, mel windows and params (no rendering, so they are
  cheap: many voices and augmentations for the audio encoder).

Shards are written atomically and skipped when present, so an interrupted build resumes.
The teacher is behind a small protocol so tests and quick runs can use :class:`StandInTeacher`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from models.audio import SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME, WindowConfig, log_mel_padded, windows
from models.avatar import keep_mask
from models.config import CROP
from models.lookaug import through_cameras
from models.melaug import perturb
from models.synth.phonemes import Phone


class SpeechLike(Protocol):
    @property
    def samples(self) -> np.ndarray: ...

    @property
    def phones(self) -> tuple[Phone, ...]: ...


class Teacher(Protocol):
    """What the dataset builder needs from the teacher."""

    def speech(self, text: str, rng: np.random.Generator, augment: bool) -> SpeechLike: ...

    def sentences(self, n: int, seed: int) -> list[str]: ...

    def render(self, speech: SpeechLike, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(crops (n, 160, 160, 3) uint8, params (n, 4) float32)."""
        ...

    def track(self, speech: SpeechLike) -> np.ndarray:
        """Mouth params (n, 4) without rendering."""
        ...

    def assets(self) -> tuple[np.ndarray, np.ndarray]:
        """(reference crop (160, 160, 3) uint8, feather mask (160, 160) float32)."""
        ...


def n_video_frames(n_samples: int) -> int:
    return -(-n_samples // SAMPLES_PER_VIDEO_FRAME)


def mel_windows(samples: np.ndarray, cfg: WindowConfig | None = None) -> np.ndarray:
    """One (24, 80) window per video frame of the utterance, float16 to halve the cache."""
    n = n_video_frames(len(samples))
    return windows(log_mel_padded(samples), n, cfg or WindowConfig()).astype(np.float16)


# ---------------------------------------------------------------------------------------------
# The real teacher (models/synth), imported lazily so this module loads without it.


class SynthTeacher:
    """The default avatar's teacher: TTS voices, visemes and the astronaut face."""

    def __init__(self, augment_prob: float = 0.7, microphone_prob: float = 0.7) -> None:
        self.augment_prob = augment_prob
        self.microphone_prob = microphone_prob

    def sentences(self, n: int, seed: int) -> list[str]:
        from models.synth.corpus import sentences

        return list(sentences("train", n, seed))

    def speech(self, text: str, rng: np.random.Generator, augment: bool) -> SpeechLike:
        from models.synth import speech as sp
        from models.synth.augment import augment as acoustic
        from models.synth.augment import with_microphone

        voice = sp.random_voice("train", rng)
        out = sp.synthesize(text, voice)
        if augment and rng.random() < self.augment_prob:
            out = acoustic(out, rng)
        if augment and rng.random() < self.microphone_prob:
            out = with_microphone(out, rng)
        return out

    def render(self, speech: SpeechLike, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        from models.synth.clip import render_clip

        clip = render_clip(cast(Any, speech), rng, idle=True, keep_frames=False)
        return np.asarray(clip.crops, np.uint8), np.asarray(clip.params, np.float32)

    def track(self, speech: SpeechLike) -> np.ndarray:
        from models.synth.visemes import mouth_track

        n = n_video_frames(len(speech.samples))
        return np.asarray(mouth_track(speech.phones, n), np.float32)

    def assets(self) -> tuple[np.ndarray, np.ndarray]:
        from models.synth.clip import default_assets

        a = default_assets()
        return np.asarray(a["reference"], np.uint8), np.asarray(a["mask"], np.float32)


# ---------------------------------------------------------------------------------------------
# A stand-in teacher: tones for vowels, hums for M, a dark ellipse for the mouth. It exercises
# the whole pipeline in seconds and is learnable, which is all tests need.


@dataclass(frozen=True)
class StandInSpeech:
    samples: np.ndarray
    phones: tuple[Phone, ...]


class StandInTeacher:
    def sentences(self, n: int, seed: int) -> list[str]:
        return [f"stand-in {seed} {i}" for i in range(n)]

    def speech(self, text: str, rng: np.random.Generator, augment: bool) -> SpeechLike:
        phones: list[Phone] = []
        t = 0.0
        chunks: list[np.ndarray] = []
        f0 = rng.uniform(90, 250)
        for i in range(int(rng.integers(4, 9))):
            symbol = "sil" if i % 2 == 0 else str(rng.choice(["AA", "M", "IY"]))
            dur = float(rng.uniform(0.08, 0.3))
            n = int(dur * SAMPLE_RATE)
            tt = np.arange(n) / SAMPLE_RATE
            if symbol == "sil":
                x = rng.normal(0, 1e-3, n)
            elif symbol == "M":
                x = 0.1 * np.sin(2 * np.pi * f0 * tt)
            else:
                formant = 700.0 if symbol == "AA" else 2300.0
                x = 0.3 * np.sin(2 * np.pi * f0 * tt) + 0.3 * np.sin(2 * np.pi * formant * tt)
            chunks.append(x)
            phones.append(Phone(symbol, t, t + n / SAMPLE_RATE))
            t += n / SAMPLE_RATE
        samples = np.concatenate(chunks).astype(np.float32)
        if augment:
            samples = samples * np.float32(rng.uniform(0.3, 1.5))
        return StandInSpeech(np.clip(samples, -1, 1), tuple(phones))

    def track(self, speech: SpeechLike) -> np.ndarray:
        n = n_video_frames(len(speech.samples))
        out = np.zeros((n, 4), np.float32)
        centres = (np.arange(n) + 0.5) / 25.0
        for p in speech.phones:
            sel = (centres >= p.start) & (centres < p.end)
            if p.symbol == "AA":
                out[sel] = (0.9, 0.0, 0.0, 0.0)
            elif p.symbol == "IY":
                out[sel] = (0.4, 0.8, 0.0, 0.0)
            elif p.symbol == "M":
                out[sel] = (0.0, 0.0, 0.0, 1.0)
        return out

    def render(self, speech: SpeechLike, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        params = self.track(speech)
        base, _ = self.assets()
        yy, xx = np.mgrid[0:CROP, 0:CROP].astype(np.float32)
        crops = np.repeat(base[None], len(params), axis=0)
        for k, (op, width, _, _) in enumerate(params):
            half_h, half_w = 4 + 30 * op, 30 + 12 * width
            inside = ((xx - 80) / half_w) ** 2 + ((yy - 100) / half_h) ** 2 <= 1.0
            crops[k][inside] = (40, 10, 15)
        return crops, params

    def assets(self) -> tuple[np.ndarray, np.ndarray]:
        yy, xx = np.mgrid[0:CROP, 0:CROP].astype(np.float32)
        base = np.stack([200 - yy * 0.3, 150 - xx * 0.1, 120 + 0 * xx], axis=-1).astype(np.uint8)
        r = np.sqrt(((xx - 80) / 60) ** 2 + ((yy - 100) / 50) ** 2)
        mask = np.clip((1.2 - r) / 0.4, 0, 1).astype(np.float32)
        return base, mask


# ---------------------------------------------------------------------------------------------
# Building the cache


@dataclass(frozen=True)
class BuildConfig:
    render_utterances: int = 240
    audio_utterances: int = 1200
    shard_size: int = 24
    seed: int = 0
    workers: int = 2


def _save_atomic(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]  # uncompressed: loads fast, and crops compress poorly anyway
    os.replace(tmp, path)


def _render_shard(args: tuple[Teacher, list[str], int, str]) -> int:
    teacher, texts, seed, path = args
    rng = np.random.default_rng(seed)
    crops, wins, params, utt = [], [], [], []
    for i, text in enumerate(texts):
        speech = teacher.speech(text, rng, augment=True)
        c, p = teacher.render(speech, rng)
        w = mel_windows(speech.samples)
        n = min(len(c), len(w), len(p))
        crops.append(c[:n])
        wins.append(w[:n])
        params.append(p[:n])
        utt.append(np.full(n, i, np.int32))
    _save_atomic(
        Path(path),
        crops=np.concatenate(crops),
        windows=np.concatenate(wins),
        params=np.concatenate(params).astype(np.float32),
        utt=np.concatenate(utt),
    )
    return sum(len(x) for x in params)


def _audio_shard(args: tuple[Teacher, list[str], int, str]) -> int:
    teacher, texts, seed, path = args
    rng = np.random.default_rng(seed)
    wins, params = [], []
    for text in texts:
        speech = teacher.speech(text, rng, augment=True)
        w = mel_windows(speech.samples)
        p = teacher.track(speech)
        n = min(len(w), len(p))
        wins.append(w[:n])
        params.append(p[:n])
    _save_atomic(
        Path(path),
        windows=np.concatenate(wins),
        params=np.concatenate(params).astype(np.float32),
    )
    return sum(len(x) for x in params)


def build_dataset(
    out_dir: str | Path, cfg: BuildConfig, teacher: Teacher | None = None, progress: bool = True
) -> dict[str, Any]:
    """Write the shards (skipping those already there) and ``meta.json``; return the meta."""
    teacher = teacher or SynthTeacher()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reference, mask = teacher.assets()
    _save_atomic(out / "assets.npz", reference=reference, mask=mask.astype(np.float32))
    texts = teacher.sentences(cfg.render_utterances + cfg.audio_utterances, cfg.seed)
    jobs: list[tuple[Any, tuple[Teacher, list[str], int, str]]] = []
    s = cfg.shard_size
    for kind, fn, lo, count in (
        ("render", _render_shard, 0, cfg.render_utterances),
        ("audio", _audio_shard, cfg.render_utterances, cfg.audio_utterances),
    ):
        for j, start in enumerate(range(0, count, s)):
            path = out / f"{kind}-{j:03d}.npz"
            chunk = texts[lo + start : lo + min(start + s, count)]
            seed = cfg.seed * 100_003 + (0 if kind == "render" else 50_000) + j
            if not path.exists():
                jobs.append((fn, (teacher, chunk, seed, str(path))))
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="data shards", disable=not progress)
    if cfg.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(cfg.workers) as pool:
            for _ in pool.map(_call, jobs):
                bar.update()
    else:
        for job in jobs:
            _call(job)
            bar.update()
    bar.close()
    meta = {
        "render_utterances": cfg.render_utterances,
        "audio_utterances": cfg.audio_utterances,
        "seed": cfg.seed,
        "render_shards": sorted(p.name for p in out.glob("render-*.npz")),
        "audio_shards": sorted(p.name for p in out.glob("audio-*.npz")),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def _call(job: tuple[Any, tuple[Teacher, list[str], int, str]]) -> int:
    fn, args = job
    return int(fn(args))


# ---------------------------------------------------------------------------------------------
# Loading and batching


def _load(paths: Sequence[Path], keys: Sequence[str]) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for p in paths:
        with np.load(p) as z:
            for k in keys:
                parts[k].append(z[k])
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}


class FrameDataset:
    """All frames in memory; map-style (``len``/``[i]``) and vectorised batch samplers."""

    def __init__(
        self, data_dir: str | Path, gain_db: float = 12.0, colour: float = 0.0, look: float = 0.0
    ) -> None:
        d = Path(data_dir)
        if not (d / "meta.json").exists():
            raise FileNotFoundError(f"no dataset in {d} (run build_dataset first)")
        with np.load(d / "assets.npz") as z:
            self.reference = z["reference"]
            self.mask = z["mask"].astype(np.float32)
        r = _load(sorted(d.glob("render-*.npz")), ("crops", "windows", "params", "utt"))
        a = _load(sorted(d.glob("audio-*.npz")), ("windows", "params"))
        self.crops: np.ndarray = r["crops"]
        self.windows: np.ndarray = r["windows"]
        self.params: np.ndarray = r["params"]
        self.audio_windows = np.concatenate(
            [a["windows"].reshape(-1, *self.windows.shape[1:]), self.windows]
        ).astype(np.float16)
        self.audio_params = np.concatenate([a["params"].reshape(-1, 4), self.params])
        self.gain_db = gain_db
        self.colour, self.look = colour, look
        self.keep = keep_mask(self.mask)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(i)
        return {k: v[0] for k, v in self.generator_batch(rng, 1, np.array([i])).items()}

    def _gain(self, mel: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Random gain and spectral colour (:mod:`models.melaug`)."""
        return perturb(mel, rng, self.gain_db, self.colour)

    @staticmethod
    def _image(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0

    def generator_batch(
        self, rng: np.random.Generator, batch: int, idx: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """reference, masked, target (B, 3, S, S) in [0, 1]; mel (B, T, 80); params (B, 4)."""
        if idx is None:
            idx = rng.integers(0, len(self), batch)
        # Half the time the shipped reference crop (what run time uses), half a random frame,
        # so the generator reads the mouth from the audio and only texture from the reference;
        # both seen through a random camera now and then (models.lookaug).
        refs = self.crops[rng.integers(0, len(self), len(idx))]
        refs[rng.random(len(idx)) < 0.5] = self.reference
        crops, refs = through_cameras(self.crops[idx], refs, rng, self.look)
        target = self._image(crops)
        return {
            "reference": self._image(refs),
            "masked": target * self.keep[None, None],
            "target": target,
            "mel": self._gain(self.windows[idx], rng),
            "params": self.params[idx],
        }

    def audio_batch(self, rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
        idx = rng.integers(0, len(self.audio_windows), batch)
        return {"mel": self._gain(self.audio_windows[idx], rng), "params": self.audio_params[idx]}

    def sync_batch(self, rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
        """Half in-sync pairs, half pairs whose audio belongs to a clearly different mouth."""
        idx = rng.integers(0, len(self), batch)
        audio_idx = idx.copy()
        label = (rng.random(batch) < 0.5).astype(np.float32)
        neg = np.flatnonzero(label == 0)
        if len(neg):
            # Of a few random candidates take the one whose mouth differs most: a random
            # frame is often just another closed mouth, which would be a false negative.
            cand = rng.integers(0, len(self), (len(neg), 6))
            dist = np.abs(self.params[cand] - self.params[idx[neg]][:, None]).sum(-1)
            audio_idx[neg] = cand[np.arange(len(neg)), dist.argmax(1)]
        return {
            "crop": self._image(self.crops[idx]),
            "mel": self._gain(self.windows[audio_idx], rng),
            "label": label,
        }
