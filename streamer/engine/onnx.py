"""ONNX Runtime backend: the CPU (tuned for a small machine shared with encoding and
compositing) or the CUDA execution provider with I/O binding."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamer.engine.base import DEFAULT_PRECISION, BackendError

log = logging.getLogger(__name__)

INPUTS = ("reference", "masked", "mel")
OUTPUT = "mouth"
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def available_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def cuda_provider_usable() -> tuple[bool, str]:
    """Whether ORT's CUDA provider can run here, and why not. onnxruntime-gpu lists the
    provider even on a machine without a GPU (or without the CUDA libraries it links), so
    listing is not enough: a device must be visible too."""
    if CUDA not in available_providers():
        return False, "onnxruntime has no CUDA execution provider (pip install onnxruntime-gpu)"
    try:
        import onnxruntime as ort

        if hasattr(ort, "get_device") and ort.get_device() != "GPU":
            return False, "onnxruntime was built without GPU support"
    except ImportError:  # pragma: no cover - listed above
        return False, "onnxruntime is not installed"
    return True, "onnxruntime CUDA execution provider"


def session_options(threads: int) -> Any:
    """The runtime's session settings, shared with tools that time the model (bench)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    # No CPU arena: ORT's arena keeps every block it ever grew to (a rare larger batch grows it
    # by a power of two) and never gives it back. Plain malloc returns it for reuse; the speed
    # is the same (6.65 against 6.78 ms a frame at batch 1, interleaved, 2-core CPU).
    options.enable_cpu_mem_arena = False
    # Spinning threads burn the cores the encoder and compositor need between frames.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # Flush-to-zero denormals: a conv net's tiny activations otherwise hit slow paths.
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return options


def _cuda_options(device_id: int) -> dict[str, Any]:
    return {
        "device_id": device_id,
        # The batch varies between calls; HEURISTIC avoids a slow search per new shape.
        "cudnn_conv_algo_search": "HEURISTIC",
        "do_copy_in_default_stream": True,
        "arena_extend_strategy": "kSameAsRequested",
    }


class OnnxBackend:
    """One InferenceSession; ``infer`` may be called from any thread. ``precision`` says what
    the model file computes in (``int8`` for the reduced model): ORT cannot tell."""

    name = "onnx"

    def __init__(
        self,
        model_path: Path | str,
        threads: int = 2,
        providers: Sequence[str] = (CPU,),
        device_id: int = 0,
        precision: str = DEFAULT_PRECISION,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError(
                "the onnx backend needs onnxruntime: pip install onnxruntime"
            ) from None
        path = Path(model_path)
        if not path.is_file():
            raise BackendError(
                f"model {path} does not exist: re-export it (avatarcast export NAME --to onnx)"
            )
        chosen: list[Any] = [(p, _cuda_options(device_id)) if p == CUDA else p for p in providers]
        try:
            self._session = ort.InferenceSession(
                str(path), session_options(threads), providers=chosen
            )
        except Exception as exc:  # ORT raises its own untyped errors for corrupt models
            first = (str(exc).splitlines() or ["unknown error"])[0]
            raise BackendError(
                f"cannot load {path} ({first}): the file is corrupt or not a generator; "
                "re-export it (avatarcast export NAME --to onnx)"
            ) from None
        inputs = {i.name: tuple(i.shape[1:]) for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        if set(inputs) != set(INPUTS) or OUTPUT not in outputs:
            raise BackendError(
                f"{path} is not a generator: inputs {sorted(inputs)}, expected {list(INPUTS)}"
            )
        if not all(isinstance(d, int) for dims in inputs.values() for d in dims):
            raise BackendError(f"{path} is not a generator: only its batch axis may be dynamic")
        used = self._session.get_providers()[0]
        if providers and used != providers[0]:
            # ORT falls back silently when a provider fails to initialise (no driver, no
            # cuDNN); asking for the GPU and getting the CPU must not pass unnoticed.
            raise BackendError(
                f"onnxruntime could not start {providers[0]} (it fell back to {used}): "
                "check the CUDA/cuDNN install or use --backend onnx on the CPU"
            )
        self.device = f"cuda:{device_id}" if used == CUDA else "cpu"
        self.precision = precision
        self.model_path = path
        # The shape of one frame's input, by input name (the batch axis left out).
        self.input_shapes: dict[str, tuple[int, ...]] = inputs
        self.providers = tuple(self._session.get_providers())
        self._ort = ort
        self._device_id = device_id
        self._binding = self._session.io_binding() if used == CUDA else None
        self._bound = threading.Lock()  # one binding object: calls on it must not interleave

    def infer(self, reference: np.ndarray, masked: np.ndarray, mel: np.ndarray) -> np.ndarray:
        feeds = {
            "reference": np.ascontiguousarray(reference, np.float32),
            "masked": np.ascontiguousarray(masked, np.float32),
            "mel": np.ascontiguousarray(mel, np.float32),
        }
        if self._binding is None:
            (mouth,) = self._session.run([OUTPUT], feeds)
            return np.asarray(mouth, np.float32)
        return self._infer_bound(feeds)

    def _infer_bound(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Inputs copied to the GPU once, the output left there by ORT and copied back once:
        no per-node host round trips, and no output allocation on the host by ORT."""
        binding = self._binding
        assert binding is not None
        with self._bound:
            return self._run_bound(binding, feeds)

    def _run_bound(self, binding: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, array in feeds.items():
            value = self._ort.OrtValue.ortvalue_from_numpy(array, "cuda", self._device_id)
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(OUTPUT, "cuda", self._device_id)
        self._session.run_with_iobinding(binding)
        (mouth,) = binding.copy_outputs_to_cpu()
        return np.asarray(mouth, np.float32)
