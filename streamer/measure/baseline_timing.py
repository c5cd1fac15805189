"""The Wav2Lip-sized baselines, timed like our generator: same kind of backend, same threads.

Bench reads our speed as a ratio to these, measured in the same run, so a busy or a fast
machine moves both figures together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from streamer.measure.timing import BenchPlan, Progress, median_ms


def _providers_for(backend_name: str) -> list[str]:
    if backend_name == "tensorrt":
        return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    if backend_name.endswith("cuda"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def ort_session(path: str, threads: int, providers: Sequence[str]) -> Any:
    """An ONNX Runtime session with exactly the settings of the runtime's OnnxBackend."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=list(providers))


def time_baselines(backend_name: str, plan: BenchPlan, progress: Progress) -> dict[str, Any]:
    """The Wav2Lip-sized generators on the same kind of backend, same threads."""
    try:
        from models import baselines
    except ImportError:  # pragma: no cover - the module ships with the package
        return {}
    out: dict[str, Any] = {}
    for name in baselines.SPECS:
        try:
            exported = baselines.export_onnx(name)
        except ImportError:
            progress(f"{name}: torch is not installed (pip install avatarcast[train]), skipped")
            out[name] = {"params_m": None, "generator_ms_per_frame": {"1": None}}
            continue
        progress(f"{name}: {exported.params / 1e6:.1f} M parameters")
        figures: dict[str, float] = {}
        if backend_name.startswith("torch"):
            run_for = _torch_runner(name, plan.threads, backend_name)
        else:
            session = ort_session(str(exported.path), plan.threads, _providers_for(backend_name))
            run_for = _ort_runner(session, name)
        for batch in plan.baseline_batches:
            run = run_for(batch)
            ms = median_ms(run, plan.baseline_repeats, plan.warmup) / batch
            figures[str(batch)] = round(ms, 2)
            progress(f"{name}: batch {batch}: {ms:.1f} ms/frame")
        out[name] = {"params_m": round(exported.params / 1e6, 1), "generator_ms_per_frame": figures}
    return out


def _ort_runner(session: Any, name: str) -> Callable[[int], Callable[[], object]]:
    from models import baselines

    def for_batch(batch: int) -> Callable[[], object]:
        feeds = baselines.example_inputs(name, batch)
        return lambda: session.run(None, feeds)

    return for_batch


def _torch_runner(
    name: str, threads: int, backend_name: str
) -> Callable[[int], Callable[[], object]]:
    import torch

    from models import baselines

    device = "cuda" if backend_name.endswith("cuda") else "cpu"
    if device == "cpu":
        torch.set_num_threads(threads)
    module = baselines.build(name).to(device)

    def for_batch(batch: int) -> Callable[[], object]:
        inputs = baselines.example_inputs(name, batch).values()
        feeds = [torch.from_numpy(v).to(device) for v in inputs]

        def run() -> object:
            with torch.no_grad():
                out = module(*feeds)
            if device == "cuda":
                torch.cuda.synchronize()
            return out

        return run

    return for_batch
