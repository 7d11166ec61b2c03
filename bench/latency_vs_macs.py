"""Does latency track MACs? The deployable zoo pruned to 50% and 25% of its MACs, timed at 224 px.

For each model (MobileNet-V1/V2/V3-Large, ResNet-50, EfficientNet-B0, ConvNeXt-Atto, ViT-Tiny), at its
deployment resolution (224 px), four plans beside the full model: ``uniform`` (``slimkit prune``'s default for
classifiers) and ``scratch`` (learned gates + threshold) at 50% and 25% of the full model's MACs, all at the same
``--round-to``. Every plan is exported to ONNX (fp32) and quantized as ``slimkit export --int8`` ships it
(``quantize_for_timing``), then each precision's five files are timed side by side with
:func:`slimkit.latency.measure` (onnxruntime CPU, batch 1, 2 threads; ``--timing served``, the default, runs
each model alone with onnxruntime's defaults in alternated blocks, as a deployed model runs; ``interleaved``
runs every model once per round with pool threads not spinning). ``--repeats`` times everything again in
fresh sessions: on a shared VM separate runs differ by more than one run's interval.
The figure of merit is **latency ratio / MAC ratio** (both to the full model in the same precision):
1.0 means latency falls exactly as MACs do; above 1 the plan is slower than its MACs promise.

Where that figure is high, onnxruntime's own profiler (``SessionOptions.enable_profiling``) says where the
time goes: every node's kernel time is put in a category (depthwise conv, pointwise conv, other conv,
matmul/gemm, layout reorders between blocked NCHWc / NHWC and plain NCHW, quantize/dequantize, other) and
each category's time ratio (plan / full) is set beside its MAC ratio.

``scratch`` learns gates; a CPU cannot run its full gate search for seven 224-px models in one
sitting, so this benchmark uses a short run (``--gate-steps``, recorded in the results): the widths it
picks are the method's, not converged ones.

    python bench/latency_vs_macs.py [--round-to 8] [--gate-steps 30] [--gate-batch 32] [--runs 60] [--only NAME ...]

Plans, ONNX files and profiles are cached under ``--work`` (default /tmp/slimkit-latency-vs-macs), so a
re-run only times. Each zoo model is timed in its own fresh process (a served model runs alone in its
process). Writes bench/results/latency_vs_macs.{json,md,png}. Run with the MALLOC_* settings
exported (DESIGN.md) and under ``nice``; on a shared machine the interleaved ratios hold, the
milliseconds do not.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from slimkit.artifacts import plan_candidate
from slimkit.exporters.int8 import quantize_for_timing
from slimkit.files import atomic_write, atomic_write_text
from slimkit.generator import full_plan
from slimkit.latency import TIMING_MODES, Candidate, cpu_description, describe_mode, measure
from slimkit.ort_profile import compare_profiles, profile
from slimkit.plan import ChannelPlan, load_plan, save_plan
from slimkit.prune import DEFAULT_ROUND_TO, GateOptions, prune

RESULTS = Path(__file__).parent / "results"
MODELS = {  # label -> slimkit architecture name
    "MobileNet-V1": "mobilenet_v1",
    "MobileNet-V2": "torchvision:mobilenet_v2",
    "MobileNet-V3-Large": "torchvision:mobilenet_v3_large",
    "ResNet-50": "torchvision:resnet50",
    "EfficientNet-B0": "torchvision:efficientnet_b0",
    "ConvNeXt-Atto": "timm:convnext_atto",
    "ViT-Tiny/16": "timm:vit_tiny_patch16_224",
}
BUDGETS = ("50%", "25%")
METHODS = ("uniform", "scratch")  # the default for classifiers, and learned gates
SIDE = 224
NUM_CLASSES = 10  # scratch learns gates on Fashion-MNIST (10 classes); the head is <0.3% of MACs
GATE_VAL_IMAGES = 128  # held out to pick the gate snapshot; the short run evaluates 10 times
HIGH = 1.15  # latency ratio / MAC ratio above this is "slower than its MACs promise"


# ---------------------------------------------------------------------------- plans and files
def plan_path(work: Path, arch: str, method: str, budget: str, round_to: int, steps: int, batch: int) -> Path:
    tag = re.sub(r"[^A-Za-z0-9]+", "_", arch)
    extra = f"_s{steps}b{batch}" if method != "uniform" else ""
    return work / "plans" / f"{tag}_{method}_{budget.rstrip('%')}_r{round_to}{extra}.json"


def make_plans(arch: str, work: Path, round_to: int, steps: int, batch: int, log,
               methods: tuple[str, ...] = METHODS, budgets: tuple[str, ...] = BUDGETS,
               learn: bool = True) -> dict[str, ChannelPlan]:
    """full + method x budget plans for ``arch`` at 224 px (cached: gate learning takes minutes).
    ``learn=False`` leaves out default-method plans not learned yet."""
    plans = {"full": full_plan(arch, num_classes=NUM_CLASSES, input_size=(3, SIDE, SIDE))}
    for method in methods:
        for budget in budgets:
            path = plan_path(work, arch, method, budget, round_to, steps, batch)
            if not path.is_file() and method != "uniform" and not learn:
                log(f"  {method} {budget}: no learned plan yet (--no-learn): left out")
                continue
            if not path.is_file():
                t0 = time.perf_counter()
                gates = GateOptions(steps=steps, batch_size=batch, val_size=GATE_VAL_IMAGES) if method != "uniform" else None
                plan = prune(arch, budget, method=method, num_classes=NUM_CLASSES, input_size=(3, SIDE, SIDE),
                             round_to=round_to, gates=gates, verify=False, log=lambda m: log(f"  {m}"))
                plan.search["bench_seconds"] = round(time.perf_counter() - t0, 1)
                save_plan(plan, path)
                log(f"  {arch} {method} {budget}: {plan.flops / 1e6:.1f}M MACs in {time.perf_counter() - t0:.0f}s")
            plans[f"{method} {budget}"] = load_plan(path)
    return plans


def files_for(name: str, plan: ChannelPlan, folder: Path) -> tuple[Path, Path]:
    """fp32 and int8 ONNX files of ``plan`` in ``folder`` (made once, then reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9]+", "_", name)
    fp32, int8 = folder / f"{stem}.onnx", folder / f"{stem}.int8.onnx"
    if not fp32.is_file():  # torchscript, unsimplified, no parity run: simplification leaves ORT latency as is
        plan_candidate(plan, folder, 1, stem, exporter="torchscript", simplify=False, check_parity=False)
    if not int8.is_file():
        quantize_for_timing(fp32, tuple(plan.input_size), int8)
    return fp32, int8


