"""``avatar create NAME --video FILE``: a video twin from a person's talking video.

A video is read twice, streamed (never all frames in memory): pass 1 tracks the face at
640 px and keeps a few numbers per frame; then boxes are smoothed, short face-lost gaps filled
and long ones left out, the idle loop chosen (silent and still); pass 2 cuts the mouth crops
for training and keeps the loop's frames at up to 1280 px. The generator is then adapted to
the person (their own frames and speech, with the teacher's animation of the same face), the
self-check measures the package, and it is renamed into place. ``person/`` keeps the material
for ``avatarcast avatar train``.

The minimum is 5 s of video with a tracked face: 2 s for the idle loop, the rest so that the
loop can be silent and there is speech to take the reference mouth (and to train) from.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.adapt import AdaptConfig, adapt_note, adapted_model
from models.audio import FPS, SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from models.avatar import CHECKPOINT_FILE, MODEL_FILE, default_avatar_dir, write_avatar
from models.create import CreateError, CreateReport, Progress
from models.matte import compute_matte
from models.selfcheck import Checker, install_checked
from models.tracking import FaceObservation, FaceTracker, Track, landmark_mask, smooth_track
from models.videoio import CropWriter, VideoError, VideoInfo, iter_frames, probe, scaled_size

MIN_SECONDS = 5.0
MAX_SECONDS = 600.0  # longer videos: the first 10 minutes are used
TRACK_SIDE = 640  # Face Mesh works at 192-256 px inside; more only costs time
FRAME_SIDE = 1280  # the avatar's frames: sessions hold the loop in memory
LOOP_FRAMES = (50, 100)  # idle loop 2-4 s, played forwards and backwards
CROP = 160
SMALL_FACE_PX = 160


def create_video_avatar(
    name: str,
    path: Path,
    target: Path,
    progress: Progress,
    adapt: AdaptConfig | None,
    check: Checker | None,
) -> CreateReport:
    started = time.perf_counter()
    info, warnings = _probe(path)
    samples = _speech(path)
    observations = _observe(path, min(int(MAX_SECONDS * FPS), info.frames_25) or 0, progress)
    track, seen = _checked_track(observations, path)
    n, used = len(observations), int(track.valid.sum())
    track_w, _ = scaled_size(info.width, info.height, TRACK_SIDE)
    face_px = track.sides[track.valid] * info.width / track_w
    warnings += _track_warnings(track, seen, face_px)
    silent = _silent(_frame_energy_db(samples, n))
    loop, loop_note = pick_idle_loop(track, silent)
    warnings += [loop_note] if loop_note else []
    frame_w, frame_h = scaled_size(info.width, info.height, FRAME_SIDE)
    boxes = track.boxes(frame_w / track_w, frame_w, frame_h)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".create-", dir=target.parent) as tmp:
        person = Path(tmp)
        loop_frames, reference = _cut(
            path, track, boxes, loop, _reference_index(track, silent, loop), person, progress
        )
        np.save(person / "audio.npy", _to_int16(samples[: n * SAMPLES_PER_VIDEO_FRAME]))
        np.savez(
            person / "track.npz",
            valid=track.valid,
            seen=track.seen,
            boxes=boxes,
            opening=track.opening,
            silent=silent,
            frame_size=np.array([frame_w, frame_h]),
        )
        loop_points = [o.mask_points for o in observations[loop[0] : loop[1]] if o is not None]
        speech_points = [o.mask_points for o in seen[:: max(1, len(seen) // 200)]]
        default = default_avatar_dir()
        staged = write_avatar(
            person / name,
            name=name,
            kind="video",
            frames=loop_frames,
            boxes=boxes[loop[0] : loop[1]],
            mask=landmark_mask(loop_points + speech_points, CROP),
            reference=reference,
            model=default / MODEL_FILE,
            checkpoint=default / CHECKPOINT_FILE,
            frame_format="jpg",
            extras={f"person/{f}": person / f for f in ("crops.mp4", "audio.npy", "track.npz")},
            matte=compute_matte(np.asarray(loop_frames)),
        )
        figures, judged = _adapt_to_video(
            staged, loop_frames[0], person, adapt or AdaptConfig(), progress
        )
        notes = [adapt_note(figures, judged)]
        verdict = install_checked(staged, target, check, path)
    if verdict is not None:
        warnings += verdict.warnings
        notes += verdict.lines()
    return CreateReport(
        name=name,
        path=target,
        kind="video",
        frames_total=n,
        frames_used=used,
        face_px=float(np.median(face_px)),
        frame_size=(frame_w, frame_h),
        loop=loop,
        interpolated=track.interpolated,
        left_out=track.long_gaps,
        warnings=tuple(warnings),
        seconds=time.perf_counter() - started,
        notes=tuple(notes),
        check=verdict.figures if verdict is not None else None,
    )


def _probe(path: Path) -> tuple[VideoInfo, list[str]]:
    """The video's streams, refused without audio or when too short; a warning when long."""
    try:
        info = probe(path)
    except VideoError as exc:
        raise CreateError(str(exc)) from None
    if not info.has_audio:
        raise CreateError(
            f"{path} has no audio track: a video twin learns from the person's own speech, so "
            "use a video of them talking with its sound (or make a photo avatar with --image)"
        )
    if 0 < info.duration_s < MIN_SECONDS:
        raise CreateError(_too_short(info.duration_s))
    warnings = []
    if info.duration_s > MAX_SECONDS:
        warnings.append(f"the video is {info.duration_s / 60:.0f} min long: used its first 10 min")
    return info, warnings


