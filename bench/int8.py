"""int8 vs fp32: accuracy (or output agreement), latency on onnxruntime CPU, and OpenVINO parity.

For each model: export fp32 (torchscript exporter), quantize with slimkit's int8 export
(onnxruntime ``quantize_static``: QDQ, per-channel int8 weights, MinMax on 256 Fashion-MNIST
training images, ``quant_pre_process`` first), run its check (trained checkpoints: top-1 on the
whole test split, both on onnxruntime; untrained: output agreement on held-out training images),
then time full fp32, this fp32, this int8 (int8 activations, the default) and an int8 variant with
uint8 activations (U8S8, the pairing x86 VNNI instructions multiply natively), interleaved, ORT
CPU, batch 1, 2 threads. An onnxruntime profile per op type says where int8 time goes. OpenVINO
(f32 hint, and bf16 for contrast) is compared with onnxruntime on the fp32 files.

    python bench/int8.py [--r20-full CKPT] [--r20-50 CKPT] [--only NAME ...] [--runs N]

Writes bench/results/int8.{json,md}. Run with the MALLOC_* settings of docs/method.md exported.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from slimkit.artifacts import LoadedModel, calibrate_bn, load_model, plan_candidate
from slimkit.data import load_data
from slimkit.exporters.int8 import QuantizeSettings, export_int8
from slimkit.exporters.onnx import export
from slimkit.exporters.openvino import openvino_parity
from slimkit.generator import full_plan, generate
from slimkit.latency import Candidate, cpu_description, measure
from slimkit.plan import load_plan
from slimkit.prune import prune

RESULTS = Path(__file__).parent / "results"
COMMITTED_PLAN = RESULTS / "fmnist_resnet20_50_plan.json"


def sources(args) -> list[tuple[str, LoadedModel]]:
    """(label, model source): trained checkpoints where given, else fresh weights (BN calibrated)."""
    out = []

    def fresh(plan, what):
        model = calibrate_bn(generate(plan), tuple(plan.input_size), seed=plan.seed).eval()
        return LoadedModel(model, plan, False, what)

    if args.r20_full and Path(args.r20_full).is_file():
        out.append(("resnet20 full", load_model(args.r20_full)))
    else:
        out.append(("resnet20 full", fresh(full_plan("resnet20", num_classes=10), "resnet20 full (untrained)")))
    if args.r20_50 and Path(args.r20_50).is_file():
        out.append(("resnet20 50% plan", load_model(args.r20_50)))
    else:
        out.append(("resnet20 50% plan", fresh(load_plan(COMMITTED_PLAN), "committed plan (untrained)")))
    out.append(("mobilenet_v1 150M", fresh(prune("mobilenet_v1", "150M", method="uniform", num_classes=10,
                                                  verify=False), "uniform 150M (untrained)")))
    out.append(("resnet50 50%", fresh(prune("resnet50", "50%", method="uniform", num_classes=10, verify=False),
                                      "uniform 50% (untrained)")))
    return [(label, src) for label, src in out if not args.only or any(o in label for o in args.only)]


def op_profile(path: Path, shape: tuple[int, ...], runs: int = 30) -> dict[str, float]:
    """Mean microseconds per run spent in each op type (onnxruntime's own profiler, 2 threads)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.enable_profiling = True
    opts.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "prof")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        for _ in range(runs):
            sess.run(None, {sess.get_inputs()[0].name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / runs
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--r20-full", default="runs/r20_full/checkpoint.pt")
    ap.add_argument("--r20-50", default="runs/r20_50/checkpoint.pt")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--out", default=str(RESULTS / "int8"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="slimkit-int8-bench-") as tmp:
        work = Path(tmp)
        for label, src in sources(args):
            print(f"== {label}: {src.description}", flush=True)
            stem = label.replace(" ", "_").replace("%", "pct")
            fp32 = work / f"{stem}.onnx"
            export(src.model, src.input_size, fp32, exporter="torchscript",
                   metadata={"slimkit.plan": src.plan.to_json()})
            data = load_data("fashion-mnist", data_dir=None, input_size=src.input_size, val_size=0,
                             seed=src.plan.seed)
            row = {"model": label, "source": src.description, "trained": src.trained, "arch": src.plan.arch,
                   "input": "x".join(map(str, src.input_size)), "macs": src.plan.flops, "params": src.plan.params,
                   "fp32_mb": round(fp32.stat().st_size / 1e6, 3)}
            t0 = time.perf_counter()
            res = export_int8(fp32, data, trained=src.trained,
                              settings=QuantizeSettings(calib_images=args.calib_images, seed=src.plan.seed),
                              eval_images=None if src.trained else 256, max_drop=100.0,
                              max_output_error=100.0)  # record, never refuse: this table shows the numbers
            row.update(int8_mb=round(res.size_bytes / 1e6, 3), quantize_s=round(res.export_seconds, 1),
                       check=res.details["check"], check_s=round(time.perf_counter() - t0 - res.export_seconds, 1))
            u8 = export_int8(fp32, data, trained=False, out=work / f"{stem}.u8.int8.onnx",
                             settings=QuantizeSettings(calib_images=args.calib_images, activation_type="uint8",
                                                       seed=src.plan.seed), eval_images=256, max_output_error=100.0)
            row["u8_check"] = u8.details["check"]
            print(json.dumps({k: row[k] for k in ("model", "check")}), flush=True)

            batch_shape = (1, *src.input_size)
            cands = []
            full = src.plan.unpruned()
            if full.widths != src.plan.widths:
                cands.append(plan_candidate(full, work, 1, "full fp32"))
            for name, path in (("fp32", fp32), ("int8", res.path), ("int8 u8-act", u8.path)):
                cands.append(Candidate(name=name, input_shape=batch_shape, onnx_path=path, spec={"kind": "onnx"}))
            report = measure(cands, backend="ort-cpu", threads=2, warmup=10, runs=args.runs)
            med = {m["name"]: m["stats"]["median_ms"] for m in report.models}
            ref = report.models.index(next(m for m in report.models if m["name"] == "fp32"))
            times = {m["name"]: np.asarray(report.times_ms[m["name"]]) for m in report.models}
            ratio = lambda a, b: float(np.median(times[a] / times[b]))  # noqa: E731 - per-round paired ratio
            row["latency"] = {"median_ms": med, "int8_over_fp32": ratio("int8", "fp32"),
                              "u8_over_fp32": ratio("int8 u8-act", "fp32"),
                              "int8_over_full_fp32": ratio("int8", "full fp32") if "full fp32" in med else None,
                              "fp32_over_full_fp32": ratio("fp32", "full fp32") if "full fp32" in med else None,
                              "runs": args.runs, "reference_index": ref}
            row["profile_us"] = {"fp32": op_profile(fp32, batch_shape), "int8": op_profile(res.path, batch_shape),
                                 "int8 u8-act": op_profile(u8.path, batch_shape)}
            if "mobilenet" in label or "resnet50" in label:
                row["openvino"] = {"f32": openvino_parity(fp32, threads=2).to_dict(),
                                   "bf16": openvino_parity(fp32, threads=2, precision="bf16").to_dict()}
            print(json.dumps({k: row[k] for k in ("model", "latency")}), flush=True)
            rows.append(row)

    out = Path(args.out)
    if args.only and out.with_suffix(".json").is_file():  # a partial re-run keeps the other models' rows
        kept = [r for r in json.loads(out.with_suffix(".json").read_text())["rows"]
                if r["model"] not in {r2["model"] for r2 in rows}]
        order = [label for label in ("resnet20 full", "resnet20 50% plan", "mobilenet_v1 150M", "resnet50 50%")]
        rows = sorted(kept + rows, key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))
    meta = {"device": cpu_description(), "onnxruntime": ort.__version__, "threads": 2, "batch": 1,
            "malloc": "tuned" if os.environ.get("MALLOC_MMAP_MAX_") == "0" else "default",
            "load_average_at_end": os.getloadavg(),
            "note": "2-core machine shared with other jobs while this ran: absolute times are noisy, the "
                    "interleaved per-round ratios are what to read"}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(meta, rows))
    print(f"wrote {out}.json, {out}.md")