def served_lat_per_mac(plans: dict[str, ChannelPlan], folder: Path, *, repeats: int, runs: int, blocks: int,
                       threads: int) -> dict[str, list[float]]:
    """Every plan but ``full`` exported (fp32) and timed against ``plans["full"]`` as served, ``repeats`` times
    in fresh sessions: per plan, its latency ratio / MAC ratio in each repeat (compare plans within a repeat)."""
    files = {name: files_for(name, plan, folder)[0] for name, plan in plans.items()}
    shape = (1, *plans["full"].input_size)
    cands = [Candidate(name=n, input_shape=shape, onnx_path=files[n], spec={"kind": "onnx"},
                       flops=plans[n].flops, params=plans[n].params) for n in plans]
    out: dict[str, list[float]] = {n: [] for n in plans if n != "full"}
    for _ in range(repeats):
        report = measure(cands, backend="ort-cpu", threads=threads, warmup=5, runs=runs, mode="served", blocks=blocks)
        for m in report.models:
            if m["name"] != "full":
                out[m["name"]].append(round(m["ratio"] / (plans[m["name"]].flops / plans["full"].flops), 4))
    return out


def add_served_study_options(ap: argparse.ArgumentParser, name: str) -> None:
    """The options every side-by-side served study of the zoo takes (bench/rounding_rule.py,
    bench/multiples_at_budget.py); ``name`` names its work folder and results."""
    ap.add_argument("--budget", default="50%")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="model labels (or parts of them) to run")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / f"slimkit-{name.replace('_', '-')}"))
    ap.add_argument("--out", default=str(RESULTS / name))


