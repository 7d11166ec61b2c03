"""Latency budgets, checked independently: prune to X% of the full model's measured latency, then
re-measure the exported plan with `slimkit bench` machinery, interleaved with the full model.

For mobilenet_v1 and resnet50 at 50% and 30% of the full model's ORT-CPU latency (2 threads,
batch 1): the search time (gate learning excluded), the plan's FLOPs, and the independently
re-measured ratio to the full model (target: within +-5% of the budget). Next to it, the FLOPs
proxy: the FLOPs-searched plan from the same gates at X% of the FLOPs, and its measured latency.
Gates: a short scratch run (--steps, default 30) on Fashion-MNIST: the gate values only order the
channels; this benchmark is about hitting the latency. Writes bench/results/latency_budget.{json,md}.

    python bench/latency_budget.py [--steps 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from slimkit.artifacts import export_for_timing, load_model
from slimkit.budget import parse_budget
from slimkit.latency import measure
from slimkit.prune import GateOptions, LatencyOptions, prune

MODELS = ["mobilenet_v1", "resnet50"]
BUDGETS = [0.5, 0.3]


def timed_against_full(plan, folder: Path, threads: int, runs: int) -> dict:
    """What `slimkit bench PLAN.onnx --arch ARCH` does: export both, interleave, ratio to the full."""
    cands = []
    for name, p in (("full", plan.unpruned()), ("plan", plan)):
        path = folder / f"{name}.json"
        path.write_text(p.to_json())
        src = load_model(str(path))
        cands.append(export_for_timing(src, folder / f"{name}.onnx", 1, name, {}))
    rep = measure(cands, backend="ort-cpu", threads=threads, warmup=10, runs=runs)
    m = rep.model("plan")
    return {"ratio": m["ratio"], "ratio_ci": m["ratio_ci"], "median_ms": m["stats"]["median_ms"],
            "full_median_ms": rep.model("full")["stats"]["median_ms"]}


def plot(rows: list[dict], path: Path) -> None:
    """Measured latency of the latency-budget plan and of the FLOPs proxy, against each budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['arch'].split(':')[-1]}\n{r['budget']:.0%}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.bar([i - 0.2 for i in x], [r["recheck_ratio"] for r in rows], 0.4, label="--latency budget (re-measured)",
           color="#2e86c1", yerr=[[r["recheck_ratio"] - r["recheck_ci"][0] for r in rows],
                                  [r["recheck_ci"][1] - r["recheck_ratio"] for r in rows]])
    ax.bar([i + 0.2 for i in x], [r["flops_proxy_ratio"] for r in rows], 0.4, label="--flops at the same %",
           color="#bbbbbb")
    for i, r in enumerate(rows):
        ax.hlines(r["budget"], i - 0.45, i + 0.45, colors="#c0392b", linestyles="--", lw=1.2,
                  label="budget" if i == 0 else None)
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("latency / full model (ORT CPU, batch 1)")
    ax.set_ylim(0, 0.75)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Measured-latency budgets land; a FLOPs proxy misses by 8-34%", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=150)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency_budget"))
    ap.add_argument("--replot", action="store_true", help="only redraw the PNG from the committed JSON")
    args = ap.parse_args()
    if args.replot:
        out = Path(args.out)
        plot(json.loads(out.with_suffix(".json").read_text()), out.with_suffix(".png"))
        return
    rows = []
    for arch in args.only or MODELS:
        for frac in BUDGETS:
            # Gates only order channels here: a short run, smaller batches for the big model.
            common = dict(method="scratch", num_classes=10, seed=0,
                          gates=GateOptions(steps=args.steps, batch_size=32 if arch == "resnet50" else None,
                                            val_size=300 if arch == "resnet50" else None))
            t0 = time.perf_counter()
            plan = prune(arch, parse_budget(f"{frac:.0%}", "latency"), latency=LatencyOptions(threads=args.threads),
                         **common)
            total = time.perf_counter() - t0
            lat = plan.latency
            flops_plan = prune(arch, f"{frac:.0%}", **common)  # the FLOPs proxy, same gates
            with tempfile.TemporaryDirectory() as tmp:
                check = timed_against_full(plan, Path(tmp), args.threads, args.runs)
            with tempfile.TemporaryDirectory() as tmp:
                proxy = timed_against_full(flops_plan, Path(tmp), args.threads, args.runs)
            row = {"arch": plan.arch, "budget": frac, "search_s": plan.search["latency_search"]["seconds"],
                   "gate_s": plan.search["seconds"], "prune_total_s": round(total, 1),
                   "measured_plans": plan.search["latency_search"]["measured_plans"],
                   "flops": plan.flops, "full_flops": plan.search["full_flops"],
                   "search_ratio": lat["ratio_to_full"], "recheck_ratio": check["ratio"],
                   "recheck_ci": check["ratio_ci"], "recheck_error": check["ratio"] / frac - 1,
                   "full_median_ms": check["full_median_ms"], "plan_median_ms": check["median_ms"],
                   "flops_proxy_flops": flops_plan.flops, "flops_proxy_ratio": proxy["ratio"],
                   "flops_proxy_error": proxy["ratio"] / frac - 1}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.only and out.with_suffix(".json").exists():  # re-running some models: keep the others' rows
        done = {r["arch"] for r in rows}
        rows = [r for r in json.loads(out.with_suffix(".json").read_text()) if r["arch"] not in done] + rows
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["# Latency budgets on onnxruntime CPU (batch 1, "
             f"{args.threads} threads), re-measured independently", "",
             "| model | budget | search s | plans timed | MMACs (% full) | re-measured ratio (95% CI) | error | "
             "FLOPs proxy: MMACs → ratio (error) |", "|---|---:|---:|---:|---:|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['budget']:.0%} | {r['search_s']} | {r['measured_plans']} | "
                     f"{r['flops'] / 1e6:.1f} ({100 * r['flops'] / r['full_flops']:.0f}%) | {r['recheck_ratio']:.3f} "
                     f"({r['recheck_ci'][0]:.3f}–{r['recheck_ci'][1]:.3f}) | {r['recheck_error']:+.1%} | "
                     f"{r['flops_proxy_flops'] / 1e6:.1f} → {r['flops_proxy_ratio']:.3f} ({r['flops_proxy_error']:+.1%}) |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(rows, out.with_suffix(".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
