"""Reproduce the papers' claims on real data: full vs uniform vs pruned-from-scratch vs structures
found from *trained* weights, each trained with the same Scratch-B budget, over several seeds.

For every seed: the full model is trained (Scratch-E, `--epochs`); at each budget, three
structures are planned and trained with Scratch-B (epochs x full/plan FLOPs; uncapped on
CIFAR-style data, as Rethinking does; bench/compare_structures.py is the paired, near-converged
successor of this script):
  uniform  one width factor for every group (deterministic)
  scratch  gates learned on random frozen weights ("Pruning from Scratch"), gate seed = seed
  trained  the same gate method on the seed's trained full model (the paper's Table 1 comparison)
Reported: mean ± std of test top-1 per structure and budget, the correlation of per-group keep
ratios between every pair of structures (the paper's Figure 2: structures from random weights
should differ more across seeds than structures from trained weights), and channels-per-group
plots (Figure 3). Every run folder under --work is resumable: rerunning skips finished work.
Writes bench/results/reproduce.{json,md} and reproduce_*.png.

Cost: seeds x (1 + 2 budgets x 3 structures x up to 2) trainings of --epochs. The defaults (3
seeds, 15 epochs, Fashion-MNIST ResNet-20) are ~580 epochs: hours on a GPU, days on a 2-core CPU.

    python bench/reproduce.py [--epochs 15] [--seeds 0 1 2] [--budgets 50% 25%] [--max-steps N]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from slimkit.pipeline import train_state  # noqa: E402
from slimkit.plan import load_plan, save_plan  # noqa: E402
from slimkit.plots import plot_channels  # noqa: E402
from slimkit.prune import GateOptions, prune  # noqa: E402
from slimkit.train import TrainConfig, train  # noqa: E402

HERE = Path(__file__).parent
STRUCTURES = ("uniform", "scratch", "trained")
LABELS = {"uniform": "uniform width", "scratch": "pruned from scratch", "trained": "from trained weights"}


def trained(source, folder: Path, cfg: TrainConfig) -> dict:
    """Train (or resume, or skip when finished) and return the final metrics."""
    state, _, _ = train_state(folder)
    if state != "done":
        train(source, folder, cfg, resume=state == "resume", log=print)
    return json.loads((folder / "metrics.json").read_text())["final"]


def planned(path: Path, make) -> object:
    if not path.exists():
        save_plan(make(), path)
    return load_plan(path)


def keep_vector(plan) -> np.ndarray:
    return np.array([g["width"] / g["full"] for g in plan.groups.values()])


def plot_accuracy(results: dict, path: Path) -> None:
    """Test top-1 (mean ± std over seeds) against FLOPs, one line per structure."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.errorbar([1.0], [100 * results["full_mean"]], yerr=[100 * results["full_std"]], fmt="ks", capsize=3,
                label="full model")
    for offset, s in zip((-0.006, 0.0, 0.006), STRUCTURES):
        xs, ys, es = [], [], []
        for b in results["budgets"].values():
            runs = b["structures"][s]["runs"]
            xs.append(np.mean([r["flops"] for r in runs]) / results["full_flops"] + offset)
            ys.append(100 * b["structures"][s]["mean"])
            es.append(100 * b["structures"][s]["std"])
        ax.errorbar(xs, ys, yerr=es, fmt="o-", capsize=3, label=LABELS[s])
    ax.set_xlabel("FLOPs (fraction of the full model)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"{results['arch']} on {results['data']}, {len(results['seeds'])} seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--budgets", nargs="+", default=["50%", "25%"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=15, help="full model's epochs (Scratch-B stretches them)")
    ap.add_argument("--steps", type=int, default=None, help="gate-learning steps (default: slimkit's)")
    ap.add_argument("--max-steps", type=int, default=None, help="cap steps per epoch (smoke tests only)")
    ap.add_argument("--work", default="runs/reproduce")
    ap.add_argument("--out", default=str(HERE / "results" / "reproduce"))
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)

    def cfg(seed: int, schedule: str) -> TrainConfig:  # the recipe of recipes/fmnist_resnet20_50.yaml
        # Its warm-up is 1 of 15 epochs; a shorter run keeps that share, not a warm-up-only schedule.
        return TrainConfig(data=args.data, epochs=args.epochs, schedule=schedule, batch_size=128, lr=0.1,
                           weight_decay=1e-4, seed=seed, max_steps_per_epoch=args.max_steps,
                           warmup_epochs=min(1.0, args.epochs / 15))

    common = dict(round_to=1)
    gates = GateOptions(data=args.data, steps=args.steps)
    results: dict = {"arch": args.arch, "data": args.data, "epochs": args.epochs, "seeds": args.seeds,
                     "max_steps_per_epoch": args.max_steps, "warmup_epochs": min(1.0, args.epochs / 15),
                     "gate_steps": args.steps, "full": [], "budgets": {}}
    for seed in args.seeds:
        m = trained(args.arch, work / f"full-s{seed}", cfg(seed, "scratch-e"))
        results["full"].append(m["test_top1"])
    full_plan = load_plan(work / f"full-s{args.seeds[0]}" / "plan.json")
    num_classes = full_plan.num_classes  # from the data
    results["full_flops"] = full_plan.flops
    for budget in args.budgets:
        tag = budget.rstrip("%")
        rows = {s: [] for s in STRUCTURES}
        plans = {s: [] for s in STRUCTURES}
        for seed in args.seeds:
            makers = {
                "uniform": lambda: prune(args.arch, budget, method="uniform", round_to=1,
                                         num_classes=num_classes),
                "scratch": lambda: prune(args.arch, budget, method="scratch", seed=seed, log=print, gates=gates,
                                         **common),
                "trained": lambda: prune(args.arch, budget, method="scratch", seed=seed, log=print,
                                         gates=GateOptions(data=args.data, steps=args.steps,
                                                           weights=str(work / f"full-s{seed}" / "checkpoint.pt")),
                                         **common),
            }
            for name in STRUCTURES:
                plan_path = work / f"{name}-{tag}-s{seed}.json"
                plan = planned(plan_path, makers[name])
                plans[name].append(plan)
                m = trained(str(plan_path), work / f"{name}-{tag}-s{seed}", cfg(seed, "scratch-b"))
                rows[name].append({"seed": seed, "test_top1": m["test_top1"], "flops": plan.flops})
        labels = [f"{s}/s{seed}" for s in ("scratch", "trained") for seed in args.seeds]
        vecs = [keep_vector(p) for s in ("scratch", "trained") for p in plans[s]]
        sim = np.corrcoef(np.stack(vecs)) if len(vecs) > 1 else np.ones((1, 1))
        n = len(args.seeds)

        def within(block: np.ndarray) -> float:
            off = block[~np.eye(len(block), dtype=bool)]
            return float(off.mean()) if off.size else math.nan

        results["budgets"][budget] = {
            "structures": {s: {"runs": rows[s], "mean": float(np.mean([r["test_top1"] for r in rows[s]])),
                               "std": float(np.std([r["test_top1"] for r in rows[s]]))} for s in STRUCTURES},
            "similarity_labels": labels, "similarity": np.round(sim, 4).tolist(),
            "similarity_within_scratch": within(sim[:n, :n]), "similarity_within_trained": within(sim[n:, n:]),
        }
        fig, ax = plt.subplots(figsize=(5, 4.2))
        im = ax.imshow(sim, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(f"keep-ratio correlation, {budget} FLOPs", fontsize=9)
        fig.colorbar(im)
        fig.savefig(out.with_name(f"{out.name}_similarity_{tag}.png"), dpi=110, bbox_inches="tight")
        plt.close(fig)
        plot_channels(plans["scratch"][0], out.with_name(f"{out.name}_channels_{tag}.png"),
                      {"uniform": plans["uniform"][0], "trained weights": plans["trained"][0]})

    full = np.array(results["full"])
    results["full_mean"], results["full_std"] = float(full.mean()), float(full.std())
    plot_accuracy(results, out.with_name(f"{out.name}_accuracy.png"))
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    epochs = f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}"
    lines = [f"# {args.arch} on {args.data}: {len(args.seeds)} seeds, full model {epochs}, "
             "pruned models Scratch-B", "",
             f"Full model: {100 * results['full_mean']:.2f} ± {100 * results['full_std']:.2f}", "",
             "| FLOPs | uniform | pruned from scratch | from trained weights | keep-ratio corr. across seeds: scratch / trained |",
             "|---|---|---|---|---|"]
    for budget, b in results["budgets"].items():
        cells = [f"{100 * b['structures'][s]['mean']:.2f} ± {100 * b['structures'][s]['std']:.2f}" for s in STRUCTURES]
        lines.append(f"| {budget} | " + " | ".join(cells) + f" | {b['similarity_within_scratch']:.3f} / "
                     f"{b['similarity_within_trained']:.3f} |")
    if args.max_steps:
        lines += ["", f"Short run: every epoch is capped at {args.max_steps} steps of batch 128 "
                  f"({args.max_steps * 128:,} images), so the full model sees {args.epochs * args.max_steps} "
                  "steps and the pruned models up to twice that (Scratch-B). Accuracies are below converged "
                  "values; what the table tests is the ranking at equal training compute."]
    if args.steps:
        lines += ["", f"Gates learned for {args.steps} steps per structure."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
