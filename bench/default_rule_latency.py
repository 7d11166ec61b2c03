"""The default-method rule's latency term, measured at the resolution each cell's model ships at.

docs/search.md section 7 decides slimkit's default selection: among the candidates the accuracy study
did not rule out, latency decides ties, and a candidate "no faster than uniform at round_to 8" loses
to `--method uniform` (rule 4). The structure study timed its plans at its training resolution
(24-32 px), where MobileNet-V1's last stage is a 1x1 map. This script re-times the *same plans the
study trained* (its round_to-8 plans, seeds 0-4 per structure; `bench/results/compare_structures/
scratch-e-e12-r20at24px/plans`) at deployment resolution: MobileNet-V1 at 224 px (its widths do not
depend on the input size: a global pool precedes the head), CIFAR ResNet-20 at 32 px. Each cell's
threshold plans and uniform plan are timed side by side with the full model (onnxruntime CPU, batch
1) in both timing modes; per cell, the threshold/uniform latency ratio (median over seeds), then
the geometric mean over the cells, as rule 3 defines it.

    python bench/default_rule_latency.py [--runs 100] [--seeds 0 1 2 3 4]

Writes bench/results/default_rule_latency.{md,json}. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from slimkit.artifacts import plan_candidate
from slimkit.files import atomic_write_text
from slimkit.latency import cpu_description, measure
from slimkit.plan import load_plan

HERE = Path(__file__).resolve().parent
PLANS = HERE / "results" / "compare_structures" / "scratch-e-e12-r20at24px" / "plans"
OUT = HERE / "results" / "default_rule_latency"
DEPLOY_SIDE = {"r20-50": 32, "r20-25": 32, "mnv1-25": 224}  # CIFAR ResNet-20 ships at 32 px, MobileNet-V1 at 224


def at_side(path: Path, side: int):
    plan = load_plan(path)
    return replace(plan, input_size=[plan.input_size[0], side, side])


def time_cell(cell: str, seeds: list[int], runs: int, threads: int, work: Path) -> dict:
    side = DEPLOY_SIDE[cell]
    uniform = at_side(PLANS / f"{cell}-uniform-r8-s0.json", side)  # uniform plans do not depend on the seed
    cands = [plan_candidate(uniform.unpruned(), work, 1, f"{cell}-full"),
             plan_candidate(uniform, work, 1, f"{cell}-uniform")]
    for s in seeds:
        cands.append(plan_candidate(at_side(PLANS / f"{cell}-threshold-r8-s{s}.json", side), work, 1,
                                    f"{cell}-threshold-s{s}"))
    out: dict = {"side": side, "seeds": seeds, "modes": {}}
    for mode in ("served", "interleaved"):
        rep = measure(cands, threads=threads, warmup=10, runs=runs, mode=mode)
        by = {m["name"]: m for m in rep.models}
        uni = by[f"{cell}-uniform"]["ratio"]
        per_seed = [by[f"{cell}-threshold-s{s}"]["ratio"] / uni for s in seeds]
        out["modes"][mode] = {"full_ms": by[f"{cell}-full"]["stats"]["median_ms"],
                              "uniform_ratio_to_full": uni,
                              "threshold_ratio_to_full": [by[f"{cell}-threshold-s{s}"]["ratio"] for s in seeds],
                              "threshold_vs_uniform": per_seed,
                              "threshold_vs_uniform_median": statistics.median(per_seed)}
        print(f"{cell} at {side} px, {mode}: threshold / uniform = "
              f"{statistics.median(per_seed):.3f} (seeds {', '.join(f'{r:.3f}' for r in per_seed)})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="slimkit-rule-") as tmp:
        cells = {cell: time_cell(cell, args.seeds, args.runs, args.threads, Path(tmp)) for cell in DEPLOY_SIDE}
    geo = {mode: math.exp(statistics.mean(math.log(c["modes"][mode]["threshold_vs_uniform_median"])
                                          for c in cells.values())) for mode in ("served", "interleaved")}
    flags = sorted(f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile")
                   if f in Path("/proc/cpuinfo").read_text().split())
    result = {"cpu": cpu_description(), "flags": flags, "python": platform.python_version(),
              "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)], "runs": args.runs,
              "threads": args.threads, "cells": cells, "geometric_mean": geo}
    lines = ["# Rule 3/4 latency term at deployment resolution", "",
             f"{cpu_description()}, flags {' '.join(flags)}; onnxruntime CPU, batch 1, {args.threads} threads, "
             f"{args.runs} runs per model and mode; load average {load0:.2f} at the start, "
             f"{os.getloadavg()[0]:.2f} at the end.", "",
             "The structure study's own round_to-8 plans (seeds " + ", ".join(map(str, args.seeds)) + "), timed at "
             "the resolution each model ships at. threshold / uniform < 1: the default's plans run faster.", "",
             "| cell | side | served: threshold / uniform (median over seeds) | interleaved | uniform × full (served) |",
             "|---|---:|---:|---:|---:|"]
    for cell, c in cells.items():
        s, i = c["modes"]["served"], c["modes"]["interleaved"]
        lines.append(f"| {cell} | {c['side']} | {s['threshold_vs_uniform_median']:.3f} | "
                     f"{i['threshold_vs_uniform_median']:.3f} | {s['uniform_ratio_to_full']:.3f} |")
    lines += ["", f"Geometric mean over the cells: **{geo['served']:.3f} served, {geo['interleaved']:.3f} interleaved**.",
              "", "Command: `python bench/default_rule_latency.py --runs " + str(args.runs) + "`"]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    atomic_write_text(OUT.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
