"""ONNX export: torch.onnx -> onnx.checker -> onnx-simplifier -> metadata -> onnxruntime parity.

Both of torch's exporter paths are supported. ``dynamo`` (torch.export + onnxscript, torch's
default) gives the smaller graph; ``torchscript`` (the legacy tracer) is faster to run. ``auto``
tries dynamo and falls back to the tracer, saying so. ``bench/export_parity.py`` measures both over
the zoo.

The file is written through :func:`slimkit.files.atomic_write`: it only appears at ``out`` after
the checker and the parity check passed, so a failure never leaves a partial ``.onnx`` behind.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from torch import nn

from slimkit import validate as limits
from slimkit.errors import os_error_in
from slimkit.exporters import METADATA_MARK, ExportError, ExportResult
from slimkit.files import atomic_write, scratch_path
from slimkit.shapes import draw_sample
from slimkit.validate import check_number
from slimkit.version import __version__

__all__ = ["export", "EXPORTERS", "TIMING_EXPORTERS", "INPUT_NAME", "OUTPUT_NAME", "read_metadata", "input_shape", "slimkit_metadata"]

EXPORTERS = ("auto", "dynamo", "torchscript")
# Throw-away files a latency search times (dozens per search): torchscript first, as it writes a file in
# a fraction of torch.export's time; torch.export where torchscript has no conversion (VOLO's col2im).
TIMING_EXPORTERS = ("torchscript", "dynamo")
INPUT_NAME, OUTPUT_NAME = "input", "logits"
DEFAULT_ATOL = 1e-4
MIN_DETECTOR_OPSET = 11  # NonMaxSuppression and RoiAlign (torchvision's own ONNX tests start here)
# Under this many detections on the fixed image the file's own check compares little, so a copy
# that keeps every score is checked as well.
FEW_DETECTIONS = 10


@contextlib.contextmanager
def _quiet():
    """torch.onnx and onnxsim print progress and warnings we summarise ourselves."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _quiet_native():
    """Also silence what native code writes to the process's stdout/stderr: onnx-simplifier's C++
    prints a warning per op it cannot fold, hundreds of them on a detector's NMS graph."""
    for stream in (sys.stdout, sys.stderr):  # what Python buffered so far goes out first, not into the void
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "wb") as null:
            for fd in (1, 2):
                os.dup2(null.fileno(), fd)
            yield
    finally:
        for fd, copy_fd in zip((1, 2), saved):
            os.dup2(copy_fd, fd)
            os.close(copy_fd)


def _failed_op(exc: BaseException) -> str | None:
    """The ATen op an exporter choked on, from anywhere in the exception chain."""
    seen = 0
    while exc is not None and seen < 10:
        m = re.search(r"aten(?:::|\.)([A-Za-z0-9_]+)", str(exc))
        if m:
            return m.group(1)
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _torch_export(model: nn.Module, x: torch.Tensor, path: str, exporter: str, opset: int | None,
                  dynamic_batch: bool, output_names: tuple[str, ...] = (OUTPUT_NAME,)) -> None:
    kwargs: dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=list(output_names))
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamic_batch:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    if exporter == "dynamo":
        kwargs.update(dynamo=True, external_data=False, optimize=True)
    else:
        kwargs.update(dynamo=False, do_constant_folding=True)
    with _quiet(), torch.no_grad():
        torch.onnx.export(model, (x,), path, **kwargs)


def _outputs(result: Any, exact: bool = False) -> list[np.ndarray]:
    """Every tensor in a model's output, flattened, as fp32 arrays (``exact``: in their own dtype)."""
    if isinstance(result, torch.Tensor):
        return [result.detach().numpy() if exact else result.detach().float().numpy()]
    if isinstance(result, (list, tuple)):
        return [a for r in result for a in _outputs(r, exact)]
    if isinstance(result, dict):
        return [a for r in result.values() for a in _outputs(r, exact)]
    raise ExportError(f"cannot compare model output of type {type(result).__name__}")


def parity_limit(atol: float, scale: float) -> float:
    """The largest |onnxruntime - PyTorch| that still counts as the same graph: ``atol`` for outputs
    up to 1, relative to the largest output above that. fp32 rounding grows with magnitude (a
    random-init MobileNet's logits reach ~12 and differ by ~2e-4 between the two runtimes, 2e-5 of
    the output), while a wrong graph differs by the order of the outputs themselves."""
    return atol * max(1.0, scale)