def _share(profile: dict[str, float], ops: tuple[str, ...]) -> float:
    total = sum(profile.values())
    return sum(v for k, v in profile.items() if k in ops) / total if total else float("nan")


def markdown(meta, rows) -> str:
    lines = ["# int8 vs fp32 (onnxruntime static quantization)", "",
             f"{meta['device']}, onnxruntime {meta['onnxruntime']}, batch 1, {meta['threads']} threads, "
             f"interleaved rounds, malloc {meta['malloc']}. {meta['note']} (load average at the end: "
             f"{meta['load_average_at_end'][0]:.1f}).", "",
             "int8 = QDQ, per-channel int8 weights, int8 activations (onnxruntime's default), MinMax calibration on "
             "256 Fashion-MNIST training images after `quant_pre_process`. u8-act = the same with uint8 activations.",
             "", "## Accuracy", "",
             "| model | weights | check | fp32 top-1 | int8 top-1 | drop (points) | top-1 agreement | output error |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        c = r["check"]
        acc = (f"{100 * c['fp32_top1']:.2f}% | {100 * c['int8_top1']:.2f}% | {c['drop_points']:+.2f}"
               if c["kind"] == "accuracy" else "– | – | –")
        lines.append(f"| {r['model']} | {'trained' if r['trained'] else 'untrained'} | {c['kind']} on "
                     f"{c['images']:,} {c['split']} images | {acc} | {100 * c['top1_agreement']:.1f}% | "
                     f"{c['output_error']:.3f} |")
    lines += ["", "Output error = RMS(int8 − fp32 logits) / RMS(fp32 logits − their mean over images).", "",
              "## Latency (onnxruntime CPU)", "",
              "| model | MMACs | full fp32 ms | fp32 ms | int8 ms | u8-act ms | int8 / fp32 | u8-act / fp32 | "
              "int8 / full fp32 | Q+DQ share of int8 time | size fp32 → int8 |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lat, med = r["latency"], r["latency"]["median_ms"]
        full = f"{med['full fp32']:.3f}" if "full fp32" in med else "(same)"
        vs_full = f"{lat['int8_over_full_fp32']:.2f}" if lat["int8_over_full_fp32"] else f"{lat['int8_over_fp32']:.2f}"
        qdq = _share(r["profile_us"]["int8"], ("QuantizeLinear", "DequantizeLinear"))
        lines.append(f"| {r['model']} | {r['macs'] / 1e6:.1f} | {full} | {med['fp32']:.3f} | {med['int8']:.3f} | "
                     f"{med['int8 u8-act']:.3f} | **{lat['int8_over_fp32']:.2f}** | {lat['u8_over_fp32']:.2f} | "
                     f"{vs_full} | {100 * qdq:.0f}% | {r['fp32_mb']:.2f} → {r['int8_mb']:.2f} MB |")
    lines += ["", "Ratios are medians of per-round ratios (each round runs every model once, in rotating order).",
              "", "## Where the time goes (onnxruntime profiler, µs per run, top op types)", ""]
    for r in rows:
        for variant in ("fp32", "int8"):
            prof = r["profile_us"][variant]
            top = ", ".join(f"{k} {v:.0f}" for k, v in list(prof.items())[:6])
            lines.append(f"* {r['model']} {variant}: total {sum(prof.values()):.0f} µs: {top}")
    ov = [r for r in rows if "openvino" in r]
    if ov:
        lines += ["", "## OpenVINO vs onnxruntime on the fp32 files", "",
                  "| model | OpenVINO precision | max abs diff | max rel diff (of max output) | within 1e-4 |",
                  "|---|---|---:|---:|---|"]
        for r in ov:
            for prec in ("f32", "bf16"):
                p = r["openvino"][prec]
                ok = {True: "yes", False: "NO", None: "– (not judged)"}[p["passed"]]
                lines.append(f"| {r['model']} | {p['precision']} | {p['max_abs_diff']:.2e} | {p['max_rel_diff']:.2e} | {ok} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
