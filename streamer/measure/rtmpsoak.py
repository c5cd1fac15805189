"""``avatarcast bench --rtmp-soak SECONDS``: one session pushed over RTMP into a local
nginx-rtmp for that long, played back, with nginx restarted half-way.

The real server (the real avatar and backend) runs in this process; its session speaks the
held-out sentences of ``avatarcast eval`` (:func:`models.heldout.select_speech`: voices and
sentences never trained on) one after another through ``POST speak``, and pushes through an
``rtmp`` output (``POST /v1/sessions/{id}/outputs``) into nginx with the RTMP module
(:mod:`streamer.measure.nginx`). A PyAV player (:mod:`streamer.measure.rtmpreader`) pulls the
stream back from nginx and decodes it. Reported:

- ``reader``: per connection of the player, fps on the stream's clock and on the wall's,
  pictures missing, the longest picture and audio gaps (``audio_gap_ms_max``: between
  decoded AAC frames; 0 means continuous audio).
- ``lips``: mouth onsets minus voice onsets on the stream's timestamps, as a player shows
  them (``lips_lag_ms_median``), the same measure on the frames the session published
  (``published_lag_ms``: the model's own timing, before any output) and their difference,
  ``av_offset_ms``: what the RTMP path adds. The target is within +-20 ms.
- ``restart``: nginx stopped for ``down_s`` and started again; ``recovered_s``: from nginx
  accepting connections to the first picture decoded by a player again (target <= 5 s);
  ``output_live_s``: to the output's state ``live`` again.
- ``output``: the output's own description (connections, ``cpu_ms_per_frame``, drops).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from models.audio import SAMPLE_RATE
from streamer.config import ConfigError
from streamer.measure.avsync import FrameTap, rounded
from streamer.measure.liveplan import Progress
from streamer.measure.liveserver import Live, live_server
from streamer.measure.nginx import NginxRtmp, nginx_rtmp_missing
from streamer.measure.rtmpreader import RtmpReader, lips_figures
from streamer.measure.signals import wav_bytes

DOWN_S = 1.0  # how long nginx stays down in the restart
SKIP_S = 2.0  # each connection's first seconds are left out of lips against voice
PAUSE_S = 0.5  # between two sentences


async def _speak(live: Live, sid: str, sentences: list[tuple[bytes, float]]) -> None:
    """The held-out sentences, in turn, for as long as the soak runs."""
    i = 0
    while True:
        wav, seconds = sentences[i % len(sentences)]
        res = await live.http.post(
            f"/v1/sessions/{sid}/speak", content=wav, headers={"Content-Type": "audio/wav"}
        )
        if res.status_code != 202:
            raise RuntimeError(f"POST speak answered {res.status_code}: {res.text}")
        await asyncio.sleep(seconds + PAUSE_S)
        i += 1


async def _output(live: Live, sid: str) -> dict[str, Any]:
    res = await live.http.get(f"/v1/sessions/{sid}/outputs")
    outputs = res.json()["outputs"]
    if not outputs:
        raise RuntimeError("the rtmp output is gone")
    return dict(outputs[0])


async def _until_live(live: Live, sid: str, timeout_s: float) -> float:
    """Seconds until the output says ``live`` (RuntimeError after ``timeout_s``)."""
    started = time.monotonic()
    while (await _output(live, sid))["state"] != "live":
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"the rtmp output is not live after {timeout_s:.0f} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def _restart(live: Live, sid: str, nginx: NginxRtmp, reader: RtmpReader) -> dict[str, Any]:
    """Stop nginx, start it again after ``DOWN_S``; how long until pictures flow again."""
    await asyncio.to_thread(nginx.stop)
    await asyncio.sleep(DOWN_S)
    await asyncio.to_thread(nginx.start)
    up = time.monotonic()
    output_live = await _until_live(live, sid, 60.0)
    while (first := reader.first_frame_after(up)) is None:
        if time.monotonic() - up > 60.0:
            raise RuntimeError("no picture reached the player within 60 s of the restart")
        await asyncio.sleep(0.05)
    return {
        "down_s": DOWN_S,
        "recovered_s": round(first - up, 2),
        "output_live_s": round(output_live, 2),
    }


async def measure_soak(
    live: Live,
    nginx: NginxRtmp,
    seconds: float,
    sentences: list[tuple[bytes, float]],
    progress: Progress,
) -> dict[str, Any]:
    """The soak itself, on a running server and nginx."""
    res = await live.http.post("/v1/sessions", json={})
    if res.status_code != 201:
        raise RuntimeError(f"creating a session answered {res.status_code}: {res.text}")
    sid = res.json()["id"]
    session = live.session(sid)
    await asyncio.wait_for(session.wait_ready(), 30)
    tap = FrameTap(session.bus, live.region)
    url = nginx.url("soak")
    res = await live.http.post(f"/v1/sessions/{sid}/outputs", json={"type": "rtmp", "url": url})
    if res.status_code != 201:
        raise RuntimeError(f"adding the rtmp output answered {res.status_code}: {res.text}")
    await _until_live(live, sid, 30.0)
    reader = RtmpReader(url, live.region)
    reader.start()
    speaker = asyncio.get_running_loop().create_task(_speak(live, sid, sentences))
    begin = time.monotonic()
    restart: dict[str, Any] | None = None
    try:
        while (elapsed := time.monotonic() - begin) < seconds:
            if speaker.done():
                speaker.result()
            if restart is None and elapsed >= seconds / 2:
                progress("rtmp soak: restarting nginx")
                restart = await _restart(live, sid, nginx, reader)
                progress(f"rtmp soak: {restart}")
            await asyncio.sleep(min(5.0, max(0.0, seconds - elapsed)))
            progress(f"rtmp soak: {time.monotonic() - begin:.0f} / {seconds:.0f} s")
        output = await _output(live, sid)
        # Lips cannot move in pictures the session had to repeat (a machine too busy).
        output["session_frames_dropped_ratio"] = round(
            session.stats.dropped / max(1, session.stats.frames), 4
        )
    finally:
        speaker.cancel()
        await asyncio.gather(speaker, return_exceptions=True)
        await asyncio.to_thread(reader.stop)
        await tap.aclose()
        await live.http.delete(f"/v1/sessions/{sid}")
    lips = lips_figures(reader.segments, SKIP_S)
    published = tap.data.av_lag_ms(tap.data.times[0] + SKIP_S, float("inf"))
    lips["published_lag_ms"] = rounded(published)
    at_reader = lips["lips_lag_ms_median"]
    lips["av_offset_ms"] = rounded(
        None if at_reader is None or published is None else at_reader - published
    )
    return {
        "seconds": seconds,
        "reader": [segment.figures() for segment in reader.segments if segment.video],
        "reader_errors": reader.errors[-3:],
        "lips": lips,
        "restart": restart,
        "output": output,
    }


def _sentences(progress: Progress) -> list[tuple[bytes, float]]:
    from models.heldout import select_speech

    chosen = select_speech(progress=lambda m: progress(f"rtmp soak: held-out speech: {m}"))
    return [(wav_bytes(s.samples), len(s.samples) / SAMPLE_RATE) for s in chosen]


def run_rtmp_soak(
    avatar_name: str, backend: str, seconds: float, threads: int = 2, progress: Progress = print
) -> dict[str, Any]:
    """The soak's figures; a :class:`ConfigError` when nginx-rtmp is not installed."""
    import logging
    import warnings

    missing = nginx_rtmp_missing()
    if missing is not None:
        raise ConfigError(f"the RTMP soak {missing}")
    logging.getLogger("aiortc").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", "The `websockets` implementation is deprecated")
    sentences = _sentences(progress)

    async def run(folder: Path) -> dict[str, Any]:
        load = os.getloadavg()[0]
        nginx = NginxRtmp(folder)
        await asyncio.to_thread(nginx.start)
        try:
            async with live_server(avatar_name, backend, threads) as live:
                figures = await measure_soak(live, nginx, seconds, sentences, progress)
        finally:
            await asyncio.to_thread(nginx.stop)
        figures["load_avg_1m"] = {"before": round(load, 2), "after": round(os.getloadavg()[0], 2)}
        return figures

    with tempfile.TemporaryDirectory(prefix="avatarcast-rtmp-") as folder:
        return asyncio.run(run(Path(folder)))