def fp32_rounding_error(model: nn.Module, input_size: tuple[int, ...], seed: int = 0) -> float:
    """Max |PyTorch fp32 - PyTorch fp64| on :func:`parity`'s first input: how far an fp32 runtime strays
    from the exact result on this model by rounding alone. Deep nets with large activations (a
    random-init ResNet-50 FPN) reach a few 1e-4 here, above a fixed tolerance; two fp32 runtimes that
    each stray this far can differ by up to twice it while computing the same graph."""
    x = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(seed + 12345))
    exact = copy.deepcopy(model).double()
    with torch.no_grad():
        pairs = zip(_outputs(model(x)), _outputs(exact(x.double()), exact=True))
        return max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in pairs)


def parity(model: nn.Module, onnx_bytes: bytes, input_size: tuple[int, ...], batches: list[int],
           seed: int = 0) -> tuple[float, float]:
    """Max |onnxruntime - PyTorch| over fresh random inputs, and the largest |output| seen."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed + 12345)  # not the export example: fresh inputs
    worst, scale = 0.0, 0.0
    for b in batches:
        x = torch.randn(b, *input_size, generator=gen)
        with torch.no_grad():
            ref = _outputs(model(x))
        got = session.run(None, {name: x.numpy()})
        if len(got) != len(ref):
            raise ExportError(f"ONNX model has {len(got)} outputs, PyTorch {len(ref)}")
        for r, g in zip(ref, got):
            if r.shape != g.shape:
                raise ExportError(f"ONNX output shape {tuple(g.shape)} != PyTorch {tuple(r.shape)} at batch {b}")
            # NaN == NaN is no agreement: max(0.0, nan) is 0.0, which once passed a NaN model as exact.
            for what, out in (("PyTorch", r), ("onnxruntime", g)):
                if not np.isfinite(out).all():
                    raise ExportError(f"{what}'s output holds NaN or inf on random inputs: the model's weights or "
                                      "BatchNorm statistics are not finite (a diverged training run?); retrain "
                                      "with a lower --lr, or export an earlier checkpoint")
            worst = max(worst, float(np.abs(r - g).max()))
            scale = max(scale, float(np.abs(r).max()))
    return worst, scale


def _session(onnx_bytes: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


def fixed_image(input_size: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """The image a whole detector is traced and checked on: shapes image ``seed`` (objects on a
    noisy background, the same on every machine) at the input size, (1, 3, H, W) in [0, 1] as
    torchvision's detectors take it."""
    return draw_sample(seed, 0, (input_size[1], input_size[2])).image.float().div(255.0)[None]


