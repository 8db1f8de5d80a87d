"""Are ONNX Runtime's fused int8 kernels exact on this CPU? Checked at start, not assumed.

Smart Turn v3.2's CPU graph is statically quantized: QuantizeLinear/DequantizeLinear pairs
around every MatMul, Gemm and Conv. With graph optimizations on, ONNX Runtime fuses each
pair into an integer kernel (QLinearMatMul ...) that multiplies uint8 activations by int8
weights. On x86 CPUs without VNNI (AVX2 only), MLAS computes those products with
``vpmaddubsw``, which adds two u8 x s8 products into a *saturating* 16-bit sum; a pair such
as 255 x 127 + 255 x 127 = 64,770 is clipped to 32,767. The graph then answers wrongly --
measured: half-sentences judged complete with p = 0.94 where the exact graph says 0.20.
With VNNI (``vpdpbusd`` accumulates in 32 bits) and on ARM (``sdot``/``udot``) the fused
kernels are exact.

Rather than trust CPU flags (emulators, hypervisors and future kernels lie or change), the
daemon runs a tiny quantized MatMul (``data/int8_probe.onnx``, built by
:func:`build_probe`) whose products are chosen to saturate a 16-bit pair sum, once with
graph optimizations (fused int8 kernels) and once without (the QDQ semantics computed in
float), and compares. If they differ, Smart Turn runs its graph unfused on this host:
slower (measured 53 -> 112 ms per call on an AVX-512 VNNI host; 113 -> 173 ms on an AVX2
one), but right.
"""

from __future__ import annotations

import enum
import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import ConfigError

log = logging.getLogger(__name__)

PROBE_FILE = Path(__file__).resolve().parent / "data" / "int8_probe.onnx"
PROBE_ROWS, PROBE_K, PROBE_N = 16, 64, 16
"""Probe shape: enough rows and columns that MLAS takes its blocked GEMM path, as it does
for Smart Turn's MatMuls, not a vector special case."""
_OUT_SCALE = 0.5


class Int8Kernels(enum.StrEnum):
    """How Smart Turn's quantized graph runs (``models.turn_int8``)."""

    AUTO = "auto"
    """Fused where :func:`fused_int8_exact` says they are exact, unfused elsewhere."""
    FUSED = "fused"
    """ONNX Runtime's fused int8 kernels (fast; wrong on x86 without VNNI)."""
    UNFUSED = "unfused"
    """The QDQ graph without fusions: the quantized model's exact semantics, in float."""

    @classmethod
    def parse(cls, value: str) -> Int8Kernels:
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(
                f"models.turn_int8 = {value!r} is not one of "
                + ", ".join(repr(k.value) for k in cls)) from None


def _weights() -> npt.NDArray[Any]:
    """Probe weights: a column of +127s and one of -128s (every pair of products saturates
    a 16-bit sum when the activations are 255), an alternating one (exact either way), and
    seeded random columns."""
    w = np.random.default_rng(20261201).integers(-128, 128, (PROBE_K, PROBE_N)).astype(np.int8)
    w[:, 0] = 127
    w[:, 1] = -128
    w[0::2, 2], w[1::2, 2] = 127, -128
    return w


def build_probe() -> bytes:
    """The probe model's bytes (needs the ``onnx`` package, a development dependency; the
    committed file is checked against this in the tests)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def scalar(name: str, value: float | int, dtype: type) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(value, dtype), name)

    inits = [
        scalar("x_scale", 1 / 255, np.float32), scalar("x_zero", 0, np.uint8),
        numpy_helper.from_array(_weights(), "w"),
        scalar("w_scale", 1 / 127, np.float32), scalar("w_zero", 0, np.int8),
        scalar("y_scale", _OUT_SCALE, np.float32), scalar("y_zero", 128, np.uint8),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"]),
        helper.make_node("MatMul", ["xd", "wd"], ["y_float"]),
        helper.make_node("QuantizeLinear", ["y_float", "y_scale", "y_zero"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "alfred_int8_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [PROBE_ROWS, PROBE_K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [PROBE_ROWS, PROBE_N])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="alfred-daemon")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def probe_input() -> npt.NDArray[Any]:
    """All-ones rows (activations quantize to 255, the saturating case) and a few seeded
    random rows."""
    x = np.ones((PROBE_ROWS, PROBE_K), np.float32)
    x[PROBE_ROWS // 2 :] = np.random.default_rng(7).random((PROBE_ROWS // 2, PROBE_K))
    return x


def _run(fused: bool, model: bytes) -> npt.NDArray[Any]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fused
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    session = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": probe_input()})
    return np.asarray(out, np.float32)


@functools.cache
def fused_int8_exact() -> bool:
    """True if fused int8 kernels give the probe's exact QDQ result on this CPU (cached
    per process: the answer cannot change while it runs)."""
    model = PROBE_FILE.read_bytes()
    fused, exact = _run(True, model), _run(False, model)
    # One output quantization step of slack: fused kernels may round a product sum that
    # lies exactly between two steps the other way. Saturation is off by dozens of steps.
    worst = float(np.max(np.abs(fused - exact)))
    ok = worst <= _OUT_SCALE + 1e-6
    if not ok:
        log.info("fused int8 kernels are not exact on this CPU (probe off by %.1f); "
                 "Smart Turn runs its quantized graph unfused", worst)
    return ok


def choose(kernels: Int8Kernels) -> Int8Kernels:
    """Resolve AUTO to what this host should run."""
    if kernels is not Int8Kernels.AUTO:
        return kernels
    return Int8Kernels.FUSED if fused_int8_exact() else Int8Kernels.UNFUSED
