"""The FastAPI app factory and ``serve``: the lifespan owns the engines, the sessions and
the WebRTC peers, as the app's typed state (:class:`~streamer.api.state.AppState`)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
from fastapi import FastAPI

from models.avatar import Avatar, load_avatar
from streamer.allocator import limit_arenas
from streamer.api import core_routers, redact
from streamer.api.cors import ApiCors
from streamer.api.errors import install_error_handlers
from streamer.api.limits import BodyLimit
from streamer.api.state import AppState
from streamer.config import ConfigError, Settings
from streamer.engine.base import Backend, backend_key
from streamer.engine.factory import make_backend
from streamer.engine.pool import EngineLoader, EnginePool
from streamer.keys import Keyring
from streamer.metrics import Metrics
from streamer.outputs.base import OutputRejected
from streamer.outputs.factory import attach_output
from streamer.outputs.spec import OutputSpec, specs_from_urls
from streamer.outputs.webrtc import PeerRegistry, warm_up
from streamer.pipeline.encode import EncodedStream
from streamer.session import (
    Session,
    SessionConfig,
    SessionOptions,
    SessionRegistry,
    SpeechSource,
)

log = logging.getLogger(__name__)


class BuiltinSpeech:
    """The espeak-ng TTS, created on first use (in the speech executor, not at startup)."""

    def __init__(self) -> None:
        self._tts: object | None = None
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Load the TTS now (blocking: run it in the speech executor), so the first text a
        user sends does not wait seconds for the imports."""
        from streamer.tts import TextToSpeech

        with self._lock:
            if self._tts is None:
                self._tts = TextToSpeech()

    def __call__(self, text: str) -> Iterator[np.ndarray]:
        from streamer.tts import TextToSpeech

        self.warm()
        tts = self._tts
        assert isinstance(tts, TextToSpeech)
        return tts.stream(text)


def default_loader(settings: Settings) -> EngineLoader:
    def load(name: str) -> tuple[Avatar, Backend]:
        avatar = load_avatar(name, settings.home)
        return avatar, make_backend(settings.backend, avatar, settings.threads)

    return load


def create_app(
    settings: Settings,
    *,
    loader: EngineLoader | None = None,
    speech: SpeechSource | None = None,
    session_config: SessionConfig | None = None,
    max_sessions: int | None = None,
    warm_avatar: bool = True,
) -> FastAPI:
    """The app. ``loader`` (name -> avatar, backend; blocking), ``speech`` (text -> 16 kHz
    chunks; blocking) and ``session_config`` are injectable for tests and bench."""
    load = loader or default_loader(settings)
    text_to_speech: SpeechSource = speech or BuiltinSpeech()
    limits = settings.limits
    config = replace(
        session_config or SessionConfig(),
        max_text_chars=limits.max_text_chars,
        max_queued_utterances=limits.max_queued_utterances,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = Metrics()
        # Sessions stamp frame deadlines with the loop's clock: the workers compare them on it.
        clock = asyncio.get_running_loop().time
        engines = EnginePool(load, settings.batch_size, metrics.observe_batch, clock=clock)
        # Compositing is numpy/OpenCV work that releases the GIL: one thread per core.
        compose_pool = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="compose")
        speech_pool = ThreadPoolExecutor(1, thread_name_prefix="speech")
        decode_pool = ThreadPoolExecutor(1, thread_name_prefix="decode")

        async def make_session(
            name: str, options: SessionOptions, on_failure: Callable[[Session, BaseException], None]
        ) -> Session:
            engine = await engines.get(name)
            return Session(
                engine.avatar,
                engine.worker,
                executor=compose_pool,
                speech=text_to_speech,
                speech_executor=speech_pool,
                metrics=metrics,
                config=config,
                options=options,
                on_failure=on_failure,
            )

        webrtc = PeerRegistry()

        async def closed(session: Session) -> None:
            app.state.avatarcast.access.views.forget(session.id)  # its tokens go with it
            await webrtc.remove_session(session.id)  # hang up its viewers

        registry = SessionRegistry(
            make_session,
            max_sessions or settings.max_sessions,
            closed,
            per_key=limits.sessions_per_key,
        )
        metrics.bind(
            sessions=lambda: len(registry),
            viewers=lambda: sum(s.viewers for s in registry.list()),
            inference_queue=lambda: engines.depth,
            utterance_queue=lambda: sum(s.queued for s in registry.list()),
            audio_buffered_s=lambda: sum(s.buffered_samples() for s in registry.list()) / 16000,
            encoders=lambda: len(_encoders(registry)),
            video_encode_ms=lambda: _mean(e.encode_ms for e in _encoders(registry)),
            frames_given_up=lambda: engines.frames_given_up,
            outputs=lambda: [
                (o["type"], o["state"]) for s in registry.list() for o in s.outputs.describe()
            ],
        )
        app.state.avatarcast = AppState(
            settings, metrics, engines, registry, webrtc, compose_pool, speech_pool, decode_pool
        )
        await _warm_up(settings, engines, text_to_speech, speech_pool, decode_pool, warm_avatar)
        if settings.outputs:  # serve --output: a headless stream that needs no API call
            await _serve_outputs(settings, registry, metrics)
        reaper = None
        if limits.idle_session_s > 0:
            reaper = asyncio.create_task(registry.reap_idle(limits.idle_session_s))
        # A revoked key's sockets and sessions end within a second (api/revocation.py).
        revoker = asyncio.create_task(app.state.avatarcast.access.watch_revocations(registry))
        try:
            yield
        finally:
            revoker.cancel()
            if reaper is not None:
                reaper.cancel()
            await webrtc.aclose()
            await registry.aclose()
            await engines.aclose()
            for pool in (compose_pool, speech_pool, decode_pool):
                pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="avatarcast",
        version="0.1.0",
        summary="A real-time streaming avatar: speak to it, watch it over WebRTC.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's Swagger UI loads scripts from a CDN: see streamer.api.apidocs
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(ApiCors, origins=settings.cors_origins)
    app.add_middleware(BodyLimit)
    for router in core_routers():
        app.include_router(router)
    return app


