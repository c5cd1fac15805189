"""A complete pipecat pipeline with an avatarcast face, offline: text -> TTS -> avatar -> MP4.

    avatarcast serve &                      # the server, with its built-in default avatar
    python examples/offline_mp4.py --out avatar.mp4 --say "Hello! I am your new face."

The TTS is espeak-ng on this machine (``EspeakTTSService``), so nothing here needs an account
or a network beyond the avatarcast server. The pipeline is the one a voice agent uses after
its LLM: any pipecat TTS, then ``AvatarcastVideoService``, then the output. Here the output
is a file writer rather than a transport, so the service is told not to wait for one.
README.md shows the same service between a cloud STT/LLM/TTS and a WebRTC transport.
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    TTSSpeakFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from pipecat_avatarcast import AvatarcastVideoService, EspeakTTSService

FPS = 25


class Mp4Writer(FrameProcessor):
    """Writes the frames that reach it to an MP4 (H.264 + AAC), each at its own pts, so the
    file keeps the avatar's lip sync. Encoding runs on one worker thread, in frame order."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.images = 0
        self.audio_s = 0.0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mp4")
        self._container: av.container.OutputContainer | None = None
        self._video: av.VideoStream | None = None
        self._audio: av.AudioStream | None = None
        self._t0: float | None = None
        self._next_video = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        loop = asyncio.get_running_loop()
        if isinstance(frame, OutputImageRawFrame | OutputAudioRawFrame) and frame.pts is not None:
            await loop.run_in_executor(self._pool, self._write, frame)
            return
        if isinstance(frame, EndFrame):
            await loop.run_in_executor(self._pool, self._close)
        elif isinstance(frame, ErrorFrame):
            print(f"error: {frame.error}")
        await self.push_frame(frame, direction)

    def _write(self, frame: OutputImageRawFrame | OutputAudioRawFrame) -> None:
        t = (frame.pts or 0) / 1e9
        if self._t0 is None:
            if not isinstance(frame, OutputImageRawFrame):
                return  # the file starts on a picture
            self._open(frame.size, t)
        assert self._t0 is not None and self._video is not None and self._audio is not None
        t -= self._t0
        if isinstance(frame, OutputImageRawFrame):
            index = round(t * FPS)
            if index < self._next_video:
                return  # at most one picture per frame slot
            rgb = np.frombuffer(frame.image, np.uint8).reshape(frame.size[1], frame.size[0], 3)
            picture = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            picture.pts = index
            self._mux(self._video, picture)
            self._next_video = index + 1
            self.images += 1
        elif t >= 0:
            pcm = np.frombuffer(frame.audio, "<i2").reshape(1, -1)
            sound = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            sound.sample_rate = frame.sample_rate
            sound.pts = round(t * frame.sample_rate)
            sound.time_base = Fraction(1, frame.sample_rate)
            self._mux(self._audio, sound)
            self.audio_s += pcm.shape[1] / frame.sample_rate

    def _open(self, size: tuple[int, int], t0: float) -> None:
        self._t0 = t0
        self._container = av.open(str(self.path), "w")
        self._video = self._container.add_stream("libx264", rate=FPS)
        self._video.width, self._video.height = size
        self._video.pix_fmt = "yuv420p"
        self._audio = self._container.add_stream("aac", rate=48_000, layout="mono")

    def _mux(
        self, stream: av.VideoStream | av.AudioStream, frame: av.VideoFrame | av.AudioFrame
    ) -> None:
        assert self._container is not None
        self._container.mux(stream.encode(frame))  # type: ignore[arg-type]

    def _close(self) -> None:
        if self._container is None:
            return
        for stream in (self._video, self._audio):
            if stream is not None:
                self._container.mux(stream.encode(None))
        self._container.close()
        self._container = None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:8080", help="avatarcast's URL")
    parser.add_argument("--api-key", default=None, help="the server's API key, if it has one")
    parser.add_argument("--avatar", default=None, help="an avatar name (the server's default)")
    parser.add_argument("--out", type=Path, default=Path("avatar.mp4"))
    parser.add_argument(
        "--say",
        action="append",
        help="a sentence to say (repeat for more)",
    )
    args = parser.parse_args()
    sentences = args.say or [
        "Hello! I am a face for your voice agent.",
        "My lips follow whatever your text to speech says.",
    ]

    tts = EspeakTTSService()
    avatar = AvatarcastVideoService(
        base_url=args.server, api_key=args.api_key, avatar=args.avatar, wait_for_transport=False
    )
    writer = Mp4Writer(args.out)
    worker = PipelineWorker(
        Pipeline([tts, avatar, writer]),
        params=PipelineParams(audio_out_sample_rate=24_000),
        idle_timeout_secs=None,
    )
    await worker.queue_frames([*(TTSSpeakFrame(s) for s in sentences), EndFrame()])
    runner = WorkerRunner(handle_sigint=True)
    await runner.add_workers(worker)
    await runner.run()
    print(f"wrote {args.out}: {writer.images} pictures, {writer.audio_s:.1f} s of audio")


if __name__ == "__main__":
    asyncio.run(main())
