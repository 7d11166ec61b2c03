"""Rethinking the Value of Network Pruning, reproduced on Fashion-MNIST: fine-tuned vs Scratch-E vs Scratch-B.

Liu et al. (ICLR 2019) find that a structurally pruned network trained from random init matches or
beats the same network fine-tuned from its trained parent's weights, given enough training. This
study repeats their comparison with slimkit's own stages and the structure study's machinery
(bench/compare_structures.py: its training protocol, paired seeds, 95% t-intervals, worker pool,
resumable runs, one result file per finished run):

* parent: the full ResNet-20 trained under the structure study's protocol (Fashion-MNIST at 24 px,
  12 epochs, SGD 0.1 + cosine, batch 128, weight decay 1e-4, seed 0); one parent serves every seed,
  as the paper fine-tunes one trained model (``--parent CKPT`` reuses a finished one: by default the
  structure study's full-model run, when its checkpoint is there);
* configurations at 50% FLOPs: **l1** = Li et al.'s L1-norm filter pruning of block-internal
  channels (uniform ratio, residual streams kept: ``slimkit prune --weights PARENT --criterion l1
  --search-space paper``), in the spirit of the paper's ResNet-56-A/B; **default** = slimkit's
  default plan (gates learned on random weights, threshold selection; the structure study's
  r20-50 threshold plan of the same seed), fine-tuned from the parent's largest-L1 channels;
* per configuration and seed s: **fine-tuned** (the parent's kept channels, a quarter of the
  parent's epochs at Rethinking's constant LR 0.001, training seed s), **Scratch-E** (the parent's
  epochs from random init, seed s) and **Scratch-B** (the parent's compute: epochs x full / pruned
  FLOPs, uncapped as on CIFAR); reported: the paired differences Scratch-E − fine-tuned and
  Scratch-B − fine-tuned with 95% t-intervals;
* the Pruning-from-Scratch comparison: **gates-trained** = gates learned on the trained parent
  (``--criterion gates``) vs the default plan's gates on random weights, both trained from scratch
  (Scratch-E) at equal FLOPs, paired by seed.

Where the structure study already trained a run of exactly this protocol (the default plan's
Scratch-E runs), its record is reused, marked ``reused_from``. Resumable and incremental like the
structure study: each finished training is written at once to ``<results>/runs/<name>.json`` (and
each plan to ``<results>/plans/`` before it trains), rerunning skips finished runs and resumes a
training from its last epoch checkpoint under ``--work``; ``--summarize`` only rebuilds the table.
A machine whose ``--work`` folder will not outlive the session runs ``--stash`` before it stops: each
unfinished training's last checkpoint goes to ``<results>/inprogress/<name>/`` (commit it), and the
next machine continues from there.

    python bench/rethinking.py --workers 2              # the study (about 8 h on 2 CPU cores; resumes anywhere:
                                                        # the trained parent is kept in <results>/parent/)
    python bench/rethinking.py --smoke --data synthetic # minutes: proves the machinery
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import compare_structures as study
from slimkit.files import atomic_write_text
from slimkit.generator import full_plan
from slimkit.plan import load_plan, save_plan
from slimkit.prune import GateOptions, prune
from slimkit.train import FINETUNE, FINETUNE_LR

HERE = Path(__file__).parent
CELL_NAME = "r20-50"  # the structure study's cell: ResNet-20 at 50% FLOPs
BUDGET = "50%"
FINETUNE_SHARE = 4  # fine-tuning runs a quarter of the parent's epochs (the paper: 40 of 160)

# configuration -> the trainings it gets; "default" also pairs its Scratch-E with gates-trained's
CONFIGS = {
    "l1": ("finetune", "scratch-e", "scratch-b"),
    "default": ("finetune", "scratch-e", "scratch-b"),
    "gates-trained": ("scratch-e",),
}
# paired differences the summary reports: (label, (config, schedule), (config, schedule))
COMPARISONS = [
    (f"{c}: Scratch-{s[-1].upper()} − fine-tuned", (c, s), (c, "finetune"))
    for c in ("l1", "default") for s in ("scratch-e", "scratch-b")
] + [("gates on trained − on random weights (Scratch-E)", ("gates-trained", "scratch-e"), ("default", "scratch-e"))]


@dataclass(frozen=True)
class Job:
    """One training: a plan, how it starts and how long it trains, where its record goes."""
    kind: str  # "parent" or "pruned"
    config: str
    schedule: str  # scratch-e | scratch-b | finetune
    seed: int
    plan: Path
    folder: Path
    out: Path
    parent: str | None = None  # the checkpoint fine-tuning inherits from


def cell(args) -> study.Cell:
    return study.cells_for(args.side)[CELL_NAME]


def train_config(job: Job, args):
    cfg = study.train_config(cell(args), job.seed, "scratch-e" if job.kind == "parent" else job.schedule, args)
    if job.schedule == FINETUNE:
        cfg = replace(cfg, schedule=FINETUNE, epochs=max(1, args.epochs // FINETUNE_SHARE), lr=args.finetune_lr,
                      warmup_epochs=0.0, init="inherit", init_from=job.parent)
    return cfg


# A machine's run folders do not outlive its session; an unfinished training's last epoch checkpoint
# is committed under <results>/inprogress/<name>/ (--stash) and picked up by the next machine.
INPROGRESS = "inprogress"
STASHED = ("checkpoint.pt", "metrics.json", "config.json", "plan.json")


def restore_stashed(job: Job) -> None:
    """Continue from a stashed checkpoint when this machine has none of its own."""
    stash = job.out.parent.parent / INPROGRESS / job.out.stem
    if (stash / "checkpoint.pt").is_file() and not (job.folder / "checkpoint.pt").exists():
        job.folder.mkdir(parents=True, exist_ok=True)
        for name in STASHED:
            if (stash / name).is_file():
                shutil.copyfile(stash / name, job.folder / name)
        print(f"[{job.out.stem}] continues from the stashed {stash / 'checkpoint.pt'}", flush=True)


def stash_unfinished(results: Path, work: Path) -> list[str]:
    """Copy every unfinished training's last checkpoint (and what resuming it checks) beside the results."""
    stashed = []
    for folder in sorted(p for p in work.iterdir() if p.is_dir()) if work.is_dir() else []:
        if (results / "runs" / f"{folder.name}.json").exists() or not (folder / "checkpoint.pt").is_file():
            continue
        target = results / INPROGRESS / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for name in STASHED:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, target / f".{name}.tmp")
                os.replace(target / f".{name}.tmp", target / name)
        stashed.append(folder.name)
    return stashed


