"""avatarcast for LiveKit Agents: a self-hosted, lip-synced avatar for any voice agent.

from livekit.plugins import avatarcast

avatar = avatarcast.AvatarSession(api_url="http://127.0.0.1:8080")
await avatar.start(session, room=ctx.room)
"""

from livekit.agents import Plugin

from .avatar import AvatarcastException, AvatarSession, mint_avatar_token
from .log import logger
from .version import __version__

__all__ = ["AvatarSession", "AvatarcastException", "__version__", "mint_avatar_token"]


class AvatarcastPlugin(Plugin):
    def __init__(self) -> None:
        super().__init__(__name__, __version__, __package__, logger)


Plugin.register_plugin(AvatarcastPlugin())
