"""ONNX Runtime backend, tuned for a small CPU shared with encoding and compositing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from streamer.engine.base import BackendError

INPUTS = ("reference", "masked", "mel")
OUTPUT = "mouth"
_PROVIDER_NAMES = {
    "CPUExecutionProvider": "cpu",
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "tensorrt",
}


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


class OnnxBackend:
    """One InferenceSession; ``infer`` may be called from any thread (ORT runs are thread-safe)."""

    def __init__(
        self,
        model_path: Path | str,
        threads: int = 2,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        import onnxruntime as ort

        path = Path(model_path)
        if not path.is_file():
            raise BackendError(f"model {path} does not exist")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spinning threads burn the cores the encoder and compositor need between frames.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(path), options, providers=list(providers))
        except Exception as exc:  # ORT raises its own untyped errors for corrupt models
            raise BackendError(f"cannot load {path}: {str(exc).splitlines()[0]}") from None
        names = {i.name for i in self._session.get_inputs()}
        if names != set(INPUTS) or OUTPUT not in {o.name for o in self._session.get_outputs()}:
            raise BackendError(
                f"{path} is not a generator: inputs {sorted(names)}, expected {list(INPUTS)}"
            )
        used = self._session.get_providers()[0]
        self.name = f"onnx-{_PROVIDER_NAMES.get(used, used)}"
        self.model_path = path

    def infer(self, reference: np.ndarray, masked: np.ndarray, mel: np.ndarray) -> np.ndarray:
        feeds = {
            "reference": np.ascontiguousarray(reference, np.float32),
            "masked": np.ascontiguousarray(masked, np.float32),
            "mel": np.ascontiguousarray(mel, np.float32),
        }
        (mouth,) = self._session.run([OUTPUT], feeds)
        return np.asarray(mouth, np.float32)
