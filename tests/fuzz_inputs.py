"""What the fuzz tests share: hostile inputs as hypothesis strategies, and an app served on
its own thread.

- :func:`sdp_bodies`, :func:`sdp_fragments`: SDP offers and trickle fragments, from a real
  aiortc offer mutated line by line (lines dropped, doubled, swapped, rewritten, cut short,
  a section repeated up to 120 times) or plain noise.
- :func:`audio_bodies`: audio files whole, mutated (bytes flipped, cut short, a valid header
  on noise) or noise.
- :class:`ServedInThread`: the app under uvicorn on its own event loop in a thread, so that
  synchronous drivers (schemathesis, hypothesis) can call it while it streams; coroutines run
  on its loop with :meth:`ServedInThread.call`.
"""

from __future__ import annotations

import asyncio
import io
import threading
import wave
from collections.abc import Coroutine
from fractions import Fraction
from typing import Any, TypeVar

import av
import uvicorn
from fastapi import FastAPI
from hypothesis import strategies as st

from models.audio import SAMPLE_RATE
from tests.conftest import tone
from tests.webrtc_fakes import whep_offer

T = TypeVar("T")


# --- SDP -------------------------------------------------------------------------------------


def offer_template() -> str:
    """A real recvonly offer (video and audio) made by aiortc, as a browser's would be."""

    async def make() -> str:
        pc = await whep_offer()
        try:
            return str(pc.localDescription.sdp)
        finally:
            await pc.close()

    return asyncio.run(make())


@st.composite
def _mutated(draw: st.DrawFn, lines: list[str]) -> str:
    out = list(lines)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, max(0, len(out) - 1)))
        op = draw(st.sampled_from(["drop", "double", "swap", "rewrite", "insert", "cut", "repeat"]))
        if not out:
            out.append(draw(st.text(max_size=40)))
        elif op == "drop":
            del out[i]
        elif op == "double":
            out.insert(i, out[i])
        elif op == "swap":
            j = draw(st.integers(0, len(out) - 1))
            out[i], out[j] = out[j], out[i]
        elif op == "rewrite":  # keep the key (a=, m=, c=...), change what it says
            key = out[i].split(":", 1)[0] if ":" in out[i] else out[i][:2]
            out[i] = key + draw(st.sampled_from([":", "", " ", "="])) + draw(st.text(max_size=40))
        elif op == "insert":
            out.insert(i, draw(st.text(max_size=60)))
        elif op == "cut":
            out[i] = out[i][: draw(st.integers(0, len(out[i])))]
        else:  # a media section repeated, up to well past what a server should take
            starts = [k for k, line in enumerate(out) if line.startswith("m=")] or [0]
            first = starts[0]
            section = out[first : starts[1] if len(starts) > 1 else len(out)]
            out.extend(section * draw(st.integers(1, 120)))
    return draw(st.sampled_from(["\r\n", "\n"])).join(out)


def sdp_texts(template: str) -> st.SearchStrategy[str]:
    """The template, mutations of it, and noise."""
    lines = template.rstrip("\r\n").split("\r\n")
    return st.one_of(
        st.just(template),
        _mutated(lines),
        _mutated(lines),
        _mutated(lines),
        st.text(max_size=300),
        st.just(""),
    )


def sdp_bodies(template: str) -> st.SearchStrategy[bytes]:
    """Request bodies: :func:`sdp_texts` as UTF-8, and bytes that are no text at all."""
    return st.one_of(sdp_texts(template).map(str.encode), st.binary(max_size=300))


def fragment_texts() -> st.SearchStrategy[str]:
    """Trickle ICE fragments: a fragment's lines mutated, and noise."""
    lines = [
        "a=ice-ufrag:abcd",
        "a=ice-pwd:" + "p" * 22,
        "m=audio 9 UDP/TLS/RTP/SAVPF 0",
        "a=mid:0",
        "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host",
        "a=end-of-candidates",
    ]
    return st.one_of(_mutated(lines), st.text(max_size=200), st.just(""))


# --- audio -----------------------------------------------------------------------------------


def wav_file(seconds: float = 0.1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((tone(seconds) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def flac_file(seconds: float = 0.1) -> bytes:
    """A compressed container too, so the fuzz reaches a real decoder's parser."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=SAMPLE_RATE)
        stream.layout = "mono"
        pcm = (tone(seconds) * 32767).astype("<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, 0, Fraction(1, SAMPLE_RATE)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buf.getvalue()


@st.composite
def _damaged(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    kind = draw(st.sampled_from(["flip", "cut", "noise_after_header"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 16))):
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
    elif kind == "cut":
        del out[draw(st.integers(0, len(out))) :]
    else:
        head = draw(st.integers(4, 64))
        out[head:] = draw(st.binary(min_size=0, max_size=2048))
    return bytes(out)


def audio_bodies() -> st.SearchStrategy[bytes]:
    wav, flac = wav_file(), flac_file()
    return st.one_of(
        st.sampled_from([wav, flac]),
        _damaged(wav),
        _damaged(flac),
        st.binary(max_size=2048),
    )


# --- an app on its own thread ----------------------------------------------------------------


class ServedInThread:
    """``app`` served by uvicorn on a free loopback port, on an event loop in a thread."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.url = ""
        self.loop = asyncio.new_event_loop()
        # No log config of uvicorn's own: its records reach the root logger (and caplog).
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, ws="websockets", log_config=None, lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="served-app", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._server.serve())

    def __enter__(self) -> ServedInThread:
        self._thread.start()
        for _ in range(6000):
            if self._server.started or not self._thread.is_alive():
                break
            threading.Event().wait(0.01)
        if not self._server.started:
            raise RuntimeError("the app did not start (see the log above)")
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(60)
        self.loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the app's loop (where its sessions live) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def frames_made(served: ServedInThread, session: Any, seconds: float = 0.5) -> int:
    """How many frames ``session`` makes in ``seconds``: is it still streaming?"""

    async def count() -> int:
        before = session.stats.frames
        await asyncio.sleep(seconds)
        return int(session.stats.frames - before)

    return served.call(count())
