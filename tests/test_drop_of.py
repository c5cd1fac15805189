"""Interrupting only what some keys asked for (a revoked key's speech in others' sessions):
their queued utterances and the one fed or written last go; everyone else's play. (One
written ahead with others' speech after it plays: the timeline cuts only from a position on.)"""

from __future__ import annotations

import asyncio
from typing import Any

from models.avatar import Avatar
from streamer.engine.base import Backend
from streamer.session.events import PlaybackFinished, SpeakingStarted
from tests.conftest import Live, tone


async def until(events: asyncio.Queue[Any], kind: type, utterance_id: str) -> Any:
    async with asyncio.timeout(10):
        while True:
            event = await events.get()
            if isinstance(event, kind) and event.utterance_id == utterance_id:
                return event


async def test_only_the_revoked_keys_speech_stops(standin: tuple[Avatar, Backend]) -> None:
    made = Live(*standin)
    session = made.session
    events = session.subscribe_events()
    await session.start()
    try:
        stream = session.open_stream(key_id="owner")  # live: what is queued waits behind it
        stream.push(tone(0.5))
        queued = session.speak_audio(tone(3.0), key_id="admin")
        after = session.speak_audio(tone(0.6), key_id="owner")
        await until(events, SpeakingStarted, stream.utterance_id)
        assert session.interrupt({"admin"}) == [queued]  # queued: dropped, nothing cut
        stream.end()
        finished = await until(events, PlaybackFinished, stream.utterance_id)
        assert not finished.interrupted and finished.position_s == 0.5
        assert (await until(events, PlaybackFinished, after)).position_s == 0.6

        playing = session.speak_audio(tone(3.0), key_id="admin")  # written last, then cut
        await until(events, SpeakingStarted, playing)
        await asyncio.sleep(0.3)
        assert session.interrupt({"admin", "other"}) == [playing]
        cut = await until(events, PlaybackFinished, playing)
        assert cut.interrupted and cut.position_s < 1.0
        last = session.speak_audio(tone(0.4), key_id="owner")
        assert (await until(events, PlaybackFinished, last)).position_s == 0.4  # plays whole
        assert session.interrupt({"admin"}) == []
    finally:
        await made.aclose()
