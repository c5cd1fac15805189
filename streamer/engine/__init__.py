"""Inference backends behind one interface: ``infer(reference, masked, mel) -> mouth``."""

from streamer.engine.base import KEYS, NAMES, Backend, BackendError, BackendSpec, backend_key
from streamer.engine.factory import available_backends, make_backend
from streamer.engine.onnx import OnnxBackend

__all__ = [
    "KEYS",
    "NAMES",
    "Backend",
    "BackendError",
    "BackendSpec",
    "OnnxBackend",
    "available_backends",
    "backend_key",
    "make_backend",
]
