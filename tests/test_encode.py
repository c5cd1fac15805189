"""Encode once: the session's encode stage, as its viewers see it."""

from __future__ import annotations

import asyncio

import numpy as np

from models.audio import SAMPLES_PER_VIDEO_FRAME
from streamer.pipeline.encode import EncodedFrame, EncodeStage
from streamer.pipeline.frames import AVFrame, FrameBus, Subscription


async def first_picture(sub: Subscription[EncodedFrame]) -> EncodedFrame:
    while True:
        frame = await asyncio.wait_for(sub.next_video(), 5.0)
        if frame.video is not None:
            return frame


async def publish(bus: FrameBus[AVFrame], start: int, count: int) -> None:
    loop = asyncio.get_running_loop()
    picture = np.full((64, 64, 3), 128, np.uint8)
    for k in range(start, start + count):
        bus.publish(
            AVFrame(
                k, picture, np.zeros(SAMPLES_PER_VIDEO_FRAME, np.int16), published_at=loop.time()
            )
        )
        await asyncio.sleep(0.04)


async def test_a_viewer_who_joins_right_after_the_last_one_left_starts_on_a_key_frame() -> None:
    """Key frames are rate-limited for viewers of a running stream; a stream that stopped
    (its last viewer left) and starts again owes its first viewer a key frame at once."""
    bus: FrameBus[AVFrame] = FrameBus()
    stage = EncodeStage("s", bus, lambda: "vp8")
    stream = stage.encoded()
    first = stream.subscribe()
    feeding = asyncio.create_task(publish(bus, 0, 1000))
    try:
        assert (await first_picture(first)).keyframe
        stream.unsubscribe(first)  # the stream stops ...
        second = stream.subscribe()  # ... and starts again within the key frame gap
        picture = await first_picture(second)
        assert picture.keyframe and picture.index > 0
        assert stream.viewers == 1
    finally:
        feeding.cancel()
        await stage.aclose()


async def test_a_subscriber_that_asks_later_gets_its_key_frame_at_once() -> None:
    """The viewers' fan-out joins without a key frame, and each viewer asks for one when its
    connection is up: the limit of one key frame per gap must not count one nobody received
    (it held a new viewer's first picture back by up to 250 ms)."""
    bus: FrameBus[AVFrame] = FrameBus()
    stage = EncodeStage("s", bus, lambda: "vp8")
    stream = stage.encoded()
    fanout = stream.attach(Subscription(video_depth=100), keyframe=False)
    feeding = asyncio.create_task(publish(bus, 0, 1000))
    try:
        opening = await first_picture(fanout)  # a codec's first picture is whole anyway
        stream.request_keyframe()  # a viewer's DTLS is up
        asked_at = opening.index
        while True:
            picture = await first_picture(fanout)
            if picture.keyframe:
                break
        # One frame in the encoder and one on its way may go first; not the ~6 of 250 ms.
        assert picture.index - asked_at <= 3
    finally:
        feeding.cancel()
        await stage.aclose()
