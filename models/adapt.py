"""Adapting the generator to one face inside ``avatar create``.

The teacher animates the person's own face (:class:`models.synth.face.TeacherFace` works on
any photo from its landmarks) with training sentences in many training voices, and the
generator is fine-tuned on those frames with the step that ``avatar train`` uses
(:class:`models.finetune.Finetuner`). A photo avatar is adapted this way; a video avatar adds
the person's own frames and speech (``avatar train``).

Only the drawing is adapted. The audio encoder stays the built-in model's: fine-tuned on a few
dozen sentences it re-fits their voices and forgets part of what it knew about unheard ones
(recorded speech closed p/b/m on 40-68 % of adapted faces, on 78 % once held). A quarter of
each batch is the teacher's frames with the lips pressed, as in :mod:`models.polish`.

The run is bounded by a time budget as well as a step count, so ``create`` keeps its promised
duration on a slow machine: it stops early, never late. Held-out voices and sentences are never
used here; ``create``'s self-check measures on them afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.avatar import CHECKPOINT_FILE, MODEL_FILE, default_avatar_dir
from models.data import mel_windows
from models.finetune import FinetuneConfig
from models.person import PersonData
from models.synth.clip import REFERENCE_PARAMS, render_clip
from models.synth.face import MAX_GAP as MAX_GAP_PX
from models.synth.face import TeacherFace
from models.synth.visemes import PRESS, PRESSED

# Speech -> (stage, done, total); ``None`` where the caller shows nothing.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class AdaptConfig:
    utterances: int = 40  # teacher clips of training sentences, ~2.5 s each
    steps: int = 700
    budget_s: float = 170.0  # the fine-tuning stops here even if steps remain
    seed: int = 0
    pad_s: tuple[float, float] = (0.15, 0.8)  # silence around each clip: the mouth rests
    lr: float = 3e-4
    batch: int = 8
    closures: float = 0.25  # share of each batch drawn from the teacher's closure frames
    hold_hearing: bool = True  # adapt the drawing only; the audio encoder stays the base's


def teacher_material(
    face: TeacherFace,
    cfg: AdaptConfig,
    progress: Progress | None = None,
    mask: np.ndarray | None = None,
) -> PersonData:
    """The teacher's animation of ``face`` as training material: mouth crops with their mel
    windows, blinks and head sway included, and the reference crop run time uses. ``mask``
    is the package's feather mask (the teacher's by default)."""
    from models.data import SynthTeacher
    from models.heldout import pad_silence

    teacher = SynthTeacher(augment_prob=0.5)
    rng = np.random.default_rng(cfg.seed)
    texts = teacher.sentences(cfg.utterances, cfg.seed)
    crops, windows, silent, closed = [], [], [], []
    for i, text in enumerate(texts):
        speech = teacher.speech(text, rng, augment=True)
        speech = pad_silence(speech, *rng.uniform(*cfg.pad_s, size=2))
        clip = render_clip(speech, rng, idle=True, keep_frames=False, face=face)
        w = mel_windows(speech.samples)
        n = min(len(clip.crops), len(w))
        crops.append(clip.crops[:n])
        windows.append(w[:n])
        silent.append(clip.params[:n, 0] < 0.02)
        closed.append(clip.params[:n, PRESS] > PRESSED)
        if progress is not None:
            progress("teacher frames", i + 1, len(texts))
    all_crops = np.concatenate(crops)
    box = face.mouth_box()
    reference = face.crop(face.render(np.asarray(REFERENCE_PARAMS, np.float32)), box)
    return PersonData(
        crops=all_crops,
        frames=np.arange(len(all_crops)),
        windows=np.concatenate(windows),
        silent=np.concatenate(silent),
        train=np.arange(len(all_crops)),
        heldout=np.zeros(0, np.int64),
        mask=np.array(face.feather_mask() if mask is None else mask, np.float32),
        reference=reference,
        focus=lip_focus(face),
        closed=np.concatenate(closed),
    )


def lip_focus(face: TeacherFace, gain: float = 3.0) -> np.ndarray:
    """(160, 160) loss weight: 1 everywhere, rising to ``1 + gain`` over the lips and the
    opening mouth. The mouth is a tenth of the masked crop; without this the skin around it
    dominates the loss and the opening is learnt last (slowest on pale, low-contrast faces)."""
    import cv2

    x0, y0, x1, _ = face.mouth_box()
    k = face.crop_size / (x1 - x0)
    s = face.scale
    zone = np.zeros((face.crop_size, face.crop_size), np.float32)
    left = (face.corner_l - 6.0 * s - x0) * k
    right = (face.corner_r + 6.0 * s - x0) * k
    top = (face.mouth_cy - 14.0 * s - y0) * k
    bottom = (face.mouth_cy + (MAX_GAP_PX + 12.0) * s - y0) * k
    centre = (round((left + right) / 2), round((top + bottom) / 2))
    axes = (max(round((right - left) / 2), 1), max(round((bottom - top) / 2), 1))
    cv2.ellipse(zone, centre, axes, 0.0, 0.0, 360.0, 1.0, -1)
    blurred = cv2.GaussianBlur(zone, (0, 0), 4.0)
    return np.asarray(1.0 + gain * blurred, np.float32)


def adapt_generator(
    base: dict[str, Any],
    data: PersonData,
    cfg: AdaptConfig,
    progress: Progress | None = None,
) -> tuple[Any, dict[str, float]]:
    """Fine-tune ``base`` (a package checkpoint) on ``data`` within ``cfg``'s steps and time
    budget; returns the run (:class:`models.finetune.Finetuner`) and its figures."""
    import torch

    from models.finetune import Finetuner

    tune_cfg = replace(
        FinetuneConfig(),
        steps=cfg.steps,
        lr=cfg.lr,
        batch=cfg.batch,
        seed=cfg.seed,
        holdout=0.0,
        closures=cfg.closures,
        hold_hearing=cfg.hold_hearing,
    )
    tuner = Finetuner(base, tune_cfg, torch.device("cpu"))
    started = time.monotonic()
    logs: dict[str, float] = {}
    while tuner.step < cfg.steps and time.monotonic() - started < cfg.budget_s:
        logs = tuner.train_step(data)
        if progress is not None:
            progress("adapting the model", tuner.step, cfg.steps)
    seconds = time.monotonic() - started
    return tuner, {"steps": float(tuner.step), "seconds": seconds, **logs}


def adapted_model(
    face: TeacherFace | None,
    cfg: AdaptConfig,
    work: Path,
    progress: Progress | None = None,
    mask: np.ndarray | None = None,
    real: PersonData | None = None,
) -> tuple[Path, Path, dict[str, float]]:
    """(ONNX file, checkpoint file, figures) of the generator adapted to ``face``, written to
    ``work``; ``real`` adds the person's own frames (a video). With no steps (or no face), the
    default's model unchanged."""
    default = default_avatar_dir()
    if cfg.steps <= 0 or face is None:
        unchanged = {"steps": 0.0, "seconds": 0.0, "frames": 0.0}
        return default / MODEL_FILE, default / CHECKPOINT_FILE, unchanged
    import torch

    from models.checkpoint import cpu_copy, load_checkpoint
    from models.export import export_generator

    data = teacher_material(face, cfg, progress, mask)
    if real is not None:
        data = merge(real, data)
    base = load_checkpoint(default / CHECKPOINT_FILE)
    tuner, figures = adapt_generator(base, data, cfg, progress)
    checkpoint = work / CHECKPOINT_FILE
    torch.save(tuner.package_checkpoint(base), checkpoint)
    onnx_path = work / MODEL_FILE
    export_generator(
        cpu_copy(tuner.generator, tuner.model_cfg), tuner.model_cfg.generator, onnx_path
    )
    return onnx_path, checkpoint, {**figures, "frames": float(len(data.crops))}


