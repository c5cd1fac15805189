"""glibc's malloc, tuned for a server whose threads pass large buffers around, and its figures.

Each thread that allocates gets a malloc arena of its own (up to 8 per core). The server's
threads (the inference worker, ONNX Runtime's pool, the compositing and encoding executors,
PyAV's codec threads) allocate pictures of about 0.8 MB and free them on other threads; the
memory freed into one thread's arena stays there, mapped, and each arena grows to its own
high-water mark. The resident size then climbs for many minutes under steady use without a
single object being kept (docs/benchmarks.md, "Soak"). Two arenas halved that growth in the
soak, whose sessions kept their 25 fps; on two cores more arenas than threads running at
once buy little.

``MALLOC_ARENA_MAX`` in the environment (glibc's own setting) wins: when it is set, nothing is
changed. Elsewhere than glibc (musl, macOS) :func:`limit_arenas` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``mallopt`` and ``mallinfo2``), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "mallinfo2"):
        return None
    return libc


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``arenas``, unless ``MALLOC_ARENA_MAX`` is set; whether
    the cap was set here. Call it before the server starts its threads: a thread keeps the
    arena it already has."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    libc = _libc()
    if libc is None:
        return False
    done = bool(libc.mallopt(_M_ARENA_MAX, arenas))
    if done:
        log.debug("malloc arenas capped at %d", arenas)
    return done


def malloc_figures() -> dict[str, float] | None:
    """What glibc's malloc holds, in MB, over all arenas: ``heap_used_mb`` (blocks handed out,
    mmapped ones included) and ``heap_free_mb`` (freed, still mapped in the arenas' heaps).
    RSS growing with ``heap_used_mb`` flat and ``heap_free_mb`` rising is the allocator keeping
    freed memory, not a leak. None where malloc is not glibc's."""
    libc = _libc()
    if libc is None:
        return None
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    mb = 1024 * 1024
    return {
        "heap_used_mb": round((info.uordblks + info.hblkhd) / mb, 1),
        "heap_free_mb": round(info.fordblks / mb, 1),
    }