def run_job(job: Job, args) -> float:
    """Train one job (here or in a worker) and write its record; return its test top-1."""
    name = job.out.stem
    print(f"[{name}] train ({job.schedule})", flush=True)
    restore_stashed(job)
    metrics = study.run_training(job.plan, job.folder, train_config(job, args))
    plan = load_plan(job.folder / "plan.json")  # what trained: a fine-tuned widths-only plan gains its kept channels
    hist = metrics["history"]
    record = {"format": "slimkit.rethinking/1", "kind": job.kind, "config": job.config, "schedule": job.schedule,
              "seed": job.seed, "smoke": args.smoke, "arch": cell(args).arch, "budget": BUDGET,
              "flops": plan.flops, "params": plan.params, "full_flops": plan.search.get("full_flops"),
              "widths": plan.widths, "criterion": plan.criterion, "parent": job.parent,
              "epochs": metrics["epochs"], "full_epochs": args.epochs, "lr": train_config(job, args).base_lr(),
              "test_top1": metrics["final"]["test_top1"], "best_top1": max(h["test_top1"] for h in hist),
              "epoch_wall_seconds": [h["seconds"] for h in hist],
              "train_cpu_seconds": metrics.get("session_cpu_seconds"),
              "train_wall_seconds": metrics.get("session_wall_seconds"),
              "input_side": args.side, "data": args.data, "max_steps_per_epoch": args.max_steps,
              "environment": study.environment(args)}
    job.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job.out, json.dumps(record, indent=1) + "\n")
    shutil.rmtree(job.out.parent.parent / INPROGRESS / name, ignore_errors=True)  # finished: the stash is spent
    print(f"[{name}] test top-1 {record['test_top1']:.4f} after {metrics['epochs']} epochs", flush=True)
    return record["test_top1"]


