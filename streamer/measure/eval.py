"""``avatarcast eval``: lip-sync and image-quality figures on voices and sentences never trained on.

For each case (a held-out sentence spoken by a held-out voice) the avatar's video comes from
the server's own frame path (:func:`streamer.render.generate_frames`), and the teacher
renders the same speech. Independent face landmarks (MediaPipe Face Mesh) measure the mouth
aperture of both:

- ``r``, ``lag_ms``: Pearson correlation of aperture with the phoneme-derived openness
  (:func:`models.synth.visemes.openness`) at the best lag within +-200 ms (5 ms steps, all
  cases pooled); a positive lag means the mouth moves after the sound.
- ``bilabial_closed``: the fraction of P/B/M phones during which the lips close, i.e. the
  aperture of some frame overlapping the phone falls below a threshold calibrated on the
  teacher's frames whose mouth is rendered fully closed.
- ``stillness``: std of aperture inside pauses (silences longer than 200 ms, without their
  first and last 80 ms) over std of aperture during speech. 0 is a perfectly still mouth.
- ``psnr_db``, ``ssim``: the mouth crop against the teacher's crop of the same speech, over
  the pixels the generator replaces (feather mask > 0.05); only for the default avatar, whose
  face is the teacher's.

Then (``recorded``, unless ``--no-recorded``) the same lip-sync figures on recorded human speech
(:mod:`models.recorded`): real voices through real microphones, which no training voice is.

The teacher's figures are the ceiling of the measure itself. Both sides are rendered without
idle motion (still head, open eyes): motion is the compositor's business, not lip sync's.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.audio import SAMPLES_PER_VIDEO_FRAME
from models.heldout import EVAL_SEED, N_CASES, select_speech, stderr_progress
from models.lipsync import (
    ApertureMeter,
    Progress,
    Track,
    closed_threshold,
    rounded,
    summarise,
)
from models.quality import detail_energy, mouth_crop, region_quality
from models.recorded import recorded_speech
from streamer.config import Settings
from streamer.engine.factory import make_backend
from streamer.render import generate_frames

# --- running --------------------------------------------------------------------------------


def _chunks(samples: np.ndarray, size: int = 4000) -> Iterator[np.ndarray]:
    for start in range(0, len(samples), size):
        yield samples[start : start + size]


@dataclass(frozen=True)
class CaseResult:
    generated: Track
    teacher: Track
    teacher_open: np.ndarray  # the teacher's rendered open parameter per frame
    psnr_db: float | None
    ssim: float | None
    detail: float  # mean high-frequency energy of the generated mouth crops


def measure_case(
    speech: Any,
    avatar: Any,
    backend: Any,
    compare: bool,
    seed: int,
    face: Any = None,
) -> CaseResult:
    """Both videos of one utterance through the landmark meter, crops compared on the way.

    ``face`` is the avatar's :class:`models.synth.face.TeacherFace` (the default's when None);
    with ``compare`` the generated crops are compared with the teacher's, pixel for pixel.
    """
    from models.synth.clip import render_clip

    n = -(-len(speech.samples) // SAMPLES_PER_VIDEO_FRAME)
    rng = np.random.default_rng(seed)
    clip = render_clip(speech, rng, idle=False, keep_frames=True, face=face)
    if clip.frames is None:
        raise RuntimeError("the teacher returned no frames")
    teacher_frames: Iterable[np.ndarray] = clip.frames
    teacher_ap = np.full(n, np.nan)
    box = avatar.boxes[0]
    teacher_crops = []
    with ApertureMeter() as meter:
        for k, frame in enumerate(teacher_frames):
            teacher_ap[k] = meter.measure(frame)
            if compare:
                teacher_crops.append(mouth_crop(frame, box, avatar.crop_size))
    generated_ap = np.full(n, np.nan)
    psnrs: list[float] = []
    ssims: list[float] = []
    details: list[float] = []
    count = 0
    with ApertureMeter() as meter:
        frames = generate_frames(avatar, backend, _chunks(speech.samples), idle=False, seed=seed)
        for k, frame in enumerate(frames):
            generated_ap[k] = meter.measure(frame)
            crop = mouth_crop(frame, avatar.boxes[0], avatar.crop_size)
            details.append(detail_energy(crop, avatar.mask))
            if compare:
                psnr, ssim = region_quality(crop, teacher_crops[k], avatar.mask)
                psnrs.append(psnr)
                ssims.append(ssim)
            count = k + 1
    if count != n:
        raise RuntimeError(f"the runtime made {count} frames for {n} expected")
    phones = tuple(speech.phones)
    return CaseResult(
        generated=Track(generated_ap, phones),
        teacher=Track(teacher_ap, phones),
        teacher_open=np.asarray(clip.params)[:, 0],
        psnr_db=float(np.mean(psnrs)) if psnrs else None,
        ssim=float(np.mean(ssims)) if ssims else None,
        detail=float(np.mean(details)),
    )


def case_threshold(results: Sequence[CaseResult]) -> float:
    """The closed-lip threshold, calibrated on the teacher's renders of all ``results``."""
    teacher_ap = np.concatenate([r.teacher.aperture for r in results])
    teacher_open = np.concatenate([r.teacher_open for r in results])
    return closed_threshold(teacher_ap, teacher_open)


