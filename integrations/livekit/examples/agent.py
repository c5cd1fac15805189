"""A voice agent with an avatarcast face: speak to it in a LiveKit room and watch it answer.

Run an avatarcast server with the LiveKit extra, then this agent:

    pip install 'avatarcast[livekit]' && avatarcast serve            # terminal 1
    pip install livekit-plugins-avatarcast                           # terminal 2
    export LIVEKIT_URL=wss://... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=...
    export AVATARCAST_URL=http://127.0.0.1:8080   # AVATARCAST_API_KEY too, if the server has one
    python agent.py dev

Open the LiveKit Agents Playground (or any LiveKit client) on the same project, join a room,
and talk. The agent listens, thinks and speaks through LiveKit Inference (swap in any STT,
LLM and TTS plugins you like); avatarcast joins the room as the avatar participant and
publishes the agent's voice with a lip-synced face.
"""

from __future__ import annotations

import os

from livekit.agents import (
    Agent,
    AgentServer,
    AgentSession,
    InterruptionOptions,
    JobContext,
    TurnHandlingOptions,
    cli,
)
from livekit.plugins import avatarcast

server = AgentServer()


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    session: AgentSession[None] = AgentSession(
        stt="deepgram/nova-3",
        llm="openai/gpt-4.1-mini",
        tts="cartesia/sonic-2",
        # An avatar cannot pause its speech to resume it later: an interruption is final.
        turn_handling=TurnHandlingOptions(
            interruption=InterruptionOptions(resume_false_interruption=False)
        ),
    )
    avatar = avatarcast.AvatarSession(
        api_url=os.getenv("AVATARCAST_URL", "http://127.0.0.1:8080"),
        avatar=os.getenv("AVATARCAST_AVATAR", "default"),
    )
    # Joins the avatar to the room and routes the session's audio to it.
    await avatar.start(session, room=ctx.room)
    await session.start(
        agent=Agent(
            instructions="You are a friendly assistant with a face. Keep your answers short."
        ),
        room=ctx.room,
    )
    await session.generate_reply(instructions="Greet the user and offer your help.")


if __name__ == "__main__":
    cli.run_app(server)
