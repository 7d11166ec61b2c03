"""OpenVINO, a second CPU runtime for exported files: compile with an explicit precision, and check
its output against onnxruntime's.

OpenVINO is an optional extra (``pip install 'slimkit[openvino]'``); it is imported only when used,
and a missing install is a one-line :class:`OpenVINOMissing` error.

Precision is never left to the plugin: on CPUs with bf16 support (this one) OpenVINO's CPU plugin
runs bf16 by default, which moved outputs ~9e-2 relative to onnxruntime here, against ~3e-6 with
``INFERENCE_PRECISION_HINT`` set to f32. :func:`compile_onnx` sets the hint and reads back the
precision the compiled model actually uses, so reports say what ran. An int8 (QDQ) file runs its
quantized layers in int8 whatever the hint; the hint governs the rest of the graph.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.exporters import ExportError

__all__ = ["OpenVINOMissing", "openvino_missing", "PRECISIONS", "Parity", "openvino_version", "compile_onnx", "openvino_parity"]

PRECISIONS = ("f32", "bf16", "f16")
FP32_RTOL = 1e-4  # OpenVINO f32 vs onnxruntime on an fp32 file, relative to the largest |output|


class OpenVINOMissing(ExportError):
    """OpenVINO is not installed."""


MISSING = "OpenVINO is not installed: pip install 'slimkit[openvino]' (or pip install openvino)"


def openvino_missing() -> str | None:
    """Why OpenVINO cannot run here (what to install), or None: asked before any work that would need it,
    without importing it."""
    return MISSING if importlib.util.find_spec("openvino") is None else None


def _openvino():
    try:
        return importlib.import_module("openvino")
    except ImportError:
        raise OpenVINOMissing(MISSING) from None


def openvino_version() -> str:
    return _openvino().__version__


def compile_onnx(path: str | Path, *, threads: int | None = None, precision: str = "f32") -> tuple[Any, str]:
    """An ONNX file compiled for OpenVINO's CPU plugin at ``precision``, and the precision it reports."""
    ov = _openvino()
    if precision not in PRECISIONS:
        raise ExportError(f"unknown OpenVINO precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                              "NUM_STREAMS": "1"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        compiled = ov.Core().compile_model(str(path), "CPU", config)
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with multi-line text
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ExportError(f"{path}: OpenVINO cannot compile it ({first})") from exc
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: "f32", "bf16", ...
    ran = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    if ran != precision:
        raise ExportError(f"{path}: OpenVINO was asked for {precision} but compiled for {ran}")
    return compiled, ran


@dataclass
class Parity:
    """OpenVINO vs onnxruntime on the same random inputs."""

    max_abs_diff: float
    max_rel_diff: float  # max |OV - ORT| / max |ORT|
    output_scale: float
    precision: str  # what OpenVINO ran (the hint read back)
    file_precision: str  # "int8" for a slimkit int8 file, else "fp32"
    inputs: int
    tolerance: float | None  # the relative tolerance that applies (fp32 files only)

    @property
    def passed(self) -> bool | None:
        return None if self.tolerance is None else bool(self.max_rel_diff <= self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def openvino_parity(path: str | Path, *, precision: str = "f32", threads: int | None = None, runs: int = 3,
                    seed: int = 0) -> Parity:
    """Run ``path`` on OpenVINO (at ``precision``) and onnxruntime on ``runs`` random N(0, 1) inputs.

    Only an fp32 file at f32 has a tolerance (:data:`FP32_RTOL`): an int8 file rounds differently in
    each runtime's integer kernels, so its difference is reported, not judged."""
    import onnx
    import onnxruntime as ort

    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    file_precision = meta.get("slimkit.precision", "fp32")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims]
    compiled, ran = compile_onnx(path, threads=threads, precision=precision)
    request = compiled.create_infer_request()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(seed + 4242)
    worst = scale = 0.0
    for _ in range(runs):
        x = rng.standard_normal(shape).astype(np.float32)
        ref = session.run(None, {name: x})[0]
        got = np.asarray(request.infer({0: x})[compiled.output(0)])
        if got.shape != ref.shape:
            raise ExportError(f"{path}: OpenVINO output shape {got.shape} != onnxruntime {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
    rel = worst / scale if scale > 0 else (0.0 if worst == 0 else float("inf"))
    tolerance = FP32_RTOL if file_precision == "fp32" and ran == "f32" else None
    return Parity(max_abs_diff=worst, max_rel_diff=rel, output_scale=scale, precision=ran,
                  file_precision=file_precision, inputs=runs, tolerance=tolerance)
