"""The default avatar's whole recipe in one command.

    python -m models.recipe                    # ~25 minutes on a 2-core CPU
    python -m models.recipe --device cuda      # the same on a GPU, minutes
    python -m models.recipe --resume           # continue an interrupted run

Steps: build the teacher dataset (cached shards; an interrupted build resumes), train the
audio encoder, the SyncNet expert and the generator (resumable checkpoint), polish the
generator's lip closures (:mod:`models.polish`), export the generator to ONNX with the
parity check, and write the avatar package (default:
``models/default``) through :func:`models.avatar.write_avatar`. The time of each step and the
device are logged and stored as ``recipe.json`` next to the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.config import ModelConfig, TrainConfig
from models.data import BuildConfig, StandInTeacher, SynthTeacher, Teacher, build_dataset

log = logging.getLogger("models.recipe")
PACKAGE_DIR = Path(__file__).resolve().parent / "default"


@dataclass(frozen=True)
class Recipe:
    out: str = str(PACKAGE_DIR)
    work_dir: str = "build/default"
    device: str = "auto"
    render_utterances: int = 240
    audio_utterances: int = 1500
    audio_steps: int = 3000
    sync_steps: int = 600
    gen_steps: int = 3600
    gen_batch: int = 12
    polish_steps: int = 600  # the closure polish (models.polish); 0 skips it
    seed: int = 0
    workers: int = 2
    threads: int = 0
    fp16: bool = False
    resume: bool = False
    stand_in: bool = False  # the synthetic stand-in teacher: seconds, for smoke tests only


def _package_assets(teacher: Teacher, stand_in: bool) -> dict[str, Any]:
    if stand_in:
        reference, mask = teacher.assets()
        frame = np.zeros((512, 512, 3), np.uint8)
        frame[176:336, 176:336] = reference
        return {
            "frames": [frame],
            "boxes": np.array([[176, 176, 336, 336]]),
            "mask": mask,
            "reference": reference,
            "blink_frames": (),
        }
    from models.synth.clip import default_assets

    a = default_assets()
    frames = [np.asarray(f, np.uint8) for f in a["frames"]]
    box = np.asarray(a["boxes"] if "boxes" in a else a["box"], np.int64).reshape(-1, 4)
    boxes = np.repeat(box[:1], len(frames), axis=0) if len(box) != len(frames) else box
    return {
        "frames": frames,
        "boxes": boxes,
        "mask": np.asarray(a["mask"], np.float32),
        "reference": np.asarray(a["reference"], np.uint8),
        "blink_frames": tuple(a.get("blink_frames", range(1, len(frames)))),
    }


def run(recipe: Recipe) -> dict[str, Any]:
    import torch

    from models.avatar import write_avatar
    from models.export import export_onnx
    from models.matte import compute_matte
    from models.ownership import bundled_record
    from models.polish import PolishConfig, polish_checkpoint
    from models.train import resolve_device, train

    device = resolve_device(recipe.device)
    work = Path(recipe.work_dir)
    data_dir, run_dir = work / "data", work / "run"
    teacher: Teacher = StandInTeacher() if recipe.stand_in else SynthTeacher()
    times: dict[str, float] = {}
    started = time.monotonic()

    t0 = time.monotonic()
    log.info("building the dataset in %s", data_dir)
    meta = build_dataset(
        data_dir,
        BuildConfig(
            render_utterances=recipe.render_utterances,
            audio_utterances=recipe.audio_utterances,
            seed=recipe.seed,
            workers=recipe.workers,
        ),
        teacher,
    )
    times["data"] = time.monotonic() - t0

    t0 = time.monotonic()
    if recipe.threads > 0:
        torch.set_num_threads(recipe.threads)
    cfg = ModelConfig(
        train=TrainConfig(
            data_dir=str(data_dir),
            seed=recipe.seed,
            audio_steps=recipe.audio_steps,
            sync_steps=recipe.sync_steps,
            gen_steps=recipe.gen_steps,
            gen_batch=recipe.gen_batch,
            threads=recipe.threads,
        )
    )
    log.info(
        "training on %s (torch %s, %d threads)", device, torch.__version__, torch.get_num_threads()
    )
    checkpoint = train(cfg, run_dir, str(device), resume=recipe.resume)
    times["train"] = time.monotonic() - t0

    t0 = time.monotonic()
    slim = polish_checkpoint(
        checkpoint,
        checkpoint,
        run_dir / "generator.pt",
        PolishConfig(steps=recipe.polish_steps, seed=recipe.seed),
        device=str(device),
    )
    times["polish"] = time.monotonic() - t0

    t0 = time.monotonic()
    onnx_path = run_dir / "generator.onnx"
    parity = export_onnx(slim, onnx_path, fp16=recipe.fp16)
    assets = _package_assets(teacher, recipe.stand_in)
    package = write_avatar(
        recipe.out,
        name="default",
        kind="photo",
        frames=assets["frames"],
        boxes=assets["boxes"],
        mask=assets["mask"],
        reference=assets["reference"],
        model=onnx_path,
        checkpoint=slim,
        blink_frames=assets["blink_frames"],
        matte=compute_matte(np.asarray(assets["frames"])),
    )
    bundled_record(package)  # whose face it is: shipped with the package (models.ownership)
    times["export"] = time.monotonic() - t0
    times["total"] = time.monotonic() - started

    report = {
        "recipe": asdict(recipe),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "frames": {
            "render_shards": len(meta["render_shards"]),
            "audio_shards": len(meta["audio_shards"]),
        },
        "parity_max_abs_diff": parity,
        "package": str(package),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (run_dir / "recipe.json").write_text(json.dumps(report, indent=1))
    log.info("done in %.1f min on %s: %s", times["total"] / 60, device, json.dumps(times))
    return report


def parse_args(argv: list[str] | None = None) -> Recipe:
    d = Recipe()
    p = argparse.ArgumentParser(prog="python -m models.recipe", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=d.out, help="avatar package directory to write")
    p.add_argument("--work-dir", default=d.work_dir, help="dataset cache and checkpoints")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--utterances",
        type=int,
        default=d.render_utterances,
        help="rendered utterances (video frames for the generator)",
    )
    p.add_argument(
        "--audio-utterances",
        type=int,
        default=d.audio_utterances,
        help="audio-only utterances for the audio encoder",
    )
    p.add_argument("--steps", type=int, default=d.gen_steps, help="generator steps")
    p.add_argument("--audio-steps", type=int, default=d.audio_steps)
    p.add_argument("--sync-steps", type=int, default=d.sync_steps)
    p.add_argument("--batch", type=int, default=d.gen_batch, help="generator batch size")
    p.add_argument(
        "--polish-steps", type=int, default=d.polish_steps, help="closure polish steps (0: none)"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers, help="dataset build processes")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (0: default)")
    p.add_argument("--fp16", action="store_true", help="export the ONNX model in half precision")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--stand-in", action="store_true", help="synthetic teacher (smoke test)")
    a = p.parse_args(argv)
    return replace(
        d,
        out=a.out,
        work_dir=a.work_dir,
        device=a.device,
        render_utterances=a.utterances,
        audio_utterances=a.audio_utterances,
        gen_steps=a.steps,
        audio_steps=a.audio_steps,
        sync_steps=a.sync_steps,
        gen_batch=a.batch,
        polish_steps=a.polish_steps,
        seed=a.seed,
        workers=a.workers,
        threads=a.threads,
        fp16=a.fp16,
        resume=a.resume,
        stand_in=a.stand_in,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
