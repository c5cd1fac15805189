"""Prometheus metrics of one app, in its own registry (no process-global collectors)."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

MS_BUCKETS = (1, 2, 5, 10, 20, 30, 40, 50, 75, 100, 125, 150, 200, 300, 500, 1000, 2000)
INTERVAL_BUCKETS = (10, 20, 30, 35, 38, 40, 42, 45, 50, 60, 80, 120, 200, 500)


class OutputsByState(Collector):
    """``avatarcast_outputs{type,state}``: the outputs of all sessions, counted at scrape
    time from their live state (never kept in step by hand, so it cannot drift)."""

    def __init__(self) -> None:
        self.read: Callable[[], Iterable[tuple[str, str]]] = lambda: ()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "avatarcast_outputs",
            "Outputs (RTMP, recordings...) by type and state",
            labels=["type", "state"],
        )
        for (kind, state), count in sorted(collections.Counter(self.read()).items()):
            family.add_metric([kind, state], count)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sessions = Gauge("avatarcast_sessions", "Live sessions", registry=r)
        self.viewers = Gauge("avatarcast_viewers", "Viewers over all sessions", registry=r)
        self.frames_generated = Counter(
            "avatarcast_frames_generated", "Frames published with a fresh picture", registry=r
        )
        self.frames_dropped = Counter(
            "avatarcast_frames_dropped",
            "Frames published with the previous picture because generation was late",
            registry=r,
        )
        self.generator_ms = Histogram(
            "avatarcast_generator_ms", "Generator time per call", registry=r, buckets=MS_BUCKETS
        )
        self.generator_batch = Histogram(
            "avatarcast_generator_batch_frames",
            "Frames per generator call",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32),
        )
        self.speech_to_mouth_ms = Histogram(
            "avatarcast_speech_to_mouth_ms",
            "Live-stream audio entering the session to the frame with that mouth leaving it",
            registry=r,
            buckets=MS_BUCKETS,
        )
        self.first_audible_ms = Histogram(
            "avatarcast_first_audible_ms",
            "Queued speech (text, audio files): the request to its first audible frame",
            registry=r,
            buckets=(*MS_BUCKETS, 5000, 10000),
        )
        self.frame_interval_ms = Histogram(
            "avatarcast_frame_interval_ms",
            "Wall time between consecutive published frames of a session",
            registry=r,
            buckets=INTERVAL_BUCKETS,
        )
        self.inference_queue = Gauge(
            "avatarcast_inference_queue_depth", "Frames waiting for the generator", registry=r
        )
        self.utterance_queue = Gauge(
            "avatarcast_utterance_queue_depth", "Utterances queued over all sessions", registry=r
        )
        self.audio_buffered_s = Gauge(
            "avatarcast_audio_buffered_seconds",
            "Speech written ahead of the clock over all sessions",
            registry=r,
        )
        self.encoders = Gauge(
            "avatarcast_encoders",
            "Sessions whose media is being encoded (once for all their WebRTC viewers)",
            registry=r,
        )
        self.video_encode_ms = Gauge(
            "avatarcast_video_encode_ms",
            "Last video encode time per frame, mean over the sessions being encoded",
            registry=r,
        )
        self.frames_given_up = Gauge(
            "avatarcast_frames_given_up",
            "Frames the inference worker gave up because they were due before it could finish",
            registry=r,
        )
        self.outputs = OutputsByState()
        r.register(self.outputs)
        self.output_changes = Counter(
            "avatarcast_output_state_changes",
            "Outputs entering a state (retrying counts reconnections, failed lost outputs)",
            ["type", "state"],
            registry=r,
        )

    def observe_batch(self, frames: int, ms: float) -> None:
        """The inference worker's hook (called from its thread: prometheus_client is safe)."""
        self.generator_ms.observe(ms)
        self.generator_batch.observe(frames)

    def observe_frame(
        self,
        fresh: bool,
        interval_ms: float | None,
        speech_to_mouth_ms: float | None,
        first_audible_ms: list[float],
    ) -> None:
        """A session published a frame (with its own picture if ``fresh``)."""
        (self.frames_generated if fresh else self.frames_dropped).inc()
        if interval_ms is not None:
            self.frame_interval_ms.observe(interval_ms)
        if speech_to_mouth_ms is not None:
            self.speech_to_mouth_ms.observe(speech_to_mouth_ms)
        for ms in first_audible_ms:
            self.first_audible_ms.observe(ms)

    def bind(
        self,
        sessions: Callable[[], float],
        viewers: Callable[[], float],
        inference_queue: Callable[[], float],
        utterance_queue: Callable[[], float],
        audio_buffered_s: Callable[[], float],
        encoders: Callable[[], float] = lambda: 0.0,
        video_encode_ms: Callable[[], float] = lambda: 0.0,
        frames_given_up: Callable[[], float] = lambda: 0.0,
        outputs: Callable[[], Iterable[tuple[str, str]]] = lambda: (),
    ) -> None:
        """Gauges read live state at scrape time instead of being kept in step by hand;
        ``outputs`` gives each output's (type, state)."""
        self.outputs.read = outputs
        self.encoders.set_function(encoders)
        self.video_encode_ms.set_function(video_encode_ms)
        self.frames_given_up.set_function(frames_given_up)
        self.sessions.set_function(sessions)
        self.viewers.set_function(viewers)
        self.inference_queue.set_function(inference_queue)
        self.utterance_queue.set_function(utterance_queue)
        self.audio_buffered_s.set_function(audio_buffered_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
