"""Which selection gives the fastest plan at the resolution a model ships at?

For each model, gates are learned once (the default short CPU run, deterministic for a seed), then
turned into widths at one FLOPs budget by each selection: ``threshold`` (the paper's Algorithm 1,
slimkit's default), ``latency-aware`` (gate value per unit of measured layer latency),
``cost-aware`` (gate value per MAC), and the ``uniform`` plan (one width factor). Every plan and the
full model are exported and timed side by side at the model's deployment input (224 px), on
onnxruntime CPU, batch 1, in both timing modes (served: as deployed; interleaved: the soundest
comparison). Results: ``bench/results/selection_latency.{md,json,png}``.

    python bench/selection_latency.py                                 # MobileNet-V1 at 150M MACs
    python bench/selection_latency.py --models mobilenet_v1:150M mobilenet_v2:50% --runs 60

Accuracy is not measured here (that is the structure study's job, bench/compare_structures.py):
this answers only "how fast", at the resolution that matters.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_structures import _cache_gate_learning  # noqa: E402  (gates learned once per model)

from slimkit.artifacts import plan_candidate  # noqa: E402
from slimkit.files import atomic_write_text  # noqa: E402
from slimkit.latency import cpu_description, measure  # noqa: E402
from slimkit.prune import GateOptions, LatencyOptions, prune  # noqa: E402
from slimkit.rounding import cpu_flags  # noqa: E402

SELECTIONS = ("threshold", "latency-aware", "cost-aware", "uniform")
OUT = Path(__file__).resolve().parent / "results" / "selection_latency"


def plans_for(arch: str, budget: str, args) -> dict[str, object]:
    """One plan per selection, all from the same learned gates and the same channel multiple."""
    latency = LatencyOptions(threads=args.threads, check=False, mode="served")
    plans = {}
    round_to = args.round_to
    for sel in SELECTIONS:
        t0 = time.perf_counter()
        if sel == "uniform":
            plan = prune(arch, budget, method="uniform", num_classes=10, round_to=round_to, latency=latency)
        else:
            plan = prune(arch, budget, method="scratch", round_to=round_to, seed=args.seed, latency=latency,
                         gates=GateOptions(selection=sel, steps=args.gate_steps), log=print)
        round_to = plan.round_to  # the first plan measured the multiple; the rest share it
        plans[sel] = plan
        print(f"{arch} {sel}: {plan.flops / 1e6:.1f}M MACs, round_to {plan.round_to} ({time.perf_counter() - t0:.0f}s)",
              flush=True)
    return plans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mobilenet_v1:150M"], help="ARCH:BUDGET pairs")
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gate-steps", type=int, default=None, help="gate-learning steps (default: prune's CPU run)")
    ap.add_argument("--round-to", default="auto")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    _cache_gate_learning()
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")) or "vnni" in f)
    results = {"machine": {"cpu": cpu_description(), "flags": flags, "python": platform.python_version(),
                           "load_average_start": os.getloadavg()[0]},
               "settings": {"backend": "ort-cpu", "batch": 1, "threads": args.threads, "runs": args.runs,
                            "seed": args.seed, "gate_steps": args.gate_steps}, "models": {}}
    for spec in args.models:
        arch, budget = spec.split(":")
        plans = plans_for(arch, budget, args)
        full = plans["uniform"].unpruned()
        entry = {"budget": budget, "input_size": list(full.input_size), "round_to": plans["uniform"].round_to,
                 "rounding": plans["uniform"].search.get("rounding"), "plans": {}}
        with tempfile.TemporaryDirectory(prefix="slimkit-sel-") as tmp:
            cands = [plan_candidate(full, Path(tmp), 1, "full")]
            cands += [plan_candidate(p, Path(tmp), 1, sel) for sel, p in plans.items()]
            for mode in ("served", "interleaved"):
                rep = measure(cands, backend="ort-cpu", threads=args.threads, runs=args.runs, mode=mode)
                by = {m["name"]: m for m in rep.models}
                for sel, plan in plans.items():
                    e = entry["plans"].setdefault(sel, {"flops": plan.flops, "params": plan.params,
                                                        "mac_ratio": plan.flops / full.flops,
                                                        "widths": [g["width"] for g in plan.groups.values()]})
                    e[mode] = {"median_ms": by[sel]["stats"]["median_ms"], "ratio_to_full": by[sel]["ratio"],
                               "ratio_ci": by[sel]["ratio_ci"],
                               "vs_uniform": by[sel]["ratio"] / by["uniform"]["ratio"],
                               "latency_per_mac": by[sel]["ratio"] / (plan.flops / full.flops)}
                entry[f"full_ms_{mode}"] = by["full"]["stats"]["median_ms"]
        results["models"][spec] = entry
        print(json.dumps({sel: {m: round(e[m]["vs_uniform"], 3) for m in ("served", "interleaved")}
                          for sel, e in entry["plans"].items()}), flush=True)
    results["machine"]["load_average_end"] = os.getloadavg()[0]
    write(results, args.out)


def write(results: dict, out: Path) -> None:
    m = results["machine"]
    lines = ["# Selection vs latency at deployment resolution", "",
             f"{m['cpu']}; flags {' '.join(m['flags'])}; onnxruntime CPU, batch 1, "
             f"{results['settings']['threads']} threads, {results['settings']['runs']} runs per model and mode; "
             f"load average {m['load_average_start']:.1f} at the start, {m['load_average_end']:.1f} at the end "
             "(ratios are measured side by side, so they hold on a busy machine; absolute ms do not).", "",
             "Command: `python bench/selection_latency.py " + " ".join(sys.argv[1:]) + "`", ""]
    for spec, e in results["models"].items():
        lines += [f"## {spec} at {'x'.join(map(str, e['input_size']))}, round_to {e['round_to']}", "",
                  f"Full model: {e['full_ms_served']:.3f} ms served, {e['full_ms_interleaved']:.3f} ms interleaved.", "",
                  "| selection | MACs | served × full | served × uniform | interleaved × full | interleaved × uniform "
                  "| latency ÷ MAC ratio (served) |", "|---|---:|---:|---:|---:|---:|---:|"]
        for sel, p in e["plans"].items():
            s, i = p["served"], p["interleaved"]
            lines.append(f"| {sel} | {p['flops'] / 1e6:.1f}M ({100 * p['mac_ratio']:.1f}%) | {s['ratio_to_full']:.3f} | "
                         f"**{s['vs_uniform']:.3f}** | {i['ratio_to_full']:.3f} | {i['vs_uniform']:.3f} | "
                         f"{s['latency_per_mac']:.2f} |")
        lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    atomic_write_text(out.with_suffix(".json"), json.dumps(results, indent=1) + "\n")
    fig, axes = plt.subplots(1, len(results["models"]), figsize=(5 * len(results["models"]), 3.6), squeeze=False)
    for ax, (spec, e) in zip(axes[0], results["models"].items()):
        sels = list(e["plans"])
        for k, mode in enumerate(("served", "interleaved")):
            ax.bar([x + 0.4 * k for x in range(len(sels))], [e["plans"][s][mode]["vs_uniform"] for s in sels],
                   width=0.4, label=mode)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks([x + 0.2 for x in range(len(sels))], sels, rotation=15)
        ax.set_ylabel("latency ÷ uniform plan's")
        ax.set_title(f"{spec} at {e['input_size'][-1]} px", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(f"wrote {out.with_suffix('.md')}, .json, .png")


if __name__ == "__main__":
    main()
