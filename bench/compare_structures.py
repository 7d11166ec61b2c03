"""Can a searched structure beat uniform width? A paired, near-converged comparison (issue 14).

bench/reproduce.py trained for 100-200 steps: run-to-run swings (0.7-1.4 points) were larger than
the gaps it tried to measure. This study controls what it can:

* paired seeds: at seed s every structure of a cell is planned with gate seed s and trained with
  training seed s (same init stream, same data order and augmentation), so the per-seed
  difference to uniform cancels most of the seed noise; reported is the mean paired difference
  with its 95% t-interval over seeds (half-width <= 0.3 points is the bar; add seeds until then);
* near-converged training: Scratch-B (same compute as the full model: epochs x full/plan FLOPs,
  uncapped on Fashion-MNIST as Rethinking does on CIFAR), SGD + cosine; the full ResNet-20 under
  the same schedule is trained too and must reach >= 92% (the protocol check);
* fixed threads (``--threads``), CUDA automatically when present;
* ORT CPU latency (batch 1) of every structure at ``round_to`` 1 (the trained plans) and 8 (the
  same gates, rounded for real kernels), measured interleaved per cell and seed;
* stage-wise MAC shares of every plan beside uniform's.

Cells (``--cells``): r20-50 (ResNet-20, 50% FLOPs: uniform, threshold, cost-aware), r20-25 (25%:
uniform, threshold, paper, cost-aware), mnv1-25 (MobileNet-V1 at 32 px, 25%: uniform,
threshold, cost-aware); ``--structures`` trains a subset (plus uniform) for extra seeds. Here
threshold = ``--method scratch --selection threshold`` (the paper's Algorithm 1 on slimkit's
default gate learning), cost-aware = ``--selection cost-aware`` on the same gates, paper =
``--search-space paper --expand 1.25``.

Resumable and incremental: each finished training is written at once to
``<results>/runs/<cell>-<structure>-s<seed>.json``, and each plan to ``<results>/plans/`` before it
trains (committed too: a fresh clone trains exactly the plans of the runs it pairs with); rerunning
skips finished runs and resumes a training from its last epoch checkpoint under ``--work``.
``--summarize`` only rebuilds the table.

    python bench/compare_structures.py                      # the full study (hours)
    python bench/compare_structures.py --smoke              # seconds per run: proves the machinery
    python bench/compare_structures.py --plans-only         # MAC shares + latency, no training
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import multiprocessing
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from slimkit.artifacts import load_candidate
from slimkit.errors import BudgetError
from slimkit.files import atomic_write_text
from slimkit.generator import channel_graph, full_plan
from slimkit.latency import measure
from slimkit.plan import ChannelPlan, load_plan, save_plan
from slimkit.prune import GateOptions, prune
from slimkit.train import TrainConfig, train

HERE = Path(__file__).parent

# t quantiles (two-sided 95%) by degrees of freedom; beyond 30 the normal value is close enough
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
        18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042}


def t95(df: int) -> float:
    if df in _T95:
        return _T95[df]
    below = [k for k in _T95 if k <= df]
    return _T95[max(below)] if df <= 30 else 1.96


def half_width(sd: float, n: int) -> float:
    """95% t-interval half-width of a mean of n paired differences with standard deviation sd."""
    return t95(n - 1) * sd / math.sqrt(n) if n > 1 else math.inf


HALF_WIDTH_BAR = 0.003  # issue 14: a paired difference is read once its 95% half-width is <= 0.3 points
DEFAULT_SEEDS = [0, 1, 2, 3, 4]  # issue 14: >= 5 paired seeds per cell; cells extend past it one by one


def seeds_needed(pairs: list[float], bar: float = HALF_WIDTH_BAR) -> int | None:
    """Paired seeds at which the 95% half-width would meet the bar if the spread seen so far holds
    (None below 2 pairs: no spread yet). A guide for how many seeds to add, not a promise."""
    if len(pairs) < 2:
        return None
    sd, n = statistics.stdev(pairs), len(pairs)
    while half_width(sd, n) > bar:
        n += 1
    return n


@dataclass(frozen=True)
class Structure:
    name: str
    method: str = "scratch"
    selection: str = "threshold"
    search_space: str = "full"
    expand: float = 1.0


STRUCTURES = {
    "uniform": Structure("uniform", method="uniform"),
    "threshold": Structure("threshold"),  # the paper's Algorithm 1 selection, full search space
    "paper": Structure("paper", search_space="paper", expand=1.25),
    "cost-aware": Structure("cost-aware", selection="cost-aware"),
}


@dataclass(frozen=True)
class Cell:
    name: str
    arch: str
    budget: str
    structures: tuple[str, ...]
    side: int  # input side (Fashion-MNIST is resized to it)
    weight_decay: float


def cells_for(r20_side: int) -> dict[str, Cell]:
    return {
        "r20-50": Cell("r20-50", "resnet20", "50%", ("uniform", "threshold", "cost-aware"), r20_side, 1e-4),
        "r20-25": Cell("r20-25", "resnet20", "25%", ("uniform", "threshold", "paper", "cost-aware"), r20_side, 1e-4),
        # cost-aware joined this cell after seed 1 (a contender for the default must be measured on both
        # models); its seeds 0-1 were planned and trained afterwards, and the cell's latency timed again
        "mnv1-25": Cell("mnv1-25", "mobilenet_v1", "25%", ("uniform", "threshold", "cost-aware"), 32, 4e-5),
    }


# ------------------------------------------------------------------------ gate cache
_GATES: dict[str, object] = {}


def _cache_gate_learning() -> None:
    """Gate learning is deterministic for a given seed and configuration, so the round_to=8 plan
    (latency only) reuses the gates learned for the round_to=1 plan instead of learning them
    again: prune() looks ``search_gates`` up in its own module at call time."""
    prune_module = importlib.import_module("slimkit.prune")  # the module: slimkit.prune is also the function
    original = prune_module.search_gates
    if getattr(original, "_cached", False):
        return

    def cached(supernet, data, cfg, progress=None):
        key = json.dumps([sorted(supernet.widths.items()), sorted(supernet.fixed), asdict(cfg),
                          getattr(data, "description", "")], default=str)
        if key not in _GATES:
            _GATES[key] = original(supernet, data, cfg, progress=progress)
        return _GATES[key]

    cached._cached = True  # type: ignore[attr-defined]
    prune_module.search_gates = cached


# ------------------------------------------------------------------------ MAC shares
def stage_of(fqn: str) -> str:
    """A coarse stage name from a parameter name: layer2.0.conv1.weight -> layer2,
    blocks.3.1.conv_pw.weight -> blocks.3, conv1.weight -> conv1."""
    parts = fqn.split(".")
    if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit():
        return f"blocks.{parts[1]}"
    return parts[0]


def stage_macs(plan: ChannelPlan) -> dict[str, int]:
    graph = channel_graph(plan.arch, plan.arch_kwargs, tuple(plan.input_size))
    widths = {n: g["width"] for n, g in plan.groups.items()}
    shapes = graph.shapes(widths)
    out: dict[str, int] = {}
    for fqn, positions in graph.mac_terms:
        out[stage_of(fqn)] = out.get(stage_of(fqn), 0) + positions * math.prod(shapes.get(fqn, graph.tensor_shapes[fqn]))
    return out


def shares(plan: ChannelPlan) -> dict[str, float]:
    macs = stage_macs(plan)
    total = sum(macs.values())
    return {k: v / total for k, v in macs.items()}


def share_table(plans: dict[str, ChannelPlan], title: str) -> list[str]:
    """Markdown: stage-wise MAC shares (and each stage's MACs kept vs the full model) per plan."""
    stages = list(stage_macs(next(iter(plans.values()))))
    lines = [f"**{title}**: share of the plan's MACs per stage (and MACs kept vs the full model's stage)", "",
             "| plan | " + " | ".join(stages) + " | MACs | params |", "|---" * (len(stages) + 3) + "|"]
    for name, plan in plans.items():
        macs = stage_macs(plan)
        full = stage_macs(plan.unpruned())
        total = sum(macs.values())
        cells = [f"{100 * macs[s] / total:.0f}% ({100 * macs[s] / full[s]:.0f}%)" for s in stages]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {plan.flops / 1e6:.2f}M | {plan.params / 1e3:.0f}K |")
    return lines


# ------------------------------------------------------------------------ one run
def make_plan(cell: Cell, structure: Structure, seed: int, round_to: int, args) -> ChannelPlan:
    if round_to == 1:
        return _make_plan(cell, structure, seed, 1, 0.01, args)
    # Rounded to 8, ResNet-20's 16/32/64-wide groups move MACs in coarse steps: this plan is timed,
    # not trained, so it may land further from the budget (its MACs are recorded beside its latency).
    for tolerance in (0.05, 0.1, 0.25, 0.5, 0.99):  # prune() takes tolerances in (0, 1)
        try:
            return _make_plan(cell, structure, seed, round_to, tolerance, args)
        except BudgetError as exc:
            last = exc
    raise BudgetError(f"no plan at round_to {round_to} ({last})")


def _make_plan(cell: Cell, structure: Structure, seed: int, round_to: int, tolerance: float, args) -> ChannelPlan:
    kwargs = dict(method=structure.method, round_to=round_to, seed=seed, input_size=(3, cell.side, cell.side),
                  expand=structure.expand, tolerance=tolerance)
    if structure.method == "uniform":
        return prune(cell.arch, cell.budget, num_classes=10, **kwargs)
    steps = args.gate_steps
    if structure.search_space == "paper" and steps is None:
        steps = args.paper_gate_steps  # the official code's count, not 10 epochs of this data set's size
    gates = GateOptions(data=args.data, selection=structure.selection, search_space=structure.search_space,
                        steps=steps, device=args.device)
    return prune(cell.arch, cell.budget, gates=gates, log=lambda m: print(f"    {m}"), **kwargs)


def planned(path: Path, make) -> ChannelPlan:
    if not path.exists():
        save_plan(make(), path)
    return load_plan(path)


def train_config(cell: Cell, seed: int, schedule: str, args) -> TrainConfig:
    return TrainConfig(data=args.data, epochs=args.epochs, schedule=schedule, batch_size=128, lr=0.1,
                       weight_decay=cell.weight_decay, seed=seed, device=args.device, workers=0,
                       warmup_epochs=min(1.0, args.epochs / 10), max_steps_per_epoch=args.max_steps)


def run_training(source, folder: Path, cfg: TrainConfig) -> dict:
    """Train (resuming from the last epoch checkpoint if one exists); return the metrics file."""
    metrics = folder / "metrics.json"
    if metrics.exists():
        done = json.loads(metrics.read_text())
        if done["final"]["epoch"] >= done["epochs"]:
            return done
    cpu0, wall0 = time.process_time(), time.perf_counter()
    train(source, folder, cfg, resume=(folder / "checkpoint.pt").exists(),
          log=lambda m: print(f"    [{folder.name}] {m}", flush=True))  # workers share one log
    done = json.loads(metrics.read_text())
    done["session_cpu_seconds"] = round(time.process_time() - cpu0, 1)
    done["session_wall_seconds"] = round(time.perf_counter() - wall0, 1)
    return done


def environment(args) -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "machine": platform.node(), "python": platform.python_version(),
            "malloc": "tuned" if os.environ.get("MALLOC_MMAP_MAX_") == "0" else "default",
            "load_average": os.getloadavg()[0], "workers": args.workers}


