"""MediaPipe, imported quietly and working on the protobuf the LiveKit SDK needs.

mediapipe 0.10.21's C++ bindings call ``MessageFactory().GetPrototype(descriptor)`` when they
read a proto packet back (for example an empty detection list when no face is found). Protobuf
5 removed that method in favour of ``message_factory.GetMessageClass``; the server's optional
``livekit`` extra needs protobuf 6, so the method is put back as an alias when it is missing.
Everything else in mediapipe runs on protobuf 6 unchanged (``tests/test_matte.py`` and the
tracking tests run on it).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any


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
