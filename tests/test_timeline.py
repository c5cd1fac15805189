"""The playout timeline: placement of speech against the clock, commits, cuts, windows."""

from __future__ import annotations

import numpy as np
import pytest

from models.audio import WindowConfig, log_mel, window, window_mel, window_range
from streamer.pipeline.timeline import Timeline, TimelineFull

CFG = WindowConfig(17, 6)


def test_speech_is_written_latency_ahead_then_contiguously() -> None:
    tl = Timeline(max_ahead_s=10)
    x = np.ones(1000, np.float32)
    assert tl.write(x, now_pos=500, latency=2160, utterance_id="a", arrived_at=1.0) == 2660
    assert tl.write(x, now_pos=600, latency=2160, utterance_id="a", arrived_at=1.1) == 3660
    assert tl.write_pos == 4660
    out = tl.samples(2000, 5000)
    assert not out[:660].any() and out[660:2660].all() and not out[2660:].any()
    assert [s.utterance_id for s in tl.spans(0, 10_000)] == ["a", "a"]


def test_committed_audio_is_final_and_late_speech_goes_after_it() -> None:
    tl = Timeline(max_ahead_s=10)
    tl.commit(8000)  # the clock read up to 8000: it was silence and stays silence
    start = tl.write(
        np.ones(10, np.float32), now_pos=100, latency=50, utterance_id="a", arrived_at=0.0
    )
    assert start == 8000
    assert not tl.samples(0, 8000).any()


def test_a_live_streams_late_piece_joins_it_or_plays_whole_after_what_played() -> None:
    tl = Timeline(max_ahead_s=10)
    x = np.ones(320, np.float32)

    def piece(now: int, contiguous: bool = True) -> int:
        return tl.write(
            x, now_pos=now, latency=2160, utterance_id="s", arrived_at=0.0, contiguous=contiguous
        )

    assert piece(0, contiguous=False) == 2160  # the first piece: the whole budget ahead
    # Late by 25 ms, its place already committed for the windows but not yet played:
    # it joins the previous piece, no gap.
    tl.commit(2900)
    tl.hear(2000)
    assert piece(720) == 2480
    # Later than the play position: nothing is dropped; it plays whole from the first
    # sample not yet played, after the silence that played in its place.
    tl.commit(5000)
    tl.hear(3000)
    assert piece(2500) == 3000 and tl.write_pos == 3320
    assert not tl.samples(2800, 3000).any() and tl.samples(3000, 3320).all()
    tl.hear(3600)
    assert piece(3000) == 3600 and tl.write_pos == 3920
    assert not tl.samples(3320, 3600).any() and tl.samples(3600, 3920).all()
    # After a pause (more than RESUME behind its schedule) it starts over with the budget.
    tl.commit(20_000)
    tl.hear(19_000)
    assert piece(18_000) == 20_160


def test_a_gap_between_writes_is_silence_even_when_the_ring_wraps() -> None:
    tl = Timeline(max_ahead_s=1)
    for n in range(0, 200_000, 4000):  # far past the ring capacity
        tl.commit(n)
        tl.write(
            np.full(100, 0.5, np.float32), now_pos=n, latency=1000, utterance_id="u", arrived_at=0.0
        )
    n = 196_000
    out = tl.samples(n, n + 1200)
    assert not out[:1000].any() and (out[1000:1100] == 0.5).all() and not out[1100:].any()


def test_cut_drops_the_future_and_hides_the_past() -> None:
    tl = Timeline(max_ahead_s=10)
    tl.write(np.ones(5000, np.float32), now_pos=0, latency=0, utterance_id="a", arrived_at=0.0)
    tl.commit(3000)
    tl.cut(2000)
    assert tl.write_pos == 2000 and tl.read_pos == 2000 and tl.floor == 2000
    assert not tl.samples(0, 6000).any()  # before the cut reads as silence for later windows
    assert [(s.start, s.end) for s in tl.spans(0, 6000)] == []
    tl.write(np.ones(10, np.float32), now_pos=1900, latency=0, utterance_id="b", arrived_at=0.0)
    assert tl.samples(2000, 2010).all()


def test_buffering_is_bounded() -> None:
    tl = Timeline(max_ahead_s=1)
    tl.write(np.ones(15_000, np.float32), now_pos=0, latency=0, utterance_id="a", arrived_at=0.0)
    with pytest.raises(TimelineFull):
        tl.write(np.ones(2000, np.float32), now_pos=0, latency=0, utterance_id="a", arrived_at=0.0)


@pytest.mark.parametrize("k", [0, 1, 7, 40])
def test_window_equals_the_offline_definition(k: int) -> None:
    rng = np.random.default_rng(k)
    signal = rng.uniform(-0.5, 0.5, 40_000).astype(np.float32)
    tl = Timeline(max_ahead_s=10)
    tl.write(signal, now_pos=0, latency=0, utterance_id="a", arrived_at=0.0)
    lo, hi = window_range(k, CFG)
    ours = window_mel(tl.samples(lo, hi), k, CFG)
    np.testing.assert_allclose(ours, window(log_mel(signal), k, CFG), rtol=0, atol=1e-5)
