"""ONNX export + parity for the models users ship, with both of torch's exporters.

For each architecture, the full model and a uniform 50%-FLOPs plan (rounded to 8; to 1 where 8 is
too coarse for 1%) are exported at their native input size with the ``dynamo`` and the
``torchscript`` exporter: onnx.checker, onnx-simplifier, onnxruntime vs PyTorch max abs difference
on fresh random inputs (must be <= 1e-4). Writes bench/results/export_parity.{json,md}.

    python bench/export_parity.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from slimkit.artifacts import calibrate_bn
from slimkit.errors import BudgetError, SlimkitError
from slimkit.exporters.onnx import export
from slimkit.generator import generate
from slimkit.prune import prune

MODELS = ["mobilenet_v1", "mobilenet_v2", "resnet50", "timm:efficientnet_b0", "torchvision:mobilenet_v3_large",
          "resnet56"]
EXPORTERS = ["dynamo", "torchscript"]


def plans(arch: str):
    yield "full", prune(arch, "100%", method="uniform", num_classes=10, round_to=1, verify=False)
    try:
        yield "50%", prune(arch, "50%", method="uniform", num_classes=10, verify=False)
    except BudgetError:
        yield "50% (round 1)", prune(arch, "50%", method="uniform", num_classes=10, round_to=1, verify=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "export_parity"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.only or MODELS:
            for label, plan in plans(arch):
                model = calibrate_bn(generate(plan), tuple(plan.input_size)).eval()
                for exporter in EXPORTERS:
                    row = {"arch": plan.arch, "plan": label, "input": "x".join(map(str, plan.input_size)),
                           "macs": plan.flops, "exporter": exporter}
                    start = time.perf_counter()
                    try:
                        res = export(model, tuple(plan.input_size), Path(tmp) / "m.onnx", exporter=exporter,
                                     metadata={"slimkit.plan": plan.to_json()})
                        d = res.details
                        row.update(ok=True, export_s=round(res.export_seconds, 2), nodes_before=d["nodes_before"],
                                   nodes_after=d["nodes_after"], max_abs_diff=d["parity_max_abs_diff"],
                                   output_scale=round(d["parity_output_scale"], 3), mb=round(res.size_bytes / 1e6, 2))
                    except SlimkitError as exc:
                        row.update(ok=False, error=str(exc))
                    row["total_s"] = round(time.perf_counter() - start, 2)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    ok = sum(r["ok"] and r["max_abs_diff"] <= 1e-4 for r in rows)
    lines = [f"# ONNX export + parity: {ok}/{len(rows)} pass (max |ORT - PyTorch| <= 1e-4)", "",
             f"torch {torch.__version__}; random weights with BN statistics calibrated on noise; 10 classes.", "",
             "| model | plan | input | MMACs | exporter | export s | nodes (simplified) | max abs diff | |out| max | MB |",
             "|---|---|---|---:|---|---:|---|---:|---:|---:|"]
    for r in rows:
        if r["ok"]:
            lines.append(f"| {r['arch']} | {r['plan']} | {r['input']} | {r['macs'] / 1e6:.1f} | {r['exporter']} | "
                         f"{r['export_s']} | {r['nodes_before']} → {r['nodes_after']} | {r['max_abs_diff']:.1e} | "
                         f"{r['output_scale']} | {r['mb']} |")
        else:
            lines.append(f"| {r['arch']} | {r['plan']} | {r['input']} | – | {r['exporter']} | FAILED: {r['error']} |||||")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"{ok}/{len(rows)} pass; wrote {out}.json/.md")


if __name__ == "__main__":
    main()
