"""One place that builds ONNX Runtime sessions with an explicit thread budget.

Several ORT sessions in several processes on two cores stall each other at default settings
(each sizes its pool to every core and spins waiting for work). So: intra-op threads as
configured (default 1), one inter-op thread, sequential execution, and spinning off -- a
spinning idle pool burns the core another session or worker needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ModelError


def make_session(path: Path, *, threads: int, model: str, arena: bool = True,
                 optimize: bool = True) -> Any:
    """Load an ONNX model on the CPU provider, wrapping failures in one clear ModelError.

    ``optimize=False`` runs the graph as written, without ONNX Runtime's fusions: for a
    quantized (QDQ) graph that means the exact quantized semantics computed in float,
    instead of fused int8 kernels that saturate on some CPUs (see ``int8_check``).

    ``arena=False`` turns off ORT's CPU memory arena and memory-pattern planning: the arena
    keeps the high-water mark of activations for the life of the session (tens of MB for
    Smart Turn's 8 s encoder input) in every worker, while plain malloc/free lets the
    worker return it between runs. It costs a few ms of allocation per run, which is worth
    it for a model run a few times a second and not for the VAD, run every 32 ms.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_cpu_mem_arena = arena
    so.enable_mem_pattern = arena
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises several unrelated types for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{model} model at {path} could not be loaded ({first}); replace the file or fix "
            "its path in the models config."
        ) from None
