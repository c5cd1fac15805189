"""``avatarcast bench-watermark``: how well the invisible mark survives, and what it costs.

It renders a few seconds of the avatar speaking (the offline render path), marks the frames
as a session would, and sends both the marked and the unmarked frames through each case:

- ``vp8`` / ``h264``: the session's own encoders (:mod:`streamer.pipeline.codecs`) at their
  default bit rate, and at half of it;
- ``h264-half+resize50``: that, decoded and resized to 50 %;
- ``h264-half+resize50+h264-quarter``: that, encoded again with H.264 at a quarter of the
  default rate (a platform's lower rendition).

For each case it reads every 2 s window (50 frames, stepping one frame, so windows overlap)
and reports the share of marked windows that decode to the right payload, their bit errors,
the confidence, and how many windows of the unmarked video were (wrongly) found marked. The
cost is the marking's CPU time per frame (thread time, so other load does not count) and
the PSNR of marked against unmarked frames.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from models.avatar import load_avatar
from streamer.config import Settings
from streamer.engine import make_backend
from streamer.pipeline.codecs import VIDEO_BITRATE, VideoCodec, VideoEncoder
from streamer.pipeline.provenance import Provenance
from streamer.pipeline.watermark import Payload, decide, frame_statistic
from streamer.render import generate_frames
from streamer.verify import WINDOW

Transform = Callable[[list[np.ndarray]], list[np.ndarray]]


def speech(seconds: float) -> np.ndarray:
    """A voiced tone switching on and off three times a second: the mouth keeps moving."""
    t = np.arange(int(16_000 * seconds)) / 16_000
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)


def through(codec: VideoCodec, bitrate: int) -> Transform:
    """Frames encoded by the session's encoder for ``codec`` at ``bitrate`` and decoded."""

    def run(frames: list[np.ndarray]) -> list[np.ndarray]:
        encoder = VideoEncoder(codec, bitrate)
        decoder = av.CodecContext.create("libvpx" if codec == "vp8" else "h264", "r")
        out: list[np.ndarray] = []
        for i, rgb in enumerate(frames):
            data, _ = encoder.encode(np.ascontiguousarray(rgb), keyframe=i == 0)
            if data is not None:
                out += [d.to_ndarray(format="rgb24") for d in decoder.decode(av.Packet(data))]
        return out

    return run


