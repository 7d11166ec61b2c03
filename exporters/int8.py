"""int8 ONNX: onnxruntime's static post-training quantization, calibrated on training images and
checked against the fp32 file it came from.

Nothing here quantizes or calibrates by itself: onnxruntime does both. The steps are the ones its
documentation prescribes for CNNs on CPU:

1. ``quant_pre_process`` (symbolic shape inference + graph optimisation, the "pre-processing"
   onnxruntime recommends before quantizing; a failure there is a warning, not an error, since
   quantization works without it, only sometimes less well);
2. ``quantize_static`` in QDQ format with per-channel weights, signed int8 activations and weights
   (onnxruntime's recommended default, "S8S8 with QDQ"), calibrated by its MinMax calibrator (or
   Percentile / Entropy) on ``calib_images`` images of the *training* split, read through
   :mod:`slimkit.data`, so they carry the normalisation the model was trained with;
3. a check on onnxruntime for both files, every time:

   * trained weights: top-1 of fp32 vs int8 on the test split; the file is refused when int8
     loses more than ``max_drop`` points;
   * untrained weights (plans, architecture names): there is no accuracy to lose, so the check is
     output agreement on held-out *training* images (calibration-like, not the calibration set):
     the int8 logits' RMS error relative to how much the fp32 logits vary from image to image.
     A raw relative error ``|int8 - fp32| / |fp32|`` would look small on random networks because
     their logits share a large common offset; measured against the input-dependent spread it
     says how much of what the network computes survives quantization (0 = all, 1 = none); the
     file is refused at 1 or more.
     Top-1 agreement is recorded beside it but does not gate: random networks have near-tied
     logits, so a tiny error can flip the winner.

The int8 file is written atomically beside the fp32 one (``model.onnx`` -> ``model.int8.onnx``)
only when the check passed; the check's record (``model.int8.check.json``) is written either way,
so a refused quantization still says by how much it failed. The plan, the quantization settings
and the check go into the file's ``metadata_props``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from slimkit.data import DataBundle, make_loader
from slimkit.exporters import ExportError, ExportResult, onnx_output
from slimkit.files import Output, atomic_write, atomic_write_text, is_json_with

__all__ = ["QuantizeSettings", "Int8Check", "Int8CheckError", "CALIBRATION_METHODS", "QUANT_FORMATS", "int8_path",
           "int8_unsupported",
           "calibration_images", "check_calib_images", "quantize_onnx", "quantize_for_timing", "settings_of", "check_int8", "export_int8", "DEFAULT_MAX_DROP",
           "DEFAULT_MAX_OUTPUT_ERROR"]

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# QDQ: QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into integer kernels when it loads the
# file; QOperator: the integer operators (QLinearConv, ...) written into the file itself.
QUANT_FORMATS = ("QDQ", "QOperator")
DEFAULT_MAX_DROP = 1.0  # top-1 points
# Untrained models: RMS(int8 - fp32) / RMS(fp32 - its mean over images). 1.0 means int8 is no closer to
# fp32 than fp32's own mean output is (R^2 <= 0): nothing input-dependent survived. Measured with
# Fashion-MNIST calibration (docs/int8.md): resnet20 0.08, mobilenet_v1 150M 0.68 with good calibration;
# resnet20 calibrated on blank or 8x-too-dark images 1.42 (while top-1 agreement stayed at 98-99.6%).
DEFAULT_MAX_OUTPUT_ERROR = 1.0
INT8_SUFFIX = ".int8.onnx"


class Int8CheckError(ExportError):
    """The int8 model lost more accuracy (or output agreement) than allowed; no int8 file was written.
    ``check_summary`` says by how much (without the CLI-specific advice of the message)."""

    check_summary: str = ""


@dataclass
class QuantizeSettings:
    """What onnxruntime is asked to do; recorded in the int8 file's metadata."""

    calib_images: int = 256
    calib_method: str = "minmax"
    per_channel: bool = True
    # uint8 activations (U8S8): what x86 VNNI multiplies natively. With int8 (S8S8, onnxruntime's own
    # default) it left residual nets partly in fp32 here: 0.60-1.46x fp32 latency vs 0.28-0.91x (docs/int8.md).
    activation_type: str = "uint8"
    weight_type: str = "int8"
    quant_format: str = "QDQ"
    # 7-bit weights: onnxruntime's advice for uint8 x int8 on x86 without VNNI, whose 16-bit
    # multiply-add (vpmaddubsw) saturates on full-range weights.
    reduce_range: bool = False
    preprocess: bool = True
    seed: int = 0

    def validate(self) -> None:
        if self.calib_images < 1:
            raise ExportError(f"--calib-images must be >= 1, got {self.calib_images}")
        if self.calib_method not in CALIBRATION_METHODS:
            raise ExportError(f"unknown --calib-method '{self.calib_method}': choose one of "
                              f"{', '.join(CALIBRATION_METHODS)}")
        for what, value in (("activation", self.activation_type), ("weight", self.weight_type)):
            if value not in ("int8", "uint8"):
                raise ExportError(f"unknown {what} type '{value}': choose int8 or uint8 (--int8-activations)")
        if self.quant_format not in QUANT_FORMATS:
            raise ExportError(f"unknown int8 format '{self.quant_format}': choose one of {', '.join(QUANT_FORMATS)} "
                              "(--int8-format)")

    @property
    def label(self) -> str:
        """e.g. 'QDQ u8/s8 per-channel': format, activation/weight types, weight granularity."""
        short = {"uint8": "u8", "int8": "s8"}
        return (f"{self.quant_format} {short.get(self.activation_type, self.activation_type)}/"
                f"{short.get(self.weight_type, self.weight_type)} {'per-channel' if self.per_channel else 'per-tensor'}"
                + (" 7-bit" if self.reduce_range else ""))


