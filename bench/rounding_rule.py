"""Which rounding rule makes the faster uniform plan? The zoo's uniform plans at a budget, rounded two ways,
timed side by side at 224 px.

slimkit rounds each width with torchvision's ``_make_divisible`` (``slimkit.budget.make_divisible``): the
nearest multiple, never below the divisor and never more than 10% below the unrounded width. At coarse
multiples (16 or 32, what ``--round-to auto`` picks on AVX-512) that rule keeps narrow early layers up to
1.8x their share (MobileNet-V1's 32-channel stem stays whole at 50%), so the budget search cuts the wide
late layers harder. The alternative measured here rounds to the multiple nearest the share *in ratio*
(neighbours split at their geometric mean). This benchmark builds both uniform plans for every zoo model at
``--budget`` and ``--round-to``, exports them to ONNX and times them against the full model as served
(onnxruntime's defaults, each model alone in alternated blocks, a fresh session per block), each zoo model
in its own fresh process, ``--repeats`` times. The figure of merit is latency ratio / MAC ratio (both to the
full model in the same run), compared repeat by repeat: on a shared VM the whole machine drifts by more
than the difference, while both plans of one repeat see the same drift. Result (2026-12-07, AVX-512 EPYC):
no overall gain, so slimkit keeps torchvision's rule (bench/results/rounding_rule_avx512_r*.md).

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824 \\
        python bench/rounding_rule.py [--round-to 16] [--budget 50%] [--repeats 5] [--only NAME ...] [--out PATH]

Writes bench/results/rounding_rule.{json,md} (``--out``; ``--render`` rewrites the .md from the .json);
files are cached under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Any

import torch

import slimkit.budget as budget_module
from slimkit.files import atomic_write_text
from slimkit.generator import full_plan
from slimkit.prune import LatencyOptions, prune

from latency_vs_macs import (NUM_CLASSES, SIDE, add_served_study_options, machine, run_served_study,
                             served_lat_per_mac, served_study_header)

RULES = ("ratio", "torchvision")  # the alternative measured, and slimkit's rule


def ratio_multiple(v: float, divisor: int, min_value: int | None = None) -> int:
    """The multiple of ``divisor`` nearest ``v`` in ratio (split at the neighbours' geometric mean), at least
    ``min_value`` (default ``divisor``); same signature as ``slimkit.budget.make_divisible``."""
    lo = max(divisor, int(v // divisor) * divisor)
    w = lo if v * v < lo * (lo + divisor) else lo + divisor
    return max(divisor if min_value is None else min_value, w)


def plans_for(arch: str, budget: str, round_to: int) -> dict[str, Any]:
    plans = {"full": full_plan(arch, num_classes=NUM_CLASSES, input_size=(3, SIDE, SIDE))}
    slimkit_rule = budget_module.make_divisible  # round_width looks it up in its module at every call
    for rule in RULES:
        budget_module.make_divisible = ratio_multiple if rule == "ratio" else slimkit_rule
        try:
            plans[rule] = prune(arch, budget, method="uniform", num_classes=NUM_CLASSES, input_size=(3, SIDE, SIDE),
                                round_to=round_to, verify=False, latency=LatencyOptions(check=False),
                                log=lambda m: None)
        finally:
            budget_module.make_divisible = slimkit_rule
    return plans


def bench_model(arch: str, args) -> dict[str, Any]:
    """Both rules' plans of ``arch`` against its full model (run in a fresh process per model)."""
    torch.set_num_threads(args.threads)
    plans = plans_for(arch, args.budget, args.round_to)
    row: dict[str, Any] = {"arch": arch, "full_macs": plans["full"].flops, "plans": {}}
    for rule in RULES:
        row["plans"][rule] = {"macs": plans[rule].flops, "mac_ratio": plans[rule].flops / plans["full"].flops,
                              "factor": plans[rule].search.get("factor"), "widths": plans[rule].widths}
    if plans["ratio"].widths == plans["torchvision"].widths:
        row["same_plan"] = True  # nothing to time: the rules agree on every width here
        return row
    folder = Path(args.work) / re.sub(r"[^A-Za-z0-9]+", "_", f"{arch}_{args.budget}_r{args.round_to}")
    timed = served_lat_per_mac(plans, folder, repeats=args.repeats, runs=args.runs, blocks=args.blocks,
                               threads=args.threads)
    for rule in RULES:
        row["plans"][rule]["lat_per_mac"] = timed[rule]
    return row


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]], args) -> str:
    lines = served_study_header(f"Rounding rule: uniform {args.budget} plans at round-to {args.round_to}, 224 px, "
                                "served", meta, args) + [
             "**torchvision** = `_make_divisible` (nearest, never more than 10% down), slimkit's rule; **ratio** = "
             "the alternative measured (the multiple nearest each width's share in ratio). "
             "lat/MAC = (latency / full model's) ÷ (MACs / full model's), per repeat; the difference is paired "
             "repeat by repeat (ratio - torchvision: negative = the ratio rule's plan is faster per MAC).", "",
             "| model | factor ratio / tv | MAC ratio ratio / tv | widths that differ | lat/MAC ratio rule | "
             "lat/MAC torchvision rule | paired difference, median (min, max) | ratio faster in |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        r, t = row["plans"]["ratio"], row["plans"]["torchvision"]
        differ = [f"{k} {t['widths'][k]}→{r['widths'][k]}" for k in r["widths"] if r["widths"][k] != t["widths"][k]]
        shown = ", ".join(differ[:3]) + (f" (+{len(differ) - 3} more)" if len(differ) > 3 else "")
        head = (f"| {row['label']} | {r['factor']} / {t['factor']} | {r['mac_ratio']:.3f} / {t['mac_ratio']:.3f} | "
                f"{shown or 'none'} | ")
        if row.get("same_plan"):
            lines.append(head + "– | – | the same plan | – |")
            continue
        d = [a - b for a, b in zip(r["lat_per_mac"], t["lat_per_mac"])]
        lines.append(head + f"{', '.join(f'{x:.2f}' for x in r['lat_per_mac'])} | "
                     f"{', '.join(f'{x:.2f}' for x in t['lat_per_mac'])} | "
                     f"{statistics.median(d):+.3f} ({min(d):+.3f}, {max(d):+.3f}) | "
                     f"{sum(x < 0 for x in d)} of {len(d)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--round-to", type=int, default=16)
    add_served_study_options(ap, "rounding_rule")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    args = ap.parse_args()
    out = Path(args.out)
    if args.render:
        data = json.loads(out.with_suffix(".json").read_text())
        atomic_write_text(out.with_suffix(".md"), markdown(data["meta"], data["rows"], args))
        return
    meta = machine()
    meta["command"] = "python bench/rounding_rule.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("round_to", args.round_to), ("budget", args.budget),
                                                      ("repeats", args.repeats), ("runs", args.runs),
                                                      ("blocks", args.blocks), ("out", args.out)))
    run_served_study(args, meta, bench_model, markdown, lambda row: (
        "the same plan" if row.get("same_plan") else
        f"ratio {row['plans']['ratio']['lat_per_mac']} torchvision {row['plans']['torchvision']['lat_per_mac']}"))

if __name__ == "__main__":
    main()
