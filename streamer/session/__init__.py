"""A live session: speech in, AV frames and encoded frames out (see :mod:`.session`)."""

from streamer.session.config import SessionConfig, SessionOptions, SpeechSource
from streamer.session.events import (
    AvatarChanged,
    PlaybackFinished,
    SessionClosed,
    SessionEvent,
    SpeakingStarted,
    SpeechFailed,
)
from streamer.session.registry import SessionFactory, SessionRegistry, TooManySessions
from streamer.session.session import MAX_TEXT_CHARS, Session
from streamer.session.stats import SessionStats
from streamer.session.utterances import LiveStream, SpeechRejected, Utterance

__all__ = [
    "MAX_TEXT_CHARS",
    "AvatarChanged",
    "LiveStream",
    "PlaybackFinished",
    "Session",
    "SessionClosed",
    "SessionConfig",
    "SessionEvent",
    "SessionFactory",
    "SessionOptions",
    "SessionRegistry",
    "SessionStats",
    "SpeakingStarted",
    "SpeechFailed",
    "SpeechRejected",
    "SpeechSource",
    "TooManySessions",
    "Utterance",
]