@dataclass
class Int8Check:
    """fp32 vs int8 on onnxruntime, both files on the same images."""

    kind: str  # "accuracy" (trained weights, test split) or "agreement" (untrained, held-out train images)
    images: int
    split: str
    top1_agreement: float
    output_error: float  # RMS(int8 - fp32) / RMS(fp32 - its mean over images)
    limit: float  # max top-1 drop in points ("accuracy") or max output_error ("agreement")
    fp32_top1: float | None = None
    int8_top1: float | None = None
    seconds: float = 0.0

    @property
    def drop_points(self) -> float | None:
        if self.fp32_top1 is None or self.int8_top1 is None:
            return None
        return 100.0 * (self.fp32_top1 - self.int8_top1)

    @property
    def passed(self) -> bool:
        value = self.drop_points if self.kind == "accuracy" else self.output_error
        return value is not None and bool(value <= self.limit)  # NaN fails

    def summary(self) -> str:
        if self.kind == "accuracy":
            return (f"top-1 on {self.images:,} {self.split} images: fp32 {100 * self.fp32_top1:.2f}%, int8 "
                    f"{100 * self.int8_top1:.2f}%, drop {self.drop_points:+.2f} points (limit {self.limit:g})")
        return (f"output agreement on {self.images:,} held-out {self.split} images (untrained weights): "
                f"error {self.output_error:.3f} of the fp32 spread (limit {self.limit:g}), "
                f"top-1 agreement {100 * self.top1_agreement:.1f}%")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drop_points": self.drop_points, "passed": self.passed}


def int8_unsupported(task: str, model: str) -> str | None:
    """Why ``model``, a ``task`` model, can have no int8 file, or None when it can. The one rule behind
    every way of asking for int8 (``export --int8``, ``prune --precision int8``, a recipe's export.int8
    and prune.precision int8): a file that cannot ship must not be planned or timed for either."""
    if task == "classification":
        return None
    return (f"int8 files are checked by top-1 against fp32, a classifier's metric; {model} is a {task} model "
            "and has none")