def result_record(kind: str, cell: Cell, structure: str, seed: int, plan: ChannelPlan, metrics: dict,
                  args, latency: dict | None) -> dict:
    hist = metrics["history"]
    return {"format": "slimkit.compare/1", "kind": kind, "cell": cell.name, "arch": cell.arch,
            "budget": cell.budget, "structure": structure, "seed": seed, "smoke": args.smoke,
            "flops": plan.flops, "params": plan.params, "full_flops": plan.search.get("full_flops"),
            "widths": {n: g["width"] for n, g in plan.groups.items()},
            "stage_shares": {k: round(v, 4) for k, v in shares(plan).items()},
            "selection": plan.search.get("selection"), "search": {k: v for k, v in plan.search.items() if k != "history"},
            "epochs": metrics["epochs"], "full_epochs": args.epochs, "schedule": args.schedule if kind != "full" else "scratch-e",
            "test_top1": metrics["final"]["test_top1"],
            "best_top1": max(h["test_top1"] for h in hist),
            "epoch_wall_seconds": [h["seconds"] for h in hist],
            "train_cpu_seconds": metrics.get("session_cpu_seconds"),
            "train_wall_seconds": metrics.get("session_wall_seconds"),
            "latency": latency, "input_side": cell.side, "data": args.data,
            "max_steps_per_epoch": args.max_steps, "environment": environment(args)}