def detection_parity(model: nn.Module, onnx_bytes: bytes, image: torch.Tensor, atol: float = DEFAULT_ATOL
                     ) -> dict[str, Any]:
    """onnxruntime vs PyTorch detections of a whole detector on ``image``: the same count, and every
    detection matched (same label, |score difference| <= ``atol``, every box coordinate within
    ``atol`` x the image side in pixels) except near-ties at the lowest score kept.

    Why these tolerances: the dense core's raw outputs agree to ``atol`` (its parity check);
    sigmoid/softmax scores move at most a quarter of a logit's error, so ``atol`` bounds a score;
    a box is an anchor (or proposal) plus a delta scaled by its size, at most the image side, so a
    delta error of ``atol`` moves a coordinate by at most ``atol`` x side pixels. Keypoints are
    pixels like boxes. Masks (probabilities, like scores) are pasted at whole-pixel box corners, so a
    box that moves by 1e-3 px across a pixel edge shifts or resamples its mask by a pixel: each mask
    pixel is compared with the range of the other mask's 3x3 neighbourhood around it, which a
    one-pixel shift keeps and a wrong mask head does not.

    A two-stage detector (R-CNN) crops features at its proposals, so the proposals' own rounding
    moves its scores and boxes beyond these bounds while the graph is right. As for dense outputs
    (:func:`fp32_rounding_error`), differences over a tolerance are accepted when PyTorch's own
    fp32 run strays as far from an fp64 run of the same detector (up to twice that, and only
    while that rounding is under 10x the tolerance).

    Why match instead of comparing row by row: detections with near-equal scores may come out in
    another order, and where the count is capped (``detections_per_img``) or a top-k keeps the best
    candidates, two runtimes may keep different ones of a near-tie at the cut-off. A detection left
    unmatched is accepted only there (its score within the score tolerance of the lowest score
    kept); anything else is a wrong graph."""
    names = tuple(getattr(model, "output_names", ("boxes", "scores", "labels")))
    session = _session(onnx_bytes)
    with torch.no_grad():
        ref = dict(zip(names, (t.detach().numpy() for t in model(image))))
    got_list = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    if len(got_list) != len(names):
        raise ExportError(f"ONNX model has {len(got_list)} outputs, PyTorch {len(names)}")
    got = dict(zip(names, got_list))
    count, got_count = len(ref["scores"]), len(got["scores"])
    if got_count != count:
        raise ExportError(f"onnxruntime finds {got_count} detections on the fixed image, PyTorch {count}: the "
                          "exported detector is wrong; export the dense core instead (drop --postprocess)")
    for what, out in (("PyTorch", ref), ("onnxruntime", got)):
        if not all(np.isfinite(out[k]).all() for k in ("boxes", "scores")):
            raise ExportError(f"{what}'s detections hold NaN or inf: the model's weights or BatchNorm statistics are "
                              "not finite (a diverged training run?)")
    side = float(max(image.shape[-2:]))
    tol = {"boxes": atol * side, "scores": atol, "keypoints": atol * side, "masks": atol,
           "keypoints_scores": parity_limit(atol, float(np.abs(ref.get("keypoints_scores", np.zeros(1))).max(
               initial=0.0)))}
    tol = {k: v for k, v in tol.items() if k in names}
    found = _compare_detections(ref, got, tol)
    rounding = None
    if found["problem"]:
        # over a tolerance: is it what fp32 rounding alone does to this detector?
        with torch.no_grad():
            exact_model = copy.deepcopy(model).double()
            exact = dict(zip(names, (t.detach().float().numpy() for t in exact_model(image.double()))))
        own = _compare_detections(ref, exact, {k: 10 * v for k, v in tol.items()})
        if not own["problem"]:
            rounding = own["max_diff"]
            widened = {k: max(v, 2 * rounding[k]) for k, v in tol.items()}
            again = _compare_detections(ref, got, widened)
            if not again["problem"]:
                found, tol = again, widened
    if found["problem"]:
        raise ExportError(f"onnxruntime and PyTorch disagree on the fixed image: {found['problem']}"
                          + (f" (PyTorch's own fp32 rounding against fp64: {_diff_text(rounding)})" if rounding else "")
                          + ": the exported detector is wrong; export the dense core instead (drop --postprocess)")
    return {"detections": count, "matched": found["matched"], "ties_at_cut_off": found["ties"],
            "lowest_score": found["lowest_score"], "max_diff": found["max_diff"], "tolerance": tol,
            "fp32_rounding": rounding}


