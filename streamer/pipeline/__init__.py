"""The media pipeline: ingest and resample, streaming mel windows, compositing, idle motion."""

from streamer.pipeline.compositor import Compositor
from streamer.pipeline.decode import AudioDecodeError, decode_audio
from streamer.pipeline.idle import IdleMotion, Pose
from streamer.pipeline.mel import MelWindower

__all__ = [
    "AudioDecodeError",
    "Compositor",
    "IdleMotion",
    "MelWindower",
    "Pose",
    "decode_audio",
]
