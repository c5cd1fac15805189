"""An offline pipecat TTS: the ``espeak-ng`` program, the same engine avatarcast's built-in TTS
uses. It needs no account, no network and no model download, so a pipeline with an avatar can
be tried (and tested) anywhere ``apt-get install espeak-ng`` works. Swap in a cloud TTS for a
natural voice; the avatar service takes any pipecat TTS's audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from pipecat.frames.frames import ErrorFrame, Frame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService

READ_BYTES = 8192
WAV_HEADER_BYTES = 44


@dataclass
class EspeakTTSSettings(TTSSettings):
    """Settings for :class:`EspeakTTSService`; ``voice`` is an espeak-ng voice (``en-us``)."""


class EspeakTTSService(TTSService):
    """Text to speech with the local ``espeak-ng`` program, streamed as it synthesises."""

    Settings = EspeakTTSSettings
    _settings: EspeakTTSSettings

    def __init__(
        self,
        *,
        words_per_minute: int = 165,
        executable: str = "espeak-ng",
        settings: EspeakTTSSettings | None = None,
        **kwargs: Any,
    ) -> None:
        default_settings = EspeakTTSSettings(model=None, voice="en-us", language=None)
        if settings is not None:
            default_settings.apply_update(settings)
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            settings=default_settings,
            **kwargs,
        )
        if not 80 <= words_per_minute <= 450:
            raise ValueError("words_per_minute must be 80..450")
        path = shutil.which(executable)
        if path is None:
            raise RuntimeError(
                f"{executable} is not installed: `apt-get install espeak-ng`, or use another TTS"
            )
        self._executable = path
        self._wpm = words_per_minute

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Run espeak-ng on ``text`` and stream its WAV output as audio frames."""
        voice = str(self._settings.voice or "en-us")
        process = await asyncio.create_subprocess_exec(
            *(self._executable, "--stdout", "-v", voice, "-s", str(self._wpm)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(text.encode("utf-8"))
        await process.stdin.drain()
        process.stdin.close()
        try:
            await self.start_tts_usage_metrics(text)
            async for frame in self._stream_audio_frames_from_iterator(
                self._chunks(process.stdout), strip_wav_header=True, context_id=context_id
            ):
                await self.stop_ttfb_metrics()
                yield frame
            if await process.wait() != 0:
                stderr = await process.stderr.read() if process.stderr else b""
                message = stderr.decode("utf-8", "replace").strip()
                yield ErrorFrame(error=f"espeak-ng failed on voice {voice!r}: {message}")
        finally:
            if process.returncode is None:
                process.kill()
                with contextlib.suppress(ProcessLookupError):
                    await process.wait()

    @staticmethod
    async def _chunks(stream: asyncio.StreamReader) -> AsyncIterator[bytes]:
        # pipecat strips the WAV header from the first chunk only, so it must hold all 44 bytes
        try:
            yield await stream.readexactly(WAV_HEADER_BYTES)
        except asyncio.IncompleteReadError:
            return  # no audio: the exit status says why
        while chunk := await stream.read(READ_BYTES):
            yield chunk