def served_study_header(title: str, meta: dict[str, Any], args) -> list[str]:
    """A served study's title, machine, protocol and regenerate lines (markdown)."""
    return [f"# {title}", "",
            f"CPU: **{meta['cpu']}** ({meta['cores']} cores; SIMD flags: {' '.join(meta['simd_flags'])}), "
            f"onnxruntime {meta['onnxruntime']}, batch 1, {args.threads} threads, "
            f"{describe_mode('served', args.runs, 5, args.blocks)}, malloc {meta['malloc']}; each zoo model in its "
            f"own fresh process, {args.repeats} repeats. Load average at start {meta['load_average'][0]}.", "",
            f"Regenerate: `{meta['command']}`", ""]


def run_served_study(args, meta: dict[str, Any], bench_one: Callable[[str, Any], dict[str, Any]],
                     markdown: Callable[[dict[str, Any], list[dict[str, Any]], Any], str],
                     show: Callable[[dict[str, Any]], str]) -> None:
    """``bench_one(arch, args)`` for every zoo model (``--only``), each in a fresh spawned process (a served
    model runs alone in its process); the .json and .md at ``--out`` are rewritten after every model."""
    out = Path(args.out)
    rows = []
    for label, arch in MODELS.items():
        if args.only and not any(o.lower() in label.lower() for o in args.only):
            continue
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            row = child.submit(bench_one, arch, args).result()
        row["label"] = label
        rows.append(row)
        print(f"{label}: {show(row)}", flush=True)
        atomic_write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        atomic_write_text(out.with_suffix(".md"), markdown(meta, rows, args))
    print(f"wrote {out}.json, {out}.md")


