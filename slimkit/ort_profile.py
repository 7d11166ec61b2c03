"""Where onnxruntime spends a model's time: its own profiler, per node, put into categories that explain
latency that does not track MACs.

``SessionOptions.enable_profiling`` records every node's kernel time. :func:`profile` runs a file a few
times with it on and sums the per-run median of each node into categories: depthwise conv, pointwise
(1x1) conv, other conv, matmul/gemm, layout reorders (``ReorderInput``/``ReorderOutput`` between plain
NCHW and the blocked NCHWc layout of fp32 convs; ``Transpose`` around the NHWC int8 kernels),
quantize/dequantize, and the rest. fp32 nodes show their weight shapes, so their MACs are counted too;
int8 kernels hide their pre-packed weights, so they are matched back to the file's ``Conv`` by name.
:func:`compare_profiles` sets a pruned model's categories beside its full model's.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

__all__ = ["CATEGORIES", "profile", "summarize_profile", "compare_profiles", "source_conv_shapes", "classify_node"]

CATEGORIES = ("depthwise conv", "pointwise conv", "other conv", "matmul/gemm", "layout reorder",
              "quantize/dequantize", "other")


def _shape(entry: dict[str, Any]) -> list[int]:
    return list(next(iter(entry.values()))) if entry else []


def _conv_kind(weight: list[int], group: int | None, in_channels: int | None) -> str:
    """depthwise (one input channel per group), pointwise (1x1, dense) or other conv, from the weight's
    [out, in/group, kh, kw] shape."""
    if len(weight) < 3:
        return "other conv"
    kernel = int(np.prod(weight[2:]))
    if weight[1] == 1 and kernel > 1 and (group is None or group > 1) and (in_channels is None or in_channels > 1):
        return "depthwise conv"
    if kernel == 1 and (group in (None, 1)):
        return "pointwise conv"
    return "other conv"


def source_conv_shapes(path: Path) -> dict[str, tuple[list[int], int]]:
    """Conv node name -> (weight shape, group) in an ONNX file: fp32 ``Conv``, a QDQ file's ``Conv``
    (its weight followed back through ``DequantizeLinear``) or a QOperator file's ``QLinearConv``
    (onnxruntime's profile hides pre-packed int8 weights)."""
    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name: list(i.dims) for i in proto.graph.initializer}
    produced_by = {o: n for n in proto.graph.node for o in n.output}
    out = {}
    for node in proto.graph.node:
        weight_input = {"Conv": 1, "QLinearConv": 3}.get(node.op_type)  # QLinearConv: QOperator files
        if weight_input is None or len(node.input) <= weight_input:
            continue
        w = node.input[weight_input]
        if w not in inits and w in produced_by and produced_by[w].op_type == "DequantizeLinear":
            w = produced_by[w].input[0]
        if w in inits:
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            out[node.name] = (inits[w], group)
    return out


def classify_node(op: str, name: str, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]],
                  convs: dict[str, tuple[list[int], int]]) -> tuple[str, int]:
    """(category, MACs) of one profiled node. MACs are counted where the shapes show them (fp32 convs
    and matmuls); int8 kernels hide their packed weights, so their MACs come from the fp32 profile."""
    if op in ("ReorderInput", "ReorderOutput", "Transpose"):
        return "layout reorder", 0
    if op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
        return "quantize/dequantize", 0
    if op in ("Conv", "FusedConv", "NhwcFusedConv", "QLinearConv"):
        base = re.sub(r"(_token_\d+|_nchwc)+$", "", name.removesuffix("_kernel_time"))
        if op != "QLinearConv" and len(inputs) >= 2 and len(_shape(inputs[1])) == 4:
            weight, x, y = _shape(inputs[1]), _shape(inputs[0]), _shape(outputs[0]) if outputs else []
            in_ch = x[1] if len(x) == 4 else None
            group = in_ch // weight[1] if in_ch and weight[1] else None
            macs = int(np.prod(y)) * int(np.prod(weight[1:])) if len(y) == 4 else 0
            return _conv_kind(weight, group, in_ch), macs
        if base in convs:
            weight, group = convs[base]
            return _conv_kind(weight, group, None), 0
        return "other conv", 0
    if op in ("MatMul", "Gemm", "FusedMatMul", "FusedGemm", "QGemm", "MatMulInteger", "QLinearMatMul",
              "MatMulIntegerToFloat", "DynamicQuantizeMatMul"):
        macs = 0
        if op in ("MatMul", "Gemm", "FusedMatMul", "FusedGemm") and len(inputs) >= 2 and outputs:
            a, y = _shape(inputs[0]), _shape(outputs[0])
            if a and y:
                macs = int(np.prod(y)) * a[-1]
        return "matmul/gemm", macs
    return "other", 0


