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
import json
import multiprocessing
import re
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from slimkit.files import atomic_write_text
from slimkit.generator import full_plan
from slimkit.latency import describe_mode
from slimkit.prune import LatencyOptions, prune

from latency_vs_macs import MODELS, NUM_CLASSES, RESULTS, SIDE, machine, served_lat_per_mac


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
    lines = [f"# Channel multiples: uniform {args.budget} plans at 224 px, served", "",
             f"CPU: **{meta['cpu']}** ({meta['cores']} cores; SIMD flags: {' '.join(meta['simd_flags'])}), "
             f"onnxruntime {meta['onnxruntime']}, batch 1, {args.threads} threads, "
             f"{describe_mode('served', args.runs, 5, args.blocks)}, malloc {meta['malloc']}; each zoo model in its "
             f"own fresh process, {args.repeats} repeats. Load average at start {meta['load_average'][0]}.", "",
             f"Regenerate: `{meta['command']}`", "",
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
    ap.add_argument("--budget", default="50%")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="model labels (or parts of them) to run")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "slimkit-multiples-at-budget"))
    ap.add_argument("--out", default=str(RESULTS / "multiples_at_budget"))
    args = ap.parse_args()
    args.multiples = sorted(set(args.multiples))
    out = Path(args.out)
    meta = machine()
    meta["command"] = (f"python bench/multiples_at_budget.py --multiples {' '.join(map(str, args.multiples))} "
                       f"--budget {args.budget} --repeats {args.repeats} --runs {args.runs} --blocks {args.blocks} "
                       f"--out {args.out}")
    rows = []
    for label, arch in MODELS.items():
        if args.only and not any(o.lower() in label.lower() for o in args.only):
            continue
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            row = child.submit(bench_model, arch, args).result()
        row["label"] = label
        rows.append(row)
        print(label, {n: e["lat_per_mac"] for n, e in row["plans"].items()}, flush=True)
        atomic_write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        atomic_write_text(out.with_suffix(".md"), markdown(meta, rows, args))
    print(f"wrote {out}.json, {out}.md")


if __name__ == "__main__":
    main()