async def _warm_up(
    settings: Settings,
    engines: EnginePool,
    speech: SpeechSource,
    speech_pool: ThreadPoolExecutor,
    decode_pool: ThreadPoolExecutor,
    warm_avatar: bool,
) -> None:
    """Load what the first requests would otherwise wait for, before the first request."""
    tts_warm = None
    if warm_avatar and isinstance(speech, BuiltinSpeech):
        tts_warm = asyncio.wrap_future(speech_pool.submit(speech.warm))
    # The first viewer's WHEP POST must not hold the loop for DTLS's first-time set-up.
    await asyncio.get_running_loop().run_in_executor(decode_pool, warm_up)
    if warm_avatar:  # the first session should not wait for the model to load
        try:
            await engines.get(settings.avatar)
        except Exception as exc:
            log.warning("avatar %r is not usable yet: %s", settings.avatar, exc)
    if tts_warm is not None:
        # Awaited before the first request: its imports (scipy's, hundreds of modules)
        # hold the GIL and stalled the loop for a viewer connecting in the first seconds.
        # A TTS that cannot load says so on the first speak instead.
        try:
            await tts_warm
        except Exception as exc:
            log.warning("the built-in TTS is not usable yet: %s", exc)


async def _serve_outputs(settings: Settings, registry: SessionRegistry, metrics: Metrics) -> None:
    """``serve --output``: a headless stream of the default session that needs no API call."""
    session = await registry.create(settings.avatar)
    for spec in output_specs(settings):
        output = attach_output(session, spec, metrics)
        log.info("session %s: output %s to %s", session.id, output.id, spec.target)


def output_specs(settings: Settings) -> list[OutputSpec]:
    """The ``--output`` URLs, validated (a :class:`ConfigError` says which is wrong)."""
    try:
        return specs_from_urls(settings.outputs, settings.recordings_dir, settings.whip_token)
    except OutputRejected as exc:
        raise ConfigError(exc.message) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror}): stop what uses it "
                "or choose another --port"
            ) from None


def serve(settings: Settings) -> int:
    """Run the server until interrupted (Ctrl-C). Binds where ``settings.host`` says: the
    loopback by default; a public address only when API keys exist, or with ``--insecure``
    (then warned about): an open server elsewhere lets anyone make a face speak.

    The avatar, the backend and the port are checked before the server starts, so a missing
    model or an absent backend is a clear error now, not a failure at a session's first frame.
    """
    import uvicorn

    from streamer.shutdown import DrainingServer

    limit_arenas()  # before the backend and the executors start their threads: see allocator
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # httpx logs each request's URL at INFO: a WHIP output's URL may hold a stream key.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    keyed = Keyring(settings.home, settings.api_key).has_keys()
    if not keyed and not settings.insecure and not _is_loopback(settings.host):
        raise ConfigError(
            f"refusing to serve on {settings.host} with no API key: anyone who can reach it "
            "could use it. Create one (avatarcast keys create --scope admin) or pass --insecure"
        )
    output_specs(settings)  # a bad --output is a clear error now, not a log line later
    avatar = load_avatar(settings.avatar, settings.home)
    backend = make_backend(settings.backend, avatar, settings.threads)
    _check_port(settings.host, settings.port)
    log.info("avatar %r on backend %s", avatar.name, backend_key(backend))
    if not keyed and not _is_loopback(settings.host):
        log.warning("serving on %s with no API key (--insecure): anyone can use it", settings.host)
    fallback = default_loader(settings)

    def loader(name: str) -> tuple[Avatar, Backend]:
        return (avatar, backend) if name == avatar.name else fallback(name)

    config = uvicorn.Config(
        create_app(settings, loader=loader),
        host=settings.host,
        port=settings.port,
        log_level="info",
        **{**UVICORN_OPTIONS, "ws_max_size": 2 * settings.limits.ws_max_message_bytes},
    )
    redact.install()  # uvicorn configured its loggers above: keep tokens out of them
    DrainingServer(config).run()  # SIGTERM: sessions told, recordings finalised, then exit
    return 0


UVICORN_OPTIONS: dict[str, Any] = {
    "ws": "websockets",  # sansio logs a spurious error after a denial response (uvicorn 0.54)
    "ws_max_size": 2 << 20,
    # PCM does not compress: deflating every 20 ms message would only cost CPU on both ends.
    "ws_per_message_deflate": False,
    "lifespan": "on",
    # Clients keep an idle connection for some seconds (httpx 5 s, browsers more) and send
    # the next request on it. A server that closes idle connections after the same 5 s (the
    # default) races them: the client reads a closed connection (httpx's ReadError) for a
    # request the server never saw, which the 30-minute soak hit twice under load. Holding
    # idle connections longer than clients do leaves the closing to the client.
    "timeout_keep_alive": 75,
    # After draining the sessions, a connection still open is closed after this long.
    "timeout_graceful_shutdown": 10,
}


def _encoders(registry: SessionRegistry) -> list[EncodedStream]:
    return [e for s in registry.list() for e in s.encoders()]


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else 0.0
