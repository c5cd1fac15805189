"""TensorRT backend: an FP16 engine built from the avatar's ONNX export with TensorRT's own
Python API, with one dynamic batch profile (1..64), cached on disk.

An engine only runs on the GPU model and TensorRT version it was built with, so the cache
key is (model hash, GPU name, TensorRT version): ``~/.cache/avatarcast/trt/`` (or
``$AVATARCAST_CACHE/trt/``) holds ``<model sha256[:16]>-<gpu>-trt<version>.engine`` with a
JSON sidecar saying what it was built from. Nothing is built implicitly at start-up (a build
takes minutes): ``avatarcast export NAME --to tensorrt`` builds it; a missing, stale or
foreign engine is a start-up error that says to rebuild or to use ``--backend onnx``.

Device buffers are torch CUDA tensors (torch is already the CUDA dependency of training and
of the torch backend), so no pycuda/cuda-python is needed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.ownership import file_sha256
from streamer.engine.base import BackendError

log = logging.getLogger(__name__)

INPUTS = ("reference", "masked", "mel")
OUTPUT = "mouth"
MIN_BATCH, OPT_BATCH, MAX_BATCH = 1, 16, 64
WORKSPACE_BYTES = 2 << 30
# FP16 through a deep conv net on [0, 1] pixels: 5e-2 is ~13/255 at the single worst pixel.
PARITY_LIMIT = 5e-2
REBUILD = "build it with `avatarcast export {name} --to tensorrt`, or use --backend onnx"


def cache_root() -> Path:
    base = os.environ.get("AVATARCAST_CACHE")
    if base:
        return Path(base).expanduser() / "trt"
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return root / "avatarcast" / "trt"


def model_hash(path: Path | str) -> str:
    """The ONNX model's SHA-256: part of an engine's cache key."""
    return file_sha256(Path(path))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


@dataclass(frozen=True)
class EngineKey:
    """What an engine is valid for."""

    model_sha256: str
    gpu: str
    tensorrt: str

    @property
    def filename(self) -> str:
        return f"{self.model_sha256[:16]}-{_slug(self.gpu)}-trt{self.tensorrt}.engine"

    def describe(self) -> str:
        return f"{self.gpu}, TensorRT {self.tensorrt}"


@dataclass(frozen=True)
class EngineInfo:
    """The JSON sidecar of a cached engine."""

    model_sha256: str
    gpu: str
    tensorrt: str
    fp16: bool
    min_batch: int
    max_batch: int
    built: str
    parity_max_abs: float | None = None

    @property
    def key(self) -> EngineKey:
        return EngineKey(self.model_sha256, self.gpu, self.tensorrt)


def tensorrt_usable() -> tuple[bool, str]:
    """Whether TensorRT can run here, and why not (checked without building anything)."""
    try:
        import tensorrt as trt
    except ImportError:
        return False, "TensorRT is not installed (pip install tensorrt)"
    try:
        import torch
    except ImportError:
        return False, "the TensorRT backend needs torch with CUDA for its buffers"
    if not torch.cuda.is_available():
        return False, "no CUDA device is visible"
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        return False, f"TensorRT {trt.__version__} is too old (needs 10 or newer)"
    return True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name(0)}"


def _require_tensorrt() -> tuple[Any, Any]:
    usable, why = tensorrt_usable()
    if not usable:
        raise BackendError(f"the tensorrt backend cannot run here: {why}; use --backend onnx")
    import tensorrt as trt
    import torch

    return trt, torch


def current_key(model_path: Path | str, device_id: int = 0) -> EngineKey:
    trt, torch = _require_tensorrt()
    return EngineKey(
        model_hash(model_path), torch.cuda.get_device_name(device_id), str(trt.__version__)
    )


def _sidecar(engine_path: Path) -> Path:
    return engine_path.with_suffix(".json")


def read_info(engine_path: Path) -> EngineInfo | None:
    try:
        data = json.loads(_sidecar(engine_path).read_text(encoding="utf-8"))
        return EngineInfo(**data)
    except (OSError, ValueError, TypeError):
        return None


def engine_path_for(model_path: Path | str, device_id: int = 0) -> Path:
    return cache_root() / current_key(model_path, device_id).filename


def find_engine(model_path: Path | str, avatar_name: str = "NAME", device_id: int = 0) -> Path:
    """The cached engine for this model on this GPU and TensorRT, or a BackendError that
    says what is there instead and what to do."""
    key = current_key(model_path, device_id)
    path = cache_root() / key.filename
    rebuild = REBUILD.format(name=avatar_name)
    if path.is_file():
        info = read_info(path)
        if info is None or info.key != key:
            raise BackendError(f"TensorRT engine {path} has no valid description: {rebuild}")
        return path
    others = [
        info.key.describe()
        for p in sorted(cache_root().glob(f"{key.model_sha256[:16]}-*.engine"))
        if (info := read_info(p)) is not None
    ]
    if others:
        raise BackendError(
            f"the TensorRT engines for this model were built for {'; '.join(others)}, "
            f"not for {key.describe()}: {rebuild}"
        )
    raise BackendError(f"no TensorRT engine for this model on {key.describe()}: {rebuild}")


# --- building -------------------------------------------------------------------------------


def build_engine(
    model_path: Path | str,
    device_id: int = 0,
    fp16: bool = True,
    check: bool = True,
    out_dir: Path | None = None,
) -> Path:
    """Build (or rebuild) the engine for ``model_path`` on this GPU; returns its path.

    Written atomically with its sidecar; with ``check`` the engine must reproduce ONNX
    Runtime on the CPU within :data:`PARITY_LIMIT` or nothing is kept.
    """
    trt, torch = _require_tensorrt()
    source = Path(model_path)
    if not source.is_file():
        raise BackendError(f"model {source} does not exist: export it first (--to onnx)")
    key = current_key(source, device_id)
    torch.cuda.set_device(device_id)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(source.read_bytes()):
        errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {source}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(int(d) for d in tensor.shape)[1:]
        if any(d < 0 for d in rest):
            raise BackendError(f"{source}: input {tensor.name} has a dynamic non-batch axis")
        profile.set_shape(tensor.name, (MIN_BATCH, *rest), (OPT_BATCH, *rest), (MAX_BATCH, *rest))
    config.add_optimization_profile(profile)
    log.info("building the TensorRT engine for %s on %s (minutes)", source, key.describe())
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {source} (see the log)")
    root = out_dir or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / key.filename
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        staged = Path(tmp) / key.filename
        staged.write_bytes(bytes(serialized))
        diff = _parity(staged, source, device_id) if check else None
        if diff is not None and not diff <= PARITY_LIMIT:
            raise BackendError(
                f"the TensorRT engine differs from ONNX Runtime by {diff:.3f} "
                f"(limit {PARITY_LIMIT}): use --backend onnx"
            )
        info = EngineInfo(
            key.model_sha256,
            key.gpu,
            key.tensorrt,
            fp16,
            MIN_BATCH,
            MAX_BATCH,
            datetime.now(UTC).isoformat(timespec="seconds"),
            None if diff is None else round(diff, 5),
        )
        _sidecar(staged).write_text(json.dumps(asdict(info), indent=2), encoding="utf-8")
        # Sidecar first: an engine file is only ever seen with its description beside it.
        os.replace(_sidecar(staged), _sidecar(target))
        os.replace(staged, target)
    return target


def _parity(engine_path: Path, model_path: Path, device_id: int) -> float:
    from streamer.engine.onnx import OnnxBackend

    reference = OnnxBackend(model_path, threads=2)
    engine = TensorRTBackend(engine_path, device_id)
    rng = np.random.default_rng(0)
    worst = 0.0
    for batch in (1, 3):
        feed = []
        for name, dims in reference.input_shapes.items():
            values = rng.random((batch, *dims), dtype=np.float32)
            feed.append(values * 6.0 - 5.0 if name == "mel" else values)
        expected = reference.infer(*feed)
        got = engine.infer(*feed)
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


# --- running --------------------------------------------------------------------------------


class TensorRTBackend:
    """A deserialised engine with one execution context on its own CUDA stream; batches
    above the profile's maximum run in slices."""

    def __init__(
        self, engine_path: Path | str, device_id: int = 0, info: EngineInfo | None = None
    ) -> None:
        trt, torch = _require_tensorrt()
        path = Path(engine_path)
        if not path.is_file():
            raise BackendError(
                f"TensorRT engine {path} does not exist: {REBUILD.format(name='NAME')}"
            )
        torch.cuda.set_device(device_id)
        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)
        try:
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        except Exception:  # some TensorRT versions raise rather than return None
            engine = None
        if engine is None:
            built = f" (built for {info.key.describe()})" if info else ""
            raise BackendError(
                f"TensorRT cannot load {path}{built}: it was built for another GPU or "
                f"TensorRT version, or is corrupt; {REBUILD.format(name='NAME')}"
            )
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        if names != {*INPUTS, OUTPUT}:
            raise BackendError(f"{path} is not a generator engine: tensors {sorted(names)}")
        self._engine = engine
        self._context = engine.create_execution_context()
        self._torch = torch
        self._device = torch.device("cuda", device_id)
        self._stream = torch.cuda.Stream(self._device)
        self._lock = threading.Lock()
        profile_max = engine.get_tensor_profile_shape(INPUTS[0], 0)[2]
        self.max_batch = int(profile_max[0])
        self.name = "tensorrt"
        self.device = f"cuda:{device_id}"
        self.precision = "fp16" if info is None or info.fp16 else "fp32"

    def infer(self, reference: np.ndarray, masked: np.ndarray, mel: np.ndarray) -> np.ndarray:
        arrays = [np.ascontiguousarray(a, np.float32) for a in (reference, masked, mel)]
        n = len(arrays[0])
        parts = [
            self._run([a[start : start + self.max_batch] for a in arrays])
            for start in range(0, n, self.max_batch)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _run(self, arrays: list[np.ndarray]) -> np.ndarray:
        torch = self._torch
        with self._lock, torch.cuda.stream(self._stream):
            device_inputs = [
                torch.from_numpy(a).pin_memory().to(self._device, non_blocking=True) for a in arrays
            ]
            for name, tensor in zip(INPUTS, device_inputs, strict=True):
                self._context.set_input_shape(name, tuple(tensor.shape))
                self._context.set_tensor_address(name, tensor.data_ptr())
            shape = tuple(int(d) for d in self._context.get_tensor_shape(OUTPUT))
            output = torch.empty(shape, dtype=torch.float32, device=self._device)
            self._context.set_tensor_address(OUTPUT, output.data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            host = output.cpu()  # synchronises the stream
        return np.asarray(host.numpy(), np.float32)


def load_for_model(model_path: Path | str, avatar_name: str, device_id: int = 0) -> TensorRTBackend:
    """The backend for a model's cached engine, or a start-up error saying what to do."""
    path = find_engine(model_path, avatar_name, device_id)
    info = read_info(path)
    try:
        return TensorRTBackend(path, device_id, info)
    except BackendError as exc:
        raise BackendError(str(exc).replace("NAME", avatar_name)) from None