# ------------------------------------------------------------------------ the parent
def parent_checkpoint(args, results: Path, work: Path) -> str:
    """The trained parent's checkpoint: --parent, else the structure study's full-model run when it
    finished, else trained here (in this process, with every core: everything else waits for it)."""
    given = Path(args.parent) if args.parent else None
    if given is not None:
        if not given.is_file():
            raise SystemExit(f"--parent {given}: checkpoint not found; drop --parent to train the parent here")
        return str(given)
    reused = Path(args.structure_work) / f"full-resnet20-{args.side}px-s0" / "checkpoint.pt"
    metrics = reused.parent / "metrics.json"
    if not args.smoke and reused.is_file() and metrics.is_file():
        done = json.loads(metrics.read_text())
        record = reused_record(Path(args.structure_results) / "runs" / f"full-resnet20-{args.side}px-s0.json",
                               "parent", "parent", "scratch-e", 0, args)
        if done["final"]["epoch"] >= done["epochs"] == args.epochs and record is not None:
            print(f"parent: the structure study's full-model run {reused}", flush=True)
            if not (results / "runs" / "parent-s0.json").exists():
                atomic_write_text(results / "runs" / "parent-s0.json", json.dumps(record, indent=1) + "\n")
            return str(reused)
    plan_path = results / "plans" / "parent.json"
    if not plan_path.exists():
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        save_plan(full_plan(cell(args).arch, num_classes=10, input_size=(3, args.side, args.side)), plan_path)
    job = Job("parent", "parent", "scratch-e", 0, plan_path, work / "parent-s0", results / "runs" / "parent-s0.json")
    ckpt = job.folder / "checkpoint.pt"
    kept = results / "parent" / "checkpoint.pt"  # committed beside the results: every seed fine-tunes this one
    if job.out.exists() and ckpt.is_file():
        _keep_parent(ckpt, kept)
        return str(ckpt)
    if job.out.exists() and kept.is_file():  # another machine trained it
        return str(kept)
    if job.out.exists():
        raise SystemExit(f"{job.out} says the parent finished, but its checkpoint {ckpt} is not here (another "
                         "machine trained it): copy it there, pass --parent CKPT, or delete the record to retrain")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, args.threads * args.workers))  # alone: use every core
    try:
        run_job(job, args)
    finally:
        torch.set_num_threads(threads)
    _keep_parent(ckpt, kept)
    return str(ckpt)


def _keep_parent(ckpt: Path, kept: Path) -> None:
    """Copy the trained parent beside the results (2 MB), so the study resumes on any machine."""
    if not kept.is_file():
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ckpt, kept)


# ------------------------------------------------------------------------ plans and jobs
def plan_for(config: str, seed: int, parent: str, args, results: Path) -> Path:
    """The seed's plan of a configuration (made once, then read from <results>/plans)."""
    path = results / "plans" / (f"{config}.json" if config == "l1" else f"{config}-s{seed}.json")
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if config == "l1":  # deterministic given the parent: one plan for every seed
        plan = prune(cell(args).arch, BUDGET, method="uniform", round_to=1, criterion="l1",
                     gates=GateOptions(weights=parent, search_space="paper"))
    elif config == "default":
        reused = Path(args.structure_results) / "plans" / f"{CELL_NAME}-threshold-r1-s{seed}.json"
        if not args.smoke and reused.exists():  # the very plan the structure study trained at this seed
            shutil.copyfile(reused, path)
            return path
        plan = study.make_plan(cell(args), study.STRUCTURES["threshold"], seed, 1, args)
    else:  # gates-trained: the default gate learning, on the parent's weights
        plan = prune(cell(args).arch, BUDGET, round_to=1, seed=seed, criterion="gates",
                     input_size=(3, args.side, args.side), log=lambda m: print(f"    {m}"),
                     gates=GateOptions(data=args.data, steps=args.gate_steps, device=args.device, weights=parent))
    save_plan(plan, path)
    return path


