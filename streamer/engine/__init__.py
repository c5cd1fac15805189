"""Inference backends behind one interface: ``infer(reference, masked, mel) -> mouth``."""

from streamer.engine.base import Backend, BackendError
from streamer.engine.factory import KEYS, NAMES, available_backends, make_backend
from streamer.engine.onnx import OnnxBackend

__all__ = [
    "KEYS",
    "NAMES",
    "Backend",
    "BackendError",
    "OnnxBackend",
    "available_backends",
    "make_backend",
]