def merge(real: PersonData, teacher: PersonData) -> PersonData:
    """The person's own training frames (their real look, lighting and speech) with the
    teacher's animation of the same face (every mouth shape, many voices); the package's
    reference and mask. The real held-out tail stays out, for ``avatar train`` to judge on."""
    offset = len(real.crops)
    return PersonData(
        crops=np.concatenate([real.crops, teacher.crops]),
        frames=np.concatenate([real.frames, teacher.frames + int(real.frames.max()) + 1]),
        windows=np.concatenate([real.windows, teacher.windows]),
        silent=np.concatenate([real.silent, teacher.silent]),
        train=np.concatenate([real.train, teacher.train + offset]),
        heldout=np.zeros(0, np.int64),
        mask=real.mask,
        reference=real.reference,
        focus=teacher.focus,
        closed=np.concatenate([_closed(real), _closed(teacher)]),
    )


def _closed(data: PersonData) -> np.ndarray:
    return np.zeros(len(data.crops), bool) if data.closed is None else data.closed


class TrackedTeacher(TeacherFace):
    """The teacher with the mouth box that face tracking puts on a video's frames
    (:func:`models.tracking.observe`), so its crops are framed as the person's own are."""

    def box_centre(self) -> tuple[float, float]:
        from models.tracking import observe

        return observe(self.landmarks).centre

    @property
    def box_side(self) -> int:
        from models.tracking import observe

        width, height = self.frame_size
        return min(round(observe(self.landmarks).side), width, height)


def adapt_note(figures: dict[str, float], judged: str = "") -> str:
    """The summary line of an adaptation; ``judged`` is what the judge measured on a video's
    held-out end ("default -> adapted: ..."), or why no adaptation ran."""
    if figures["steps"] <= 0:
        why = judged or "--steps 0"
        return f"not adapted to this face ({why}): the default model draws the mouth"
    if figures.get("kept", 1.0) == 0.0:
        return (
            f"adaptation ({figures['steps']:.0f} steps) not kept: it did not beat the default "
            "model on the held-out end of the video" + (f" ({judged})" if judged else "")
        )
    return (
        f"adapted to this face: {figures['steps']:.0f} steps in {figures['seconds']:.0f} s "
        f"on {figures['frames']:.0f} frames"
        + (f" (held-out end of the video, {judged})" if judged else "")
    )