# ---------------------------------------------------------------------------- the benchmark
def bench_model(label: str, arch: str, args, log) -> dict[str, Any]:
    work = Path(args.work)
    plans = make_plans(arch, work, args.round_to, args.gate_steps, args.gate_batch, log, tuple(args.methods),
                       tuple(args.budgets), learn=not args.no_learn)
    folder = work / "onnx" / re.sub(r"[^A-Za-z0-9]+", "_", f"{arch}_r{args.round_to}_s{args.gate_steps}b{args.gate_batch}")
    files = {name: files_for(name, plan, folder) for name, plan in plans.items()}
    shape = (1, *plans["full"].input_size)
    row: dict[str, Any] = {"model": label, "arch": plans["full"].arch, "input": list(shape), "plans": {},
                           "full_macs": plans["full"].flops}
    for k, name in enumerate(plans):
        p = plans[name]
        row["plans"][name] = {"macs": p.flops, "params": p.params, "mac_ratio": p.flops / plans["full"].flops,
                              "widths": p.widths, "gate_steps": p.search.get("steps"),
                              "gate_seconds": p.search.get("bench_seconds")}
    fp32_profiles: dict[str, Any] = {}
    for precision, index in (("fp32", 0), ("int8", 1)):
        cands = [Candidate(name=name, input_shape=shape, onnx_path=files[name][index], spec={"kind": "onnx"},
                           flops=plans[name].flops, params=plans[name].params) for name in plans]
        # each repeat opens fresh sessions (new thread pools, arenas): a run's CI holds for its sessions,
        # and on a shared VM two runs' ratios differed by more than that, so repeats give the spread too
        reports = [measure(cands, backend="ort-cpu", threads=args.threads, warmup=5, runs=args.runs,
                           mode=args.timing, blocks=args.blocks) for _ in range(args.repeats)]
        for j in range(len(cands)):  # per plan, its median repeat is reported (odd --repeats: a real run)
            mid = sorted(range(len(reports)), key=lambda r: reports[r].models[j]["ratio"])[len(reports) // 2]
            m = reports[mid].models[j]
            entry = row["plans"][m["name"]]
            mac = entry["mac_ratio"]
            entry["timed_with"] = list(plans)  # the files of one timing run: ratios are to its full model
            entry[precision] = {"median_ms": round(m["stats"]["median_ms"], 4), "ratio": round(m["ratio"], 4),
                                "full_median_ms": round(reports[mid].models[0]["stats"]["median_ms"], 4),
                                "ratio_ci": [round(x, 4) for x in m["ratio_ci"]],
                                "ratio_over_macs": round(m["ratio"] / mac, 4),
                                "repeat_ratios": [round(r.models[j]["ratio"], 4) for r in reports]}
        # where the time goes: every plan against its full model, same precision
        profs = profile({name: files[name][index] for name in plans}, shape, threads=args.threads,
                        runs=args.profile_runs, mode=args.timing)
        if precision == "fp32":
            fp32_profiles = profs
        for name in plans:
            if name == "full":
                continue
            entry = row["plans"][name][precision]
            entry["profile"] = compare_profiles(profs[name], profs["full"], fp32_profiles.get(name),
                                                fp32_profiles.get("full"))
            entry["profile_total_ratio"] = round(profs[name]["total_us"] / profs["full"]["total_us"], 4)
            entry["slowest_nodes"] = profs[name]["slowest"][:5]
        row["plans"]["full"][precision]["profile"] = {c: round(v["us"], 1) for c, v in
                                                      profs["full"]["categories"].items() if v["us"]}
        row["plans"]["full"][precision]["slowest_nodes"] = profs["full"]["slowest"][:5]
        log(f"  {precision}: " + ", ".join(f"{n} {row['plans'][n][precision]['ratio']:.2f}x "
                                            f"(/MACs {row['plans'][n][precision]['ratio_over_macs']:.2f})"
                                            for n in plans if n != "full"))
    return row


def bench_model_alone(label: str, arch: str, args) -> dict[str, Any]:
    """:func:`bench_model` in the process that runs it (main() starts a fresh one per model): a served model
    runs alone in its own process, and timings made after other models' sessions in one process can differ
    (EfficientNet-B0 measured 1.35 lat/MAC as the fifth model of one process, 1.07-1.12 alone)."""
    torch.set_num_threads(args.threads)
    return bench_model(label, arch, args, lambda m: print(m, flush=True))


def machine() -> dict[str, Any]:
    flags = ""
    model = cpu_description()
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Flags":
                flags = value.strip()
            elif key.strip() == "Model name":
                model = value.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    simd = [f for f in flags.split() if f.startswith(("avx", "amx", "fma", "f16c")) or "vnni" in f]
    return {"cpu": model, "cores": os.cpu_count(), "simd_flags": simd, "lscpu_flags": flags,
            "onnxruntime": ort.__version__, "torch": torch.__version__,
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "malloc": "tuned" if os.environ.get("MALLOC_MMAP_MAX_") == "0" else "default"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--round-to", type=lambda v: v if v == "auto" else int(v), default=DEFAULT_ROUND_TO,
                    help="channel multiple of every plan (default: slimkit prune's default)")
    ap.add_argument("--gate-steps", type=int, default=30, help="gate-learning steps of --method scratch")
    ap.add_argument("--gate-batch", type=int, default=32, help="gate-learning batch size of --method scratch")
    ap.add_argument("--runs", type=int, default=60, help="timed runs per model and precision")
    ap.add_argument("--timing", choices=TIMING_MODES, default="served",
                    help="served (default: onnxruntime's defaults, each model alone in alternated blocks, as the "
                         "issue's numbers are measured) or interleaved (every model once per round, no spinning)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="time each precision this many times, fresh sessions each; the median repeat is reported")
    ap.add_argument("--blocks", type=int, default=10,
                    help="served timing: alternated blocks per model (drift on a shared machine outlasts a block)")
    ap.add_argument("--profile-runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="model labels (or parts of them) to run")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                    help="which methods to plan (a row keeps the other method's plans from an earlier run)")
    ap.add_argument("--budgets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    ap.add_argument("--no-learn", action="store_true",
                    help="time only the default-method plans already learned (by a --plans-only run)")
    ap.add_argument("--plans-only", action="store_true",
                    help="only make (and cache) the plans: gate learning can run beside a timing pass")
    ap.add_argument("--same-process", action="store_true",
                    help="time every model in this process (default: a fresh process per model, as each is served)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "slimkit-latency-vs-macs"))
    ap.add_argument("--out", default=str(RESULTS / "latency_vs_macs"))
    ap.add_argument("--render", action="store_true", help="only rewrite the .md and .png from the .json")
    args = ap.parse_args()
    args.blocks = min(args.blocks, args.runs)  # a short run: one timed run per block at least
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.render:
        data = json.loads(out.with_suffix(".json").read_text())
        atomic_write_text(out.with_suffix(".md"), markdown(data["meta"], data["rows"]))
        plot(data["rows"], out.with_suffix(".png"))
        return
    start = machine()
    for label, arch in MODELS.items():
        if args.only and not any(o.lower() in label.lower() for o in args.only):
            continue
        print(f"== {label} ({arch})", flush=True)
        if args.plans_only:
            make_plans(arch, Path(args.work), args.round_to, args.gate_steps, args.gate_batch,
                       lambda m: print(m, flush=True), tuple(args.methods), tuple(args.budgets))
            continue
        if args.same_process:
            row = bench_model(label, arch, args, lambda m: print(m, flush=True))
        else:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
                row = child.submit(bench_model_alone, label, arch, args).result()
            row["own_process"] = True
        row.update(round_to=args.round_to, gate_steps=args.gate_steps, gate_batch=args.gate_batch, runs=args.runs,
                   threads=args.threads, timing=args.timing, blocks=args.blocks, repeats=args.repeats,
                   load_average=[round(x, 2) for x in os.getloadavg()])
        rows = earlier_rows(out, args)  # read again now: another run (other methods) may have written meanwhile
        if label in rows:  # a run of some methods keeps the other methods' plans from an earlier run
            kept = {k: v for k, v in rows[label]["plans"].items() if k not in row["plans"]}
            merged = {**kept, **row["plans"]}
            if kept:  # the earlier run's full model heads the row; each plan keeps its own run's
                merged["full"] = rows[label]["plans"]["full"]
            order = ["full"] + [f"{m} {b}" for m in METHODS for b in BUDGETS]
            row["plans"] = {k: merged[k] for k in sorted(merged, key=lambda k: order.index(k) if k in order else 99)}
        rows[label] = row
        write(out, start, [rows[k] for k in MODELS if k in rows], args)  # after every model: nothing is lost
    if not args.plans_only:
        print(f"wrote {out}.json, {out}.md, {out}.png")


# ---------------------------------------------------------------------------- results
def earlier_rows(out: Path, args) -> dict[str, dict[str, Any]]:
    """Rows already in the results file that were made with these settings (others are dropped)."""
    try:
        previous = json.loads(out.with_suffix(".json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {r["model"]: r for r in previous.get("rows", [])
            if r.get("round_to") == args.round_to and r.get("gate_steps") == args.gate_steps
            and r.get("gate_batch") == args.gate_batch and r.get("timing", "interleaved") == args.timing
            and (args.timing != "served" or r.get("blocks", 3) == args.blocks)}


def write(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]], args) -> None:
    meta = {**meta, "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "command": ("MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824 "
                        if meta.get("malloc") == "tuned" else "")
                       + f"python bench/latency_vs_macs.py --round-to {args.round_to} "
                       + f"--gate-steps {args.gate_steps} --gate-batch {args.gate_batch} --runs {args.runs} "
                       + f"--profile-runs {args.profile_runs} --timing {args.timing} --blocks {args.blocks} "
                       + f"--repeats {args.repeats} --methods {' '.join(args.methods)} --budgets {' '.join(args.budgets)}"
                       + (" --no-learn" if args.no_learn else "") + (f" --out {args.out}" if args.out != str(RESULTS / "latency_vs_macs") else "")}
    atomic_write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown(meta, rows))
    plot(rows, out.with_suffix(".png"))


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    timing = rows[0].get("timing", "interleaved") if rows else "interleaved"  # rows before the option: interleaved
    runs = rows[0].get("runs", 0) if rows else 0
    lines = ["# Latency vs MACs: the zoo pruned to 50% and 25% at 224 px", "",
             f"CPU: **{meta['cpu']}** ({meta['cores']} cores; SIMD flags: {' '.join(meta['simd_flags'])}), "
             f"onnxruntime {meta['onnxruntime']}, batch 1, {rows[0]['threads'] if rows else 2} threads, "
             f"`slimkit.latency.measure`, {describe_mode(timing, runs, 5, rows[0].get('blocks', 3) if rows else 3)}, "
             f"malloc {meta['malloc']}" + ("; each zoo model (its full model and plans) in its own fresh process" if rows and all(r.get('own_process') for r in rows) else "") + f". Load average at start {meta['load_average'][0]}, at end "
             f"{meta['load_average_end'][0]}: read the paired ratios (drift cancels), not the milliseconds.", "",
             f"Regenerate: `{meta['command']}`" + (f". {meta['note']}" if meta.get("note") else ""), "",
             "Plans: `uniform` (`slimkit prune`'s default for classifiers) and `scratch` (gates learned on random "
             "weights, then a threshold) "
             f"at 50% / 25% of the full model's MACs, round-to {rows[0]['round_to'] if rows else '?'}, 10-class head. "
             f"**`scratch` ran a short gate search of {rows[0]['gate_steps'] if rows else '?'} steps of batch "
             f"{rows[0]['gate_batch'] if rows else '?'}** ({GATE_VAL_IMAGES} held-out images pick the snapshot) "
             "(64 px Fashion-MNIST for CNNs, 224 px for the ViT, which is built for one size), not its CPU default "
             "of 300: its widths are the method's, not converged ones. int8 = `quantize_for_timing` "
             "(what `slimkit export --int8` ships: QDQ, per-channel), timed against the full int8 model.", "",
             "**lat/MAC** = (latency / full model's latency) ÷ (MACs / full model's MACs); above "
             f"{HIGH} (bold) the plan is slower than its MACs promise.", "",
             "Ratios are medians of per-round ratios with their 95% bootstrap interval; each plan's ratio is to "
             f"the full model timed in the same {timing} run (paired run by run).", "",
             "**kernel** = the same ratio from onnxruntime's profiler: the plan's summed kernel time over the full "
             "model's, each node at its fastest profiled run (profiled as timed: " + timing + "). It leaves out what "
             "preemption, thread wake-ups and the time between nodes add.", "",
             "| model | plan | MACs | MAC ratio | fp32 ms | fp32 ratio (95% CI) | fp32 lat/MAC | fp32 kernel/MAC | "
             "int8 ms | int8 ratio (95% CI) | int8 lat/MAC | int8 kernel/MAC |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def cell(v: float) -> str:
        return f"**{v:.2f}**" if v > HIGH else f"{v:.2f}"

    fp32_50 = []
    for r in rows:
        for name, p in r["plans"].items():
            if name == "full":
                lines.append(f"| {r['model']} | full | {p['macs'] / 1e6:.1f}M | 1 | {p['fp32']['median_ms']:.2f} | 1 | "
                             f"– | – | {p['int8']['median_ms']:.2f} | 1 | – | – |")
                continue
            f, q = p["fp32"], p["int8"]
            if name.endswith("50%"):
                fp32_50.append((f["ratio_over_macs"], f["profile_total_ratio"] / p["mac_ratio"]))
            ci = lambda e: f"{e['ratio']:.2f} ({e['ratio_ci'][0]:.2f}–{e['ratio_ci'][1]:.2f})"  # noqa: E731
            lines.append(f"| {r['model']} | {name} | {p['macs'] / 1e6:.1f}M | {p['mac_ratio']:.3f} | "
                         f"{f['median_ms']:.2f} | {ci(f)} | {cell(f['ratio_over_macs'])} | "
                         f"{cell(f['profile_total_ratio'] / p['mac_ratio'])} | "
                         f"{q['median_ms']:.2f} | {ci(q)} | {cell(q['ratio_over_macs'])} | "
                         f"{cell(q['profile_total_ratio'] / p['mac_ratio'])} |")
    if fp32_50:
        ok = sum(v <= HIGH for v, _ in fp32_50)
        ok_kernel = sum(k <= HIGH for _, k in fp32_50)
        lines += ["", f"fp32 plans at 50% with lat/MAC ≤ {HIGH}: **{ok} of {len(fp32_50)}** "
                      f"({100 * ok / len(fp32_50):.0f}%); by kernel time: **{ok_kernel} of {len(fp32_50)}** "
                      f"({100 * ok_kernel / len(fp32_50):.0f}%)."]
    repeats = rows[0].get("repeats", 1) if rows else 1
    if repeats > 1:
        per_repeat = [sum(p["fp32"]["repeat_ratios"][i] / p["mac_ratio"] <= HIGH for r in rows
                          for name, p in r["plans"].items() if name.endswith("50%")) for i in range(repeats)]
        lines += ["", f"Each precision was timed in {repeats} repeats, fresh onnxruntime sessions each; the table "
                      "shows each plan's median repeat (its 95% CI is that run's). fp32 lat/MAC in every repeat: "
                  + "; ".join(f"{r['model']} {name} " + ", ".join(f"{x / p['mac_ratio']:.2f}"
                                                                  for x in p["fp32"]["repeat_ratios"])
                              for r in rows for name, p in r["plans"].items() if name != "full")
                  + f". fp32 plans at 50% within {HIGH}, repeat by repeat: "
                  + ", ".join(f"{k} of {len(fp32_50)}" for k in per_repeat) + "."]
    lines += ["", "## Where the time goes (onnxruntime profiler)", "",
              "For every plan above {HIGH} in either precision: each node category's share of the plan's kernel "
              "time, and its time ratio beside its MAC ratio (both plan / full, profiled as timed). A category whose time ratio "
              "is far above its MAC ratio is where the plan loses. Layout reorder = `ReorderInput`/"
              "`ReorderOutput` (plain NCHW <-> blocked NCHWc, fp32) and `Transpose` (NCHW <-> NHWC around int8 "
              "kernels). Each node's fastest profiled run (preemption on the shared machine only adds time).".replace("{HIGH}", str(HIGH)), ""]
    for r in rows:
        for name, p in r["plans"].items():
            if name == "full":
                continue
            for precision in ("fp32", "int8"):
                e = p[precision]
                if e["ratio_over_macs"] <= HIGH:
                    continue
                parts = [f"{c['category']} {100 * (c['share_of_plan'] or 0):.0f}% (time ×{_fmt(c['time_ratio'])}"
                         f" vs MACs ×{_fmt(c['mac_ratio'])})" for c in e["profile"] if (c["share_of_plan"] or 0) >= 0.02]
                slow = ", ".join(f"{s['node']} ({s['op']}, {s['category']}) {s['us']:.0f} µs" for s in e["slowest_nodes"][:3])
                lines.append(f"* **{r['model']} {name} {precision}** (lat/MAC {e['ratio_over_macs']:.2f}; "
                             f"profiled total ×{e['profile_total_ratio']:.2f}): " + "; ".join(parts)
                             + f". Slowest nodes: {slow}.")
    lines += ["", "Full models' kernel time by category (µs per run, fp32 / int8):", ""]
    for r in rows:
        full = r["plans"]["full"]
        text = lambda prof: ", ".join(f"{k} {v:.0f}" for k, v in sorted(prof.items(), key=lambda kv: -kv[1]))  # noqa: E731
        lines.append(f"* {r['model']}: fp32 {text(full['fp32']['profile'])}; int8 {text(full['int8']['profile'])}")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    markers = "osD^v<>ph*"
    for ax, precision in zip(axes, ("fp32", "int8")):
        for i, r in enumerate(rows):
            for name, p in r["plans"].items():
                if name == "full":
                    continue
                uniform = name.startswith("uniform")
                ax.scatter(p["mac_ratio"], p[precision]["ratio"], marker=markers[i % len(markers)], s=40,
                           facecolors="none" if uniform else f"C{i}", edgecolors=f"C{i}",
                           label=r["model"] if name == next(k for k in r["plans"] if k != "full") else None)
        xs = np.linspace(0.15, 0.6, 10)
        ax.plot(xs, xs, "k-", lw=0.8, label="latency = MACs")
        ax.plot(xs, HIGH * xs, "k--", lw=0.8, label=f"{HIGH}x MACs")
        ax.set_xlabel("MAC ratio (plan / full)")
        ax.set_title(f"{precision}: hollow = uniform, filled = scratch", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("latency ratio (plan / full, same precision)")
    axes[1].legend(fontsize=7, loc="upper left")
    fig.suptitle("ORT CPU, 224 px, batch 1", fontsize=10)
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)


if __name__ == "__main__":
    main()
