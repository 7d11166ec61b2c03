"""The latency gate's error rates, and the speed of a thin MobileNet-V1, on onnxruntime CPU.

1. Ratio: MobileNet-V1 full vs the uniform 50%-FLOPs plan (channels rounded to 8), batch 1,
   interleaved in one run (target: <= 0.6x the full model's median).
2. False alarms: the 50% model is checked 20 times against its own freshly recorded baseline
   (reference: the full model, re-measured in every check); target <= 1 failure.
3. Detection: models that really are slower are checked 20 times against the same baseline: a 65%-FLOPs
   plan (~25-30% slower) and the full model itself (~80% slower); target: fail every time.

Each check is exactly what `slimkit bench MODEL.onnx --baseline B.json --max-regression 10%` does.
Writes bench/results/latency_gate.json.

    python bench/latency_gate.py [--threads 2] [--checks 20] [--runs 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

from slimkit.artifacts import calibrate_bn
from slimkit.exporters.onnx import export
from slimkit.generator import generate
from slimkit.latency import Candidate, check_regression, measure
from slimkit.prune import prune

ARCH = "mobilenet_v1"


def exported(budget: str, folder: Path, name: str) -> Candidate:
    plan = prune(ARCH, budget, method="uniform", num_classes=1000, verify=False,
                 round_to=1 if budget == "100%" else 8, tolerance=0.02)
    model = calibrate_bn(generate(plan), tuple(plan.input_size)).eval()
    path = folder / f"{name}.onnx"
    export(model, tuple(plan.input_size), path, exporter="torchscript")
    return Candidate(name=name, input_shape=(1, *plan.input_size), onnx_path=path, flops=plan.flops)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checks", type=int, default=20)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--max-regression", type=float, default=0.10)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency_gate.json"))
    args = ap.parse_args()
    kw = dict(backend="ort-cpu", threads=args.threads, warmup=10, runs=args.runs)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        full, half, bigger = (exported("100%", Path(tmp), "full"), exported("50%", Path(tmp), "half"),
                              exported("65%", Path(tmp), "p65"))
        ratio_run = measure([full, half, bigger], **{**kw, "runs": 3 * args.runs})
        for m in ratio_run.models:
            print(f"{m['name']:5s} {m['flops'] / 1e6:7.1f}M MACs  median {m['stats']['median_ms']:.3f} ms  "
                  f"x{m['ratio']:.3f} ({m['ratio_ci'][0]:.3f}-{m['ratio_ci'][1]:.3f})", flush=True)
        base_report = measure([full, half], **kw)
        baseline = base_report.models[1]
        print(f"baseline half/full = {baseline['ratio']:.3f}", flush=True)

        def checks(model: Candidate) -> list[dict]:
            out = []
            for _ in range(args.checks):
                rep = measure([full, model], **kw)
                res = check_regression(rep, baseline, args.max_regression)
                out.append({"ratio": res.ratio, "ci": list(res.ratio_ci), "passed": res.passed})
            fails = sum(not c["passed"] for c in out)
            print(f"{model.name}: {fails}/{args.checks} checks failed", flush=True)
            return out

        same, slower = checks(half), checks(bigger)
        full_again = checks(dataclasses.replace(full, name="full-checked"))  # own session, same file
    p65 = ratio_run.model("p65")["ratio"] / ratio_run.model("half")["ratio"] - 1
    result = {
        "arch": ARCH, "backend": "ort-cpu", "threads": args.threads, "batch": 1, "runs_per_check": args.runs,
        "checks": args.checks, "max_regression": args.max_regression, "device": ratio_run.device,
        "malloc": "tuned" if os.environ.get("MALLOC_MMAP_MAX_") == "0" else "default",
        "ratio_run": [{k: m[k] for k in ("name", "flops", "ratio", "ratio_ci")} | {"median_ms": m["stats"]["median_ms"]}
                      for m in ratio_run.models],
        "half_over_full": ratio_run.model("half")["ratio"],
        "baseline_ratio": baseline["ratio"],
        "false_alarm_rate": sum(not c["passed"] for c in same) / args.checks,
        "p65_slowdown_vs_half": p65,
        "p65_detection_rate": sum(not c["passed"] for c in slower) / args.checks,
        "full_detection_rate": sum(not c["passed"] for c in full_again) / args.checks,
        "same_model_ratios": [round(c["ratio"], 4) for c in same],
        "seconds": round(time.time() - start, 1),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "same_model_ratios"}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