@contextlib.contextmanager
def trainings_paused() -> Iterator[int]:
    """Stop this process's worker processes (SIGSTOP) while it times plans: latency measured beside
    two running trainings on two cores is mostly the scheduler's. Their epochs' wall time grows by
    the pause (seconds); nothing else changes."""
    pids = [p.pid for p in multiprocessing.active_children()] if hasattr(signal, "SIGSTOP") else []
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield len(pids)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def measure_latency(plans: dict[str, Path], args) -> dict[str, dict]:
    """ORT CPU, batch 1, interleaved: {name: {median_ms, p90_ms, ratio_to_first}}."""
    with tempfile.TemporaryDirectory() as tmp:
        cands = [load_candidate(str(p), Path(tmp), batch=1, name=name) for name, p in plans.items()]
        report = measure(cands, backend="ort-cpu", threads=args.latency_threads, runs=args.latency_runs, warmup=10)
    return {m["name"]: {"median_ms": round(m["stats"]["median_ms"], 4), "p90_ms": round(m["stats"]["p90_ms"], 4),
                        "ratio_to_first": round(m["ratio"], 4)} for m in report.models}


@dataclass(frozen=True)
class TrainJob:
    """One training of the study: what a worker process needs to run it and write its record."""
    kind: str  # "structure" or "full"
    cell: str
    structure: str
    seed: int
    plan: Path  # the round_to=1 plan it trains
    folder: Path  # checkpoints and metrics (resumable)
    out: Path  # the result record, written when the training finishes
    latency: dict | None = None  # {"round_to_1": ..., "round_to_8": ..., "round_to_8_flops": ...}


