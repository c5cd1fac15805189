"""avatarcast as a LiveKit Agents avatar: a worker that joins a room for a session.

Needs the server's ``livekit`` extra (the ``livekit`` real-time SDK); importing
:mod:`.worker` without it raises ImportError, which the dispatch route answers with 501.
"""