def _observe(path: Path, total: int, progress: Progress) -> list[FaceObservation | None]:
    """Pass 1: the face tracked in every frame (None where it is not found)."""
    observations: list[FaceObservation | None] = []
    with FaceTracker() as tracker:
        for k, rgb in iter_frames(path, TRACK_SIDE, int(MAX_SECONDS * FPS)):
            observations.append(tracker.track(rgb))
            if k % 10 == 0:
                progress("tracking", k, max(total, k))
    return observations


def _checked_track(
    observations: list[FaceObservation | None], path: Path
) -> tuple[Track, list[FaceObservation]]:
    """The smoothed track and the frames with a face, or why the video cannot be used."""
    n = len(observations)
    if n / FPS < MIN_SECONDS:
        raise CreateError(_too_short(n / FPS))
    seen = [o for o in observations if o is not None]
    if len(seen) < 0.1 * n:
        raise CreateError(
            f"no face found in {path} ({len(seen)} of {n} frames): film the face from the front"
        )
    if sum(o.ambiguous for o in seen) >= 0.5 * len(seen):
        raise CreateError(
            f"{path} shows several faces of about the same size: cut it to one person"
        )
    track = smooth_track(observations)
    used = int(track.valid.sum())
    if used / FPS < MIN_SECONDS:
        raise CreateError(
            f"the face is tracked in only {used / FPS:.1f} s of {path}: "
            f"at least {MIN_SECONDS:.0f} s are needed (2 s of idle loop plus speech)"
        )
    return track, seen


def _track_warnings(track: Track, seen: list[FaceObservation], face_px: np.ndarray) -> list[str]:
    warnings = []
    small = float(np.mean(face_px < SMALL_FACE_PX))
    if small > 0.05:
        warnings.append(f"face smaller than {SMALL_FACE_PX} px in {small:.0%} of frames")
    if track.long_gaps:
        lost = sum(b - a for a, b in track.long_gaps)
        warnings.append(
            f"face lost in {len(track.long_gaps)} stretch(es), {lost / FPS:.1f} s left out"
        )
    if sum(o.faces > 1 for o in seen) > 0.05 * len(seen):
        warnings.append("several faces seen: the largest one was used")
    return warnings