def prepare_cell_seed(cell: Cell, seed: int, args, results: Path, work: Path) -> list[TrainJob]:
    """Plan every structure of a cell at one seed (round_to 1 and 8), time them, and return the
    trainings still to run."""
    tag = f"{cell.name}-s{seed}"
    lat_path = results / "latency" / f"{tag}.json"  # deleted: timed again (the summary reads it, not the runs)
    if lat_path.exists() and all((results / "runs" / f"{cell.name}-{n}-s{seed}.json").exists()
                                 for n in cell.structures):
        return []
    plans: dict[str, ChannelPlan] = {}
    paths: dict[str, Path] = {}
    for name in cell.structures:
        for round_to in (1, 8):
            path = results / "plans" / f"{cell.name}-{name}-r{round_to}-s{seed}.json"
            # e.g. the paper's space at 25%: its residual streams stay 1.25x wide, and with every block's
            # inner width at 8 (the least a multiple of 8 allows) ResNet-20 still costs ~40% of its MACs
            no_plan = path.with_suffix(".none.txt")
            if no_plan.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            print(f"[{tag}] plan {name} round_to={round_to}", flush=True)
            try:
                plans[f"{name}/r{round_to}"] = planned(
                    path, lambda: make_plan(cell, STRUCTURES[name], seed, round_to, args))
            except BudgetError as exc:
                if round_to == 1:
                    raise
                atomic_write_text(no_plan, f"{exc}\n")
                print(f"[{tag}] {name}: {exc}", flush=True)
                continue
            paths[f"{name}/r{round_to}"] = path
    timed = json.loads(lat_path.read_text())["models"] if lat_path.exists() else {}
    if not lat_path.exists() or any(key not in timed for key in paths):  # a structure added to the cell
        print(f"[{tag}] ORT latency of {len(paths)} plans", flush=True)
        lat_path.parent.mkdir(parents=True, exist_ok=True)
        with trainings_paused() as paused:
            record = {"cell": cell.name, "seed": seed, "threads": args.latency_threads, "runs": args.latency_runs,
                      "models": measure_latency(paths, args), "trainings_paused": paused,
                      "environment": environment(args)}
        atomic_write_text(lat_path, json.dumps(record, indent=1) + "\n")
    latency = json.loads(lat_path.read_text())["models"]
    jobs = []
    for name in cell.structures:
        out = results / "runs" / f"{cell.name}-{name}-s{seed}.json"
        if out.exists():
            continue
        lat = {f"round_to_{r}": latency.get(f"{name}/r{r}") for r in (1, 8)}  # None: no plan at 8
        lat["round_to_8_flops"] = plans[f"{name}/r8"].flops if f"{name}/r8" in plans else None
        jobs.append(TrainJob("structure", cell.name, name, seed, paths[f"{name}/r1"],
                             work / f"{cell.name}-{name}-s{seed}", out, lat))
    return jobs


def full_job(cell: Cell, seed: int, results: Path, work: Path) -> TrainJob | None:
    """The unpruned model under the same schedule (Scratch-E): the >= 92% protocol check."""
    tag = f"full-{cell.arch}-{cell.side}px"
    out = results / "runs" / f"{tag}-s{seed}.json"
    if out.exists():
        return None
    path = work / "plans" / f"{tag}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_plan(full_plan(cell.arch, num_classes=10, input_size=(3, cell.side, cell.side)), path)
    return TrainJob("full", cell.name, "full", seed, path, work / f"{tag}-s{seed}", out)


