"""``AvatarcastVideoService``: a self-hosted, lip-synced face for a pipecat voice agent.

Placed after the TTS, it sends the TTS's audio to an avatarcast session over the WebSocket and
plays the session back over WHEP. What leaves it downstream is the avatar's own picture and
voice, from one clock: ``OutputImageRawFrame`` and ``SpeechOutputAudioRawFrame``, each
released at its pts (see :mod:`pipecat_avatarcast.playout`). The TTS audio itself is not
passed on, since the avatar's voice is that audio, in step with its lips.

Lifecycle, as pipecat's own video services (Tavus, HeyGen) have it:
- ``StartFrame``: create the session, open the WebSocket and the WHEP viewer (in a task, so
  the pipeline starts at once; TTS audio that comes meanwhile waits in the uplink's outbox).
- Audio goes out, and frames come out, once the viewer sees the avatar and the output
  transport is ready (``OutputTransportReadyFrame``; ``wait_for_transport=False`` for a
  pipeline with no transport, such as one writing a file).
- ``TTSStoppedFrame`` ends the utterance (``audio_end``); ``InterruptionFrame`` interrupts the
  session before it is passed on, and flushes the frames waiting to be played and those still
  on their way, which carry the speech that was cut off (:class:`~.playout.Flush`).
- ``EndFrame`` waits until the speech sent has been played and shown, then closes; a
  ``CancelFrame`` closes at once. Closing deletes the WHEP resource, closes the WebSocket and
  deletes the session, and is idempotent.
Failures go upstream as ``ErrorFrame``s that say what failed and what to check.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import av
import httpx
import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    OutputTransportReadyFrame,
    SpeechOutputAudioRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.ai_service import AIService
from pipecat.services.settings import ServiceSettings

from pipecat_avatarcast.api import AvatarcastApi, AvatarcastError, SessionInfo
from pipecat_avatarcast.playout import Flush, Playout, RtpTime
from pipecat_avatarcast.uplink import MAX_RATE, MIN_RATE, SpeechUplink
from pipecat_avatarcast.viewer import WhepViewer

IMAGE_FIRST, AUDIO_NEXT = 0, 1  # at one instant, the picture goes before its sound
LOUD_RMS = 0.001  # of full scale (-60 dBFS): the avatar's idle audio is digital silence
NS = 1_000_000_000
EMPTY = np.zeros(0, np.int16)
TAIL_S = 0.3  # after the last playback_finished, how long the last frames take to arrive


@dataclass
class AvatarcastVideoSettings(ServiceSettings):
    """Settings for the avatarcast video service (none change at run time)."""


class AvatarcastVideoService(AIService):
    """Gives the agent an avatarcast face: TTS audio in, the avatar's video and voice out."""

    Settings = AvatarcastVideoSettings
    _settings: AvatarcastVideoSettings

    def __init__(
        self,
        *,
        base_url: str = "http://127.0.0.1:8080",
        api_key: str | None = None,
        avatar: str | None = None,
        video_codec: Literal["vp8", "h264"] = "vp8",
        ws_sample_rate: int | None = None,
        audio_out_sample_rate: int | None = None,
        playout_delay_s: float = 0.1,
        wait_for_transport: bool = True,
        sync_video_with_audio: bool = True,
        connect_timeout_s: float = 15.0,
        end_margin_s: float = 3.0,
        http: httpx.AsyncClient | None = None,
        settings: AvatarcastVideoSettings | None = None,
        **kwargs: Any,
    ) -> None:
        """Args:
        base_url: the avatarcast server (``avatarcast serve``).
        api_key: its API key, when it has one (sent as a Bearer token).
        avatar: the avatar to show; the server's default when None.
        video_codec: the session's video codec (``vp8`` or ``h264``).
        ws_sample_rate: the WebSocket's PCM rate; the pipeline's output rate (the TTS's
            usual rate) when None. TTS audio at another rate is resampled, and mixed to mono.
        audio_out_sample_rate: the rate of the avatar's audio frames; the pipeline's output
            rate when None.
        playout_delay_s: how far behind the first frame the frames are released, to absorb
            the two tracks' jitter. Added to the avatar's latency.
        wait_for_transport: push nothing until the output transport says it is ready. False
            for a pipeline without one (a file writer, a test).
        sync_video_with_audio: mark images ``sync_with_audio`` so the output transport shows
            each one after the audio before it has played.
        connect_timeout_s: how long the session, the WebSocket and WHEP may take to start.
        end_margin_s: on ``EndFrame``, how long past its expected end the speech may take.
        http: an ``httpx.AsyncClient`` to share; the service makes (and closes) its own if None.
        """
        default_settings = AvatarcastVideoSettings(model=None)
        if settings is not None:
            default_settings.apply_update(settings)
        super().__init__(settings=default_settings, **kwargs)
        self._api_key = api_key
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(10.0))
        self._api = AvatarcastApi(base_url, self._http, api_key)
        self._options: dict[str, Any] = {"video_codec": video_codec}
        if avatar:
            self._options["avatar"] = avatar
        self._ws_rate = ws_sample_rate
        self._out_rate = audio_out_sample_rate
        self._sync_video = sync_video_with_audio
        self._connect_timeout_s = connect_timeout_s
        self._end_margin_s = end_margin_s
        self._playout: Playout[Frame] = Playout(self._release, playout_delay_s)
        self._flush = Flush()
        self._transport_ready = not wait_for_transport
        self._seen = asyncio.Event()
        self._info: SessionInfo | None = None
        self._uplink: SpeechUplink | None = None
        self._viewer: WhepViewer | None = None
        self._clocks: dict[str, RtpTime] = {}
        self._audio_out: av.AudioResampler | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="avatarcast-frames")
        self._connect_task: asyncio.Task[None] | None = None
        self._playout_task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def session(self) -> SessionInfo | None:
        """The avatarcast session, once created (its ``view_url`` plays it in a browser)."""
        return self._info

    def can_generate_metrics(self) -> bool:
        return True

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]
        await super().setup(setup)
        self._out_rate = self._out_rate or setup.audio_out_sample_rate
        rate = self._ws_rate or setup.audio_out_sample_rate
        self._ws_rate = min(max(rate, MIN_RATE), MAX_RATE)

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        if self._closed or self._uplink is not None:
            return
        self._uplink = SpeechUplink(self._ws_rate or MIN_RATE, self._api_key, self._report)
        self._playout_task = self.create_task(self._playout.run(), "avatarcast-playout")
        self._connect_task = self.create_task(self._connect(), "avatarcast-connect")

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        await self._finish_speech()
        await self._close()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._close()

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._close()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            if self._uplink is not None and not self._closed:
                self._uplink.push_audio(frame.audio, frame.sample_rate, frame.num_channels)
            return  # the avatar's own voice replaces it
        if isinstance(frame, TTSStoppedFrame) and self._uplink is not None:
            self._uplink.end_utterance()
        elif isinstance(frame, InterruptionFrame):
            await self._interrupt()
        elif isinstance(frame, OutputTransportReadyFrame):
            self._transport_ready = True
            self._maybe_open_gate()
        await self.push_frame(frame, direction)

    # --- the connection -----------------------------------------------------------------

    async def _connect(self) -> None:
        uplink = self._uplink
        assert uplink is not None
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                self._info = info = await self._api.create_session(self._options)
                logger.info(f"{self}: avatarcast session {info.id}; watch it at {info.view_url}")
                await uplink.connect(info.ws_url)
                viewer = WhepViewer(info.whep_url, info.view_token, self._http, self._on_media)
                self._viewer = viewer
                await viewer.start(self._connect_timeout_s)
                await self._seen.wait()
        except TimeoutError as exc:
            await self._fail(
                f"no avatar frames from {self._api.base_url} within "
                f"{self._connect_timeout_s:.0f} s: is UDP between this process and the server "
                "open for WebRTC?",
                exc,
            )
            return
        except AvatarcastError as exc:
            await self._fail(str(exc), exc)
            return
        self._maybe_open_gate()

    async def _fail(self, message: str, exc: Exception) -> None:
        await self.push_error(
            f"avatarcast: {message}",
            exception=exc,
            force_treat_as_permanent=True,
        )

    async def _report(self, message: str) -> None:
        if not self._closed:
            await self.push_error(f"avatarcast: {message}")

    def _maybe_open_gate(self) -> None:
        if self._uplink is not None and self._seen.is_set() and self._transport_ready:
            self._uplink.open_gate()

    async def _interrupt(self) -> None:
        self._playout.clear()
        self._flush.start(asyncio.get_running_loop().time())
        if self._uplink is not None:
            await self._uplink.interrupt()

    # --- frames in and out --------------------------------------------------------------

    async def _on_media(self, kind: str, frame: av.VideoFrame | av.AudioFrame) -> None:
        """A decoded WHEP frame: time it on its track's clock, convert it, queue it."""
        self._seen.set()
        if frame.pts is None or frame.time_base is None:
            return
        clock = self._clocks.get(kind)
        if clock is None:  # counted from this track's first frame, ready or not
            clock = self._clocks[kind] = RtpTime(frame.time_base.denominator)
        t = clock.seconds(int(frame.pts))
        if not self._transport_ready or self._closed:
            return
        out: Frame | None
        if isinstance(frame, av.VideoFrame):
            if self._flush.video(t):
                return
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(self._executor, self._image, frame)
            rank = IMAGE_FIRST
        else:
            out = self._audio(t, frame)
            rank = AUDIO_NEXT
        if out is not None:
            out.pts = int(t * NS)
            self._playout.put(t, out, rank)

    def _image(self, frame: av.VideoFrame) -> OutputImageRawFrame:
        rgb = frame.to_ndarray(format="rgb24")
        image = OutputImageRawFrame(rgb.tobytes(), (frame.width, frame.height), "RGB")
        image.sync_with_audio = self._sync_video
        return image

    def _audio(self, t: float, frame: av.AudioFrame) -> SpeechOutputAudioRawFrame | None:
        rate = self._out_rate or frame.sample_rate
        if self._audio_out is None:
            self._audio_out = av.AudioResampler(format="s16", layout="mono", rate=rate)
        pcm = np.concatenate(
            [f.to_ndarray().reshape(-1) for f in self._audio_out.resample(frame)] or [EMPTY]
        ).astype("<i2")
        if not len(pcm):
            return None
        loud = float(np.sqrt(np.mean((pcm / 32768.0) ** 2))) > LOUD_RMS
        now = asyncio.get_running_loop().time()
        if self._flush.audio(t, len(pcm) / rate, loud, now):
            pcm = np.zeros_like(pcm)  # cut-off speech still on its way: silence instead
        return SpeechOutputAudioRawFrame(audio=pcm.tobytes(), sample_rate=rate, num_channels=1)

    async def _release(self, frame: Frame) -> None:
        if not self._closed:
            await self.push_frame(frame)

    # --- the end ------------------------------------------------------------------------

    async def _finish_speech(self) -> None:
        """On ``EndFrame``: let the avatar say and show what it was sent."""
        uplink, connecting = self._uplink, self._connect_task
        if uplink is None or self._closed or connecting is None:
            return
        if not connecting.done():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(connecting), self._connect_timeout_s)
        if self._info is None or not self._seen.is_set() or not self._transport_ready:
            return
        if not await uplink.drained(self._end_margin_s):
            logger.warning(f"{self}: the avatar had not finished speaking when the pipeline ended")
        # The last spoken frames are still on their way and in the playout; the avatar
        # always sends (idle frames), so waiting for an empty playout would never end.
        await asyncio.sleep(self._playout.delay_s + TAIL_S)

    async def _close(self) -> None:
        """Stop playing, close the socket and delete the session. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._connect_task is not None:
            await self.cancel_task(self._connect_task)
        if self._viewer is not None:
            await self._viewer.aclose()
        if self._uplink is not None:
            await self._uplink.aclose()
        if self._playout_task is not None:
            await self.cancel_task(self._playout_task)
        self._playout.clear()
        if self._info is not None:
            try:
                await self._api.delete_session(self._info.id)
            except AvatarcastError as exc:
                await self.push_error(f"avatarcast: {exc}", exception=exc)
        self._executor.shutdown(wait=False)
        if self._own_http:
            await self._http.aclose()