def int8_path(fp32_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.int8.onnx`` (same folder)."""
    p = Path(fp32_path)
    return p.with_name(p.name[: -len(".onnx")] + INT8_SUFFIX if p.name.endswith(".onnx") else p.name + INT8_SUFFIX)


def _check_path(out: Path) -> Path:
    return out.with_name(out.name[: -len(".onnx")] + ".check.json")


def int8_outputs(fp32_path: str | Path) -> list[Output]:
    """What :func:`export_int8` writes beside ``fp32_path``: the int8 file and its check record."""
    out = int8_path(fp32_path)
    return [onnx_output(out, "the int8 ONNX file"),
            Output(_check_path(out), "the int8 check record", is_json_with("fp32", "int8", "written", "check"))]


# ---------------------------------------------------------------------------- onnxruntime helpers
def _session(model: str | Path | bytes, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])


def _fixed_batch(proto: onnx.ModelProto) -> int | None:
    """The file's batch size, or None when the batch dimension is dynamic."""
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None


def _run(session, x: np.ndarray, batch: int | None) -> np.ndarray:
    """First output for every row of ``x``, fed in chunks of the file's fixed batch (last one padded)."""
    name = session.get_inputs()[0].name
    if batch is None:
        return session.run(None, {name: x})[0]
    outs = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), dtype=chunk.dtype)])
        outs.append(session.run(None, {name: chunk})[0][:n])
    return np.concatenate(outs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


# ---------------------------------------------------------------------------- calibration data
def _rows(n_total: int, n: int, seed: int, skip: int = 0) -> torch.Tensor:
    """A seeded random choice of ``n`` rows, after skipping the first ``skip`` of the same permutation
    (so calibration and agreement images never overlap)."""
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    return perm[skip: skip + n].sort().values


def _images(dataset, rows: torch.Tensor, batch_size: int = 64) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Normalised float32 NCHW batches (and labels) of ``dataset`` rows, as slimkit's loaders make them."""
    loader = make_loader(dataset.subset(rows) if rows is not None else dataset, batch_size, shuffle=False)
    for x, y in loader:
        yield x.numpy().astype(np.float32, copy=False), y.numpy()


def check_calib_images(data: DataBundle, n: int) -> None:
    """``n`` calibration images can be drawn from ``data``'s training split (said before any export)."""
    if n > len(data.train):
        raise ExportError(f"--calib-images {n} is more than the {len(data.train):,} training images of "
                          f"{data.name}: pass at most {len(data.train)}")


def calibration_images(data: DataBundle, n: int, seed: int = 0) -> np.ndarray:
    """``n`` images of the training split (seeded random choice), normalised like training did."""
    check_calib_images(data, n)
    return np.concatenate([x for x, _ in _images(data.train, _rows(len(data.train), n, seed))])


# ---------------------------------------------------------------------------- quantization

class _FormatAdviceFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please use QuantFormat.QDQ")


@contextlib.contextmanager
def _without_format_advice():
    """onnxruntime's quantizer logs "Please use QuantFormat.QDQ ..." on the root logger for QOperator
    s8/s8; slimkit times that configuration on purpose (int8_speed ranks it) and reports what it
    measured, so the advice would only be a stray line in the user's terminal."""
    flt = _FormatAdviceFilter()
    logging.getLogger().addFilter(flt)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(flt)


def quantize_onnx(fp32_path: str | Path, calib: np.ndarray, settings: QuantizeSettings,
                  warn: Callable[[str], None] | None = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """onnxruntime's pre-processing + ``quantize_static`` on ``fp32_path``, in a scratch folder.

    Returns the quantized model (not written anywhere) and what ran, for the metadata."""
    import onnxruntime
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    warn = warn or (lambda _m: None)
    settings.validate()
    fp32_path = Path(fp32_path)
    if not fp32_path.is_file():
        raise ExportError(f"fp32 model not found: {fp32_path}; export it first with `slimkit export SOURCE --onnx`")
    try:
        proto = onnx.load(str(fp32_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError and friends
        raise ExportError(f"{fp32_path} is not an ONNX model ({type(exc).__name__}); export one with "
                          "`slimkit export SOURCE --onnx`") from exc
    input_name = proto.graph.input[0].name
    batch = _fixed_batch(proto)
    step = batch or 32
    if batch is not None and len(calib) < batch:
        raise ExportError(f"--calib-images {len(calib)} is fewer than the file's batch size {batch}")

    class _Reader(CalibrationDataReader):
        """The calibration images in the file's batch size (a remainder that does not fill a batch is left out)."""

        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            chunk = calib[self.i:self.i + step]
            if len(chunk) == 0 or (batch is not None and len(chunk) < batch):
                return None
            self.i += step
            return {input_name: np.ascontiguousarray(chunk)}

        def rewind(self) -> None:
            self.i = 0

    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[settings.calib_method]
    used = batch * (len(calib) // batch) if batch else len(calib)
    record: dict[str, Any] = {"tool": "onnxruntime.quantization.quantize_static",
                              "onnxruntime": onnxruntime.__version__, **asdict(settings),
                              "calib_images_used": used}
    with tempfile.TemporaryDirectory(prefix="slimkit-int8-") as tmp:
        source = fp32_path
        if settings.preprocess:
            pre = Path(tmp) / "preprocessed.onnx"
            try:
                quant_pre_process(str(fp32_path), str(pre))
                source = pre
                record["preprocess"] = "quant_pre_process"
            except Exception as exc:  # noqa: BLE001 - shape inference raises anything; quantizing still works
                warn(f"onnxruntime's quant_pre_process failed ({_first_line(exc)}); quantized the graph as exported")
                record["preprocess"] = f"failed: {_first_line(exc)}"
        else:
            record["preprocess"] = "skipped"
        quantized = Path(tmp) / "model.int8.onnx"
        try:
            with _without_format_advice():
                quantize_static(str(source), str(quantized), _Reader(),
                                quant_format={"QDQ": QuantFormat.QDQ, "QOperator": QuantFormat.QOperator}[settings.quant_format],
                                per_channel=settings.per_channel, activation_type=qtype[settings.activation_type],
                                weight_type=qtype[settings.weight_type], calibrate_method=method,
                                reduce_range=settings.reduce_range,
                                extra_options={"CalibTensorRangeSymmetric": False})
            result = onnx.load(str(quantized))
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime's quantizer raises anything
            raise ExportError(f"onnxruntime could not quantize {fp32_path.name} ({type(exc).__name__}: "
                              f"{_first_line(exc)}); the fp32 file is kept; try --calib-method minmax or "
                              "export with another --opset") from exc
    counts: dict[str, int] = {}
    for node in result.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    record["quantize_linear_nodes"] = counts.get("QuantizeLinear", 0)
    if record["quantize_linear_nodes"] == 0:
        raise ExportError(f"onnxruntime quantized nothing in {fp32_path.name} (no QuantizeLinear node): it has no "
                          "Conv/MatMul/Gemm it can quantize; ship the fp32 file")
    return result, record


TIMING_CALIB_IMAGES = 8  # enough for onnxruntime to set every scale; the values do not change speed


def quantize_for_timing(fp32_path: str | Path, input_size: tuple[int, ...], out: str | Path | None = None,
                        batch: int = 1, settings: QuantizeSettings | None = None) -> Path:
    """``fp32_path`` quantized as :func:`export_int8` ships it (``settings``' format and types; default
    settings when None), calibrated on seeded random images, written to ``out`` (default
    ``model.int8.onnx`` beside it). For latency only: the quantized graph, and so its speed, is the
    same whatever the calibration scales, and no accuracy is claimed for it (it is not checked).
    ``batch``: the file's fixed batch, if any (calibration feeds whole batches)."""
    n = batch * math.ceil(TIMING_CALIB_IMAGES / batch)
    generator = torch.Generator().manual_seed(0)
    calib = torch.randn(n, *input_size, generator=generator).numpy()
    proto, record = quantize_onnx(fp32_path, calib, replace(settings or QuantizeSettings(), calib_images=n))
    props = {"slimkit.precision": "int8", "slimkit.quantization": json.dumps({**record, "calib_data": "random (timing only)"})}
    onnx.helper.set_model_props(proto, props)
    out = Path(out) if out is not None else int8_path(fp32_path)
    data = proto.SerializeToString()
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
    return out


def settings_of(int8_file: str | Path) -> QuantizeSettings:
    """The format, types and granularity an int8 file written by slimkit was quantized with (from its
    metadata), so another file can be quantized the same way; the defaults for a file without them."""
    props = {p.key: p.value for p in onnx.load(str(int8_file), load_external_data=False).metadata_props}
    try:
        q = json.loads(props.get("slimkit.quantization", "{}"))
    except json.JSONDecodeError:
        q = {}
    default = QuantizeSettings()
    return replace(default, **{k: q[k] for k in ("quant_format", "activation_type", "weight_type", "per_channel",
                                                 "reduce_range")
                               if isinstance(q, dict) and k in q})


def _output_error(fp32: np.ndarray, int8: np.ndarray) -> float:
    spread = fp32 - fp32.mean(axis=0, keepdims=True)
    denom = math.sqrt(float(np.mean(spread.astype(np.float64) ** 2)))
    err = math.sqrt(float(np.mean((int8.astype(np.float64) - fp32) ** 2)))
    return err / denom if denom > 0 else (0.0 if err == 0 else math.inf)


def check_int8(fp32: str | Path | bytes, int8: str | Path | bytes, data: DataBundle, *, trained: bool,
               max_drop: float = DEFAULT_MAX_DROP, max_output_error: float = DEFAULT_MAX_OUTPUT_ERROR,
               eval_images: int | None = None, calib_images: int = 0, seed: int = 0,
               threads: int | None = None, progress: Callable[[int, int], None] | None = None) -> Int8Check:
    """fp32 vs int8 on onnxruntime over the same images (see the module docstring for which)."""
    t0 = time.perf_counter()
    s32, s8 = _session(fp32, threads), _session(int8, threads)
    batch = _fixed_batch(onnx.load_model_from_string(fp32) if isinstance(fp32, bytes) else
                         onnx.load(str(fp32), load_external_data=False))
    if trained:
        dataset, split = data.test, "test"
        n = min(eval_images or len(dataset), len(dataset))
        rows = None if n == len(dataset) else _rows(len(dataset), n, seed)
    else:
        dataset, split = data.train, "train"
        n = min(eval_images or 512, len(dataset) - calib_images)
        if n < 2:
            raise ExportError(f"{data.name} has no training images left beyond the {calib_images} used to "
                              "calibrate: pass fewer --calib-images")
        rows = _rows(len(dataset), n, seed, skip=calib_images)  # the calibration rows are the first ones
    out32, out8, labels, done = [], [], [], 0
    for x, y in _images(dataset, rows):
        out32.append(_run(s32, x, batch))
        out8.append(_run(s8, x, batch))
        labels.append(y)
        done += len(x)
        if progress is not None:
            progress(done, n)
    f, q, y = np.concatenate(out32), np.concatenate(out8), np.concatenate(labels)
    agree = float(np.mean(f.argmax(1) == q.argmax(1)))
    check = Int8Check(kind="accuracy" if trained else "agreement", images=int(len(y)), split=split,
                      top1_agreement=agree, output_error=_output_error(f, q),
                      limit=max_drop if trained else max_output_error, seconds=0.0)
    if trained:
        check.fp32_top1 = float(np.mean(f.argmax(1) == y))
        check.int8_top1 = float(np.mean(q.argmax(1) == y))
    check.seconds = time.perf_counter() - t0
    return check


def export_int8(fp32_path: str | Path, data: DataBundle, *, trained: bool,
                settings: QuantizeSettings | Sequence[QuantizeSettings] | None = None,
                out: str | Path | None = None, max_drop: float = DEFAULT_MAX_DROP,
                max_output_error: float = DEFAULT_MAX_OUTPUT_ERROR, eval_images: int | None = None,
                metadata: dict[str, str] | None = None, threads: int | None = None,
                warn: Callable[[str], None] | None = None,
                progress: Callable[[int, int], None] | None = None,
                choice: dict[str, Any] | None = None) -> ExportResult:
    """Quantize an exported fp32 file, check it, and write ``model.int8.onnx`` beside it.

    ``data`` gives calibration images (training split) and check images; ``trained`` says whether
    the weights are trained (accuracy check on the test split) or not (output agreement).
    ``settings`` may be a list, in order of preference (fastest first, see :mod:`slimkit.int8_speed`):
    each is quantized and checked in turn and the first that passes is written; ``choice`` (how the
    order was decided) is recorded with it. Raises :class:`Int8CheckError` (and writes no int8 file)
    when every one fails the check."""
    tries = [settings or QuantizeSettings()] if settings is None or isinstance(settings, QuantizeSettings) else \
        list(settings)
    if not tries:
        raise ExportError("no int8 configuration to try")
    for s in tries:
        s.validate()
    if len({(s.calib_images, s.calib_method, s.seed) for s in tries}) != 1:
        raise ExportError("int8 configurations to try must share their calibration (images, method, seed)")
    if max_drop < 0 or not math.isfinite(max_drop):
        raise ExportError(f"--max-drop must be a non-negative number of top-1 points, got {max_drop}")
    if eval_images is not None and eval_images < 1:
        raise ExportError(f"--eval-images must be >= 1, got {eval_images}")
    fp32_path = Path(fp32_path)
    out = Path(out) if out is not None else int8_path(fp32_path)
    if out.resolve() == fp32_path.resolve():
        raise ExportError(f"the int8 file would overwrite the fp32 file {fp32_path}; choose another name")
    t0 = time.perf_counter()
    calib = calibration_images(data, tries[0].calib_images, tries[0].seed)  # one set for every configuration
    fp32_props = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
    attempts: list[dict[str, Any]] = []
    quantize_seconds = time.perf_counter() - t0  # calibration images, then each quantization
    for k, current in enumerate(tries):
        q0 = time.perf_counter()
        proto, record = quantize_onnx(fp32_path, calib, current, warn)
        record["calib_data"] = data.description
        record["calib_split"] = "train"
        record["configuration"] = current.label
        if choice is not None:
            record["chosen_by"] = choice
        quantize_seconds += time.perf_counter() - q0
        props = {**fp32_props, **(metadata or {})}
        props.update({"slimkit.precision": "int8", "slimkit.quantization": json.dumps(record),
                      "slimkit.fp32_file": fp32_path.name})
        onnx.helper.set_model_props(proto, props)
        data_bytes = proto.SerializeToString()
        check = check_int8(fp32_path, data_bytes, data, trained=trained, max_drop=max_drop,
                           max_output_error=max_output_error, eval_images=eval_images,
                           calib_images=current.calib_images, seed=current.seed, threads=threads, progress=progress)
        attempts.append({"configuration": current.label, "passed": check.passed, "check": check.summary()})
        if check.passed or k == len(tries) - 1:
            break
        if warn is not None:
            warn(f"int8 {current.label} failed the check ({check.summary()}); trying {tries[k + 1].label}")
    record_path = _check_path(out)
    atomic_write_text(record_path, json.dumps({"fp32": str(fp32_path), "int8": str(out), "written": check.passed,
                                               "check": check.to_dict(), "quantization": record,
                                               "attempts": attempts}, indent=1) + "\n")
    if not check.passed:
        out.unlink(missing_ok=True)  # an int8 file from an earlier run must not pass for this one
        how = ("try --calib-images 1024 or --calib-method percentile, or raise --max-drop" if trained else
               "check that --data is the data the model is meant for, or raise --max-output-error")
        tried = f" ({len(attempts)} configurations tried)" if len(attempts) > 1 else ""
        error = Int8CheckError(f"int8 check failed{tried}, no int8 file written: {check.summary()}; {how} "
                               f"(record: {record_path})")
        error.check_summary = check.summary()
        raise error

    props["slimkit.int8_check"] = json.dumps(check.to_dict())
    onnx.helper.set_model_props(proto, props)
    data_bytes = proto.SerializeToString()
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data_bytes))
    return ExportResult(path=out, backend="onnx-int8", size_bytes=len(data_bytes), export_seconds=quantize_seconds,
                        details={"quantization": record, "check": check.to_dict(), "check_record": str(record_path),
                                 "fp32_size_bytes": fp32_path.stat().st_size, "attempts": attempts})
