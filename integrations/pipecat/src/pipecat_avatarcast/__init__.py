"""pipecat-avatarcast: a pipecat video service that shows a self-hosted avatarcast avatar.

``AvatarcastVideoService`` goes after the TTS in a pipeline; ``EspeakTTSService`` is an offline
TTS (the espeak-ng program) for trying it without a cloud account.
"""

from pipecat_avatarcast.api import AvatarcastError, SessionInfo
from pipecat_avatarcast.espeak import EspeakTTSService
from pipecat_avatarcast.video import AvatarcastVideoService

__all__ = ["AvatarcastError", "AvatarcastVideoService", "EspeakTTSService", "SessionInfo"]
