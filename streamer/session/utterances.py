"""Utterances: speech played strictly in order, and the queue that holds them.

An utterance is text (the built-in TTS), decoded audio, or a live stream fed while it plays
(:class:`LiveStream`: the WebSocket PCM, the microphone). The queue knows each utterance from
its request to its end: queued, being fed into the timeline, written and playing, finished.
It turns published frames into ``speaking_started`` and ``playback_finished`` events.
"""

from __future__ import annotations

import asyncio
import collections
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from models.audio import SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from streamer.pipeline.prepare import PreparedFrame
from streamer.session.events import PlaybackFinished, SessionEvent, SpeakingStarted

Kind = Literal["text", "audio", "stream"]


class SpeechRejected(ValueError):
    """Speech the session cannot take; ``code`` names why (for API errors)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_SURROGATES = re.compile("[\ud800-\udfff]")


def check_text(text: str, most: int) -> None:
    """Raise :class:`SpeechRejected` for text no TTS should be given: empty (no word), longer
    than ``most`` characters, or holding unpaired surrogates (JSON's "\\ud800" escapes)."""
    if not isinstance(text, str) or not any(c.isalnum() for c in text):
        raise SpeechRejected("empty_text", "text is empty: give at least one word to speak")
    if len(text) > most:
        raise SpeechRejected("text_too_long", f"text has {len(text)} characters; at most {most}")
    if _SURROGATES.search(text):
        raise SpeechRejected("invalid_text", "text holds unpaired surrogates: send Unicode")


@dataclass(eq=False)
class Utterance:
    id: str
    kind: Kind
    requested_at: float = 0.0  # the session clock's time of the speak_* call
    text: str = ""
    samples: np.ndarray | None = None
    stream: LiveStream | None = None
    written: int = 0
    end_pos: int = 0  # timeline position after its last written sample
    input_done: bool = False
    published: int = 0  # its samples published so far
    started: bool = False
    audible: bool = False  # a frame with its sound in it has been published
    finished: bool = False
    key_id: str | None = None  # the API key that asked for it

    @property
    def live(self) -> bool:
        return self.kind == "stream"

    @property
    def unwritten(self) -> int:
        if self.kind == "audio" and self.samples is not None:
            return len(self.samples) - self.written
        if self.stream is not None:
            return self.stream.pending
        return 0


class LiveStream:
    """Audio pushed while it plays (the WebSocket, the microphone uplink): one utterance."""

    def __init__(self, utterance: Utterance, check_budget: Callable[[int], None]) -> None:
        self.utterance = utterance
        self._check_budget = check_budget
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self.pending = 0
        self.ended = False
        self.dropped = False  # interrupted or session closed: pushes are ignored
        self.since_cut = 0  # samples since catch-up last shortened this stream
        self.behind = 0  # the delay it carries from pieces that came late, in samples
        self._wake = asyncio.Event()

    @property
    def utterance_id(self) -> str:
        return self.utterance.id

    def push(self, samples16k: np.ndarray) -> None:
        """Queue 16 kHz mono float samples; raises :class:`SpeechRejected` when the session
        would buffer more than its limit (a client sending faster than real time)."""
        if self.dropped:
            return
        if self.ended:
            raise SpeechRejected("stream_ended", "this audio stream has already ended")
        x = np.asarray(samples16k, np.float32).reshape(-1)
        if not len(x):
            return
        self._check_budget(len(x))
        self._chunks.append(x)
        self.pending += len(x)
        self._wake.set()

    def end(self) -> None:
        self.ended = True
        self._wake.set()

    def drop(self) -> None:
        self.dropped = True
        self.ended = True
        self._chunks.clear()
        self.pending = 0
        self._wake.set()

    async def next_chunk(self) -> np.ndarray | None:
        """The next pushed chunk, or None once the stream has ended and is drained."""
        while not self._chunks:
            if self.ended:
                return None
            self._wake.clear()
            await self._wake.wait()
        chunk = self._chunks.popleft()
        self.pending -= len(chunk)
        return chunk


class UtteranceQueue:
    """Every utterance not finished: queued, being fed, or written and playing."""

    def __init__(self, emit: Callable[[SessionEvent], None]) -> None:
        self._emit = emit
        self._queue: collections.deque[Utterance] = collections.deque()
        self._wake = asyncio.Event()
        self.feeding: Utterance | None = None
        self._active: dict[str, Utterance] = {}  # written into the timeline, not finished

    @staticmethod
    def new(kind: Kind, requested_at: float, key_id: str | None = None) -> Utterance:
        return Utterance(secrets.token_hex(6), kind, requested_at, key_id=key_id)

    def add(self, utt: Utterance) -> str:
        self._queue.append(utt)
        self._wake.set()
        return utt.id

    async def next(self) -> Utterance:
        """The next utterance to feed (it is ``feeding`` until :meth:`fed`)."""
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()
        self.feeding = self._queue.popleft()
        return self.feeding

    def fed(self, utt: Utterance) -> None:
        utt.input_done = True
        self.feeding = None
        if utt.written == 0:  # nothing to play (an empty stream): finished at once
            self.finish(utt, interrupted=False)

    def written(self, utt: Utterance) -> None:
        self._active[utt.id] = utt

    def pending(self) -> list[Utterance]:
        seen: dict[str, Utterance] = dict(self._active)
        if self.feeding is not None:
            seen[self.feeding.id] = self.feeding
        for utt in self._queue:
            seen[utt.id] = utt
        return list(seen.values())

    @property
    def queued(self) -> int:
        return len(self._queue) + (1 if self.feeding is not None else 0)

    @property
    def speaking(self) -> bool:
        return any(u.started and not u.finished for u in self._active.values())

    def is_live(self, utterance_id: str) -> bool:
        utt = self._active.get(utterance_id)
        return utt is not None and utt.live

    def drop_all(self) -> list[Utterance]:
        """End every utterance not finished, as interrupted; returns them."""
        dropped = [u for u in self.pending() if not u.finished]
        self._queue.clear()
        self.feeding = None
        self._interrupt(dropped)
        self._active.clear()
        return dropped

    def drop_of(self, keys: set[str], write_pos: int) -> tuple[list[Utterance], bool, bool]:
        """End as interrupted what ``keys`` asked for: its queued utterances, and the one being
        fed or, when nothing was written after it, the one written last. Returns them, whether
        the timeline must be cut after what is prepared (their audio is at its end), and
        whether that one was being fed (the feeder must then start afresh)."""
        dropped = [u for u in self._queue if u.key_id in keys]
        self._queue = collections.deque(u for u in self._queue if u.key_id not in keys)
        last = self.feeding
        if last is None:
            last = next((u for u in self._active.values() if u.end_pos >= write_pos), None)
        cut = last is not None and last.key_id in keys and not last.finished
        feeding = cut and last is self.feeding
        if cut and last is not None:
            dropped.append(last)
            self.feeding = None if feeding else self.feeding
        self._interrupt(dropped)
        return dropped, cut, feeding

    def _interrupt(self, dropped: list[Utterance]) -> None:
        for utt in dropped:
            if utt.stream is not None:
                utt.stream.drop()
            self.finish(utt, interrupted=True)

    def finish(self, utt: Utterance, interrupted: bool) -> None:
        if utt.finished:
            return
        utt.finished = True
        self._active.pop(utt.id, None)
        position = round(utt.published / SAMPLE_RATE, 3)
        self._emit(PlaybackFinished(utt.id, position, interrupted))

    def played(self, frame: PreparedFrame) -> list[Utterance]:
        """A frame was published: advance its utterances; returns those it made audible."""
        frame_end = (frame.index + 1) * SAMPLES_PER_VIDEO_FRAME
        audible: list[Utterance] = []
        # In timeline order, so one utterance ending and the next starting in the same frame
        # give their events in that order.
        for uid, n in frame.counts.items():
            utt = self._active.get(uid)
            if utt is None or utt.finished:
                continue
            if not utt.started:
                utt.started = True
                self._emit(SpeakingStarted(uid))
            if not utt.audible and frame.audio.any():
                utt.audible = True
                audible.append(utt)
            utt.published += n
            if utt.input_done and utt.end_pos <= frame_end:
                self.finish(utt, interrupted=False)
        for utt in list(self._active.values()):
            if utt.input_done and utt.end_pos <= frame_end:
                self.finish(utt, interrupted=False)
        return audible
