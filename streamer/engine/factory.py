"""Choosing a backend for an avatar: ``auto`` takes the fastest one that works here."""

from __future__ import annotations

from models.avatar import Avatar
from streamer.engine.base import Backend, BackendError
from streamer.engine.onnx import OnnxBackend, available_providers

NAMES = ("auto", "onnx", "tensorrt", "torch")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def make_backend(name: str, avatar: Avatar, threads: int = 2) -> Backend:
    """``onnx`` uses CUDA when onnxruntime-gpu sees a GPU, else the CPU; ``tensorrt`` needs
    ORT's TensorRT provider; ``torch`` runs the avatar's checkpoint.pt; ``auto`` = onnx."""
    if name not in NAMES:
        raise BackendError(f"unknown backend {name!r}: use one of {', '.join(NAMES)}")
    providers = available_providers()
    if name == "torch":
        from streamer.engine.torch_backend import TorchBackend

        if avatar.checkpoint_path is None:
            raise BackendError(
                f"avatar {avatar.name!r} has no checkpoint.pt for the torch backend: "
                "use --backend onnx"
            )
        return TorchBackend(avatar.checkpoint_path, "cuda" if _cuda_available() else "cpu", threads)
    if name == "tensorrt":
        if "TensorrtExecutionProvider" not in providers:
            raise BackendError(
                "TensorRT is not available here (needs onnxruntime-gpu with TensorRT): "
                "use --backend onnx"
            )
        chosen = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    elif "CUDAExecutionProvider" in providers:
        chosen = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        chosen = ["CPUExecutionProvider"]
    return OnnxBackend(avatar.model_path, threads=threads, providers=chosen)
