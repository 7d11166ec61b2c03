"""Gate learning on random, frozen weights ("Pruning from Scratch", Wang et al., AAAI 2020).

Loss ``CE + γ·(mean(λ) − r)²`` with r the target remaining-FLOPs fraction, Adam (lr 0.01) on the
gates only, gates clamped to [0, 1] after every step. The held-out split (carved from the
training set) is evaluated several times per epoch; the snapshot kept is the one with the best
held-out accuracy among those whose gate mean is at or below r (the sparsest one if none is,
and the result says so).

Snapshot rules: ``"mean"`` (slimkit's default, above) or ``"nonzero"``, the rule of the paper's
official code: among snapshots whose *fraction of non-zero gates* is at or below r, the best
held-out accuracy; if none qualifies, the final gates. The official code also learns with random
crop + flip and evaluates held-out accuracy with BatchNorm in eval mode (running statistics
gathered while the gates learn); ``augment`` and ``eval_bn`` switch those on.

``adaptive_gamma`` makes a short run reach r: the sparsity term's gradient on one gate is
2γ(mean − r)/N, tiny beside the cross-entropy's when N is thousands of channels, so with the
paper's γ a few hundred Adam steps leave the mean far above r (MobileNet-V1 stopped at 0.43 for
r = 0.26). The penalty then aims a little below r (r − min(0.01, r/10): at its equilibrium the
cross-entropy still holds the mean slightly above where the penalty points), and γ doubles whenever
the mean lags a pace that reaches that aim by half the run, or, in the second half, sits above r
(checked up to 50 times per run, at most 2^10 x the preset's γ): a penalty method's increasing
weight; the γ reached is recorded.

Paper settings, as presets: CIFAR-10 γ 0.5, batch 128, 10 epochs; ImageNet γ 0.05, batch 100,
1 epoch. On a CPU the default is a short run (a fixed number of steps at a reduced search
resolution; gates are per channel, so the resolution they are learned at does not change what
they mean) so the command stays interactive; the run prints what it does.

Other tasks (:class:`GateTask`): the cross-entropy is replaced by the task's loss of a batch,
``loss_fn(model, batch)`` (segmentation's, or the user's own on their own loader), and held-out
accuracy by the task's held-out score (mIoU for segmentation; minus the held-out loss for a user's
loss); everything else, the sparsity term, adaptive γ and the snapshot rule, is the same.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
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
from slimkit.task_losses import LossFn, checked_loss, class_scores, to_device

__all__ = ["GateSearchConfig", "GateSearchResult", "GateTask", "PRESETS", "SNAPSHOT_RULES", "search_gates"]

PRESETS: dict[str, dict[str, Any]] = {
    "cifar": {"gamma": 0.5, "batch_size": 128, "epochs": 10.0},
    "imagenet": {"gamma": 0.05, "batch_size": 100, "epochs": 1.0},
    # slimkit's, for dense prediction on the shapes data: every pixel is a label, so a small batch
    # already gives the gates a steady signal (and keeps a CPU step near a second at 64 px)
    "shapes": {"gamma": 0.5, "batch_size": 16, "epochs": 1.0},
}


@dataclass
class GateTask:
    """Gates learned on a task other than classification: ``train`` batches (re-iterable), the loss of
    one batch ``loss(model, batch)``, and ``evaluate(model)``, the held-out score that picks the
    snapshot (higher is better) called ``score_name``. ``steps_per_epoch`` is len(train) when known."""

    train: Iterable
    loss: LossFn
    evaluate: Callable[[Any], float]
    score_name: str
    description: str
    steps_per_epoch: int | None = None


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
    snapshot_rule: str = "mean"  # "mean": gate mean <= r; "nonzero": share of non-zero gates <= r (official code)
    augment: bool = False  # random crop + flip while the gates learn (official code)
    eval_bn: bool = False  # held-out accuracy with BN in eval mode (official code)
    adaptive_gamma: bool = False  # double γ while the gate mean lags the pace to r


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
    gamma: float = 0.0  # γ at the end (grows under adaptive_gamma)
    nonzero_fraction: float = 1.0  # of the chosen snapshot's learnable gates
    aim: float = 0.0  # where the sparsity penalty pointed (r, or a little below it under adaptive_gamma)
    score_name: str = "accuracy"  # what val_accuracy holds: held-out accuracy, or a GateTask's score


SNAPSHOT_RULES = ("mean", "nonzero")


def _aim(target: float) -> float:
    """Where adaptive γ points the penalty: a little below r. At the penalty's equilibrium the
    cross-entropy still pulls the gates up, so a penalty aimed at r itself settles just above r
    (MobileNet-V1 at 150M: mean 0.2641 for r 0.2640) and no snapshot qualifies."""
    return target - min(0.01, 0.1 * target)


def _pace(step: int, steps: int, target: float) -> float:
    """The gate mean adaptive γ expects at ``step``: from 1 down to the aim, linearly, by half the run."""
    return max(_aim(target), 1.0 - (1.0 - _aim(target)) * step / max(1.0, 0.5 * steps))


def _lags(mean: float, step: int, steps: int, target: float) -> bool:
    """Adaptive γ doubles when the gate mean lags: more than 0.02 behind the pace in the first half
    of the run, above r itself in the second (where the pace has reached its aim)."""
    pace = _pace(step, steps, target)
    return mean > (pace + 0.02 if pace > _aim(target) else target)


def _evaluate(supernet: GatedSupernet, loader, device: torch.device, amp: bool, eval_bn: bool = False,
              channels_last: bool = True) -> float:
    correct = total = 0
    if eval_bn:
        supernet.model.eval()
    with torch.no_grad(), autocast(device, amp):
        for x, y in loader:
            x, y = place_batch(x, device, channels_last), y.to(device, non_blocking=True)
            correct += int((class_scores(supernet.model(x), supernet.model).argmax(1) == y).sum())
            total += y.numel()
    correct, total = all_reduce_sum(correct, total, device=device)
    return correct / max(total, 1)


def search_gates(supernet: GatedSupernet, data: DataBundle | GateTask, cfg: GateSearchConfig,
                 progress: Any | None = None) -> GateSearchResult:
    """Learn the gates of ``supernet`` on ``data.train``; choose a snapshot on ``data.val`` (a
    :class:`GateTask`: by its own loss and held-out score)."""
    if cfg.snapshot_rule not in SNAPSHOT_RULES:
        raise SlimkitError(f"unknown snapshot rule '{cfg.snapshot_rule}': choose one of {', '.join(SNAPSHOT_RULES)}")
    device, _ = runtime.local_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = supernet.model
    first = None if isinstance(data, GateTask) else data.train[0][0]  # one image: the layout the model runs in
    channels_last = not isinstance(first, torch.Tensor) or runtime.runs_channels_last(model, first.unsqueeze(0))
    place_model(model, device, channels_last)
    for g in supernet.gates.values():
        g.data = g.data.to(device)
    supernet.set_search_mode()
    # Under torchrun each process takes a slice of every global batch; gate gradients are averaged
    # below, so every process holds the same gates after every step.
    world, rank = runtime.world_size(), (dist.get_rank() if runtime.world_size() > 1 else 0)
    if cfg.batch_size % world:
        raise SlimkitError(f"gate batch size {cfg.batch_size} must divide by {world} processes")
    if isinstance(data, GateTask):
        train_loader: Any = data.train
        score_name = data.score_name

        def batch_loss(batch: Any) -> torch.Tensor:
            return checked_loss(data.loss(model, to_device(batch, device)))

        def held_out() -> float:
            with torch.no_grad(), autocast(device, cfg.amp):
                return float(data.evaluate(model))
    else:
        train_loader = make_loader(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True,
                                   augment=cfg.augment).shard(rank, world)
        if len(train_loader) == 0:  # no full batch: the loop below would never take a step (and never end)
            raise SlimkitError(f"gate batch size {cfg.batch_size} is larger than the {len(data.train):,} training "
                               f"images: use --batch-size {len(data.train)} or less")
        val_ds = data.val if data.val is not None else data.train
        if cfg.val_images is not None and len(val_ds) > cfg.val_images and hasattr(val_ds, "subset"):
            val_ds = val_ds.subset(torch.arange(cfg.val_images))
        val_batch = max(cfg.batch_size, 256)
        val_loader = make_loader(val_ds, val_batch - val_batch % world, shuffle=False, seed=cfg.seed).shard(rank, world)
        score_name = "accuracy"

        def batch_loss(batch: Any) -> torch.Tensor:
            x, y = batch
            x, y = place_batch(x, device, channels_last), y.to(device, non_blocking=True)
            return F.cross_entropy(class_scores(model(x), model).float(), y)

        def held_out() -> float:
            return _evaluate(supernet, val_loader, device, cfg.amp, cfg.eval_bn, channels_last)
    opt = torch.optim.Adam(supernet.parameters(), lr=cfg.lr)
    eval_at = {max(1, round(cfg.steps * (i + 1) / cfg.evals)) for i in range(cfg.evals)}
    # γ may double at most every 5 steps (50 times a run) and at most 10 times in all: the gates
    # need a few Adam steps to answer, and an unbounded γ would drown the cross-entropy's ranking.
    pace_at = set(range(max(5, cfg.steps // 50), cfg.steps + 1, max(5, cfg.steps // 50)))
    gamma, max_gamma = cfg.gamma, cfg.gamma * 2.0 ** 10
    aim = _aim(cfg.target) if cfg.adaptive_gamma else cfg.target

    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, list[float]], float, float] | None = None
    sparsest: tuple[float, int, dict[str, list[float]], float, float] | None = None  # or the final gates
    step = 0
    start = time.perf_counter()
    step_time = 0.0
    task = progress.add_task("learning gates", total=cfg.steps) if progress is not None else None
    epoch = 0
    task_key = "ce" if score_name == "accuracy" else "task_loss"
    val_key = "val_accuracy" if score_name == "accuracy" else "val_score"
    while step < cfg.steps:
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        took_a_step = False
        for batch in train_loader:
            took_a_step = True
            t0 = time.perf_counter()
            with autocast(device, cfg.amp):
                ce = batch_loss(batch).float()
            loss = ce + gamma * (supernet.penalty_mean() - aim) ** 2
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
            if cfg.adaptive_gamma and step in pace_at and _lags(mean, step, cfg.steps, cfg.target):
                gamma = min(2.0 * gamma, max_gamma)
            if step in eval_at:
                acc = held_out()
                supernet.set_search_mode()
                nonzero = supernet.nonzero_fraction()
                history.append({"step": step, "loss": loss.item(), task_key: ce.item(), "gate_mean": mean,
                                "nonzero": nonzero, "gamma": gamma, val_key: acc})
                snap = (acc, step, supernet.snapshot(), mean, nonzero)
                sparsity = nonzero if cfg.snapshot_rule == "nonzero" else mean
                if sparsity <= cfg.target + 1e-6 and (best is None or acc > best[0]):
                    best = snap
                if cfg.snapshot_rule == "nonzero":
                    sparsest = snap  # the official fallback: the final gates
                elif sparsest is None or mean < sparsest[3]:
                    sparsest = snap
            if task is not None:
                last = f"{history[-1][val_key]:.3f}" if history else "–"  # not evaluated yet
                progress.update(task, advance=1, description=(
                    f"learning gates  loss {loss.item():.3f}  mean λ {mean:.3f} (r {cfg.target:.3f})  "
                    f"val {'acc' if score_name == 'accuracy' else score_name} {last}"))
            if step >= cfg.steps:
                break
        if not took_a_step:
            raise SlimkitError("the gate-learning data yielded no batch: give a loader with at least one batch")
        epoch += 1
    chosen = best if best is not None else sparsest
    assert chosen is not None
    acc, at, gates, mean, nonzero = chosen
    return GateSearchResult(gates=gates, step=at, val_accuracy=acc, gate_mean=mean,
                            qualified=best is not None, history=history,
                            seconds=time.perf_counter() - start, step_seconds=step_time / max(step, 1),
                            gamma=gamma, nonzero_fraction=nonzero, aim=aim, score_name=score_name)


def steps_for_epochs(epochs: float, train_size: int, batch_size: int) -> int:
    return max(1, math.ceil(epochs * (train_size // batch_size)))