def real_detail(avatar: Any) -> float:
    """High-frequency energy of the real mouth region: the avatar's base frames, which are the
    person's own pixels (a photo's with its mouth closed by the teacher's warp)."""
    frames = list(avatar.frames[: min(len(avatar.frames), 8)])
    box, size = avatar.boxes[0], avatar.crop_size
    return float(np.mean([detail_energy(mouth_crop(f, box, size), avatar.mask) for f in frames]))


def run_eval(
    avatar_name: str = "default",
    backend_name: str = "auto",
    n_cases: int = N_CASES,
    progress: Progress = stderr_progress,
    avatar: Any = None,
    model_path: Any = None,
    recorded: bool = False,
    cases: list[tuple[str, CaseResult]] | None = None,
) -> dict[str, Any]:
    """Evaluate an avatar (by name, or a loaded ``avatar``); the INTERFACE.md object, plus
    ``image.sharpness`` (figures that cannot be measured are null). ``model_path`` replaces
    the avatar's ONNX model (the INT8 gate measures its candidate this way). With
    ``recorded``, a ``recorded`` object gives the lip-sync figures on recorded human speech
    (:mod:`models.recorded`), judged with the same closed-lip threshold. ``cases``, where
    given, receives each held-out case's voice and result (:mod:`streamer.measure.voices`)."""
    from models.avatar import load_avatar
    from models.synth.clip import avatar_teacher

    started = time.perf_counter()
    avatar = avatar if avatar is not None else load_avatar(avatar_name, Settings.from_env().home)
    backend = make_backend(backend_name, avatar, model_path=model_path)
    face = avatar_teacher(avatar)
    # Only an avatar standing on one still frame matches the teacher pixel for pixel.
    compare = face is not None and avatar.manifest.kind == "photo"
    speeches = select_speech(n_cases, progress=progress)
    results = []
    for i, speech in enumerate(speeches):
        results.append(measure_case(speech, avatar, backend, compare, EVAL_SEED + i, face))
        if cases is not None:
            cases.append((speech.voice.name, results[-1]))
        progress(
            f"case {i + 1}/{len(speeches)}: {speech.voice.name}, {speech.duration:.1f} s "
            f"({time.perf_counter() - started:.0f} s)"
        )
    heard = []  # the recorded cases
    for i, speech in enumerate(recorded_speech() if recorded else []):
        heard.append(measure_case(speech, avatar, backend, False, EVAL_SEED + 1000 + i, face))
        progress(
            f"recorded {i + 1}: {speech.voice.name}, {speech.duration:.1f} s "
            f"({time.perf_counter() - started:.0f} s)"
        )
    threshold = case_threshold(results)
    psnr = [r.psnr_db for r in results if r.psnr_db is not None]
    real = real_detail(avatar)
    ssim = [r.ssim for r in results if r.ssim is not None]
    out = {
        "avatar": avatar.name,
        "cases": len(results),
        "lipsync": summarise([r.generated for r in results], threshold),
        "image": {
            "psnr_db": rounded(float(np.mean(psnr)), 2) if psnr else None,
            "ssim": rounded(float(np.mean(ssim)), 4) if ssim else None,
            "sharpness": rounded(float(np.mean([r.detail for r in results])) / real, 3)
            if real > 0
            else None,
        },
        "teacher": summarise([r.teacher for r in results], threshold),
    }
    if heard:
        out["recorded"] = {
            "cases": len(heard),
            "lipsync": summarise([r.generated for r in heard], threshold),
            "teacher": summarise([r.teacher for r in heard], threshold),
        }
    progress(f"done in {time.perf_counter() - started:.0f} s (closed below {threshold:.4f})")
    return out


def format_text(result: dict[str, Any]) -> str:
    ls, tr, im = result["lipsync"], result["teacher"], result["image"]
    rows = [
        f"avatar {result['avatar']}: {result['cases']} held-out cases",
        f"{'':18}{'avatar':>10}{'teacher':>10}",
    ]
    for key in ("r", "lag_ms", "bilabial_closed", "stillness"):
        rows.append(f"{key:18}{_fmt(ls[key]):>10}{_fmt(tr[key]):>10}")
    rows.append(f"{'psnr_db':18}{_fmt(im['psnr_db']):>10}")
    rows.append(f"{'ssim':18}{_fmt(im['ssim']):>10}")
    rows.append(f"{'sharpness':18}{_fmt(im.get('sharpness')):>10}")
    if "recorded" in result:
        rec = result["recorded"]
        rows.append(f"recorded human speech: {rec['cases']} cases")
        for key in ("r", "lag_ms", "bilabial_closed", "stillness"):
            rows.append(f"{key:18}{_fmt(rec['lipsync'][key]):>10}{_fmt(rec['teacher'][key]):>10}")
    return "\n".join(rows)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"


MAX_CASES = 96


def _cases(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= n <= MAX_CASES:
        raise argparse.ArgumentTypeError(f"{n} cases: give 1 to {MAX_CASES}")
    return n


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="avatarcast eval", description=__doc__)
    parser.add_argument("--avatar", default="default")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--cases",
        type=_cases,
        default=N_CASES,
        help=f"held-out synthetic cases (default {N_CASES}, at most {MAX_CASES}); more cases "
        "narrow the p/b/m figure's sampling error (about 3 points on 12 cases)",
    )
    parser.add_argument(
        "--no-recorded",
        action="store_true",
        help="skip the recorded human speech (the synthetic held-out voices only)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run_eval(args.avatar, args.backend, args.cases, recorded=not args.no_recorded)
    print(json.dumps(result) if args.json else format_text(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