def _outside_neighbours(a: np.ndarray, b: np.ndarray) -> float:
    """How far any pixel of ``a`` lies outside the range of ``b``'s 3x3 neighbourhood around it: 0 for
    ``b`` = ``a`` shifted or resampled by up to a pixel, the size of the error for a wrong mask."""
    h, w = b.shape[-2:]
    padded = np.pad(b, [(0, 0)] * (b.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    lo, hi = b.copy(), b.copy()
    for dy in range(3):
        for dx in range(3):
            shifted = padded[..., dy:dy + h, dx:dx + w]
            np.minimum(lo, shifted, out=lo)
            np.maximum(hi, shifted, out=hi)
    return float(np.maximum(lo - a, a - hi).max(initial=0.0))


def _diff_text(diffs: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())


def _compare_detections(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], tol: dict[str, float]
                        ) -> dict[str, Any]:
    """Match ``got`` to ``ref`` detection by detection (greedily, best score first: same label, score
    and box within ``tol``); the largest differences of matched pairs per output, and what is wrong
    (``problem``: None when nothing)."""
    count = len(ref["scores"])
    free = np.ones(len(got["scores"]), dtype=bool)  # an fp64 run may keep another count than ref
    pairs: list[tuple[int, int]] = []
    for i in np.argsort(-ref["scores"], kind="stable") if len(free) else ():
        ok = free & (got["labels"] == ref["labels"][i]) & (np.abs(got["scores"] - ref["scores"][i]) <= tol["scores"])
        dist = np.where(ok, np.abs(got["boxes"] - ref["boxes"][i]).max(axis=1), np.inf)
        j = int(np.argmin(dist))
        if dist[j] <= tol["boxes"]:
            free[j] = False
            pairs.append((int(i), j))
    ri = np.array([p[0] for p in pairs], dtype=int)
    gi = np.array([p[1] for p in pairs], dtype=int)
    max_diff = {}
    for name in tol:
        a, b = ref[name][ri].astype(np.float64), got[name][gi].astype(np.float64)
        if not pairs:
            max_diff[name] = 0.0
        elif name == "masks":
            max_diff[name] = max(_outside_neighbours(a, b), _outside_neighbours(b, a))
        else:
            max_diff[name] = float(np.abs(a - b).max())
    lowest = float(ref["scores"].min()) if count else 0.0
    unmatched = sorted(set(range(count)) - set(ri.tolist()))
    problem = None
    beyond = [i for i in unmatched if ref["scores"][i] > lowest + tol["scores"]] + \
        [int(j) for j in np.flatnonzero(free) if got["scores"][j] > lowest + tol["scores"]]
    if beyond:
        side, i = (ref, unmatched[0]) if unmatched else (got, int(np.flatnonzero(free)[0]))
        problem = (f"{max(len(unmatched), int(free.sum()))} of {count} detections have no match, not only near-ties at "
                   f"the lowest score {lowest:.4f} (e.g. label {int(side['labels'][i])} at score "
                   f"{float(side['scores'][i]):.4f}, box {np.round(side['boxes'][i], 2).tolist()}; tolerances "
                   f"{_diff_text(tol)})")
    else:
        over = {k: v for k, v in max_diff.items() if not v <= tol[k]}
        if over:
            problem = f"matched detections differ by {_diff_text(over)} (tolerances {_diff_text(tol)})"
    return {"matched": len(pairs), "ties": len(unmatched), "lowest_score": lowest, "max_diff": max_diff,
            "problem": problem}


def _export_proto(model: nn.Module, x: torch.Tensor, scratch: Path, exporter: str, opset: int | None,
                  dynamic_batch: bool, output_names: tuple[str, ...]) -> onnx.ModelProto:
    _torch_export(model, x, str(scratch), exporter, opset, dynamic_batch, output_names)
    return onnx.load(str(scratch))


def _check_detector_options(batch: int, dynamic_batch: bool, exporter: str, opset: int | None) -> None:
    if batch != 1 or dynamic_batch:
        raise ExportError("a whole detector is exported for one image at a time (its detections per image vary in "
                          "number): drop --batch and --dynamic-batch, or export the dense core (drop --postprocess)")
    if exporter == "dynamo":
        raise ExportError("the dynamo exporter (torch.export) cannot trace a detector's NMS (torchvision's "
                          "batched_nms branches on the number of boxes): use --exporter torchscript or auto")
    if opset is not None and opset < MIN_DETECTOR_OPSET:
        raise ExportError(f"a whole detector needs --opset {MIN_DETECTOR_OPSET} or later (NMS and RoIAlign have no "
                          "earlier ONNX form): raise --opset or drop it")


def _check_at_threshold_zero(model: nn.Module, x: torch.Tensor, scratch: Path, opset: int | None,
                             atol: float) -> dict[str, Any]:
    """:func:`detection_parity` on a copy that keeps every score: for a file that finds few detections
    on the fixed image (untrained weights score at their prior, under the threshold), whose own check
    then compares almost nothing. The copy's graph is the file's with another threshold constant."""
    copy = model.with_score_threshold(0.0)
    try:
        proto = _export_proto(copy, x, scratch, "torchscript", opset, False, tuple(copy.output_names))
    finally:
        scratch.unlink(missing_ok=True)
    return detection_parity(copy, proto.SerializeToString(), x, atol)


def _simplify(proto: onnx.ModelProto, warn: Callable[[str], None]) -> tuple[onnx.ModelProto, bool]:
    try:
        from onnxsim import simplify

        with _quiet_native(), _quiet():
            simplified, ok = simplify(proto)
    except Exception as exc:  # noqa: BLE001 - a simplifier failure must never fail the export
        warn(f"onnx-simplifier failed ({type(exc).__name__}: {_first_line(exc)}); kept the unsimplified graph")
        return proto, False
    if not ok:
        warn("onnx-simplifier's own check failed; kept the unsimplified graph")
        return proto, False
    return simplified, True


def _opset_of(proto: onnx.ModelProto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def input_shape(proto_or_path: onnx.ModelProto | str | Path) -> list[int | str]:
    """The first graph input's shape (symbolic dims as their names)."""
    proto = proto_or_path if isinstance(proto_or_path, onnx.ModelProto) else onnx.load(
        str(proto_or_path), load_external_data=False)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def slimkit_metadata(plan_json: str, *, source: str, weights: str, input_size: tuple[int, ...]) -> dict[str, str]:
    """What every exported file carries: slimkit version, plan, where it came from, weights, input size."""
    return {METADATA_MARK: __version__, "slimkit.plan": plan_json, "slimkit.source": source,
            "slimkit.weights": weights, "slimkit.input_size": "x".join(map(str, input_size))}


def read_metadata(path: str | Path) -> dict[str, str]:
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def export(model: nn.Module, input_size: tuple[int, int, int], out: str | Path, *, batch: int = 1,
           metadata: dict[str, Any] | None = None, opset: int | None = None, dynamic_batch: bool = False,
           simplify: bool = True, exporter: str | tuple[str, ...] = "auto", atol: float = DEFAULT_ATOL, seed: int = 0,
           check_parity: bool = True, warn: Callable[[str], None] | None = None,
           detections: bool = False) -> ExportResult:
    """Export ``model`` (fp32, eval mode) to a checked, simplified, parity-verified ONNX file.

    ``detections``: ``model`` is a whole detector (:class:`slimkit.models.tasks.WholeDetector`): one
    image in, its ``output_names`` out; traced on :func:`fixed_image` and checked there with
    :func:`detection_parity`.

    ``check_parity=False`` is for throw-away files timed during a latency search, never for a
    file handed to a user; such files are written with ``exporter=TIMING_EXPORTERS`` (a tuple is the
    order in which to try the exporters)."""
    warn = warn or (lambda _m: None)
    if isinstance(exporter, tuple):  # an explicit order of exporters to try (TIMING_EXPORTERS)
        if not exporter or not set(exporter) <= {"dynamo", "torchscript"}:
            raise ValueError(f"exporter: expected an order of 'dynamo' and 'torchscript', got {exporter!r}")
    elif exporter not in EXPORTERS:
        raise ExportError(f"unknown --exporter '{exporter}': choose one of {', '.join(EXPORTERS)}")
    check_number("--batch", batch, limits.SMALL_COUNT, ExportError)
    check_number("--opset", opset, limits.OPSET, ExportError)
    check_number("--atol", atol, limits.ATOL, ExportError)
    out = Path(out)
    model = model.float().eval().cpu()
    output_names: tuple[str, ...] = (OUTPUT_NAME,)
    if detections:
        _check_detector_options(batch, dynamic_batch, exporter, opset)
        output_names = tuple(model.output_names)
        x = fixed_image(input_size, seed)
    else:
        # A batch-1 example would let torch.export specialise the batch dim; trace dynamic at 2.
        example_batch = max(batch, 2) if dynamic_batch else batch
        x = torch.randn(example_batch, *input_size, generator=torch.Generator().manual_seed(seed))

    t0 = time.perf_counter()
    # torch.export cannot take a detector's NMS: torchvision's batched_nms branches on the box count
    tried = (["torchscript"] if detections else ["dynamo", "torchscript"] if exporter == "auto"
             else list(exporter) if isinstance(exporter, tuple) else [exporter])
    proto, used, errors = None, None, []
    scratch = scratch_path(out, "export")  # fits beside a 255-byte --out
    scratch.parent.mkdir(parents=True, exist_ok=True)
    for name in tried:
        try:
            written = _export_proto(model, x, scratch, name, opset, dynamic_batch, output_names)
            got = _opset_of(written)
            if opset is not None and got != opset:  # dynamo writes 18 for opsets it cannot convert to
                raise ExportError(f"the {name} exporter wrote opset {got}, not the --opset {opset} asked")
            proto, used = written, name
            break
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - exporter internals raise anything
            os_err = os_error_in(exc)
            if os_err is not None:  # a full or read-only disk is not the exporter's fault: say so
                raise os_err from None
            errors.append((name, exc))
        finally:
            scratch.unlink(missing_ok=True)
            Path(f"{scratch}.data").unlink(missing_ok=True)
    if proto is None:
        name, exc = errors[0]
        op = _failed_op(exc)
        why = (f"operator aten::{op} has no ONNX conversion" if op else _first_line(exc))
        fix = ("use an opset both exporters write here (dynamo: 18-25, torchscript: 7-23), or drop --opset"
               if opset is not None and not op else "replace that op or try another --opset")
        if detections:
            fix = "export its dense core instead (drop --postprocess); anchors, decoding and NMS then run outside"
        raise ExportError(f"cannot export to ONNX: {why} (tried the {' and '.join(n for n, _ in errors)} "
                          f"exporter{'s' if len(errors) > 1 else ''}); {fix}")
    if errors:
        name, exc = errors[0]
        op = _failed_op(exc)
        warn(f"the {name} exporter failed ({'aten::' + op if op else _first_line(exc)}); used the {used} exporter")
    export_seconds = time.perf_counter() - t0

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"the exported graph fails onnx.checker: {_first_line(exc)}") from exc
    nodes_before = len(proto.graph.node)
    simplified = False
    if simplify:
        proto, simplified = _simplify(proto, warn)
    nodes_after = len(proto.graph.node)

    props = {"slimkit.exporter": used, **{k: v if isinstance(v, str) else json.dumps(v)
                                          for k, v in (metadata or {}).items()}}
    onnx.helper.set_model_props(proto, props)
    data = proto.SerializeToString()

    if detections:
        found = detection_parity(model, data, x, atol) if check_parity else {}
        if check_parity and found["detections"] < FEW_DETECTIONS:
            found["check_copy"] = _check_at_threshold_zero(model, x, scratch, opset, atol)
        atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
        return ExportResult(path=out, backend="onnx", size_bytes=len(data), export_seconds=export_seconds,
                            details={"exporter": used, "opset": _opset_of(proto), "nodes_before": nodes_before,
                                     "nodes_after": nodes_after, "simplified": simplified, "dynamic_batch": False,
                                     "batch": 1, "input_shape": input_shape(proto), "outputs": list(output_names),
                                     "parity_atol": atol, "detection_parity": found})
    batches = [batch, batch + 2] if dynamic_batch else [batch, batch]
    max_diff, scale = parity(model, data, input_size, batches, seed=seed) if check_parity else (float("nan"), 0.0)
    limit = parity_limit(atol, scale)
    rounding = None
    if check_parity and not max_diff <= limit:  # also catches NaN
        # Over the tolerance but within what fp32 rounding alone explains on this model: the same graph.
        rounding = fp32_rounding_error(model, input_size, seed=seed)
        # (a model whose own fp32 and fp64 runs differ by far more than the tolerance is not rounding:
        # it is nondeterministic or overflows, and proves nothing about the graph)
        if not (max_diff <= 2 * rounding and rounding <= 10 * limit):
            raise ExportError(f"onnxruntime output differs from PyTorch by {max_diff:.2e} (> {limit:.2g}, outputs up "
                              f"to {scale:.3g}; PyTorch's own fp32 rounding error here is {rounding:.1e}): the "
                              "exported graph is wrong; try --exporter torchscript or another --opset")
        warn(f"onnxruntime differs from PyTorch by {max_diff:.1e}, over --atol's {limit:.2g} but within twice "
             f"PyTorch's own fp32 rounding error on this model ({rounding:.1e} against fp64): accepted as rounding")

    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
    opset_used = _opset_of(proto)
    return ExportResult(path=out, backend="onnx", size_bytes=len(data), export_seconds=export_seconds,
                        details={"exporter": used, "opset": opset_used, "nodes_before": nodes_before,
                                 "nodes_after": nodes_after, "simplified": simplified,
                                 "dynamic_batch": dynamic_batch, "batch": batch,
                                 "input_shape": input_shape(proto), "parity_max_abs_diff": max_diff,
                                 "parity_output_scale": scale, "parity_atol": atol,
                                 "parity_limit": limit, "parity_fp32_rounding_error": rounding})
