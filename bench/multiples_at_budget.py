"""Which channel multiple makes the zoo's uniform plan at a budget fastest per MAC? Timed side by side at 224 px.

``--round-to auto`` first finds the multiple the runtime computes at (the A/B padding sweep of
slimkit/rounding.py), then times the uniform plan at the budget rounded to coarser multiples against it.
This benchmark shows why: for every zoo model it builds the uniform plan at ``--budget`` rounded to each of
``--multiples``, exports them and times them with the full model as served (onnxruntime's defaults, each
model alone in alternated blocks, a fresh session per block), each zoo model in its own fresh process,
``--repeats`` times. Figure of merit: latency ratio / MAC ratio to the full model, per repeat; compare the
multiples within a repeat (they share its drift).

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824 \\
        python bench/multiples_at_budget.py [--multiples 8 16 32 64] [--budget 50%] [--repeats 5] [--out PATH]

Writes bench/results/multiples_at_budget.{json,md} (``--out``); files are cached under ``--work``.
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path
from typing import Any

import torch

from slimkit.generator import full_plan
from slimkit.prune import LatencyOptions, prune

from latency_vs_macs import (NUM_CLASSES, SIDE, add_served_study_options, machine, run_served_study,
                             served_lat_per_mac, served_study_header)


def bench_model(arch: str, args) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    plans = {"full": full_plan(arch, num_classes=NUM_CLASSES, input_size=(3, SIDE, SIDE))}
    same: dict[int, int] = {}
    for m in args.multiples:
        p = prune(arch, args.budget, method="uniform", num_classes=NUM_CLASSES, input_size=(3, SIDE, SIDE),
                  round_to=m, verify=False, latency=LatencyOptions(check=False), log=lambda s: None)
        twin = next((int(k[1:]) for k, q in plans.items() if k != "full" and q.widths == p.widths), None)
        if twin is not None:
            same[m] = twin  # the same widths as a finer multiple's plan: timed once
            continue
        plans[f"r{m}"] = p
    folder = Path(args.work) / re.sub(r"[^A-Za-z0-9]+", "_", f"{arch}_{args.budget}")
    timed = served_lat_per_mac(plans, folder, repeats=args.repeats, runs=args.runs, blocks=args.blocks,
                               threads=args.threads)
    row: dict[str, Any] = {"arch": arch, "same_as": same, "plans": {
        n: {"mac_ratio": p.flops / plans["full"].flops, "lat_per_mac": timed[n]} for n, p in plans.items() if n != "full"}}
    return row


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]], args) -> str:
    mults = [f"r{m}" for m in args.multiples]
    lines = served_study_header(f"Channel multiples: uniform {args.budget} plans at 224 px, served", meta, args) + [
             "Each cell: lat/MAC (latency ratio / MAC ratio to the full model) per repeat, then its median; "
             "**bold** = the lowest median of the row. Within a repeat the multiples share the machine's drift.", "",
             "| model | " + " | ".join(f"round-to {m[1:]}" for m in mults) + " |",
             "|---|" + "---|" * len(mults)]
    for row in rows:
        med = {n: statistics.median(e["lat_per_mac"]) for n, e in row["plans"].items()}
        best = min(med, key=med.get)
        cells = []
        for n in mults:
            if n in row["plans"]:
                e = row["plans"][n]
                text = f"{', '.join(f'{x:.2f}' for x in e['lat_per_mac'])} (median {med[n]:.3f})"
                cells.append(f"**{text}**" if n == best else text)
            else:
                cells.append(f"the plan of round-to {row['same_as'].get(int(n[1:]), row['same_as'].get(str(n[1:])))}")
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--multiples", type=int, nargs="+", default=[8, 16, 32, 64])
    add_served_study_options(ap, "multiples_at_budget")
    args = ap.parse_args()
    args.multiples = sorted(set(args.multiples))
    meta = machine()
    meta["command"] = (f"python bench/multiples_at_budget.py --multiples {' '.join(map(str, args.multiples))} "
                       f"--budget {args.budget} --repeats {args.repeats} --runs {args.runs} --blocks {args.blocks} "
                       f"--out {args.out}")
    run_served_study(args, meta, bench_model, markdown,
                     lambda row: str({n: e["lat_per_mac"] for n, e in row["plans"].items()}))

if __name__ == "__main__":
    main()
