"""A talking-head video made for tests from the teacher, unlike the default's training video.

It differs on purpose in what a phone recording changes: portrait 540x960 instead of a 512
square, 30 fps instead of 25, the face smaller and higher in the frame, the head drifting and
turning slowly, the light dimming and warming half-way, and the speech stored as an AAC track.
It opens with a still, silent stretch (where ``avatar create`` finds its idle loop).

    python -m tests.talking_video OUT.mp4 [--seconds 10]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from models.audio import SAMPLE_RATE

WIDTH, HEIGHT, RATE = 540, 960, 30
TEACHER_FPS = 25
SCALE = 0.78  # the teacher's 512 px frame becomes ~400 px: a smaller face than the default's


@dataclass(frozen=True)
class _Silence:
    samples: np.ndarray
    phones: tuple[()] = ()


def _teacher_clip(seconds: float, seed: int, face: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(frames (n, 512, 512, 3) at 25 fps, samples at 16 kHz) of the teacher talking: the
    default face, or ``face`` (a TeacherFace of another 512 px photo)."""
    from models.synth import speech as sp
    from models.synth.clip import render_clip
    from models.synth.corpus import sentences

    rng = np.random.default_rng(seed)
    lead = np.zeros(int(3.0 * SAMPLE_RATE), np.float32)
    parts = [render_clip(_Silence(lead), rng, idle=True, face=face)]
    audio = [lead]
    spoken = 0.0
    for text in sentences("heldout", max(8, int(seconds)), seed):
        if spoken >= seconds - 4.0:
            break
        voice = sp.random_voice("heldout", rng, festival_share=0.0)
        speech = sp.synthesize(text, voice)
        # Whole video frames per part so that audio and frames stay aligned when joined.
        n = math.ceil(len(speech.samples) / 640) * 640
        samples = np.pad(speech.samples.astype(np.float32), (0, n - len(speech.samples)))
        parts.append(render_clip(speech, rng, idle=True, face=face))
        audio.append(samples)
        spoken += n / SAMPLE_RATE
    tail = np.zeros(int(1.0 * SAMPLE_RATE), np.float32)
    parts.append(render_clip(_Silence(tail), rng, idle=True, face=face))
    audio.append(tail)
    frames = np.concatenate([np.asarray(c.frames) for c in parts])
    return frames, np.concatenate(audio)


def _place(frame: np.ndarray, t: float, duration: float) -> np.ndarray:
    """The teacher frame on the portrait canvas: moved, turned, relit."""
    dx = 40.0 * math.sin(2 * math.pi * t / 7.0)
    dy = 25.0 * math.sin(2 * math.pi * t / 5.0 + 1.0)
    angle = 4.0 * math.sin(2 * math.pi * t / 6.0)
    centre = (256.0, 256.0)
    matrix = cv2.getRotationMatrix2D(centre, angle, SCALE)
    matrix[0, 2] += WIDTH / 2 - centre[0] + dx
    matrix[1, 2] += HEIGHT * 0.38 - centre[1] + dy
    out = cv2.warpAffine(frame, matrix, (WIDTH, HEIGHT), borderMode=cv2.BORDER_REPLICATE)
    # Light: full for the first half, then dimmer and warmer.
    u = min(1.0, max(0.0, (t / max(duration, 1e-6) - 0.5) * 4.0))
    gain = np.array([1.0 - 0.15 * u, 1.0 - 0.25 * u, 1.0 - 0.4 * u], np.float32)
    return np.clip(out.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def make_talking_video(
    path: Path | str, seconds: float = 10.0, seed: int = 3, photo: Path | str | None = None
) -> Path:
    """Write the test video to ``path`` (.mp4, H.264 + AAC) and return the path; ``photo``
    gives the person (a face photo the teacher animates) instead of the default face."""
    out = Path(path)
    face = None
    if photo is not None:
        from models.photo_avatar import prepare_face
        from models.synth.face import TeacherFace

        aligned, landmarks, *_ = prepare_face(Path(photo))
        face = TeacherFace(aligned, landmarks)
    frames, samples = _teacher_clip(seconds, seed, face)
    duration = len(frames) / TEACHER_FPS
    n_out = int(duration * RATE)
    container = av.open(str(out), "w", format="mp4")
    try:
        video = container.add_stream("libx264", rate=RATE)
        video.width, video.height = WIDTH, HEIGHT
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = Fraction(1, RATE)
        video.options = {"crf": "20", "preset": "veryfast"}
        audio = container.add_stream("aac", rate=SAMPLE_RATE)
        audio.layout = "mono"
        for j in range(n_out):
            t = j / RATE
            frame = av.VideoFrame.from_ndarray(
                _place(frames[min(len(frames) - 1, int(t * TEACHER_FPS))], t, duration),
                format="rgb24",
            )
            frame.pts = j
            frame.time_base = Fraction(1, RATE)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        for start in range(0, len(samples), 4096):
            chunk = samples[start : start + 4096].reshape(1, -1)
            aframe = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            aframe.sample_rate = SAMPLE_RATE
            aframe.pts = start
            aframe.time_base = Fraction(1, SAMPLE_RATE)
            container.mux(audio.encode(aframe))
        container.mux(audio.encode(None))
    finally:
        container.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--photo", help="the person: a face photo (default: the default face)")
    args = parser.parse_args(argv)
    print(make_talking_video(args.out, args.seconds, photo=args.photo))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
