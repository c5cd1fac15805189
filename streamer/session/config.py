"""A session's settings: server-wide timing (:class:`SessionConfig`) and what its creator
asked for (:class:`SessionOptions`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

SpeechSource = Callable[[str], Iterator[np.ndarray]]  # text -> 16 kHz float32 chunks (blocking)


@dataclass(frozen=True)
class SessionConfig:
    latency_s: float = 0.135  # speech is written this far ahead of the sample playing now
    lead_s: float = 0.025  # a frame's window is taken this long before it is published ...
    lead_extra_max_s: float = 0.08  # ... plus up to this while pictures come late (lead.py)
    max_buffer_s: float = 60.0  # audio buffered ahead (timeline + queued) per session
    tts_ahead_s: float = 4.0  # synthesise the next sentence when less than this is buffered
    start_delay_s: float = 0.05
    event_queue: int = 256
    max_text_chars: int = 100_000  # one text to speak (Limits.max_text_chars)
    max_queued_utterances: int = 32  # queued and playing (Limits.max_queued_utterances)


@dataclass(frozen=True)
class SessionOptions:
    video_codec: Literal["vp8", "h264"] = "vp8"
    width: int | None = None
    height: int | None = None
    # "transparent": pictures carry the person's alpha beside the colour (twice as wide).
    background: Literal["opaque", "transparent"] = "opaque"
    # The API key that created the session (streamer.keys): only it, or an admin, controls it.
    key_id: str = "local"
    # The visible "AI-generated" label: None turns it on with the first RTMP/SRT output.
    label: bool | None = None

    @property
    def transparent(self) -> bool:
        return self.background == "transparent"
