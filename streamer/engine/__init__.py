"""Inference backends behind one interface: ``infer(reference, masked, mel) -> mouth``."""

from streamer.engine.base import Backend, BackendError
from streamer.engine.factory import NAMES, make_backend
from streamer.engine.onnx import OnnxBackend

__all__ = ["NAMES", "Backend", "BackendError", "OnnxBackend", "make_backend"]
