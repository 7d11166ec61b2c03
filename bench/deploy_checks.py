"""The shipping checks, as a user runs them: MobileNet-V1 at 224 px through the CLI, each plan exported
and re-measured with `slimkit bench` against the full model, in both timing modes.

1. `slimkit prune mobilenet_v1 --flops 50% --method uniform` (defaults: --round-to auto): its latency
   as a share of the full model's;
2. `slimkit prune mobilenet_v1 --latency 50%` (default timing: served): re-measured served, and
   interleaved, against the 0.50 it was asked for.

Writes bench/results/deploy_checks.{md,json}; pass --method scratch for the default method's latency
plan (gate learning: minutes on a CPU). Run it on a quiet machine: served timing (pool threads
spinning) is meaningful only where nothing else competes for the cores.

    python bench/deploy_checks.py [--method uniform] [--runs 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slimkit.files import atomic_write_text
from slimkit.latency import cpu_description
from slimkit.rounding import cpu_flags

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "deploy_checks"
SLIMKIT = [sys.executable, "-m", "slimkit"]


def sh(*args: object) -> str:
    cmd = [*SLIMKIT, *map(str, args)]
    print("$ slimkit " + " ".join(map(str, args)), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    print(r.stdout[-3000:], r.stderr[-2000:], flush=True)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(map(str, args))}")
    return r.stdout


def bench_ratio(work: Path, model: Path, full: Path, mode: str, runs: int, threads: int) -> dict:
    stem = work / f"{model.stem}-{mode}"
    sh("bench", full, model, "--timing", mode, "--runs", runs, "--threads", threads, "--out", stem)
    rep = json.loads(stem.with_suffix(".json").read_text())
    m = rep["models"][1]
    return {"ratio": m["ratio"], "ratio_ci": m["ratio_ci"], "median_ms": m["stats"]["median_ms"],
            "full_median_ms": rep["models"][0]["stats"]["median_ms"], "mode": rep["mode"]}


def plan_and_measure(work: Path, name: str, budget_args: list, args) -> dict:
    """`slimkit prune mobilenet_v1 BUDGET_ARGS`, export the plan, and re-measure it in both modes."""
    t0 = time.perf_counter()
    sh("prune", "mobilenet_v1", *budget_args, "--threads", args.threads, "--no-plot", "--out", work / f"{name}.json")
    plan = json.loads((work / f"{name}.json").read_text())
    out = {"round_to": plan["round_to"], "rounding": plan["search"].get("rounding"),
           "latency_check": plan["search"].get("latency_check"), "planned": plan["latency"],
           "mac_share": plan["flops"] / plan["search"]["full_flops"],
           "prune_seconds": round(time.perf_counter() - t0, 1)}
    sh("export", work / f"{name}.json", "--onnx", "--no-bench", "--exporter", "torchscript", "--out",
       work / f"{name}.onnx")
    for mode in ("served", "interleaved"):
        out[mode] = bench_ratio(work, work / f"{name}.onnx", work / "full.onnx", mode, args.runs, args.threads)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="uniform", help="method of the --latency 50%% plan (uniform | scratch)")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    results: dict = {"machine": {"cpu": cpu_description(), "flags": sorted(f for f in cpu_flags() if f.startswith(
        ("avx", "amx", "fma")) or "vnni" in f), "load_average_start": os.getloadavg()[0]},
        "settings": {"threads": args.threads, "runs": args.runs, "batch": 1, "input": [3, 224, 224]}}
    with tempfile.TemporaryDirectory(prefix="slimkit-deploy-") as tmp:
        work = Path(tmp)
        sh("export", "mobilenet_v1", "--num-classes", 10, "--onnx", "--no-bench", "--exporter", "torchscript",
           "--out", work / "full.onnx")
        results["uniform50"] = plan_and_measure(work, "uniform50", ["--flops", "50%", "--method", "uniform",
                                                                    "--num-classes", 10], args)
        results["latency50"] = plan_and_measure(work, "latency50", [
            "--latency", "50%", "--method", args.method, *(["--num-classes", 10] if args.method == "uniform" else [])],
            args)
        results["latency50"]["method"] = args.method
    results["machine"]["load_average_end"] = os.getloadavg()[0]
    write(results, args.out)


def write(r: dict, out: Path) -> None:
    m, u, lat = r["machine"], r["uniform50"], r["latency50"]
    row = lambda name, d: (f"| {name} | {d['served']['ratio']:.3f} ({d['served']['ratio_ci'][0]:.3f}–"  # noqa: E731
                           f"{d['served']['ratio_ci'][1]:.3f}) | {d['interleaved']['ratio']:.3f} "
                           f"({d['interleaved']['ratio_ci'][0]:.3f}–{d['interleaved']['ratio_ci'][1]:.3f}) |")
    lines = ["# Shipping checks: MobileNet-V1 at 224 px through the CLI", "",
             f"{m['cpu']}; flags {' '.join(m['flags'])}; onnxruntime CPU, batch 1, {r['settings']['threads']} threads, "
             f"{r['settings']['runs']} runs per model; load average {m['load_average_start']:.1f} at the start, "
             f"{m['load_average_end']:.1f} at the end.", "",
             f"Command: `python bench/deploy_checks.py {' '.join(sys.argv[1:])}`", "",
             "| plan (re-measured with `slimkit bench` against the full model) | served × full (95% CI) | "
             "interleaved × full (95% CI) |", "|---|---:|---:|",
             row(f"`prune --flops 50% --method uniform` (round-to {u['round_to']}, "
                 f"{100 * u['mac_share']:.1f}% of the MACs)", u),
             row(f"`prune --latency 50% --method {lat['method']}` (planned {lat['planned']['ratio_to_full']:.3f}x "
                 f"{lat['planned'].get('mode', '?')}; {100 * lat['mac_share']:.1f}% of the MACs)", lat), "",
             f"Full model: {u['served']['full_median_ms']:.3f} ms served, {u['interleaved']['full_median_ms']:.3f} ms "
             "interleaved.", "",
             f"Round-to choice: {json.dumps(u['rounding'])}", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    atomic_write_text(out.with_suffix(".json"), json.dumps(r, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