def run_job(job: TrainJob, args) -> float:
    """Train one job (in this process or a worker) and write its record; return its test top-1."""
    cell = cells_for(args.side)[job.cell]
    name = f"{job.cell}-{job.structure}-s{job.seed}" if job.kind == "structure" else job.folder.name
    print(f"[{name}] train ({args.schedule if job.kind == 'structure' else 'scratch-e'})", flush=True)
    schedule = args.schedule if job.kind == "structure" else "scratch-e"
    metrics = run_training(job.plan, job.folder, train_config(cell, job.seed, schedule, args))
    record = result_record(job.kind, cell, job.structure, job.seed, load_plan(job.plan), metrics, args, job.latency)
    job.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job.out, json.dumps(record, indent=1) + "\n")
    top1 = metrics["final"]["test_top1"]
    print(f"[{name}] test top-1 {top1:.4f} after {metrics['epochs']} epochs", flush=True)
    return top1


def study_jobs(cells: dict[str, Cell], args, results: Path, work: Path) -> Iterator[TrainJob]:
    """Every training of the study, seed by seed; a cell is planned only when its jobs are asked for."""
    for seed in args.seeds:
        fulls_done: set[tuple[str, int]] = set()
        for cell in cells.values():
            if args.structures:  # e.g. extra seeds for the one comparison still undecided
                cell = replace(cell, structures=tuple(s for s in cell.structures
                                                      if s == "uniform" or s in args.structures))
            check = not args.no_full and seed in args.seeds[:args.full_seeds]
            if check and (cell.arch, cell.side) not in fulls_done:  # once per model and size
                fulls_done.add((cell.arch, cell.side))
                if (job := full_job(cell, seed, results, work)) is not None:
                    yield job
            yield from prepare_cell_seed(cell, seed, args, results, work)


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def run_study(jobs: Iterator, args, run=None) -> int:
    """Run the jobs (``run(job, args)``, default :func:`run_job`; bench/rethinking.py passes its own);
    with ``--workers N`` in N processes, planning the next cell in this process once at most 2N
    trainings are running or queued: the queue covers the paper space's long gate learning
    (~10 min), and planning never runs a whole seed ahead of training. Returns the number of failed
    trainings."""
    run = run or run_job
    if args.workers <= 1:
        for job in jobs:
            run(job, args)
        return 0
    failed = 0
    pending_jobs: dict = {}

    def collect(done) -> None:
        nonlocal failed
        for future in done:
            if (exc := future.exception()) is not None:
                failed += 1
                print(f"[{pending_jobs[future].out.stem}] FAILED:", flush=True)
                traceback.print_exception(exc, file=sys.stdout)

    ctx = multiprocessing.get_context("spawn")  # fork after torch has started threads is unsafe
    pool = ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_worker_init, initargs=(args.threads,))
    pending: set = set()
    try:
        for job in jobs:
            future = pool.submit(run, job, args)
            pending_jobs[future] = job
            pending.add(future)
            while len(pending) > 2 * args.workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                collect(done)
        collect(wait(pending).done)
    except BrokenProcessPool:  # a worker died (killed, out of memory): its epoch checkpoints survive
        collect([f for f in pending if f.done()])
        print("a training process died: stopped; rerun to resume the unfinished trainings", flush=True)
        failed += 1
    except BaseException:
        # planning failed or Ctrl-C: stop now rather than after the queued trainings (hours); the
        # running ones lose at most their current epoch
        for child in multiprocessing.active_children():
            child.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return failed


# ------------------------------------------------------------------------ summary
def latency_of(results: Path, run: dict) -> dict | None:
    """A run's latency from its cell's latency file (timed again when that file is deleted), else the
    copy its record took when it finished."""
    path = results / "latency" / f"{run['cell']}-s{run['seed']}.json"
    if not path.exists():
        return run.get("latency")
    models = json.loads(path.read_text())["models"]
    lat = {f"round_to_{k}": models.get(f"{run['structure']}/r{k}") for k in (1, 8)}
    lat["round_to_8_flops"] = (run.get("latency") or {}).get("round_to_8_flops")
    return lat if lat["round_to_1"] else None


