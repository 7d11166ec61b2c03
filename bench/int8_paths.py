"""onnxruntime's int8 paths on this CPU: QDQ vs QOperator, uint8/int8 activations and weights,
per-channel vs per-tensor, on the uniform MobileNet-V1 150M plan at 224 px; where the time goes.

Every configuration is quantized from the same fp32 file (seeded random calibration: the graph, and so
its speed, does not depend on the scales) and timed side by side with the fp32 file by
:func:`slimkit.latency.measure` (onnxruntime CPU, batch 1, interleaved rounds, spinning off); then
onnxruntime's profiler splits fp32 and the fastest configurations into depthwise / pointwise / other
conv, layout reorders, quantize/dequantize (:mod:`slimkit.ort_profile`), per node. The choice
``slimkit export --int8`` makes on this machine (:func:`slimkit.int8_speed.rank_int8_configs`) is run
and recorded beside it.

    python bench/int8_paths.py [--runs 60] [--threads 2] [--plan PLAN.json]

Writes bench/results/int8_paths.{json,md}. Run with the MALLOC_* settings exported (DESIGN.md) and
under ``nice``; on a shared machine read the interleaved ratios, not the milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnxruntime as ort

from slimkit.artifacts import plan_candidate
from slimkit.exporters.int8 import QUANT_FORMATS, QuantizeSettings, quantize_for_timing
from slimkit.files import atomic_write_text
from slimkit.int8_speed import rank_int8_configs
from slimkit.latency import Candidate, cpu_description, measure
from slimkit.ort_profile import CATEGORIES, profile
from slimkit.plan import load_plan
from slimkit.prune import prune

RESULTS = Path(__file__).parent / "results"
PAIRS = (("uint8", "int8"), ("int8", "int8"), ("uint8", "uint8"))


def configurations() -> list[QuantizeSettings]:
    out = []
    for per_channel in (True, False):
        for fmt in QUANT_FORMATS:
            for act, weight in PAIRS:
                out.append(replace(QuantizeSettings(), quant_format=fmt, activation_type=act, weight_type=weight,
                                   per_channel=per_channel))
    out.append(replace(QuantizeSettings(), reduce_range=True))
    return out


def lscpu() -> dict[str, Any]:
    model, flags = cpu_description(), ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "Flags":
                flags = value.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"cpu": model, "cores": os.cpu_count(),
            "simd_flags": [f for f in flags.split() if f.startswith(("avx", "amx", "fma", "f16c")) or "vnni" in f],
            "vnni": [f for f in flags.split() if "vnni" in f], "amx": [f for f in flags.split() if f.startswith("amx")]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile-runs", type=int, default=20)
    ap.add_argument("--plan", help="a plan to quantize instead of the uniform MobileNet-V1 150M plan")
    ap.add_argument("--out", default=str(RESULTS / "int8_paths"))
    args = ap.parse_args()
    plan = load_plan(args.plan) if args.plan else prune("mobilenet_v1", "150M", method="uniform", num_classes=10,
                                                        verify=False)
    shape = (1, *plan.input_size)
    rows, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="slimkit-int8-paths-") as tmp:
        work = Path(tmp)
        fp32 = plan_candidate(plan, work, 1, "fp32").onnx_path
        cands = [Candidate("fp32", shape, fp32, spec={"kind": "onnx"}, flops=plan.flops)]
        files = {"fp32": fp32}
        for i, s in enumerate(configurations()):
            try:
                path = quantize_for_timing(fp32, tuple(plan.input_size), work / f"c{i}.int8.onnx", settings=s)
            except Exception as exc:  # noqa: BLE001 - record what onnxruntime refuses, time the rest
                skipped.append({"configuration": s.label, "error": str(exc).splitlines()[0][:200]})
                continue
            files[s.label] = path
            cands.append(Candidate(s.label, shape, path, spec={"kind": "onnx"}, flops=plan.flops))
            print(f"quantized {s.label}", flush=True)
        report = measure(cands, backend="ort-cpu", threads=args.threads, warmup=5, runs=args.runs)
        for m in report.models:
            rows.append({"configuration": m["name"], "median_ms": round(m["stats"]["median_ms"], 4),
                         "ratio_to_fp32": round(m["ratio"], 4), "ratio_ci": [round(x, 4) for x in m["ratio_ci"]],
                         "size_mb": round(files[m["name"]].stat().st_size / 1e6, 3)})
            print(f"{m['name']:30s} {m['stats']['median_ms']:8.3f} ms  x fp32 {m['ratio']:.3f}", flush=True)
        fastest = sorted((r for r in rows if r["configuration"] != "fp32"), key=lambda r: r["ratio_to_fp32"])[:3]
        profiled = ["fp32", QuantizeSettings().label] + [r["configuration"] for r in fastest
                                                          if r["configuration"] != QuantizeSettings().label]
        profiles = profile({name: files[name] for name in profiled}, shape, threads=args.threads,
                           runs=args.profile_runs)
        ranking = rank_int8_configs(fp32, shape, threads=args.threads, cache=None, runs=args.runs)
    meta = {**lscpu(), "onnxruntime": ort.__version__, "threads": args.threads, "batch": 1, "runs": args.runs,
            "model": f"{plan.arch} {plan.method} {plan.budget['text'] if plan.budget else ''} "
                     f"({plan.flops / 1e6:.1f}M MACs) at {'x'.join(map(str, plan.input_size))}",
            "malloc": "tuned" if os.environ.get("MALLOC_MMAP_MAX_") == "0" else "default",
            "load_average": [round(x, 2) for x in os.getloadavg()],
            # what was run, --out and --plan included, so the file says how to regenerate itself
            "command": shlex.join(["python", "bench/int8_paths.py", *sys.argv[1:]])}
    out = Path(args.out)
    data = {"meta": meta, "rows": rows, "skipped": skipped, "profiles": profiles,
            "export_choice": ranking.to_dict()}
    atomic_write_text(out.with_suffix(".json"), json.dumps(data, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown(data))
    print(f"wrote {out}.json, {out}.md")


def markdown(data: dict[str, Any]) -> str:
    meta, rows = data["meta"], data["rows"]
    lines = ["# onnxruntime int8 paths on this CPU", "",
             f"**{meta['cpu']}** ({meta['cores']} cores; SIMD flags {' '.join(meta['simd_flags'])}; VNNI: "
             f"{', '.join(meta['vnni']) or 'none'}; AMX: {', '.join(meta['amx']) or 'none'}), onnxruntime "
             f"{meta['onnxruntime']}, batch 1, {meta['threads']} threads, {meta['runs']} interleaved rounds, "
             f"malloc {meta['malloc']}, load average {meta['load_average'][0]} (shared machine: read the ratios).",
             "", f"Model: {meta['model']}. Regenerate: `{meta['command']}`", "",
             "| configuration | median ms | × fp32 | 95% CI | file MB |", "|---|---:|---:|---|---:|"]
    for r in sorted(rows, key=lambda r: r["ratio_to_fp32"]):
        lines.append(f"| {r['configuration']} | {r['median_ms']:.3f} | **{r['ratio_to_fp32']:.3f}** | "
                     f"{r['ratio_ci'][0]:.3f}–{r['ratio_ci'][1]:.3f} | {r['size_mb']:.2f} |")
    for s in data["skipped"]:
        lines.append(f"| {s['configuration']} | – | refused: {s['error']} | | |")
    choice = data["export_choice"]
    lines += ["", f"`slimkit export --int8` on this machine ranks (ratios to {choice['reference']}): "
              + ", ".join(f"{c['label']} {c['ratio']:.3f}" for c in choice["configurations"])
              + f"; fp32 {choice['fp32_ratio']:.3f}. It tries **{choice['configurations'][0]['label']}** first.", "",
              "## Where the time goes (onnxruntime profiler, µs per run, each node's fastest run)", "",
              "| category | " + " | ".join(data["profiles"]) + " |", "|---|" + "---:|" * len(data["profiles"])]
    for c in CATEGORIES:
        vals = [p["categories"][c]["us"] for p in data["profiles"].values()]
        if any(vals):
            lines.append(f"| {c} | " + " | ".join(f"{v:.0f}" for v in vals) + " |")
    lines.append("| **total** | " + " | ".join(f"**{p['total_us']:.0f}**" for p in data["profiles"].values()) + " |")
    lines += ["", "Slowest nodes:", ""]
    for name, p in data["profiles"].items():
        lines.append(f"* {name}: " + ", ".join(f"{s['node']} ({s['op']}, {s['category']}) {s['us']:.0f}"
                                                for s in p["slowest"][:5]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
