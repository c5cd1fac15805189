"""The one small interface every inference backend implements, and the one place that maps
the names users type (``onnx-cpu``, ``onnx-int8``, ``torch-cuda``...) to what a backend is and
back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

NAMES = ("auto", "onnx", "tensorrt", "torch")
# The figure keys of bench (INTERFACE.md), in the order bench reports them. Each pins a device;
# onnx-int8 is the reduced CPU model.
KEYS = ("onnx-cpu", "onnx-cuda", "tensorrt", "torch-cpu", "torch-cuda", "onnx-int8")
DEFAULT_PRECISION = "fp32"


class BackendError(RuntimeError):
    """A backend cannot be built here (missing runtime, model or device): a user-facing error."""


@runtime_checkable
class Backend(Protocol):
    """Batched generator inference.

    ``reference`` and ``masked`` are (B, 3, S, S) float32 in [0, 1], ``mel`` is (B, T, 80)
    float32 raw log-mel; the result is the generated mouth crop (B, 3, S, S) float32 in [0, 1].
    ``name`` is the runtime (``onnx``, ``tensorrt``, ``torch``), ``device`` where it runs
    (``cpu``, or ``cuda:N``): the inference workers are per device. ``precision`` is what the
    weights compute in (``fp32``, ``fp16``, ``int8``); :func:`backend_key` names all three.
    """

    name: str
    device: str
    precision: str

    def infer(self, reference: np.ndarray, masked: np.ndarray, mel: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class BackendSpec:
    """A backend as a user asks for it: ``device`` or ``precision`` None leaves the choice
    to the factory (``auto`` picks everything)."""

    name: str
    device: str | None = None
    precision: str | None = None

    @classmethod
    def parse(cls, text: str) -> BackendSpec:
        """``onnx-cpu`` -> (onnx, cpu), ``onnx-int8`` -> (onnx, cpu, int8), ``tensorrt`` ->
        (tensorrt, cuda), ``onnx`` -> (onnx, any device); unknown names are a BackendError."""
        if text not in NAMES and text not in KEYS:
            raise BackendError(f"unknown backend {text!r}: use one of {', '.join(NAMES)}")
        if text == "tensorrt":
            return cls("tensorrt", "cuda")
        name, _, tail = text.partition("-")
        if tail == "int8":
            return cls(name, "cpu", "int8")
        return cls(name, tail or None)

    @property
    def key(self) -> str:
        """The figure key bench and the logs print: the inverse of :meth:`parse`."""
        if self.precision == "int8":
            return f"{self.name}-int8"
        if self.name == "tensorrt" or self.device is None:
            return self.name
        return f"{self.name}-{device_kind(self.device)}"


def device_kind(device: str) -> str:
    """``cuda:1`` -> ``cuda``: the kind of device, without its index."""
    return device.partition(":")[0]


def backend_key(backend: Backend) -> str:
    """The figure key of a built backend (``onnx-cpu``, ``onnx-int8``, ``tensorrt``...)."""
    return BackendSpec(backend.name, backend.device, backend.precision).key


def runs_on_cpu(backend: Backend) -> bool:
    """True for the CPU backends (``onnx-cpu``, ``onnx-int8``, ``torch-cpu``)."""
    return device_kind(backend.device) == "cpu"
