"""The one small interface every inference backend implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


class BackendError(RuntimeError):
    """A backend cannot be built here (missing runtime, model or device): a user-facing error."""


@runtime_checkable
class Backend(Protocol):
    """Batched generator inference.

    ``reference`` and ``masked`` are (B, 3, S, S) float32 in [0, 1], ``mel`` is (B, T, 80)
    float32 raw log-mel; the result is the generated mouth crop (B, 3, S, S) float32 in [0, 1].
    ``name`` is the figure key used by bench (``onnx-cpu``, ``onnx-cuda``, ``torch-cpu`` ...).
    """

    name: str

    def infer(self, reference: np.ndarray, masked: np.ndarray, mel: np.ndarray) -> np.ndarray: ...


def runs_on_cpu(backend: Backend) -> bool:
    """True for the CPU backends (``onnx-cpu``, ``onnx-int8``, ``torch-cpu``)."""
    return backend.name.endswith(("-cpu", "-int8"))

