"""G round trip over the model zoo: uniform 50%-FLOPs plans and x1.25-expansion plans for every
torchvision classification CNN and the timm models the papers' users reach for.

For each model: trace + plan (uniform, rounded to 8; if rounding is too coarse for 1%, retry at
--round-to 1 and say so), G(plan), forward pass with the right output shape, counted MACs within
1% of the budget and equal to the plan's. Writes bench/results/zoo_roundtrip.{json,md}.

    python bench/zoo_roundtrip.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch
import torchvision

from slimkit import ChannelPlan, count_flops, generate
from slimkit.budget import max_widths
from slimkit.errors import BudgetError
from slimkit.generator import channel_graph
from slimkit.prune import prune

TIMM_REQUIRED = ["mobilenetv1_100", "mobilenetv2_100", "mobilenetv3_large_100", "efficientnet_b0",
                 "resnet50", "resnet18", "regnety_008", "densenet121", "ghostnet_100", "convnext_atto"]
TRANSFORMERS = ("vit_", "swin_", "maxvit_")
SIZE = 64
LARGE_MIN = {"inception_v3": 96, "googlenet": 64}


def torchvision_cnns() -> list[str]:
    names = torchvision.models.list_models(module=torchvision.models)
    return [n for n in names if not n.startswith(TRANSFORMERS)]


def expansion_plan(arch: str, size: tuple[int, int, int], expand: float) -> ChannelPlan:
    """Every group widened by ``expand`` (rounded to 8): the paper's x1.25 supernet."""
    graph = channel_graph(arch, {}, size)
    widths = max_widths(graph, expand)
    budget = graph.count_macs(widths)
    return ChannelPlan.from_widths(arch, size, {n: g.width for n, g in graph.groups.items()}, widths,
                                   expand=expand, method="uniform",
                                   budget={"kind": "flops", "text": f"x{expand}", "value": budget},
                                   flops=budget, params=graph.count_params(widths))


def check(arch: str, budget: str, expand: float, side: int) -> dict:
    size = (3, side, side)
    start = time.perf_counter()
    note = ""
    try:
        plan = (expansion_plan(arch, size, expand) if expand > 1 else
                prune(arch, budget, method="uniform", input_size=size, verify=False))
    except BudgetError as exc:
        if "--round-to 1" not in str(exc):
            raise
        plan = prune(arch, budget, method="uniform", input_size=size, round_to=1, verify=False)
        note = "round-to 1 (8 too coarse for 1%)"
    model = generate(plan).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *size))
    macs = count_flops(model, size)
    target = plan.budget["value"]
    ok = (out.shape[0] == 2 and macs == plan.flops and abs(macs - target) / target <= 0.01)
    return {"ok": ok, "macs": macs, "budget": target, "groups": len(plan.groups),
            "kept_groups_frozen": sum(1 for g in plan.groups.values() if g["width"] == g["full"]),
            "seconds": round(time.perf_counter() - start, 2), "note": note,
            "reason": "" if ok else f"macs {macs} vs plan {plan.flops} / budget {target}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "zoo_roundtrip"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    archs = [f"torchvision:{n}" for n in torchvision_cnns()] + [f"timm:{n}" for n in TIMM_REQUIRED]
    if args.only:
        archs = [a for a in archs if any(o in a for o in args.only)]
    rows = []
    for arch in archs:
        side = LARGE_MIN.get(arch.split(":")[1], SIZE)
        row = {"arch": arch, "input": side}
        for label, budget, expand in (("prune50", "50%", 1.0), ("expand125", "x1.25", 1.25)):
            try:
                row[label] = check(arch, budget, expand, side)
            except Exception as exc:  # noqa: BLE001 - a bench records every failure's reason
                row[label] = {"ok": False, "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
                if "-v" in sys.argv:
                    traceback.print_exc()
        rows.append(row)
        status = "ok " if row["prune50"]["ok"] and row["expand125"]["ok"] else "FAIL"
        print(f"{status} {arch:45s} {row['prune50'].get('reason') or row['prune50'].get('note', '')}"
              f" | {row['expand125'].get('reason') or row['expand125'].get('note', '')}", flush=True)

    tv = [r for r in rows if r["arch"].startswith("torchvision:")]
    tm = [r for r in rows if r["arch"].startswith("timm:")]
    both = lambda r: r["prune50"]["ok"] and r["expand125"]["ok"]  # noqa: E731
    summary = {"torchvision_ok": sum(map(both, tv)), "torchvision_total": len(tv),
               "timm_ok": sum(map(both, tm)), "timm_total": len(tm), "input": SIZE,
               "torch": torch.__version__, "torchvision": torchvision.__version__}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    lines = [f"# G round trip over the zoo ({SIZE}x{SIZE} input unless noted)", "",
             f"torchvision CNNs: **{summary['torchvision_ok']}/{summary['torchvision_total']}**, "
             f"timm required: **{summary['timm_ok']}/{summary['timm_total']}** "
             "(uniform 50%-FLOPs plan and x1.25 expansion plan both pass: G builds, runs, "
             "counted MACs = plan, 50% plan within 1% of budget).", "",
             "| model | groups | 50% plan MACs | x1.25 plan MACs | note |", "|---|---|---|---|---|"]
    for r in rows:
        p, e = r["prune50"], r["expand125"]
        cell = lambda c: (f"{c['macs'] / c['budget']:.3f}x budget" if c["ok"] else f"FAIL: {c['reason']}")  # noqa: E731
        lines.append(f"| {r['arch']} | {p.get('groups', '-')} | {cell(p)} | {cell(e)} | "
                     f"{'; '.join(x for x in {p.get('note', ''), e.get('note', '')} if x)} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