def summarize(results: Path, out: Path, cells: dict[str, Cell]) -> dict:
    runs = [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]
    summary: dict = {"cells": {}, "full": {}}
    lines = ["# Searched structures vs uniform width: paired comparison", ""]
    smoke = any(r.get("smoke") for r in runs)
    if smoke:
        lines += ["**SMOKE RUN** (a few steps per epoch): the numbers below prove the machinery, not a ranking.", ""]
    for r in runs:
        if r["kind"] == "full":
            summary["full"].setdefault(f"{r['arch']}@{r['input_side']}px", []).append(r["test_top1"])
    for key, accs in summary["full"].items():
        if key.startswith("resnet20@"):  # the protocol check: the study's schedule and size must train it
            verdict = ("protocol check >= 92%: " + ("passes" if statistics.mean(accs) >= 0.92 else
                                                    "FAILS: raise --epochs or --side before reading the table"))
        else:  # measured, not chosen: see docs/search.md section 6 before reading its cell
            verdict = ("the reference of its cell, below the 92% the protocol asks of ResNet-20: read "
                       "docs/search.md section 6 before its cell" if statistics.mean(accs) < 0.92
                       else "the reference of its cell")
        lines.append(f"Full {key}: test top-1 {100 * statistics.mean(accs):.2f}% over {len(accs)} seed(s) "
                     f"({verdict})")
    lines += ["", "| cell | structure | seeds | top-1 mean | paired diff vs uniform (95% t-interval) | "
              "params | ORT ms r1 / r8 (x uniform) |", "|---|---|---|---|---|---|---|"]
    wide: list[tuple] = []  # paired differences not yet read to the bar
    for cell_name, cell in cells.items():
        by = {s: {r["seed"]: r for r in runs if r["kind"] == "structure" and r["cell"] == cell_name
                  and r["structure"] == s} for s in cell.structures}
        if not any(by.values()):
            continue
        summary["cells"][cell_name] = {}
        for s in cell.structures:
            got = by[s]
            if not got:
                continue
            accs = [r["test_top1"] for r in got.values()]
            row = {"seeds": sorted(got), "mean": statistics.mean(accs),
                   "params": statistics.mean(r["params"] for r in got.values())}
            diff_text = "-"
            if s != "uniform":
                pairs = [got[k]["test_top1"] - by["uniform"][k]["test_top1"] for k in got if k in by["uniform"]]
                if pairs:
                    mean = statistics.mean(pairs)
                    half = half_width(statistics.stdev(pairs) if len(pairs) > 1 else 0.0, len(pairs))
                    row["paired"] = {"n": len(pairs), "mean": mean, "half_width": half,
                                     "ci": [mean - half, mean + half], "seeds_needed": seeds_needed(pairs)}
                    if half > HALF_WIDTH_BAR and mean - half <= 0 <= mean + half:  # excluding zero decides
                        wide.append((cell_name, s, half, len(pairs), row["paired"]["seeds_needed"]))
                    diff_text = (f"{100 * mean:+.2f} [{100 * (mean - half):+.2f}, {100 * (mean + half):+.2f}] "
                                 f"(n={len(pairs)})")
            lat = [x for r in got.values() if (x := latency_of(results, r))]
            lat_text = "-"
            if lat:
                r1 = statistics.median(x["round_to_1"]["median_ms"] for x in lat)
                x1 = statistics.median(x["round_to_1"]["ratio_to_first"] for x in lat)
                row["latency_ms"] = {"round_to_1": r1}
                lat_text = f"{r1:.3f} / - ({x1:.2f}x / -; no plan at round_to 8 lands near the budget)"
                if lat8 := [x for x in lat if x.get("round_to_8")]:
                    r8 = statistics.median(x["round_to_8"]["median_ms"] for x in lat8)
                    x8 = statistics.median(x["round_to_8"]["ratio_to_first"] for x in lat8)
                    row["latency_ms"]["round_to_8"] = r8
                    f8 = statistics.median(x["round_to_8_flops"] for x in lat8)
                    lat_text = f"{r1:.3f} / {r8:.3f} ({x1:.2f}x / {x8:.2f}x; r8 at {f8 / 1e6:.2f}M MACs)"
            summary["cells"][cell_name][s] = row
            lines.append(f"| {cell_name} | {s} | {len(got)} | {100 * row['mean']:.2f} | {diff_text} | "
                         f"{row['params'] / 1e3:.0f}K | {lat_text} |")
    if wide:
        lines += ["", f"Not yet decided (95% interval contains zero and is wider than ±{100 * HALF_WIDTH_BAR:.1f} "
                  "points): " + "; ".join(
            f"{c} {s} ±{100 * h:.2f} at n={n}" + (f", ~{k} seeds at the spread seen so far" if k else "")
            for c, s, h, n, k in wide) + "."]
    spent = sum(sum(r["epoch_wall_seconds"]) for r in runs)  # all epochs, also those before a resume
    # every structure at the default seeds, or at as many as it has where its cell was extended;
    # the full model trains for --full-seeds only
    planned_runs = (sum(max(len(DEFAULT_SEEDS), sum(r["kind"] == "structure" and r["cell"] == name
                                                    and r["structure"] == s for r in runs))
                        for name, c in cells.items() for s in c.structures)
                    + sum(r["kind"] == "full" for r in runs))
    if runs:
        workers = max(r["environment"].get("workers", 1) for r in runs)
        lines += ["", f"Training time of the {len(runs)} finished runs, summed over runs: {spent / 3600:.2f} h "
                  f"({planned_runs} runs planned: {len(DEFAULT_SEEDS)} seeds a structure, more where a cell was "
                  f"extended; a naive projection: {spent / len(runs) * planned_runs / 3600:.1f} h summed"
                  + (f"; up to {workers} trained at once, so the wall clock took less" if workers > 1 else "")
                  + ")."]
    lines += ["", "Latency: onnxruntime CPU, batch 1, median of interleaved runs; r1 = the trained plan "
              "(round_to 1), r8 = the same gates rounded to multiples of 8, landing as near the budget as "
              "rounding allows (its MACs are shown: ResNet-20's 16/32/64-wide groups cannot always land near "
              "it); x = ratio to the cell's first structure, uniform at round_to 1."]
    lines += ["", "## Stage-wise MAC shares (seed 0 plans)", ""]
    for cell_name, cell in cells.items():
        plans = {}
        for s in cell.structures:
            p = results / "runs" / f"{cell_name}-{s}-s0.json"
            if p.exists():
                r = json.loads(p.read_text())
                plans[s] = r["stage_shares"]
        if plans:
            stages = list(next(iter(plans.values())))
            lines += [f"{cell_name}:", "", "| plan | " + " | ".join(stages) + " |", "|---" * (len(stages) + 1) + "|"]
            lines += [f"| {s} | " + " | ".join(f"{100 * sh.get(k, 0):.0f}%" for k in stages) + " |"
                      for s, sh in plans.items()]
            lines.append("")
    atomic_write_text(out.with_suffix(".json"), json.dumps(summary, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


def mac_shares(args) -> None:
    """The cheap part of the question: where does each selection spend the budget?"""
    _cache_gate_learning()
    lines = ["# ResNet-20 (32 px, Fashion-MNIST gates, seed 0): stage-wise MAC shares", "",
             "Stages: conv1 = stem, layer1-3 = the three stages (16/32/64 channels), fc = classifier. "
             "Threshold and cost-aware use the same learned gates (slimkit prune's default gate learning); "
             "only the selection differs. round_to 1.", ""]
    for budget in ("50%", "25%"):
        cell = Cell(f"r20-{budget.rstrip('%')}", "resnet20", budget, ("uniform", "threshold", "cost-aware"), 32, 1e-4)
        plans = {s: make_plan(cell, STRUCTURES[s], 0, 1, args) for s in cell.structures}
        lines += share_table(plans, f"{budget} FLOPs") + [""]
        widths = {s: {n: g["width"] for n, g in p.groups.items()} for s, p in plans.items()}
        lines += ["widths: " + "; ".join(f"{s} {list(w.values())}" for s, w in widths.items()), ""]
    text = "\n".join(lines) + "\n"
    out = Path(f"{args.results}_mac_shares.md")
    atomic_write_text(out, text)
    print(text)
    print(f"wrote {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=["r20-50", "r20-25", "mnv1-25"])
    ap.add_argument("--seeds", nargs="+", type=int, default=DEFAULT_SEEDS)
    ap.add_argument("--structures", nargs="+", choices=tuple(STRUCTURES), default=None,
                    help="train only these structures (and uniform, their baseline) of each cell; "
                         "the summary still lists every structure")
    ap.add_argument("--epochs", type=int, default=12, help="full model's epochs (Scratch-B stretches them for "
                    "the pruned ones); the full ResNet-20 must reach 92%% under them (docs/search.md)")
    ap.add_argument("--schedule", choices=("scratch-e", "scratch-b"), default="scratch-e",
                    help="pruned models' budget: scratch-e (the full model's epochs; what fits 8 h of 2 CPU cores "
                         "at the epochs the protocol check needs) or scratch-b (the full model's compute)")
    ap.add_argument("--side", type=int, default=24, help="ResNet-20 input side (Fashion-MNIST resized; at 16 px "
                    "12 epochs reached 91.3%%, under the protocol's 92%%)")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--gate-steps", type=int, default=None, help="gate-learning steps (default: slimkit's)")
    ap.add_argument("--paper-gate-steps", type=int, default=3500,
                    help="gate-learning steps of the paper's search space (official code: ~3,500)")
    ap.add_argument("--max-steps", type=int, default=None, help="cap steps per epoch (smoke runs only)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per training and for gate learning (default: 1 with --workers > 1, else 2)")
    ap.add_argument("--workers", type=int, default=1,
                    help="trainings run at once, each in its own process with --threads threads (the thin "
                         "ResNet-20s are overhead-bound: on 2 cores, 2 workers x 1 thread train ~1.5x the images "
                         "per second of 1 x 2; bench/study_throughput.py); gate learning and latency run in the main process")
    ap.add_argument("--latency-threads", type=int, default=1)
    ap.add_argument("--latency-runs", type=int, default=200)
    ap.add_argument("--device", default="auto", help="auto: CUDA when present, else CPU")
    ap.add_argument("--no-full", action="store_true", help="skip the full-model protocol check")
    ap.add_argument("--full-seeds", type=int, default=1,
                    help="train the full model (the protocol check) for the first N seeds only: it is not part "
                         "of any pair, and each run costs as much as a pruned one on a CPU")
    ap.add_argument("--plans-only", action="store_true", help="plan, measure latency, print MAC shares; no training")
    ap.add_argument("--smoke", action="store_true", help="tiny settings end to end (8 steps/epoch, 2 epochs, "
                                                         "20 gate steps, 2 seeds, 20 latency runs; with "
                                                         "--data synthetic it takes minutes)")
    ap.add_argument("--summarize", action="store_true", help="only rebuild the table from finished runs")
    ap.add_argument("--mac-shares", action="store_true",
                    help="ResNet-20 at 32 px, 50%% and 25%%: stage MAC shares of uniform, threshold and cost-aware "
                         "plans (same gates for default and cost-aware; no training); writes "
                         "<results>_mac_shares.md")
    ap.add_argument("--work", default="runs/compare_structures")
    ap.add_argument("--results", default=str(HERE / "results" / "compare_structures"))
    args = ap.parse_args()
    if args.smoke:
        args.max_steps, args.epochs = args.max_steps or 8, 2
        args.gate_steps = args.gate_steps or 20
        args.latency_runs = 20
        if args.seeds == ap.get_default("seeds"):
            args.seeds = [0, 1]
        if args.results == ap.get_default("results"):
            args.results = str(Path(args.work) / "smoke_results")
    if args.threads is None:
        args.threads = 1 if args.workers > 1 else 2
    torch.set_num_threads(args.threads)
    if args.mac_shares:
        mac_shares(args)
        return 0
    # one folder per protocol: runs trained under different epochs, schedules or sizes never pair up
    protocol = f"{args.schedule}-e{args.epochs}-r20at{args.side}px"
    if args.results == ap.get_default("results"):
        args.results = str(Path(args.results) / protocol)
    if args.work == ap.get_default("work"):
        args.work = str(Path(args.work) / protocol)
    cells = {k: v for k, v in cells_for(args.side).items() if k in args.cells}
    results, work = Path(args.results), Path(args.work)
    (results / "runs").mkdir(parents=True, exist_ok=True)
    summary_path = results / "summary"
    failed = 0
    if not args.summarize:
        _cache_gate_learning()
        if args.plans_only:
            for cell in cells.values():
                seed = args.seeds[0]
                plans = {s: planned(results / "plans" / f"{cell.name}-{s}-r1-s{seed}.json",
                                    lambda s=s: make_plan(cell, STRUCTURES[s], seed, 1, args))
                         for s in cell.structures}
                print("\n".join(share_table(plans, f"{cell.name} seed {seed}")) + "\n")
            return 0
        failed = run_study(study_jobs(cells, args, results, work), args)
    summarize(results, summary_path, cells)
    if failed:
        print(f"{failed} training(s) failed (see above); rerun to retry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
