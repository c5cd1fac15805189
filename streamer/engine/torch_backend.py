"""PyTorch backend: runs the training checkpoint directly (needs the ``train`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from streamer.engine.base import BackendError


class TorchBackend:
    def __init__(self, checkpoint: Path | str, device: str = "cpu", threads: int = 2) -> None:
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
            raise BackendError(f"checkpoint {path} does not exist")
        if device == "cpu":
            torch.set_num_threads(threads)
        try:
            ckpt: Any = torch.load(path, map_location=device, weights_only=True)
            config = ckpt["config"]
            config = config.get("generator", config)
            state = ckpt["state"]
            state = state.get("generator", state)
            model = Generator(from_dict(GeneratorConfig, config))
            model.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise BackendError(f"{path} is not a generator checkpoint: {exc}") from None
        self._torch = torch
        self._model = model.to(device).eval()
        self._device = device
        self.name = f"torch-{device.split(':')[0]}"

    def infer(self, reference: np.ndarray, masked: np.ndarray, mel: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out = self._model(
                torch.from_numpy(np.ascontiguousarray(reference, np.float32)).to(self._device),
                torch.from_numpy(np.ascontiguousarray(masked, np.float32)).to(self._device),
                torch.from_numpy(np.ascontiguousarray(mel, np.float32)).to(self._device),
            )
        return np.asarray(out.float().cpu().numpy(), np.float32)
