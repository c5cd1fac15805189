"""The frame bus: slow subscribers lose video, never audio, and never slow the publisher."""

import numpy as np
import pytest

from streamer.pipeline.frames import AVFrame, FrameBus, without_picture


def _frame(k: int) -> AVFrame:
    return AVFrame(k, np.zeros((4, 4, 3), np.uint8), np.full(640, k, np.int16))


async def test_slow_subscriber_loses_video_not_audio() -> None:
    bus = FrameBus()
    fast, slow = bus.subscribe(), bus.subscribe(video_depth=2)
    for k in range(10):
        bus.publish(_frame(k))
        assert (await fast.next_video()).index == k
        assert (await fast.next_audio()).index == k
    # The slow one reads only now: the newest two video frames, but all ten audio frames.
    assert [(await slow.next_video()).index for _ in range(2)] == [8, 9]
    assert [(await slow.next_audio()).index for _ in range(10)] == list(range(10))
    assert slow.stats.video_dropped == 8 and slow.stats.audio_dropped == 0


async def test_a_subscriber_that_never_reads_is_bounded() -> None:
    bus = FrameBus()
    dead = bus.subscribe(audio_depth=5)
    for k in range(100):
        bus.publish(_frame(k))
    assert dead.depth == (2, 5)
    assert dead.stats.audio_dropped == 95


async def test_close_wakes_readers() -> None:
    bus = FrameBus()
    sub = bus.subscribe()
    bus.unsubscribe(sub)
    with pytest.raises(ConnectionError):
        await sub.next_video()
    assert bus.subscribers == 0


def test_audio_must_be_one_frame() -> None:
    with pytest.raises(ValueError):
        AVFrame(0, np.zeros((4, 4, 3), np.uint8), np.zeros(320, np.int16))


def test_a_frame_without_its_picture_keeps_audio_and_size_only() -> None:
    frame = AVFrame(7, np.full((720, 1280, 3), 200, np.uint8), np.arange(640, dtype=np.int16))
    light = without_picture(frame)
    assert (light.index, light.video.shape) == (7, (720, 1280, 3))
    assert np.array_equal(light.audio, frame.audio)
    assert not np.shares_memory(light.video, frame.video)
    assert light.video.strides[:2] == (0, 0)  # one pixel, broadcast: no picture kept alive
    assert not light.video.flags.writeable