def reused_record(src: Path, kind: str, config: str, schedule: str, seed: int, args) -> dict | None:
    """A structure-study run of exactly this protocol as this study's record (marked ``reused_from``),
    or None when it is missing or trained otherwise."""
    if args.smoke or not src.exists():
        return None
    run = json.loads(src.read_text())
    if (run["epochs"], run["input_side"], run["smoke"], run["max_steps_per_epoch"], run["data"]) != \
            (args.epochs, args.side, False, None, args.data):
        return None
    return {"format": "slimkit.rethinking/1", "kind": kind, "config": config, "schedule": schedule,
            "seed": seed, "smoke": False, "arch": run["arch"], "budget": BUDGET, "flops": run["flops"],
            "params": run["params"], "full_flops": run["full_flops"], "widths": run["widths"], "criterion": None,
            "parent": None, "epochs": run["epochs"], "full_epochs": args.epochs, "lr": 0.1,
            "test_top1": run["test_top1"], "best_top1": run["best_top1"],
            "epoch_wall_seconds": run["epoch_wall_seconds"], "train_cpu_seconds": run["train_cpu_seconds"],
            "train_wall_seconds": run["train_wall_seconds"], "input_side": run["input_side"], "data": run["data"],
            "max_steps_per_epoch": None, "environment": run["environment"],
            "reused_from": str(src.relative_to(HERE.parent) if src.is_relative_to(HERE.parent) else src)}


def reuse_structure_run(config: str, schedule: str, seed: int, args, out: Path) -> bool:
    """The default plan's Scratch-E at this seed is the structure study's threshold run: same plan,
    seed, schedule and protocol. Copy its record instead of training it again."""
    if config != "default" or schedule != "scratch-e":
        return False
    record = reused_record(Path(args.structure_results) / "runs" / f"{CELL_NAME}-threshold-s{seed}.json",
                           "pruned", config, schedule, seed, args)
    if record is None:
        return False
    atomic_write_text(out, json.dumps(record, indent=1) + "\n")
    print(f"[{out.stem}] reused {record['reused_from']}", flush=True)
    return True


def study_jobs(parent: str, args, results: Path, work: Path) -> Iterator[Job]:
    """Every pruned training, seed by seed; a plan is made only when its trainings are asked for."""
    for seed in args.seeds:
        for config, schedules in CONFIGS.items():
            if args.configs and config not in args.configs:
                continue
            todo = []
            for schedule in schedules:
                if args.schedules and schedule not in args.schedules:
                    continue
                out = results / "runs" / f"{config}-{schedule}-s{seed}.json"
                if not out.exists() and not reuse_structure_run(config, schedule, seed, args, out):
                    todo.append((schedule, out))
            if not todo:
                continue
            print(f"[{config}-s{seed}] plan", flush=True)
            plan = plan_for(config, seed, parent, args, results)
            for schedule, out in todo:
                yield Job("pruned", config, schedule, seed, plan, work / out.stem, out,
                          parent if schedule == FINETUNE else None)


# ------------------------------------------------------------------------ summary
def verdict(mean: float, half: float) -> str:
    """The structure study's rule: an interval off zero decides; one across zero is a tie once it is
    no wider than the bar, and undecided (more seeds) before that."""
    if mean - half > 0:
        return "better"
    if mean + half < 0:
        return "worse"
    return "tied" if half <= study.HALF_WIDTH_BAR else "undecided"