def profile(files: dict[str, Path], shape: tuple[int, ...], *, threads: int = 2, runs: int = 20,
            warmup: int = 3, mode: str = "interleaved") -> dict[str, dict[str, Any]]:
    """onnxruntime's profiler on every file of ``files`` (name -> path), run as
    :func:`slimkit.latency.measure` runs them in ``mode``: interleaved (every file once per round, pool
    threads not spinning, so load on a shared machine hits all alike) or served (onnxruntime's defaults,
    each file alone in one block of runs): per name, µs per run and MACs per category, and the slowest
    nodes."""
    if mode not in ("served", "interleaved"):
        raise ValueError(f"unknown timing mode {mode!r}")
    feed_x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="slimkit-profile-") as tmp:
        sessions = {}
        for i, (name, path) in enumerate(files.items()):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.enable_profiling = True
            opts.log_severity_level = 3
            if mode == "interleaved":  # as measure() times in that mode; served keeps onnxruntime's spinning
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.profile_file_prefix = str(Path(tmp) / f"prof{i}")
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            sessions[name] = (session, {session.get_inputs()[0].name: feed_x})
        order = list(sessions.values())
        if mode == "served":
            for session, feed in order:
                time.sleep(0.02)  # let the previous session's pool threads stop spinning
                for _ in range(warmup + runs):  # warm-up runs are profiled too: dropped in summarize_profile
                    session.run(None, feed)
        else:
            for i in range(warmup + runs):  # warm-up runs are profiled too: dropped in summarize_profile
                for k in range(len(order)):
                    # rotate as measure() does: on a loaded machine the first run of a round waits for its
                    # sleeping pool threads, and that wait must not always land on one model's first node
                    session, feed = order[(i + k) % len(order)]
                    session.run(None, feed)
        events = {name: json.loads(Path(session.end_profiling()).read_text())
                  for name, (session, _) in sessions.items()}
    return {name: summarize_profile(events[name], source_conv_shapes(files[name]), runs, warmup=warmup)
            for name in files}


def summarize_profile(events: list[dict[str, Any]], convs: dict[str, tuple[list[int], int]], runs: int,
                      warmup: int = 0) -> dict[str, Any]:
    """Per-category µs per run and MACs, plus the ten slowest nodes, from onnxruntime's profile events.
    Each node counts its fastest run: on a shared machine preemption only ever adds time, and it hit
    some nodes in most runs (a median kept 27 ms stalls of a 0.2 ms node)."""
    per_node: dict[str, list[float]] = defaultdict(list)
    info: dict[str, tuple[str, str, int]] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        args = e.get("args", {})
        op = args.get("op_name", "?")
        per_node[e["name"]].append(float(e["dur"]))
        if e["name"] not in info:
            category, macs = classify_node(op, e["name"], args.get("input_type_shape", []),
                                           args.get("output_type_shape", []), convs)
            info[e["name"]] = (op, category, macs)
    us = {k: float(np.min(v[warmup:] if len(v) > warmup else v)) for k, v in per_node.items()}
    cats: dict[str, dict[str, float]] = {c: {"us": 0.0, "macs": 0, "nodes": 0} for c in CATEGORIES}
    for name, t in us.items():
        _, category, macs = info[name]
        cats[category]["us"] += t
        cats[category]["macs"] += macs
        cats[category]["nodes"] += 1
    slowest = sorted(us, key=lambda k: -us[k])[:10]
    return {"total_us": sum(us.values()), "categories": cats, "runs": runs,
            "slowest": [{"node": k.removesuffix("_kernel_time"), "op": info[k][0], "category": info[k][1],
                         "us": round(us[k], 1)} for k in slowest]}


def compare_profiles(plan: dict[str, Any], full: dict[str, Any], mac_source: dict[str, Any] | None = None,
                     full_mac_source: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per category: share of the plan's time, time ratio plan/full, MAC ratio plan/full (MACs from the
    fp32 profiles when the timed ones are int8). A category whose time ratio is well above its MAC
    ratio is where the plan loses to its MACs."""
    macs_p = (mac_source or plan)["categories"]
    macs_f = (full_mac_source or full)["categories"]
    rows = []
    for c in CATEGORIES:
        tp, tf = plan["categories"][c]["us"], full["categories"][c]["us"]
        if tp == 0 and tf == 0:
            continue
        mp, mf = macs_p[c]["macs"], macs_f[c]["macs"]
        rows.append({"category": c, "plan_us": round(tp, 1), "full_us": round(tf, 1),
                     "share_of_plan": round(tp / plan["total_us"], 4) if plan["total_us"] else None,
                     "time_ratio": round(tp / tf, 4) if tf else None,
                     "mac_ratio": round(mp / mf, 4) if mf else None})
    return rows
