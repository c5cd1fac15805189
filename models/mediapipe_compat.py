"""MediaPipe, imported quietly and working on the protobuf the LiveKit SDK needs.

mediapipe 0.10.21's C++ bindings call ``MessageFactory().GetPrototype(descriptor)`` when they
read a proto packet back (for example an empty detection list when no face is found). Protobuf
5 removed that method in favour of ``message_factory.GetMessageClass``; the server's optional
``livekit`` extra needs protobuf 6, so the method is put back as an alias when it is missing.
Everything else in mediapipe runs on protobuf 6 unchanged (``tests/test_matte.py`` and the
tracking tests run on it).

A solution builds its graph on its first ``process`` call, and its C++ side then writes warnings
that no setting turns off (absl logs to the process's standard error before it is initialised:
"Feedback manager requires a model with a single signature...", two per graph). ``avatar
create`` builds a dozen graphs, and these lines buried its progress bar. :func:`started` runs
that first call on a blank picture with the standard error's descriptor pointed at /dev/null
(and, once per process, a face: the first face found writes one more warning).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

Solution = TypeVar("Solution")


def import_mediapipe() -> ModuleType:
    """``mediapipe``, with its start-up chatter off and the protobuf alias in place."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ info lines
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from google.protobuf import message_factory

    factory: Any = message_factory.MessageFactory
    if not hasattr(factory, "GetPrototype"):
        factory.GetPrototype = lambda self, descriptor: message_factory.GetMessageClass(descriptor)
    import mediapipe

    return mediapipe


@contextlib.contextmanager
def native_stderr_quiet() -> Iterator[None]:
    """File descriptor 2 on /dev/null while the block runs, so C++ code cannot write there.
    Only on the main thread (a command's own work); elsewhere nothing changes, so that a
    server's other threads never lose a line to it."""
    if not _on_main_thread():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def started(make: Callable[[], Solution]) -> Solution:
    """The MediaPipe solution ``make`` builds, built quietly: made, then one ``process`` of a
    small blank picture, where no face or person is found, so no tracking state is kept. A
    solution starts its graph as it is made, and the graph's own threads open its models and
    write their warnings soon after, so the making is inside the quiet block too (outside it,
    the lines of some graphs slipped out, mid-progress, in every ``eval``).

    The first face a process finds makes one more warning ("Using NORM_RECT without
    IMAGE_DIMENSIONS...", once per process), so solutions started on the main thread also see
    the default face, until a face mesh has found it, then the blank picture again to drop
    what they tracked."""
    global _face_seen
    blank = np.zeros((64, 64, 3), np.uint8)
    with native_stderr_quiet():
        solution = make()
        solution.process(blank)  # type: ignore[attr-defined]
        if not _face_seen and _on_main_thread():
            from skimage import data

            face = np.ascontiguousarray(data.astronaut())
            found = solution.process(face)  # type: ignore[attr-defined]
            solution.process(blank)  # type: ignore[attr-defined]
            # Only a face mesh that found the face has written it (not a person's matte).
            _face_seen = bool(getattr(found, "multi_face_landmarks", None))
    return solution


_face_seen = False  # whether this process has quietly shown MediaPipe a face


def _on_main_thread() -> bool:
    """Where standard error may be silenced (see :func:`native_stderr_quiet`)."""
    return threading.current_thread() is threading.main_thread()
