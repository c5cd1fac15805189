"""PyTorch backend: runs the training checkpoint directly (needs the ``train`` extra).

The reference for parity: FP32 on the CPU, FP16 on CUDA (what a GPU serves in practice;
``half=False`` gives FP32 there too). Inputs and outputs are float32 arrays either way.

On CUDA each batch size is captured once as a CUDA graph and replayed after that: a
generator this small is launch-bound (dozens of kernels of microseconds each), and a
replay launches them all at once. The inputs are copied into the graph's own tensors.
A capture that fails (an old driver, a model that cannot be captured) falls back to plain
calls for that batch size, with a warning.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from streamer.engine.base import BackendError

log = logging.getLogger(__name__)


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
        from models.checkpoint import generator_from_checkpoint, load_checkpoint
    except ImportError as exc:
        raise BackendError(
            f"the torch backend needs torch ({exc.name} is missing): "
            "pip install 'avatarcast[train]' or use --backend onnx"
        ) from None
    path = Path(checkpoint)
    if not path.is_file():
        raise BackendError(f"checkpoint {path} does not exist: use --backend onnx")
    try:
        model = generator_from_checkpoint(load_checkpoint(path))
    except Exception as exc:  # torch's unpickler raises many types for a corrupt file
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise BackendError(
            f"{path} is not a generator checkpoint ({first}): use --backend onnx"
        ) from None
    return model


class TorchBackend:
    def __init__(
        self,
        checkpoint: Path | str,
        device: str = "cpu",
        threads: int = 2,
        half: bool = True,
        cuda_graphs: bool = True,
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
        self.name = "torch"
        # Always with its index, so that two spellings of one GPU share its inference worker.
        self.device = "cpu" if kind == "cpu" else f"cuda:{torch.device(device).index or 0}"
        self.precision = "fp16" if self.half else "fp32"
        self.cuda_graphs = kind == "cuda" and cuda_graphs
        # batch shapes -> (graph, its input tensors, its output tensor), or None: no graph
        self._graphs: dict[tuple[tuple[int, ...], ...], Any] = {}

    @property
    def captured_graphs(self) -> int:
        """How many batch shapes replay a captured CUDA graph (those whose capture failed run
        plain calls): what shows that graph capture works on this machine."""
        return sum(graph is not None for graph in self._graphs.values())

    def _tensor(self, a: np.ndarray) -> Any:
        t = self._torch.from_numpy(np.ascontiguousarray(a, np.float32))
        return t.to(self._device, non_blocking=True).to(self._dtype)

    def infer(self, reference: np.ndarray, masked: np.ndarray, mel: np.ndarray) -> np.ndarray:
        torch = self._torch
        arrays = (reference, masked, mel)
        with self._lock, torch.inference_mode():
            graph = self._graph(arrays) if self.cuda_graphs else None
            if graph is None:
                out = self._model(*(self._tensor(a) for a in arrays))
            else:
                replay, inputs, out = graph
                for target, a in zip(inputs, arrays, strict=True):
                    target.copy_(self._tensor(a))
                replay.replay()
            result = out.float().cpu().numpy()
        return np.asarray(result, np.float32)

    def _graph(self, arrays: tuple[np.ndarray, ...]) -> Any:
        """The CUDA graph for these input shapes, captured on first use (None: none)."""
        key = tuple(a.shape for a in arrays)
        if key in self._graphs:
            return self._graphs[key]
        torch = self._torch
        try:
            inputs = [self._tensor(a) for a in arrays]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the default stream, as capture needs
                for _ in range(3):
                    self._model(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            replay = torch.cuda.CUDAGraph()
            with torch.cuda.graph(replay):
                out = self._model(*inputs)
            self._graphs[key] = (replay, inputs, out)
        except Exception as exc:  # capture is an optimisation: plain calls still work
            log.warning("no CUDA graph for batch %d (%s): plain calls", key[0][0], exc)
            self._graphs[key] = None
        return self._graphs[key]
