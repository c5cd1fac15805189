"""The adaptive frame lead (streamer/pipeline/lead.py): late pictures make a live session
prepare its frames earlier, with a latency budget to match; calm brings it back."""

from __future__ import annotations

import asyncio

import pytest

from models.audio import SAMPLE_RATE
from models.avatar import Avatar
from streamer.engine.base import Backend
from streamer.pipeline.lead import AdaptiveLead, LeadPolicy
from streamer.session import SessionConfig
from tests.conftest import Live, tone
from tests.test_session import SlowBackend


def past_warmup(lead: AdaptiveLead) -> AdaptiveLead:
    for _ in range(lead.policy.warmup_frames):
        assert not lead.observe(False)  # the first frames are late anyway: not judged
    return lead


def test_two_late_pictures_in_a_second_raise_the_lead() -> None:
    lead = past_warmup(AdaptiveLead(0.025, 0.08))
    assert lead.lead_s == 0.025
    assert not lead.observe(False)
    assert lead.observe(False)  # the second within a second: one step up
    assert lead.lead_s == pytest.approx(0.045) and lead.extra_s == pytest.approx(0.02)
    assert not lead.observe(False)  # the window starts over after a step
    for _ in range(10):
        lead.observe(False)
    assert lead.extra_s == pytest.approx(0.08)  # the ceiling


def test_scattered_late_pictures_leave_it() -> None:
    lead = past_warmup(AdaptiveLead(0.025, 0.08))
    for _ in range(10):
        for _ in range(30):  # more than a second of fresh pictures between two late ones
            lead.observe(True)
        assert not lead.observe(False)
    assert lead.extra_s == 0.0


def test_calm_lowers_it_back_to_the_base() -> None:
    policy = LeadPolicy()
    lead = past_warmup(AdaptiveLead(0.025, 0.08, policy))
    lead.observe(False)
    lead.observe(False)
    steps = [lead.observe(True) for _ in range(policy.calm_frames * 4)]
    assert sum(steps) == 4 and lead.extra_s == 0.0  # 20 ms in steps of 5 ms
    assert not any(lead.observe(True) for _ in range(policy.calm_frames))  # never below


async def test_a_session_with_late_pictures_prepares_earlier(
    standin: tuple[Avatar, Backend],
) -> None:
    avatar, backend = standin
    # 30 ms a call: always late for the base lead of 25 ms, in time for a step or two more.
    made = Live(avatar, SlowBackend(backend, 0.03))
    session = made.session
    await session.start()
    try:
        assert session.feeder.latency == int(SessionConfig().latency_s * SAMPLE_RATE)
        session.speak_audio(tone(4.0))
        for _ in range(200):  # 8 s at most
            await asyncio.sleep(0.04)
            if session.stats.lead_ms >= 45.0:
                break
        assert session.stats.lead_ms >= 45.0, session.stats.figures()
        assert session.describe()["frame_lead_ms"] == session.stats.lead_ms
        # Speech is written that much further ahead, so the earlier windows still find it.
        extra = session.stats.lead_ms / 1000.0 - SessionConfig().lead_s
        budget = SessionConfig().latency_s + extra
        assert abs(session.feeder.latency - budget * SAMPLE_RATE) <= 1
        # Once the lead suffices, pictures come fresh again.
        dropped, frames = session.stats.dropped, session.stats.frames
        await asyncio.sleep(1.2)
        fresh = 1 - (session.stats.dropped - dropped) / (session.stats.frames - frames)
        assert fresh > 0.5, session.stats.figures()
    finally:
        await made.aclose()
