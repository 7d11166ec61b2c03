"""G round trip over the model zoo.

Two suites:

* ``required`` (the original): uniform 50%-FLOPs plans and x1.25-expansion plans for every
  torchvision classification CNN and the timm models the papers' users reach for. Writes
  bench/results/zoo_roundtrip.{json,md}.

      python bench/zoo_roundtrip.py --suite required [--only NAME ...]

* ``broad``: the smallest variant of every timm CNN family (the list is chosen by
  ``--choose-families`` from ``timm.list_models`` and committed as bench/zoo_models.json) and
  every torchvision classification model (transformers included), at 64 px where the model
  allows. Per model: prune (uniform 50%, --round-to 8), G, forward, counted MACs within 1% of the
  budget and equal to the plan's, and the frozen share of MACs (MACs that no channel group can
  shrink). Results are appended to bench/results/zoo_broad.jsonl one model at a time, so an
  interrupted run resumes where it stopped; ``--report`` writes bench/results/zoo_broad.md.

      python bench/zoo_roundtrip.py --choose-families     # once: writes bench/zoo_models.json
      python bench/zoo_roundtrip.py [--only NAME ...]     # resumable
      python bench/zoo_roundtrip.py --report
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import torchvision

from slimkit import ChannelPlan, count_flops, generate
from slimkit.budget import max_widths
from slimkit.errors import BudgetError
from slimkit.generator import channel_graph
from slimkit.graph import GraphError
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
    budget = graph.count_flops(widths)
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


def main_required(args: argparse.Namespace) -> None:
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


# ----------------------------------------------------------------------------- broad suite
HERE = Path(__file__).parent
MODELS_FILE = HERE / "zoo_models.json"
BROAD_OUT = HERE / "results" / "zoo_broad"
# timm modules whose models are convolutional (attention/transformer/hybrid modules are left to
# the transformer benchmark); ported duplicates (tf_, gluon_, legacy_) are skipped.
TIMM_CNN_MODULES = (
    "byobnet", "convmixer", "convnext", "cspnet", "cspnext", "densenet", "dla", "dpn", "efficientnet",
    "fasternet", "ghostnet", "hardcorenas", "hgnet", "hrnet", "inception_next", "inception_resnet_v2",
    "inception_v3", "inception_v4", "lcnetv2", "mambaout", "metaformer", "mobilenetv3", "nasnet", "nfnet",
    "pnasnet", "rdnet", "regnet", "repghost", "repvit", "res2net", "resnest", "resnet", "resnetv2", "rexnet",
    "selecsls", "senet", "sknet", "starnet", "tresnet", "vgg", "vovnet", "xception", "xception_aligned",
    "cpubone",
)
ATTENTION_FAMILIES = {"caformer", "bat", "gcvit"}  # attention blocks inside CNN modules
SIDES = (64, 96, 128, 224)  # tried in order: the smallest input each model can be traced at


def _family(name: str) -> str:
    return re.match(r"[a-z]+(?:v\d+)?", name).group(0)


def choose_families() -> dict[str, str]:
    """Family -> its variant with the fewest parameters (models built on the meta device)."""
    import timm

    families: dict[str, list[str]] = {}
    for module in TIMM_CNN_MODULES:
        for name in timm.list_models(module=module):
            if name.startswith(("tf_", "gluon_", "legacy_", "timm_", "test_")):
                continue
            if _family(name) not in ATTENTION_FAMILIES:
                families.setdefault(_family(name), []).append(name)
    chosen = {}
    for family, names in sorted(families.items()):
        sizes = []
        for name in names:
            try:
                with torch.device("meta"), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = timm.create_model(name, pretrained=False)
                sizes.append((sum(p.numel() for p in model.parameters()), name))
            except Exception:  # noqa: BLE001 - a variant that cannot build is not a candidate
                continue
        if sizes:
            chosen[family] = min(sizes)[1]
            print(f"{family:18s} {chosen[family]:32s} {min(sizes)[0] / 1e6:8.2f}M params", flush=True)
    return chosen


HEAVY = re.compile(r"vit_h|vit_l|_128gf|_32gf|_16gf|_large|_b7|_b6|_v2_l|101|152|201|161|senet154|nasnetalarge|pnasnet")


def broad_archs() -> list[str]:
    """timm and torchvision models interleaved (a partial run covers both), the heaviest last."""
    timm_models = [f"timm:{n}" for n in json.loads(MODELS_FILE.read_text())["timm"].values()]
    tv = [f"torchvision:{n}" for n in torchvision.models.list_models(module=torchvision.models)]
    mixed = [a for pair in zip(timm_models, tv) for a in pair]
    mixed += timm_models[len(tv):] + tv[len(timm_models):]
    return [a for a in mixed if not HEAVY.search(a)] + [a for a in mixed if HEAVY.search(a)]


def check_broad(arch: str) -> dict:
    """Uniform 50% plan at the smallest input size the model traces at: prune, G, forward, MACs."""
    start = time.perf_counter()
    row: dict = {"arch": arch, "stage": "trace"}
    graph = side = None
    # torchvision's ViTs store a 224 image size; everything else starts at 64 px
    first = 224 if arch.startswith("torchvision:vit_") else LARGE_MIN.get(arch.split(":")[1], SIZE)
    for side in [s for s in SIDES if s >= first]:
        try:
            graph = channel_graph(arch, {}, (3, side, side))
            break
        except GraphError as exc:
            row["reason"] = str(exc)[:200]
    if graph is None:
        return {**row, "ok": False, "seconds": round(time.perf_counter() - start, 1)}
    size = (3, side, side)
    full = graph.count_flops()
    frozen_macs = graph.count_flops({name: 0 for name in graph.groups})
    row.update({"input": side, "groups": len(graph.groups), "frozen_groups": len(graph.frozen),
                "stored_sizes": len(graph.stored_sizes), "full_macs": full,
                "frozen_share": round(frozen_macs / full, 4),
                "frozen": {k: v[:160] for k, v in list(graph.frozen.items())[:8]}})
    try:
        row["stage"] = "prune"
        plan = prune(arch, "50%", method="uniform", input_size=size, verify=False)
        row["selection"] = plan.search.get("selection", "uniform")
        row["stage"] = "G"
        model = generate(plan).eval()
        row["stage"] = "forward"
        with torch.no_grad():
            out = model(torch.randn(2, *size))
        row["stage"] = "macs"
        macs = count_flops(model, size)
        target = plan.budget["value"]
        row.update({"macs": macs, "budget": target, "ratio": round(macs / target, 4)})
        row["ok"] = bool(out.shape[0] == 2 and macs == plan.flops and abs(macs - target) / target <= 0.01)
        row["stage"] = "done"
        if not row["ok"]:
            row["reason"] = f"counted {macs} MACs, plan {plan.flops}, budget {target}"
    except Exception as exc:  # noqa: BLE001 - a bench records every failure's reason
        row.update({"ok": False, "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:240] if str(exc) else ''}"})
        if "-v" in sys.argv:
            traceback.print_exc()
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def run_broad(args: argparse.Namespace) -> None:
    archs = broad_archs()
    if args.only:
        archs = [a for a in archs if any(o in a for o in args.only)]
    out = BROAD_OUT.with_suffix(".jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["arch"] for line in out.read_text().splitlines() if line.strip()} if out.exists() else set()
    todo = [a for a in archs if a not in done or args.redo]
    print(f"{len(archs)} models, {len(archs) - len(todo)} already in {out.name}, {len(todo)} to run", flush=True)
    for i, arch in enumerate(todo, 1):
        row = check_broad(arch)
        with out.open("a") as f:  # one line per model, flushed as it finishes: the run resumes
            f.write(json.dumps(row) + "\n")
        print(f"[{i}/{len(todo)}] {'ok ' if row['ok'] else 'FAIL'} {arch:42s} "
              f"frozen {100 * row.get('frozen_share', 1):5.1f}%  {row['seconds']:6.1f}s  {row.get('reason', '')[:120]}",
              flush=True)


def load_broad() -> list[dict]:
    rows: dict[str, dict] = {}
    for line in BROAD_OUT.with_suffix(".jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["arch"]] = row  # a rerun's row replaces the earlier one
    return list(rows.values())


def summarize_broad(rows: list[dict]) -> dict:
    def share(sel: list[dict], pred) -> tuple[int, int]:
        return sum(1 for r in sel if pred(r)), len(sel)

    tm = [r for r in rows if r["arch"].startswith("timm:")]
    tv = [r for r in rows if r["arch"].startswith("torchvision:")]
    tv_cnn = [r for r in tv if not r["arch"].split(":")[1].startswith(TRANSFORMERS)]
    cnns = tm + tv_cnn
    ok = lambda r: r["ok"]  # noqa: E731
    low_frozen = lambda r: r.get("frozen_share", 1.0) < 0.10  # noqa: E731
    return {"timm_cnn_ok": share(tm, ok), "torchvision_ok": share(tv, ok), "torchvision_cnn_ok": share(tv_cnn, ok),
            "all_cnn_ok": share(cnns, ok), "cnn_frozen_below_10pct": share(cnns, low_frozen),
            "filled": share(rows, lambda r: str(r.get("selection", "")).startswith("uniform up to"))}


def report_broad() -> None:
    rows = load_broad()
    summary = summarize_broad(rows)
    have = {r["arch"] for r in rows}
    summary["not_run_yet"] = [a for a in broad_archs() if a not in have]  # an interrupted run resumes these
    pct = lambda t: f"{t[0]}/{t[1]} ({100 * t[0] / max(t[1], 1):.0f}%)"  # noqa: E731
    lines = [
        "# Broad zoo: uniform 50%-FLOPs plans (--round-to 8) on timm CNN families and torchvision", "",
        "Generated by `python bench/zoo_roundtrip.py --report` from zoo_broad.jsonl (CPU, 2 shared cores, a "
        "loaded machine: seconds are indicative only). A model passes when prune, G and a forward pass work "
        "and the counted MACs equal the plan's and are within 1% of the budget. *Frozen share*: MACs of "
        "layers (or concat pieces) that no channel group can shrink.", "",
        f"* timm CNN families (smallest variant each): **{pct(summary['timm_cnn_ok'])}** pass",
        f"* torchvision classification models: **{pct(summary['torchvision_ok'])}** pass "
        f"(CNNs only: {pct(summary['torchvision_cnn_ok'])})",
        f"* all CNNs: {pct(summary['all_cnn_ok'])} pass; frozen share below 10% for "
        f"**{pct(summary['cnn_frozen_below_10pct'])}**",
        f"* plans that needed the rounding fill (uniform up to one or more steps): {pct(summary['filled'])}",
        f"* not run yet (the run was stopped at the deadline; rerunning resumes them): "
        f"{len(summary['not_run_yet'])}: {', '.join(summary['not_run_yet']) or '-'}", "",
        "| model | input | groups | frozen groups | stored split sizes | frozen MACs | 50% plan | selection | s |",
        "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        result = f"{r['ratio']:.3f}x budget" if r.get("ok") else f"FAIL ({r.get('stage')}): {r.get('reason', '')[:120]}"
        lines.append(f"| {r['arch']} | {r.get('input', '-')} | {r.get('groups', '-')} | {r.get('frozen_groups', '-')} | "
                     f"{r.get('stored_sizes', '-')} | {100 * r['frozen_share']:.1f}% | {result} | "
                     f"{r.get('selection', '-')} | {r['seconds']} |" if "frozen_share" in r else
                     f"| {r['arch']} | - | - | - | - | - | FAIL ({r.get('stage')}): {r.get('reason', '')[:120]} | - | {r['seconds']} |")
    lines += ["", "## Frozen groups and why (models with a frozen share of 10% or more)", ""]
    for r in rows:
        if r.get("frozen_share", 0) >= 0.10:
            lines.append(f"* **{r['arch']}** ({100 * r['frozen_share']:.0f}%): " + "; ".join(
                f"`{k}`: {v}" for k, v in list(r.get("frozen", {}).items())[:4]))
    BROAD_OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    BROAD_OUT.with_suffix(".summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=("broad", "required"), default="broad")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--redo", action="store_true", help="rerun models already in the results file")
    ap.add_argument("--report", action="store_true", help="write the Markdown summary of the broad results")
    ap.add_argument("--choose-families", action="store_true", help="pick each timm CNN family's smallest variant")
    ap.add_argument("--out", default=str(HERE / "results" / "zoo_roundtrip"))
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 beside another job on 2 cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.choose_families:
        chosen = choose_families()
        MODELS_FILE.write_text(json.dumps({"modules": list(TIMM_CNN_MODULES), "timm": chosen}, indent=1) + "\n")
        print(f"{len(chosen)} families -> {MODELS_FILE}")
    elif args.report:
        report_broad()
    elif args.suite == "broad":
        run_broad(args)
    else:
        main_required(args)


if __name__ == "__main__":
    main()
