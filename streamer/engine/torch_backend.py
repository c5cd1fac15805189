"""PyTorch backend: runs the training checkpoint directly (needs the ``train`` extra).

The reference for parity: FP32 on the CPU, FP16 on CUDA (what a GPU serves in practice;
``half=False`` gives FP32 there too). Inputs and outputs are float32 arrays either way.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from streamer.engine.base import BackendError


def torch_cuda_usable() -> tuple[bool, str]:
    """Whether torch can run on a CUDA device here, and why not."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed (pip install 'avatarcast[train]')"
    if not torch.cuda.is_available():
        built = torch.version.cuda
        return False, (
            "torch sees no CUDA device" if built else "torch was built without CUDA (a CPU wheel)"
        )
    return True, f"torch CUDA on {torch.cuda.get_device_name(0)}"


def load_generator(checkpoint: Path | str) -> Any:
    """The generator module of a training checkpoint, on the CPU, in eval mode."""
    try:
        import torch

        from models.config import GeneratorConfig, from_dict
        from models.networks import Generator
    except ImportError as exc:
        raise BackendError(
            f"the torch backend needs torch ({exc.name} is missing): "
            "pip install 'avatarcast[train]' or use --backend onnx"
        ) from None
    path = Path(checkpoint)
    if not path.is_file():
        raise BackendError(f"checkpoint {path} does not exist: use --backend onnx")
    try:
        ckpt: Any = torch.load(path, map_location="cpu", weights_only=True)
        config = ckpt["config"]
        config = config.get("generator", config)
        state = ckpt["state"]
        state = state.get("generator", state)
        model = Generator(from_dict(GeneratorConfig, config))
        model.load_state_dict(state)
    except Exception as exc:  # torch's unpickler raises many types for a corrupt file
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise BackendError(
            f"{path} is not a generator checkpoint ({first}): use --backend onnx"
        ) from None
    return model.eval()


class TorchBackend:
    def __init__(
        self, checkpoint: Path | str, device: str = "cpu", threads: int = 2, half: bool = True
    ) -> None:
        model = load_generator(checkpoint)
        import torch

        kind = device.split(":")[0]
        if kind == "cuda":
            usable, why = torch_cuda_usable()
            if not usable:
                raise BackendError(f"torch-cuda is not available here ({why}): use torch-cpu")
            torch.backends.cudnn.benchmark = True
        elif kind == "cpu":
            torch.set_num_threads(max(1, threads))
        else:
            raise BackendError(f"unknown torch device {device!r}: use cpu or cuda")
        self.half = half and kind == "cuda"
        self._dtype = torch.float16 if self.half else torch.float32
        self._torch = torch
        self._model = model.to(device=device, dtype=self._dtype)
        self._device = device
        self._lock = threading.Lock()  # torch modules are not re-entrant on one stream
        self.name = f"torch-{kind}"

    def infer(self, reference: np.ndarray, masked: np.ndarray, mel: np.ndarray) -> np.ndarray:
        torch = self._torch

        def tensor(a: np.ndarray) -> Any:
            t = torch.from_numpy(np.ascontiguousarray(a, np.float32))
            return t.to(self._device, non_blocking=True).to(self._dtype)

        with self._lock, torch.inference_mode():
            out = self._model(tensor(reference), tensor(masked), tensor(mel))
            result = out.float().cpu().numpy()
        return np.asarray(result, np.float32)
