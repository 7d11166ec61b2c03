"""Vision transformers through prune -> G -> forward -> ONNX, at small input sizes.

For each model: a uniform 50%-MACs plan (rounded to 8; heads in whole heads), whether attention
heads and MLP hidden widths were actually pruned (some group of each kind below its full width),
G(plan), a forward pass, counted MACs equal to the plan's and within 1% of the budget, the share
of MACs in frozen groups, and an ONNX export whose onnxruntime output matches PyTorch within
1e-4 (``slimkit.exporters.onnx.export`` with ``check_parity``). Resumable: rows already in the
JSON are kept unless ``--redo``. Writes bench/results/zoo_transformers.{json,md}.

    python bench/zoo_transformers.py [--only NAME ...] [--redo]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path

import torch

from slimkit import count_flops, generate
from slimkit.exporters.onnx import export
from slimkit.files import atomic_write_text
from slimkit.errors import BudgetError
from slimkit.generator import build_model, channel_graph
from slimkit.prune import prune

# (arch, input side): the smallest side each model allows with its patch/window layout.
MODELS = [
    ("timm:vit_tiny_patch16_224", 64),
    ("timm:vit_small_patch16_224", 64),
    ("timm:deit_tiny_patch16_224", 64),
    ("timm:deit_small_patch16_224", 64),
    ("timm:swin_tiny_patch4_window7_224", 64),
    ("timm:deit3_small_patch16_224", 64),
    ("timm:deit_tiny_distilled_patch16_224", 64),
    ("timm:vit_base_patch32_224", 64),
    ("timm:vit_small_patch32_224", 64),
    ("timm:eva02_tiny_patch14_224", 56),
    ("torchvision:vit_b_16", 64),
    ("torchvision:swin_t", 64),
]
ATOL = 1e-4


def frozen_share(graph) -> float:
    """Share of the full model's MACs that no group's width moves (every group at width 0)."""
    return graph.count_flops({n: 0 for n in graph.groups}) / graph.count_flops()


def check(arch: str, side: int) -> dict:
    size = (3, side, side)
    start = time.perf_counter()
    note = ""
    try:
        plan = prune(arch, "50%", method="uniform", input_size=size, verify=False)
    except BudgetError as exc:
        if "--round-to 1" not in str(exc):
            raise
        try:  # as bench/zoo_roundtrip.py does: finer rounding where 8 is too coarse for 1%
            plan = prune(arch, "50%", method="uniform", input_size=size, round_to=1, verify=False)
            note = "round-to 1 (8 too coarse for 1%)"
        except BudgetError as exc1:
            # Whole heads (or an embedding tied to them) move the cost in steps > 1% and a uniform
            # plan cannot fill between them (issue 15 item 2). Check the rest of the round trip at
            # 10% so the row still says whether G, the forward pass and ONNX work; the row fails.
            plan = prune(arch, "50%", method="uniform", input_size=size, tolerance=0.10, verify=False)
            note = f"not within 1%: {str(exc1).split(':')[1].split(';')[0].strip()}; rest checked at 10%"
    graph = channel_graph(plan.arch, plan.arch_kwargs, tuple(plan.input_size))
    mlp = [n for n in graph.groups if ".mlp." in n]
    mlp_pruned = sum(1 for n in mlp if plan.groups[n]["width"] < plan.groups[n]["full"])
    model = generate(plan).eval()
    # heads pruned: attention modules of G(plan) with fewer heads than the source's (tied
    # attention loses heads through the embedding group, per-block attention through its own)
    source = build_model(plan.arch, plan.arch_kwargs)
    heads = list(graph.attention_modules)
    heads_pruned = sum(1 for p in heads if model.get_submodule(p).num_heads < source.get_submodule(p).num_heads)
    with torch.no_grad():
        out = model(torch.randn(2, *size))
    macs = count_flops(model, size)
    target = plan.budget["value"]
    with tempfile.TemporaryDirectory() as tmp:
        result = export(model, size, Path(tmp) / "model.onnx", atol=ATOL, check_parity=True)
    parity = result.details["parity_max_abs_diff"]
    row = {"arch": arch, "input": side, "arch_kwargs": plan.arch_kwargs, "groups": len(plan.groups),
           "head_groups": len(heads), "heads_pruned": heads_pruned, "mlp_groups": len(mlp),
           "mlp_pruned": mlp_pruned, "tied_attention": sorted({k for k, _ in graph.attention_modules.values()}),
           "macs": macs, "plan_macs": plan.flops, "budget": target,
           "attention_macs_full": graph.attention_macs(), "full_macs": graph.count_flops(),
           "frozen_share": round(frozen_share(graph), 4), "onnx_parity": parity,
           "exporter": result.details["exporter"], "forward": list(out.shape), "note": note}
    row["macs_ok"] = macs == plan.flops and abs(macs - target) / target <= 0.01
    row["ok"] = bool(row["macs_ok"] and heads_pruned > 0 and mlp_pruned > 0 and parity <= ATOL)
    row["reason"] = "" if row["ok"] else (
        "heads not pruned" if not heads_pruned else "MLP not pruned" if not mlp_pruned else
        (note or f"macs {macs} vs plan {plan.flops} / budget {target}") if not row["macs_ok"] else
        f"parity {parity:.2e}")
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def write(out: Path, rows: dict[str, dict]) -> None:
    ordered = [rows[a] for a, _ in MODELS if a in rows]
    timm_rows = [r for r in ordered if r["arch"].startswith("timm:")]
    tv_rows = [r for r in ordered if r["arch"].startswith("torchvision:")]
    summary = {"timm_ok": sum(r["ok"] for r in timm_rows), "timm_total": len(timm_rows),
               "torchvision_ok": sum(r["ok"] for r in tv_rows), "torchvision_total": len(tv_rows),
               "onnx_atol": ATOL, "torch": torch.__version__,
               "note": "2 shared CPU cores, loaded by other jobs: seconds are indicative only"}
    atomic_write_text(out.with_suffix(".json"), json.dumps({"summary": summary, "rows": ordered}, indent=1))
    lines = [
        "# Vision transformers: uniform 50% plan -> G -> forward -> ONNX", "",
        f"timm: **{summary['timm_ok']}/{summary['timm_total']}**, torchvision: "
        f"**{summary['torchvision_ok']}/{summary['torchvision_total']}** pass (heads and MLP widths pruned, "
        f"G runs, counted MACs = plan and within 1% of budget, ONNX parity <= {ATOL:g}).",
        "MACs include attention's matrix products (docs/transformers.md). Heads pruned: attention layers of "
        "G(plan) with fewer heads than the source / attention layers (`tied`: torchvision's attention derives "
        "its width from the embedding, so its heads move with the embedding group). MLPs pruned: MLP groups "
        "below full width / MLP groups. Frozen share: MACs no group moves (all groups at width 0).", "",
        "| model | input | groups | heads pruned | MLPs pruned | MACs / budget | attention MACs (full) | "
        "frozen share | ONNX max diff | s | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ordered:
        if "macs" not in r:
            lines.append(f"| {r['arch']} | {r['input']} | | | | | | | | | FAIL: {r['reason']} |")
            continue
        heads = f"{r['heads_pruned']}/{r['head_groups']}" + (" tied" if "tied" in r["tied_attention"] else "")
        lines.append(
            f"| {r['arch']} | {r['input']} | {r['groups']} | {heads} | {r['mlp_pruned']}/{r['mlp_groups']} | "
            f"{r['macs'] / r['budget']:.4f} | {r['attention_macs_full'] / r['full_macs']:.1%} | "
            f"{r['frozen_share']:.1%} | {r['onnx_parity']:.1e} | {r['seconds']} | "
            f"{('ok' + (' (' + r['note'] + ')' if r.get('note') else '')) if r['ok'] else 'FAIL: ' + r['reason']} |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--redo", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "zoo_transformers"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    if out.with_suffix(".json").exists():
        rows = {r["arch"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    for arch, side in MODELS:
        if args.only and not any(o in arch for o in args.only):
            continue
        if arch in rows and not args.redo and not (args.only and rows[arch].get("ok") is False):
            continue
        try:
            rows[arch] = check(arch, side)
        except Exception as exc:  # noqa: BLE001 - a bench records every failure's reason
            rows[arch] = {"arch": arch, "input": side, "ok": False,
                          "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            traceback.print_exc()
        r = rows[arch]
        print(f"{'ok ' if r['ok'] else 'FAIL'} {arch:45s} {r.get('reason', '')} {r.get('seconds', '')}s", flush=True)
        write(out, rows)  # after every model: a killed run resumes where it stopped
    write(out, rows)


if __name__ == "__main__":
    main()
