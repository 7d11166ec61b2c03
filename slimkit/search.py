"""Gate learning on random, frozen weights ("Pruning from Scratch", Wang et al., AAAI 2020).

Loss ``CE + γ·(mean(λ) − r)²`` with r the target remaining-FLOPs fraction, Adam (lr 0.01) on the
gates only, gates clamped to [0, 1] after every step. The held-out split (carved from the
training set) is evaluated several times per epoch; the snapshot kept is the one with the best
held-out accuracy among those whose gate mean is at or below r (the sparsest one if none is,
and the result says so).

Paper settings, as presets: CIFAR-10 γ 0.5, batch 128, 10 epochs; ImageNet γ 0.05, batch 100,
1 epoch. On a CPU the default is a short run (a fixed number of steps at a reduced search
resolution; gates are per channel, so the resolution they are learned at does not change what
they mean) so the command stays interactive; the run prints what it does.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from slimkit import runtime
from slimkit.data import DataBundle, make_loader
from slimkit.errors import SlimkitError
from slimkit.gates import GatedSupernet
from slimkit.runtime import all_reduce_sum, autocast, place_batch, place_model

__all__ = ["GateSearchConfig", "GateSearchResult", "PRESETS", "search_gates"]

PRESETS: dict[str, dict[str, Any]] = {
    "cifar": {"gamma": 0.5, "batch_size": 128, "epochs": 10.0},
    "imagenet": {"gamma": 0.05, "batch_size": 100, "epochs": 1.0},
}


@dataclass
class GateSearchConfig:
    target: float  # r: target remaining fraction
    gamma: float = 0.5
    lr: float = 0.01
    batch_size: int = 128
    steps: int = 300
    evals: int = 10  # held-out evaluations over the run
    val_images: int | None = None  # evaluate on at most this many held-out images
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # bf16 autocast on CUDA


@dataclass
class GateSearchResult:
    gates: dict[str, list[float]]
    step: int
    val_accuracy: float
    gate_mean: float
    qualified: bool  # a snapshot met mean(λ) <= r
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    step_seconds: float = 0.0


def _evaluate(supernet: GatedSupernet, loader, device: torch.device, amp: bool) -> float:
    correct = total = 0
    with torch.no_grad(), autocast(device, amp):
        for x, y in loader:
            x, y = place_batch(x, device), y.to(device, non_blocking=True)
            correct += int((supernet.model(x).argmax(1) == y).sum())
            total += y.numel()
    correct, total = all_reduce_sum(correct, total, device=device)
    return correct / max(total, 1)


def search_gates(supernet: GatedSupernet, data: DataBundle, cfg: GateSearchConfig,
                 progress: Any | None = None) -> GateSearchResult:
    """Learn the gates of ``supernet`` on ``data.train``; choose a snapshot on ``data.val``."""
    device, _ = runtime.local_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = supernet.model
    place_model(model, device)
    for g in supernet.gates.values():
        g.data = g.data.to(device)
    supernet.set_search_mode()
    # Under torchrun each process takes a slice of every global batch; gate gradients are averaged
    # below, so every process holds the same gates after every step.
    world, rank = runtime.world_size(), (dist.get_rank() if runtime.world_size() > 1 else 0)
    if cfg.batch_size % world:
        raise SlimkitError(f"gate batch size {cfg.batch_size} must divide by {world} processes")
    train_loader = make_loader(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True,
                               augment=False).shard(rank, world)
    if len(train_loader) == 0:  # no full batch: the loop below would never take a step (and never end)
        raise SlimkitError(f"gate batch size {cfg.batch_size} is larger than the {len(data.train):,} training images: "
                           f"use --batch-size {len(data.train)} or less")
    val_ds = data.val if data.val is not None else data.train
    if cfg.val_images is not None and len(val_ds) > cfg.val_images and hasattr(val_ds, "subset"):
        val_ds = val_ds.subset(torch.arange(cfg.val_images))
    val_batch = max(cfg.batch_size, 256)
    val_loader = make_loader(val_ds, val_batch - val_batch % world, shuffle=False, seed=cfg.seed).shard(rank, world)
    opt = torch.optim.Adam(supernet.parameters(), lr=cfg.lr)
    eval_at = {max(1, round(cfg.steps * (i + 1) / cfg.evals)) for i in range(cfg.evals)}

    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, list[float]], float] | None = None
    sparsest: tuple[float, int, dict[str, list[float]], float] | None = None
    step = 0
    start = time.perf_counter()
    step_time = 0.0
    task = progress.add_task("learning gates", total=cfg.steps) if progress is not None else None
    epoch = 0
    while step < cfg.steps:
        train_loader.set_epoch(epoch)
        for x, y in train_loader:
            t0 = time.perf_counter()
            x, y = place_batch(x, device), y.to(device, non_blocking=True)
            with autocast(device, cfg.amp):
                logits = model(x)
            ce = F.cross_entropy(logits.float(), y)
            loss = ce + cfg.gamma * (supernet.penalty_mean() - cfg.target) ** 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                for gate in supernet.parameters():
                    dist.all_reduce(gate.grad)
                    gate.grad /= world
            opt.step()
            supernet.clamp_()
            step += 1
            step_time += time.perf_counter() - t0
            mean = supernet.gate_mean()
            if step in eval_at:
                acc = _evaluate(supernet, val_loader, device, cfg.amp)
                supernet.set_search_mode()
                history.append({"step": step, "loss": loss.item(), "ce": ce.item(), "gate_mean": mean,
                                "val_accuracy": acc})
                snap = (acc, step, supernet.snapshot(), mean)
                if mean <= cfg.target + 1e-6 and (best is None or acc > best[0]):
                    best = snap
                if sparsest is None or mean < sparsest[3]:
                    sparsest = snap
            if task is not None:
                last = f"{history[-1]['val_accuracy']:.3f}" if history else "–"  # not evaluated yet
                progress.update(task, advance=1, description=(
                    f"learning gates  loss {loss.item():.3f}  mean λ {mean:.3f} (r {cfg.target:.3f})  "
                    f"val acc {last}"))
            if step >= cfg.steps:
                break
        epoch += 1
    chosen = best if best is not None else sparsest
    assert chosen is not None
    acc, at, gates, mean = chosen
    return GateSearchResult(gates=gates, step=at, val_accuracy=acc, gate_mean=mean,
                            qualified=best is not None, history=history,
                            seconds=time.perf_counter() - start, step_seconds=step_time / max(step, 1))


def steps_for_epochs(epochs: float, train_size: int, batch_size: int) -> int:
    return max(1, math.ceil(epochs * (train_size // batch_size)))
