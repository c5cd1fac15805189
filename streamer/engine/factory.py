"""Choosing a backend for an avatar.

Names the user types: ``auto``, ``onnx``, ``tensorrt``, ``torch``. The figure keys of bench
(``onnx-cpu``, ``onnx-cuda``, ``tensorrt``, ``torch-cpu``, ``torch-cuda``) are accepted too and
pin the device (:class:`~streamer.engine.base.BackendSpec` reads them). ``auto`` takes
TensorRT (when an engine for this GPU is built), then ONNX Runtime on CUDA, then ONNX Runtime
on the CPU, and logs why it passed over each.
``onnx-int8`` is the reduced CPU model (``python -m streamer.measure.int8_gate``), offered
where an avatar has one; ``auto`` does not pick it (FP32 stays the default).
"""

from __future__ import annotations

import logging
from pathlib import Path

from models.avatar import Avatar
from models.quantize import INT8_FILE  # the reduced CPU model, when built
from streamer.engine.base import KEYS, Backend, BackendError, BackendSpec
from streamer.engine.onnx import CPU, CUDA, OnnxBackend, available_providers, cuda_provider_usable

log = logging.getLogger(__name__)


def _torch_cuda() -> tuple[bool, str]:
    from streamer.engine.torch_backend import torch_cuda_usable

    return torch_cuda_usable()


def _tensorrt(avatar: Avatar | None) -> tuple[bool, str]:
    from streamer.engine.tensorrt import find_engine, tensorrt_usable

    usable, why = tensorrt_usable()
    if not usable or avatar is None:
        return usable, why
    try:
        find_engine(avatar.model_path, avatar.name)
    except (BackendError, OSError) as exc:
        return False, str(exc)
    return True, why


def _torch_installed() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def available_backends(avatar: Avatar | None = None) -> list[str]:
    """The backend keys that can run here, in :data:`KEYS` order. With an ``avatar``, only
    those that can run *it*: torch needs its checkpoint.pt, tensorrt a built engine."""
    out = []
    if CPU in available_providers():
        out.append("onnx-cpu")
    if cuda_provider_usable()[0] and _torch_cuda_or_unknown():
        out.append("onnx-cuda")
    if _tensorrt(avatar)[0]:
        out.append("tensorrt")
    if avatar is not None and (avatar.path / INT8_FILE).is_file() and "onnx-cpu" in out:
        out.append("onnx-int8")
    has_checkpoint = avatar is None or avatar.checkpoint_path is not None
    if _torch_installed() and has_checkpoint:
        out.append("torch-cpu")
        if _torch_cuda()[0]:
            out.append("torch-cuda")
    return [k for k in KEYS if k in out]


def _torch_cuda_or_unknown() -> bool:
    """onnxruntime-gpu lists its CUDA provider on machines with no GPU; torch, when it is
    here and built with CUDA, can tell. Otherwise we trust the listing, and a provider that
    fails to start is caught when the session is made (an error, or a logged CPU fallback)."""
    try:
        import torch
    except ImportError:
        return True
    if torch.version.cuda is None:
        return True
    return bool(torch.cuda.is_available())


def make_backend(
    name: str, avatar: Avatar, threads: int = 2, model_path: Path | str | None = None
) -> Backend:
    """The backend ``name`` for ``avatar``, loaded and ready, or a :class:`BackendError` that
    says what to do. ``model_path`` replaces the avatar's ONNX model (a reduced model, say)."""
    spec = BackendSpec.parse(name)
    model = Path(model_path) if model_path is not None else avatar.model_path
    if spec.name == "auto":
        return _auto(avatar, threads, model)
    if spec.name == "torch":
        return _torch(spec, avatar, threads)
    if spec.name == "tensorrt":
        from streamer.engine.tensorrt import load_for_model

        return load_for_model(model, avatar.name)
    if spec.precision == "int8":
        reduced = avatar.path / INT8_FILE
        if not reduced.is_file():
            raise BackendError(
                f"avatar {avatar.name!r} has no reduced model {INT8_FILE}: build it with "
                f"`python -m streamer.measure.int8_gate --avatar {avatar.name}` or use "
                "--backend onnx"
            )
        return OnnxBackend(reduced, threads=threads, providers=(CPU,), precision="int8")
    if spec.device == "cuda":
        usable, why = cuda_provider_usable()
        if not usable or not _torch_cuda_or_unknown():
            reason = why if not usable else _torch_cuda()[1]
            raise BackendError(f"onnx-cuda is not available here ({reason}): use --backend onnx")
        return OnnxBackend(model, threads=threads, providers=(CUDA, CPU))
    if spec.device is None and cuda_provider_usable()[0] and _torch_cuda_or_unknown():
        try:
            return OnnxBackend(model, threads=threads, providers=(CUDA, CPU))
        except BackendError as exc:
            log.warning("backend onnx: CUDA failed (%s); using the CPU", exc)
    return OnnxBackend(model, threads=threads, providers=(CPU,))


def _torch(spec: BackendSpec, avatar: Avatar, threads: int) -> Backend:
    from streamer.engine.torch_backend import TorchBackend

    if avatar.checkpoint_path is None:
        raise BackendError(
            f"avatar {avatar.name!r} has no checkpoint.pt for the torch backend: use --backend onnx"
        )
    device = spec.device or ("cuda" if _torch_cuda()[0] else "cpu")
    return TorchBackend(avatar.checkpoint_path, device, threads)


def _auto(avatar: Avatar, threads: int, model: Path) -> Backend:
    skipped: list[str] = []
    usable, why = _tensorrt(avatar) if model == avatar.model_path else (False, "custom model")
    if usable:
        try:
            from streamer.engine.tensorrt import load_for_model

            backend: Backend = load_for_model(model, avatar.name)
            log.info("backend auto: tensorrt (%s)", why)
            return backend
        except BackendError as exc:
            why = str(exc)
    skipped.append(f"tensorrt: {why}")
    usable, why = cuda_provider_usable()
    if usable and not _torch_cuda_or_unknown():
        usable, why = False, _torch_cuda()[1]
    if usable:
        try:
            backend = OnnxBackend(model, threads=threads, providers=(CUDA, CPU))
            log.info("backend auto: onnx-cuda (%s; skipped %s)", why, "; ".join(skipped))
            return backend
        except BackendError as exc:
            why = str(exc)
    skipped.append(f"onnx-cuda: {why}")
    backend = OnnxBackend(model, threads=threads, providers=(CPU,))
    log.info("backend auto: onnx-cpu, %d threads (skipped %s)", threads, "; ".join(skipped))
    return backend