def resized(scale: float) -> Transform:
    def run(frames: list[np.ndarray]) -> list[np.ndarray]:
        return [
            cv2.resize(f, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for f in frames
        ]

    return run


def cases() -> dict[str, list[Transform]]:
    half = VIDEO_BITRATE // 2
    return {
        "vp8": [through("vp8", VIDEO_BITRATE)],
        "vp8-half": [through("vp8", half)],
        "h264": [through("h264", VIDEO_BITRATE)],
        "h264-half": [through("h264", half)],
        "h264-half+resize50": [through("h264", half), resized(0.5)],
        "h264-half+resize50+h264-quarter": [
            through("h264", half),
            resized(0.5),
            through("h264", VIDEO_BITRATE // 4),
        ],
    }


def windows(frames: list[np.ndarray], expected: Payload) -> dict[str, Any]:
    """Every 2 s window, stepping one frame: how many carry ``expected``, found marked at all,
    and their bit errors and confidence."""
    stats = [frame_statistic(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)) for f in frames]
    sums = np.cumsum([np.zeros_like(stats[0][0]), *(s for s, _ in stats)], axis=0)
    scales = np.cumsum([0.0, *(c for _, c in stats)])
    truth = expected.bits() > 0
    right = marked = 0
    errors: list[int] = []
    confidence: list[float] = []
    for start in range(len(frames) - WINDOW + 1):
        end = start + WINDOW
        reading = decide(sums[end] - sums[start], scales[end] - scales[start], WINDOW)
        right += reading.payload == expected
        marked += reading.marked
        errors.append(int(np.sum(reading.bits != truth)))
        confidence.append(reading.confidence)
    n = max(1, len(errors))
    return {
        "windows": len(errors),
        "found_right": right,
        "found_rate": round(right / n, 4),
        "found_any": marked,
        "bit_errors_mean": round(float(np.mean(errors)), 2) if errors else None,
        "bit_errors_max": max(errors) if errors else None,
        "confidence_mean": round(float(np.mean(confidence)), 2) if confidence else None,
        "confidence_min": round(float(np.min(confidence)), 2) if confidence else None,
        "confidence_max": round(float(np.max(confidence)), 2) if confidence else None,
    }


def measure(seconds: float = 10.0, avatar_name: str | None = None) -> dict[str, Any]:
    settings = Settings.from_env(avatar=avatar_name)
    avatar = load_avatar(settings.avatar, settings.home)
    backend = make_backend("onnx", avatar, threads=settings.threads)
    print(f"rendering {seconds:.0f} s of {avatar.name}", file=sys.stderr)
    plain = list(generate_frames(avatar, backend, speech(seconds)))
    provenance = Provenance(avatar.name, "bench-watermark")
    marked = [f.copy() for f in plain]
    provenance.apply(marked[0].copy())  # the per-size model, built once per session
    started = time.thread_time()
    for f in marked:
        provenance.apply(f)
    cost_ms = 1000 * (time.thread_time() - started) / len(marked)
    mse = np.mean(
        [np.mean((m.astype(np.float32) - p) ** 2) for m, p in zip(marked, plain, strict=True)]
    )
    result: dict[str, Any] = {
        "avatar": avatar.name,
        "frames": len(plain),
        "size": list(plain[0].shape[1::-1]),
        "mark_cpu_ms_per_frame": round(cost_ms, 3),
        "psnr_db": round(float(10 * np.log10(255**2 / mse)), 2),
        "cases": {},
    }
    for name, steps in cases().items():
        print(f"case {name}", file=sys.stderr)
        seen, clean = marked, plain
        for step in steps:
            seen, clean = step(seen), step(clean)
        result["cases"][name] = {
            "marked": windows(seen, provenance.payload),
            "unmarked": windows(clean, provenance.payload),
        }
    result["false_positive_windows"] = sum(
        c["unmarked"]["found_any"] for c in result["cases"].values()
    )
    result["unmarked_windows"] = sum(c["unmarked"]["windows"] for c in result["cases"].values())
    return result


def format_text(result: dict[str, Any]) -> str:
    lines = [
        f"avatar {result['avatar']}, {result['frames']} frames at "
        f"{result['size'][0]}x{result['size'][1]}: marking {result['mark_cpu_ms_per_frame']} ms "
        f"CPU per frame, PSNR {result['psnr_db']} dB",
        f"{'case':34} {'found':>8} {'bit errors':>11} {'confidence':>11} {'unmarked found':>15}",
    ]
    for name, case in result["cases"].items():
        m, u = case["marked"], case["unmarked"]
        errors = f"{m['bit_errors_mean']:5.2f} (max {m['bit_errors_max']:2d})"
        confidence = f"{m['confidence_mean']:5.2f} (min {m['confidence_min']:4.2f})"
        found = f"{u['found_any']:6d} of {u['windows']}"
        lines.append(f"{name:34} {100 * m['found_rate']:7.1f}% {errors} {confidence} {found}")
    lines.append(
        f"false positives: {result['false_positive_windows']} of "
        f"{result['unmarked_windows']} unmarked windows"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="avatarcast bench-watermark",
        description="the invisible mark's robustness (VP8, H.264, half bit rate, 50 %% resize), "
        "false positives, CPU cost and PSNR",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="video to render (10)")
    parser.add_argument("--avatar", default=None, help="avatar name (default: default)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.seconds < 2.5:
        parser.error("--seconds must be at least 2.5 (one 2 s window and some)")
    result = measure(args.seconds, args.avatar)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result) if args.json else format_text(result))
    return 0