def summarize(results: Path, out: Path) -> dict:
    runs = [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]
    by = {(r["config"], r["schedule"]): {} for r in runs}
    for r in runs:
        by[(r["config"], r["schedule"])][r["seed"]] = r
    lines = ["# Rethinking the Value of Network Pruning on Fashion-MNIST: fine-tuned vs Scratch-E vs Scratch-B", ""]
    if any(r.get("smoke") for r in runs):
        lines += ["**SMOKE RUN** (a few steps per epoch): the numbers below prove the machinery, not a result.", ""]
    parents = by.get(("parent", "scratch-e"), {})
    summary: dict = {"parent": None, "rows": {}, "paired": {}}
    if parents:
        p = parents[0]
        summary["parent"] = p["test_top1"]
        lines.append(f"Parent: full ResNet-20 at {p['input_side']} px, {p['epochs']} epochs, test top-1 "
                     f"{100 * p['test_top1']:.2f}%, {p['flops'] / 1e6:.2f}M MACs.")
    lines += ["", "| configuration | training | seeds | epochs | top-1 mean | MACs | params |", "|---|---|---|---|---|---|---|"]
    for config, schedules in CONFIGS.items():
        for schedule in schedules:
            got = by.get((config, schedule), {})
            if not got:
                continue
            accs = [r["test_top1"] for r in got.values()]
            row = {"seeds": sorted(got), "mean": statistics.mean(accs),
                   "epochs": sorted({r["epochs"] for r in got.values()}),
                   "flops": statistics.mean(r["flops"] for r in got.values()),
                   "params": statistics.mean(r["params"] for r in got.values()),
                   "reused": sum("reused_from" in r for r in got.values())}
            summary["rows"][f"{config}/{schedule}"] = row
            lines.append(f"| {config} | {schedule} | {len(got)} | {'/'.join(map(str, row['epochs']))} | "
                         f"{100 * row['mean']:.2f} | {row['flops'] / 1e6:.2f}M | {row['params'] / 1e3:.0f}K |")
    lines += ["", "Paired differences (same seed; mean and 95% t-interval, points):", "",
              "| comparison | n | difference | reads |", "|---|---|---|---|"]
    for label, a, b in COMPARISONS:
        left, right = by.get(a, {}), by.get(b, {})
        pairs = [left[s]["test_top1"] - right[s]["test_top1"] for s in sorted(left) if s in right]
        if not pairs:
            continue
        mean = statistics.mean(pairs)
        half = study.half_width(statistics.stdev(pairs) if len(pairs) > 1 else 0.0, len(pairs))
        read = verdict(mean, half)
        summary["paired"][label] = {"n": len(pairs), "mean": mean, "half_width": half, "reads": read,
                                    "seeds_needed": study.seeds_needed(pairs)}
        extra = "" if read != "undecided" or not (k := study.seeds_needed(pairs)) else f" (~{k} seeds at this spread)"
        lines.append(f"| {label} | {len(pairs)} | {100 * mean:+.2f} [{100 * (mean - half):+.2f}, "
                     f"{100 * (mean + half):+.2f}] | {read}{extra} |")
    lines += ["", "Reads: better / worse = the 95% interval excludes zero; tied = it contains zero and its half-width "
              f"is at most {100 * study.HALF_WIDTH_BAR:.1f} points; undecided = wider (add seeds). The paper's claim "
              "reproduces where Scratch-B − fine-tuned reads better or tied.",
              "", "Fine-tuning: the parent's kept channels (l1: the plan's L1-chosen channels; default: the largest-L1 "
              "channels at the default plan's widths), a quarter of the parent's epochs at a constant LR of "
              f"{FINETUNE_LR:g}. Scratch-E: the parent's epochs; Scratch-B: its compute. One parent (seed 0) serves "
              "every seed: the intervals are conditional on it."]
    spent = sum(sum(r["epoch_wall_seconds"]) for r in runs if "reused_from" not in r)
    if runs:
        lines += ["", f"Training time of the {len(runs)} finished runs (reused ones excluded), summed: {spent / 3600:.2f} h."]
    atomic_write_text(out.with_suffix(".json"), json.dumps(summary, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=study.DEFAULT_SEEDS)
    ap.add_argument("--configs", nargs="+", choices=tuple(CONFIGS), default=None,
                    help="train only these configurations (e.g. extra seeds for an undecided comparison)")
    ap.add_argument("--schedules", nargs="+", choices=sorted({s for v in CONFIGS.values() for s in v}), default=None,
                    help="train only these schedules: extra seeds for one comparison (e.g. --configs default "
                         "--schedules finetune scratch-e for Scratch-E - fine-tuned) need not pay for the others")
    ap.add_argument("--epochs", type=int, default=12, help="the parent's epochs (Scratch-E; Scratch-B stretches "
                    "them; fine-tuning takes a quarter), as in the structure study")
    ap.add_argument("--side", type=int, default=24, help="input side (Fashion-MNIST resized), as in the structure study")
    ap.add_argument("--finetune-lr", type=float, default=FINETUNE_LR, help="fine-tuning's constant LR (the paper's 0.001)")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--gate-steps", type=int, default=None, help="gate-learning steps (default: slimkit's)")
    ap.add_argument("--paper-gate-steps", type=int, default=3500, help=argparse.SUPPRESS)  # study.make_plan reads it
    ap.add_argument("--max-steps", type=int, default=None, help="cap steps per epoch (smoke runs only)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per training (default: 1 with --workers > 1, else 2)")
    ap.add_argument("--workers", type=int, default=1, help="trainings run at once, each in its own process "
                    "(2 on 2 cores; bench/study_throughput.py)")
    ap.add_argument("--device", default="auto", help="auto: CUDA when present, else CPU")
    ap.add_argument("--parent", default=None, help="checkpoint of a trained full ResNet-20 (this protocol) to prune "
                    "and fine-tune; default: the structure study's full-model run if finished, else trained here")
    ap.add_argument("--structure-results", default=None,
                    help="the structure study's results of this protocol (plans and runs reused from there)")
    ap.add_argument("--structure-work", default=None, help="the structure study's --work folder of this protocol")
    ap.add_argument("--smoke", action="store_true", help="tiny settings end to end (8 steps/epoch, 4 epochs, "
                                                         "20 gate steps, 2 seeds; with --data synthetic, minutes)")
    ap.add_argument("--summarize", action="store_true", help="only rebuild the table from finished runs")
    ap.add_argument("--stash", action="store_true", help="copy unfinished trainings' last checkpoints beside the "
                    "results (commit them; the next machine continues from them), then stop")
    ap.add_argument("--work", default="runs/rethinking")
    ap.add_argument("--results", default=str(HERE / "results" / "rethinking"))
    args = ap.parse_args()
    if args.smoke:
        args.max_steps, args.epochs = args.max_steps or 8, 4
        args.gate_steps = args.gate_steps or 20
        if args.seeds == ap.get_default("seeds"):
            args.seeds = [0, 1]
        if args.results == ap.get_default("results"):
            args.results = str(Path(args.work) / "smoke_results")
    if args.threads is None:
        args.threads = 1 if args.workers > 1 else 2
    torch.set_num_threads(args.threads)
    protocol = f"e{args.epochs}-r20at{args.side}px"
    structure_protocol = f"scratch-e-e{args.epochs}-r20at{args.side}px"
    args.structure_results = args.structure_results or str(HERE / "results" / "compare_structures" / structure_protocol)
    args.structure_work = args.structure_work or str(Path("runs/compare_structures") / structure_protocol)
    if args.results == ap.get_default("results"):
        args.results = str(Path(args.results) / protocol)
    if args.work == ap.get_default("work"):
        args.work = str(Path(args.work) / protocol)
    results, work = Path(args.results), Path(args.work)
    (results / "runs").mkdir(parents=True, exist_ok=True)
    if args.stash:
        print(f"stashed: {', '.join(stash_unfinished(results, work)) or 'nothing unfinished'}")
        return 0
    failed = 0
    if not args.summarize:
        parent = parent_checkpoint(args, results, work)
        failed = study.run_study(study_jobs(parent, args, results, work), args, run=run_job)
    summarize(results, results / "summary")
    if failed:
        print(f"{failed} training(s) failed (see above); rerun to retry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
