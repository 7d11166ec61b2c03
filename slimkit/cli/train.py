"""``slimkit train``: train a plan (or a full architecture) from scratch, resumably."""

from __future__ import annotations

import contextlib
import os

from pathlib import Path
from typing import Annotated, Optional

import typer

from slimkit import distributed
from slimkit.cli._common import console, make_progress, user_errors
from slimkit.errors import SlimkitError


@user_errors
def train(
    source: Annotated[str, typer.Argument(help="A plan JSON from `slimkit prune`, or an architecture name for the unpruned baseline.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: checkpoint.pt, metrics.json, curves.png, plan.json.")] = Path("runs/train"),
    data: Annotated[str, typer.Option(help="fashion-mnist, cifar10, cifar100, imagefolder:PATH, synthetic.")] = "fashion-mnist",
    data_dir: Annotated[Optional[str], typer.Option(help="Where the dataset lives.")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs of the full model; --budget scratch-b stretches them.")] = 30,
    budget: Annotated[str, typer.Option(help="scratch-e: same epochs as the full model; scratch-b: same compute as the full model (epochs x full/plan FLOPs: uncapped on CIFAR-style data, at most 2x on imagefolder data, as Rethinking the Value of Network Pruning does); fixed.")] = "scratch-e",
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size (LR scales with it).")] = 128,
    lr: Annotated[Optional[float], typer.Option(help="Peak LR (default 0.05 x batch/256, the paper's).")] = None,
    weight_decay: Annotated[float, typer.Option(help="Weight decay (paper: 4e-5 for MobileNets).")] = 4e-5,
    decay_bn_bias: Annotated[bool, typer.Option("--decay-bn-bias/--no-decay-bn-bias", help="Apply weight decay to BN and biases too.")] = False,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing.")] = 0.1,
    warmup_epochs: Annotated[float, typer.Option(min=0, help="Linear LR warm-up epochs before the cosine decay.")] = 1.0,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random crop + flip.")] = True,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model (CUDA).")] = False,
    workers: Annotated[int, typer.Option(min=0, help="Data-loader workers (ImageFolder).")] = 4,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from OUT/checkpoint.pt.")] = False,
    max_steps_per_epoch: Annotated[Optional[int], typer.Option(min=1, help="Cap steps per epoch (quick looks).")] = None,
    accum_steps: Annotated[int, typer.Option(min=1, help="Gradient accumulation steps: the global --batch-size is reached in this many micro-batches.")] = 1,
    sync_bn: Annotated[bool, typer.Option("--sync-bn/--no-sync-bn", help="Under torchrun: BatchNorm statistics over all processes.")] = False,
) -> None:
    """Train the thin network a plan describes from scratch (label smoothing, warm-up + cosine)."""
    from slimkit.train import TrainConfig
    from slimkit.train import train as run_train

    cfg = TrainConfig(data=data, data_dir=data_dir, epochs=epochs, budget=budget, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, no_decay_bn_bias=not decay_bn_bias,
                      label_smoothing=label_smoothing, warmup_epochs=warmup_epochs, augment=augment, seed=seed,
                      device=device, compile=compile, workers=workers, max_steps_per_epoch=max_steps_per_epoch,
                      accum_steps=accum_steps, sync_bn=sync_bn)
    if accum_steps < 1:
        raise SlimkitError(f"--accum-steps must be >= 1, got {accum_steps}")
    main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 talks
    progress = make_progress() if main else None
    try:
        with progress or contextlib.nullcontext():
            result = run_train(source, out, cfg, resume=resume, progress=progress,
                               log=lambda m: progress.console.print(m, highlight=False) if progress else None)
    finally:
        distributed.cleanup()
    if result.metrics and main:
        final = result.metrics[-1]
        console.print(f"final: test top-1 {final['test_top1']:.4f}, top-5 {final['test_top5']:.4f} after "
                      f"{final['epoch']} epochs; wrote {out}/checkpoint.pt, metrics.json, curves.png", highlight=False)
