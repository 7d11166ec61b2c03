"""torchvision detection and segmentation models: prune (uniform, 50% MACs), G, run, ONNX, latency.

Per model, at its deployment input (320 for SSDlite, 300 for SSD300, 800 for the R-CNNs, RetinaNet
and FCOS, 520 for the segmenters) unless ``--side`` caps it: MACs of what slimkit traces (a
detector's dense core: backbone, FPN and dense heads; a segmenter whole), the frozen share of those
MACs (what no channel group can shrink: the task's outputs and what feeds them), the uniform 50%
plan's MACs against its budget, G's model run on a fixed input (detections counted), the ONNX export
of the traced part (full and 50%) with slimkit's parity check, onnxruntime latency of full vs 50%
(interleaved), and for detectors the PyTorch postprocessing time (anchors, box decoding, NMS, RoI
heads: the detector's eager forward minus its dense core's), which the ONNX files leave out.

Rows are appended to bench/results/detection_zoo.jsonl one model at a time (resumable);
``--report`` writes bench/results/detection_zoo.md.

    nice python bench/detection_zoo.py [--only NAME ...] [--side 320] [--runs 10]
    python bench/detection_zoo.py --report
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path

import torch
from slimkit.exporters.onnx import DEFAULT_ATOL, export, fp32_rounding_error, parity, parity_limit

import slimkit
from slimkit import registry
from slimkit.artifacts import calibrate_bn
from slimkit.flops import count_flops
from slimkit.generator import channel_graph
from slimkit.latency import Candidate, cpu_description, measure

MODELS = ["ssdlite320_mobilenet_v3_large", "ssd300_vgg16", "fasterrcnn_mobilenet_v3_large_fpn",
          "fasterrcnn_resnet50_fpn_v2", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn", "maskrcnn_resnet50_fpn_v2",
          "keypointrcnn_resnet50_fpn", "lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large",
          "deeplabv3_resnet50", "fcn_resnet50"]
# An explicit channel multiple: the default ``round_to="auto"`` exports and times the model at several
# multiples first, which for an 800 px detector costs more than the rest of its row.
ROUND_TO = 8
RESULTS = Path(__file__).parent / "results"
JSONL = RESULTS / "detection_zoo.jsonl"


def _eager_ms(fn, x, repeats: int = 2) -> float:
    with torch.no_grad():
        fn(x)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            fn(x)
            best = min(best, time.perf_counter() - t)
    return 1000 * best


def run_one(name: str, side_cap: int | None, runs: int, threads: int | None) -> dict:
    deploy = registry.default_input_size(name)[1]
    side = min(deploy, side_cap) if side_cap else deploy
    size = (3, side, side)
    task = registry.torchvision_task(name)
    row: dict = {"model": name, "task": task, "deploy_side": deploy, "side": side, "round_to": ROUND_TO,
                 "runs": runs, "stage": "trace"}
    t0 = time.perf_counter()
    try:
        plan = slimkit.prune(name, "50%", method="uniform", input_size=size, round_to=ROUND_TO,
                             latency=slimkit.LatencyOptions(check=False))  # the row times it below
        graph = channel_graph(plan.arch, plan.arch_kwargs, size)
        full = graph.count_flops()
        row.update({"groups": len(graph.groups), "frozen_groups": len(graph.frozen), "full_macs": full,
                    "frozen_share": round(graph.count_flops({n: 0 for n in graph.groups}) / full, 4),
                    "plan_macs": plan.flops, "budget_error": round(plan.flops / plan.budget["value"] - 1, 5),
                    "frozen_examples": dict(list(graph.frozen.items())[:4])})
        row["stage"] = "G"
        torch.manual_seed(0)
        thin = slimkit.generate(plan).eval()
        full_model = slimkit.generate(plan.unpruned()).eval()
        x = torch.rand(1, *size, generator=torch.Generator().manual_seed(0))
        row["stage"] = "run"
        with torch.no_grad():
            if task == "detection":
                out = thin(list(x))
                row["detections_50"] = int(len(out[0]["boxes"]))
            else:
                out = thin(x)
                row["output_50"] = list(out["out"].shape)
        traced_thin, traced_full = registry.traced_part(thin), registry.traced_part(full_model)
        row["counted_macs_equal_plan"] = count_flops(traced_thin, size) == plan.flops
        if task == "detection":
            row["post_ms_full"] = round(_eager_ms(lambda t: full_model(list(t)), x) - _eager_ms(traced_full, x), 2)
            row["post_ms_50"] = round(_eager_ms(lambda t: thin(list(t)), x) - _eager_ms(traced_thin, x), 2)
        row["stage"] = "onnx"
        with tempfile.TemporaryDirectory() as tmp:
            cands = []
            for label, module, flops in (("full", traced_full, full), ("50%", traced_thin, plan.flops)):
                calibrate_bn(module, size, batches=2, batch_size=2)
                path = Path(tmp) / f"{label.strip('%')}.onnx"
                # slimkit's own check (export's), run here so that a miss is measured, not only refused
                res = export(module.eval(), size, path, simplify=False, check_parity=False)
                diff, scale = parity(module, path.read_bytes(), size, [1, 1])
                row[f"parity_{label}"], row[f"parity_limit_{label}"] = diff, parity_limit(DEFAULT_ATOL, scale)
                if not diff <= row[f"parity_limit_{label}"]:
                    row[f"fp32_error_{label}"] = fp32_rounding_error(module, size)
                row[f"exporter_{label}"] = res.details["exporter"]
                cands.append(Candidate(name=label, input_shape=(1, *size), onnx_path=path, flops=flops))
            row["stage"] = "latency"
            report = measure(cands, backend="ort-cpu", threads=threads, warmup=2, runs=runs)
            row["ort_ms_full"] = round(report.models[0]["stats"]["median_ms"], 2)
            row["ort_ms_50"] = round(report.models[1]["stats"]["median_ms"], 2)
            row["ort_ratio"] = round(report.models[1]["ratio"], 3)
            row["ort_threads"] = report.threads
        row["stage"] = "done"
    except Exception as exc:  # noqa: BLE001 - a benchmark row records the failure and goes on
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}" if str(exc) else type(exc).__name__
        row["traceback"] = traceback.format_exc()[-1500:]
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def report() -> Path:
    rows = {}
    for line in JSONL.read_text().splitlines():
        r = json.loads(line)
        rows[r["model"]] = r  # the latest row of each model
    lines = ["# torchvision detection and segmentation: uniform 50% MACs", "",
             "Written by `bench/detection_zoo.py --report` from `detection_zoo.jsonl`. MACs are those of the part "
             "slimkit traces (a detector's backbone, FPN and dense heads; a segmenter whole) at the input shown; "
             "frozen share = MACs no channel group can shrink. ONNX files hold that traced part; detector "
             "postprocessing (box decoding, NMS, RoI heads) runs in PyTorch and is timed apart (eager forward minus "
             "the dense core). Latency: onnxruntime CPU, batch 1, median of interleaved runs. Random weights make "
             "postprocessing a worst case (near-uniform scores send the most boxes to NMS). Rows run on a busy shared "
             "machine: compare the ratios, not the milliseconds; a postprocessing time is a difference of two "
             "such timings and is marked 'noise' where the load made it negative. Parity = max |onnxruntime - "
             "PyTorch| on two random inputs, within slimkit's export limit (1e-4 x max(1, largest output)); a miss "
             "shows the limit and PyTorch's own fp32 error against fp64 on the same input, the rounding noise "
             "of one fp32 runtime; two runtimes each that close to the exact result differ by at most twice it, "
             "so a miss within twice the fp32 error reads 'rounding', beyond it 'WRONG'. Where an input is smaller than the deployment input, the 2 shared cores "
             "could not afford the latter (the budget error and parity do not depend on it; the latency ratio "
             "may). Random weights: the R-CNNs' box classifiers score no box above their 0.05 threshold, so "
             "they return 0 boxes.", "",
             "| model | input (deploy) | MACs full | frozen share | 50% plan MACs (vs budget) | G runs | parity full / 50% "
             "| ORT ms full / 50% (ratio) | postproc ms full / 50% | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in MODELS:
        r = rows.get(name)
        if r is None:
            lines.append(f"| {name} | | | | | | | | | not run |")
            continue

        def g(key, fmt="{}"):
            return fmt.format(r[key]) if r.get(key) is not None else "–"

        def parity_cell(label):
            if r.get(f"fp32_error_{label}") is None:
                return g(f"parity_{label}", "{:.1e}")
            # two fp32 runtimes each within fp32_error of the exact result differ by at most twice it
            verdict = "rounding" if r[f"parity_{label}"] <= 2 * r[f"fp32_error_{label}"] else "WRONG"
            return (f"{r[f'parity_{label}']:.1e} (> {r[f'parity_limit_{label}']:.1e}; fp32 error "
                    f"{r[f'fp32_error_{label}']:.1e}: {verdict})")

        def post_cell(key):
            return "noise" if (r.get(key) or 0) < 0 else g(key)

        runs = f", {r['runs']} runs" if r.get("runs") else ""  # rows before the count was recorded: 10
        status = "ok" if r.get("stage") == "done" else f"stopped at {r.get('stage')}: {r.get('error', '')[:120]}"
        ran = ("yes" + (f" ({r['detections_50']} boxes)" if "detections_50" in r else "")) if r.get("stage") not in (
            "trace", "G", "run") else "–"
        lines.append(
            f"| {name} | {r['side']} ({r['deploy_side']}) | {g('full_macs', '{:,}')} | {g('frozen_share', '{:.1%}')} "
            f"| {g('plan_macs', '{:,}')} ({g('budget_error', '{:+.2%}')}) | {ran} "
            f"| {parity_cell('full')} / {parity_cell('50%')} "
            f"| {g('ort_ms_full')} / {g('ort_ms_50')} ({g('ort_ratio')}{runs}) "
            f"| {post_cell('post_ms_full')} / {post_cell('post_ms_50')} "
            f"| {status} |")
    meta = next(iter(rows.values()), {})
    lines += ["", f"Machine: {meta.get('machine', '?')}; torch {meta.get('torch', '?')}."]
    out = RESULTS / "detection_zoo.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--side", type=int, default=None, help="cap the input side (default: each model's deployment input)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--out", type=Path, default=JSONL)
    args = ap.parse_args()
    if args.report:
        print(report())
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.only or MODELS:
        row = run_one(name, args.side, args.runs, args.threads)
        row.update({"machine": f"{cpu_description()}, {torch.get_num_threads()} torch threads",
                    "torch": torch.__version__})
        print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
