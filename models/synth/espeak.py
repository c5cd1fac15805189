"""A small ctypes binding to the espeak-ng library: audio plus phoneme events.

espeak-ng keeps all of its state in the library (one voice, one callback, one set of
parameters), so the process gets one :class:`Espeak` object and every call holds its lock.
The system library is preferred because its data matches the distribution's voices; the
``espeakng-loader`` wheel is the fallback where espeak-ng is not installed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Values from espeak-ng/speak_lib.h (stable ABI since espeak 1.48).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class PhonemeEvent:
    """An espeak phoneme mnemonic (e.g. ``"oU"``) starting at ``sample`` of the output."""

    name: str
    sample: int


@dataclass(frozen=True)
class EspeakOutput:
    samples: np.ndarray  # int16 at ``rate``
    rate: int
    events: tuple[PhonemeEvent, ...]


class EspeakError(RuntimeError):
    pass


def _load_library() -> tuple[ctypes.CDLL, bytes | None]:
    """The library and the data path to give it (None: the library's compiled-in default)."""
    for name in (ctypes.util.find_library("espeak-ng"), "libespeak-ng.so.1"):
        if not name:
            continue
        try:
            return ctypes.CDLL(name), None
        except OSError:
            continue
    try:
        import espeakng_loader
    except ImportError as exc:
        raise EspeakError(
            "espeak-ng is not available: install the espeak-ng package or `espeakng-loader`"
        ) from exc
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    return lib, str(espeakng_loader.get_data_path()).encode()


class Espeak:
    """The process-wide espeak-ng engine; use :func:`engine` to get it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lib, data_path = _load_library()
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, options)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed ({rate})")
        self.rate = rate
        self._chunks: list[np.ndarray] = []
        self._events: list[PhonemeEvent] = []
        self._count = 0
        # The CFUNCTYPE object must outlive the library's pointer to it.
        self._callback = _CALLBACK(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(
        self, wav: ctypes._Pointer[ctypes.c_short], n: int, events: ctypes._Pointer[_Event]
    ) -> int:
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_PHONEME:
                name = bytes(event.id.string).split(b"\0", 1)[0].decode("utf-8", "replace")
                # audio_position is whole milliseconds; the sample clock is finer.
                position = round(event.audio_position * self.rate / 1000)
                self._events.append(PhonemeEvent(name, position))
            i += 1
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            self._count += n
        return 0  # 0 = continue synthesis

    def synthesize(
        self,
        text: str,
        voice: str,
        rate: int = 175,
        pitch: int = 50,
        pitch_range: int = 50,
        word_gap: int = 0,
    ) -> EspeakOutput:
        """Synthesise ``text``; rate in words per minute, pitch and range 0..100."""
        data = text.encode("utf-8") + b"\0"
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"unknown espeak-ng voice {voice!r}")
            for param, value in (
                (_PARAM_RATE, rate),
                (_PARAM_PITCH, pitch),
                (_PARAM_RANGE, pitch_range),
                (_PARAM_VOLUME, 100),
                (_PARAM_WORDGAP, word_gap),
            ):
                self._lib.espeak_SetParameter(param, int(value), 0)
            self._chunks, self._events, self._count = [], [], 0
            buffer = ctypes.create_string_buffer(data, len(data))
            status = self._lib.espeak_Synth(
                buffer, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            self._lib.espeak_Synchronize()
            if status != 0:
                raise EspeakError(f"espeak_Synth failed ({status})")
            chunks, events = self._chunks, tuple(self._events)
            self._chunks, self._events = [], []
        samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return EspeakOutput(samples.astype(np.int16, copy=False), self.rate, events)


@lru_cache(maxsize=1)
def engine() -> Espeak:
    """The one espeak-ng engine of this process (created on first use)."""
    return Espeak()
