"""The media pipeline: streaming mel windows, compositing, idle motion (decoding audio files
is models.media)."""

from streamer.pipeline.compositor import Compositor
from streamer.pipeline.idle import IdleMotion, Pose
from streamer.pipeline.mel import MelWindower

__all__ = [
    "Compositor",
    "IdleMotion",
    "MelWindower",
    "Pose",
]