def _cut(
    path: Path,
    track: Track,
    boxes: np.ndarray,
    loop: tuple[int, int],
    reference_index: int,
    person: Path,
    progress: Progress,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Pass 2: the mouth crops of every tracked frame (``person/crops.mp4``), the idle loop's
    frames and the reference crop."""
    n = len(track.valid)
    loop_frames: list[np.ndarray] = []
    reference: np.ndarray | None = None
    with CropWriter(person / "crops.mp4", CROP) as crops:
        for k, rgb in iter_frames(path, FRAME_SIDE, n):
            if track.valid[k]:
                crop = _crop(rgb, boxes[k])
                crops.write(crop)
                if k == reference_index:
                    reference = crop
            if loop[0] <= k < loop[1]:
                loop_frames.append(rgb.copy())
            if k % 10 == 0:
                progress("cutting", k, n)
    progress("cutting", n, n)
    if len(loop_frames) != loop[1] - loop[0] or reference is None:
        raise CreateError(f"{path} decoded differently the second time (corrupt file?)")
    return loop_frames, reference


def _adapt_to_video(
    staged: Path, frame: np.ndarray, work: Path, cfg: AdaptConfig, progress: Progress
) -> tuple[dict[str, float], str]:
    """Adapt the staged package's generator to the person: their own frames and speech (the
    held-out tail left out) with the teacher's animation of the loop's first frame. The frame
    and its landmarks stay in the package (eval's teacher). Without a face in that frame, or
    with no steps, the default model stays. Returns the figures, and what the judge measured
    (or why nothing was adapted)."""
    from models.adapt import TrackedTeacher
    from models.avatar import TEACHER_LANDMARKS, TEACHER_PHOTO, read_avatar
    from models.person import FinetuneError, load_person

    skipped = {"steps": 0.0, "seconds": 0.0, "frames": 0.0}
    with FaceTracker(max_faces=1, video=False) as tracker:
        faces = tracker.landmarks(frame)
    if not faces:
        return skipped, "no face found in the idle loop's first frame"
    landmarks = faces[0]
    (staged / TEACHER_PHOTO).parent.mkdir(exist_ok=True)
    cv2.imwrite(str(staged / TEACHER_PHOTO), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    np.save(staged / TEACHER_LANDMARKS, landmarks)
    if cfg.steps <= 0:
        return skipped, ""
    avatar = read_avatar(staged)
    try:
        real = load_person(avatar)
    except FinetuneError as exc:
        return skipped, str(exc)
    # The teacher animates a square around the face only: a 1280 px frame costs 5x more.
    side = 4.0 * float(np.hypot(*(landmarks[263] - landmarks[33])))
    x0, y0 = (max(int(v - side / 2), 0) for v in landmarks[:, :2].mean(axis=0))
    patch = np.ascontiguousarray(frame[y0 : y0 + int(side), x0 : x0 + int(side)])
    face = TrackedTeacher(patch, landmarks - np.array([x0, y0], np.float32))
    model, checkpoint, figures = adapted_model(face, cfg, work, progress, avatar.mask, real)
    if figures["steps"] <= 0:
        return figures, ""
    old, new = _judge(avatar, real, checkpoint)
    judged = (
        "default -> adapted: "
        f"lip sync r {old.show('r', 2)} -> {new.show('r', 2)}, "
        f"aperture miss {old.show('miss', 2)} -> {new.show('miss', 2)}, "
        f"mouth PSNR {old.show('psnr_db', 1)} -> {new.show('psnr_db', 1)} dB"
    )
    if new.better_than(old):
        shutil.copyfile(model, staged / MODEL_FILE)
        shutil.copyfile(checkpoint, staged / CHECKPOINT_FILE)
    else:
        figures = {**figures, "kept": 0.0}
    return figures, judged


def _judge(avatar: Any, real: Any, checkpoint: Path) -> tuple[Any, Any]:
    """The default's and the adapted model's scores on the held-out tail of the person's own
    video (the judge ``avatar train`` uses): a video unlike the teacher's animation of its
    first frame (light that changes, say) can make adaptation a loss, and then it is dropped."""
    from models.checkpoint import generator_from_checkpoint, load_checkpoint
    from models.person_eval import evaluate_generators

    models = {
        "old": generator_from_checkpoint(load_checkpoint(default_avatar_dir() / CHECKPOINT_FILE)),
        "new": generator_from_checkpoint(load_checkpoint(checkpoint)),
    }
    scores = evaluate_generators(avatar, real, models)
    return scores["old"], scores["new"]


def _too_short(seconds: float) -> str:
    return (
        f"the video is {seconds:.1f} s long: at least {MIN_SECONDS:.0f} s of the face are needed "
        "(2 s of silent idle loop plus speech); a minute or more gives better results"
    )


def _speech(path: Path) -> np.ndarray:
    from models.media import AudioDecodeError, decode_audio

    limit = int(MAX_SECONDS * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    got = 0
    try:
        for chunk in decode_audio(path):
            chunks.append(chunk)
            got += len(chunk)
            if got >= limit:
                break
    except AudioDecodeError as exc:
        raise CreateError(f"the audio track of {path} cannot be used: {exc}") from None
    if not got:
        raise CreateError(f"{path} has an empty audio track")
    return np.concatenate(chunks)[:limit]


def _frame_energy_db(samples: np.ndarray, n: int) -> np.ndarray:
    """Speech level per 40 ms video frame, dB full scale."""
    padded = np.zeros(n * SAMPLES_PER_VIDEO_FRAME, np.float32)
    m = min(len(samples), len(padded))
    padded[:m] = samples[:m]
    rms = np.sqrt(np.mean(padded.reshape(n, -1) ** 2, axis=1))
    return np.asarray(20.0 * np.log10(rms + 1e-6), np.float64)


def _silent(energy_db: np.ndarray) -> np.ndarray:
    """Frames quieter than a third of the way from the noise floor to the speech level."""
    floor, peak = np.percentile(energy_db, [10, 95])
    if peak - floor < 10.0:  # no contrast: all speech or all noise
        return np.full(len(energy_db), peak < -45.0)
    silent = energy_db < floor + 0.33 * (peak - floor)
    # A pause shorter than 0.2 s is part of speech.
    quiet = cv2.erode(silent.astype(np.uint8)[None], np.ones((1, 5), np.uint8))[0]
    return np.asarray(quiet, bool)


def pick_idle_loop(track: Track, silent: np.ndarray) -> tuple[tuple[int, int], str]:
    """[start, end) of the stillest silent stretch of 2-4 s of tracked frames, and a warning
    when there is no silent one (the quietest is taken)."""
    n = len(track.valid)
    motion = np.zeros(n)
    centre_step = np.hypot(*np.diff(track.centres, axis=0).T) / track.sides[1:]
    motion[1:] = np.nan_to_num(centre_step, nan=1.0)
    opening = np.nan_to_num(track.opening, nan=1.0)
    best: tuple[float, int, int] | None = None
    for length in (LOOP_FRAMES[1], 75, LOOP_FRAMES[0]):
        for start in range(0, n - length + 1, 5):
            window = slice(start, start + length)
            if not track.valid[window].all():
                continue
            loud = 1.0 - float(silent[window].mean())
            cost = 20.0 * loud + 50.0 * float(motion[window].mean()) + float(opening[window].mean())
            if best is None or cost < best[0]:
                best = (cost, start, start + length)
        if best is not None and best[0] < 5.0:
            break
    if best is None:
        raise CreateError("no 2 s stretch with the face tracked throughout: film it steadily")
    _, start, end = best
    note = ""
    if silent[start:end].mean() < 0.9:
        note = "no silent 2 s stretch found: the idle loop has speech in it (pause when filming)"
    return (start, end), note


def _reference_index(track: Track, silent: np.ndarray, loop: tuple[int, int]) -> int:
    """A speaking frame with the mouth moderately open (the generator's reference shows the
    teeth and lips); the loop's first frame when there is no speech."""
    speaking = np.flatnonzero(track.seen & ~silent)
    if len(speaking) == 0:
        return loop[0]
    opening = track.opening[speaking]
    target = np.percentile(opening, 75)
    return int(speaking[int(np.argmin(np.abs(opening - target)))])


def _crop(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in box)
    crop = rgb[y0:y1, x0:x1]
    interp = cv2.INTER_AREA if x1 - x0 > CROP else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(crop, (CROP, CROP), interpolation=interp))


def _to_int16(samples: np.ndarray) -> np.ndarray:
    return np.asarray(np.clip(np.rint(samples * 32767.0), -32768, 32767), np.int16)
