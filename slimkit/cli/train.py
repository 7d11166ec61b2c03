"""``slimkit train``: train a plan (or a full architecture) from scratch, or fine-tune it from a trained
parent's kept channels, resumably."""

from __future__ import annotations

import contextlib

from pathlib import Path
from typing import Annotated, Optional

import typer

from slimkit import validate as limits
from slimkit.cli._common import (ARCH_KWARGS_HELP, FORCE_HELP, check_out_folder, checked_numbers, console,
                                 make_progress, parse_arch_kwargs, say_plain, user_errors)
from slimkit.runtime import cleanup_distributed, launch_env
from slimkit.train import FINETUNE, FINETUNE_EPOCHS, MAX_WARMUP_SHARE, TrainConfig
from slimkit.train import train as run_train

D = TrainConfig()  # every default lives in TrainConfig; the options below show it


def typed_options(ctx: typer.Context, cfg: TrainConfig) -> set[str]:
    """The TrainConfig fields whose options were typed (or set from the environment), defaults included:
    a resumed run names those it overrides with the checkpoint's."""
    typed = {name for name in ctx.params
             if getattr(ctx.get_parameter_source(name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")}
    typed |= {"no_decay_bn_bias"} if "decay_bn_bias" in typed else set()
    return typed & set(vars(cfg))


@user_errors
@checked_numbers(epochs=limits.COUNT, batch_size=limits.COUNT, lr=limits.LR, weight_decay=limits.WEIGHT_DECAY,
                 label_smoothing=limits.LABEL_SMOOTHING, warmup_epochs=limits.WARMUP_EPOCHS, seed=limits.SEED,
                 workers=limits.Range(0, 256, integer=True), max_steps_per_epoch=limits.COUNT,
                 accum_steps=limits.Range(1, 65_536, integer=True))
def train(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="A plan JSON from `slimkit prune`, or an architecture name (or python: factory) for the unpruned baseline.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: checkpoint.pt, metrics.json, config.json, curves.png, plan.json.")] = Path("runs/train"),
    data: Annotated[Optional[str], typer.Option(help="fashion-mnist (the default for classifiers), cifar10, cifar100, imagefolder:PATH, synthetic; shapes (drawn masks and boxes: the default for segmentation and detection models); coco:PATH (a COCO-format folder) for detectors; voc:PATH (a PASCAL VOC-format folder: masks for segmentation models, boxes for detectors).")] = D.data,
    data_dir: Annotated[Optional[str], typer.Option(help="Where the dataset lives.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help=f"Epochs of the full model (default {D.epochs}); --schedule scratch-b stretches them. With --resume: extend the run to this many (the cosine schedule is stretched from where it stands; --schedule finetune keeps its constant LR).")] = None,
    schedule: Annotated[str, typer.Option("--schedule", "--budget", help=f"How long a pruned model trains: scratch-e: the full model's epochs; scratch-b: the full model's compute (epochs x full/plan FLOPs: uncapped on CIFAR-style data, at most 2x on imagefolder data, as Rethinking the Value of Network Pruning does); fixed: exactly --epochs; finetune (with --init inherit): exactly --epochs (default {FINETUNE_EPOCHS}, the paper's CIFAR fine-tuning) at a constant LR (default 0.001). (--budget: the old name.)")] = D.schedule,
    init: Annotated[str, typer.Option(help="scratch: fresh weights from G; inherit: the kept channels of the trained full model --from (the plan's 'keep', or the largest-L1 filters for a widths-only plan); a parent trained on other classes gives every weight but its classifier's, which gets fresh rows for the data's classes.")] = D.init,
    init_from: Annotated[Optional[str], typer.Option("--from", help="The trained full model to inherit from (--init inherit): a slimkit checkpoint.pt, or a torch.save(model.state_dict()) file or timm/torchvision checkpoint of the plan's architecture.")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size (LR scales with it).")] = D.batch_size,
    lr: Annotated[Optional[float], typer.Option(help="Peak LR (default 0.05 x batch/256, the paper's; 0.001 for --schedule finetune).")] = None,
    weight_decay: Annotated[float, typer.Option(help="Weight decay (paper: 4e-5 for MobileNets).")] = D.weight_decay,
    decay_bn_bias: Annotated[bool, typer.Option("--decay-bn-bias/--no-decay-bn-bias", help="Apply weight decay to BN and biases too.")] = not D.no_decay_bn_bias,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing.")] = D.label_smoothing,
    warmup_epochs: Annotated[float, typer.Option(help=f"Linear LR warm-up epochs before the cosine decay, capped at {MAX_WARMUP_SHARE:.0%} of the run (--epochs 1 warms up for {MAX_WARMUP_SHARE:g} epoch).")] = D.warmup_epochs,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random crop + flip.")] = D.augment,
    seed: Annotated[int, typer.Option(help="Random seed.")] = D.seed,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = D.device,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model (CUDA).")] = D.compile,
    workers: Annotated[int, typer.Option(help="Data-loader workers (ImageFolder).")] = D.workers,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from OUT/checkpoint.pt.")] = False,
    max_steps_per_epoch: Annotated[Optional[int], typer.Option(help="Cap steps per epoch (quick looks).")] = None,
    accum_steps: Annotated[int, typer.Option(help="Gradient accumulation steps: the global --batch-size is reached in this many micro-batches.")] = D.accum_steps,
    sync_bn: Annotated[bool, typer.Option("--sync-bn/--no-sync-bn", help="Under torchrun: BatchNorm statistics over all processes.")] = D.sync_bn,
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP)] = False,
    arch_kwargs: Annotated[Optional[str], typer.Option(help=ARCH_KWARGS_HELP + " For an architecture name; a plan records its own.")] = None,
) -> None:
    """Train the thin network a plan describes from scratch (label smoothing, warm-up + cosine), or
    fine-tune it from a trained parent: --init inherit --from CKPT --schedule finetune."""
    default_epochs = FINETUNE_EPOCHS if schedule == FINETUNE else D.epochs
    cfg = TrainConfig(data=data, data_dir=data_dir, epochs=epochs or default_epochs, schedule=schedule, init=init,
                      init_from=init_from, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, no_decay_bn_bias=not decay_bn_bias,
                      label_smoothing=label_smoothing, warmup_epochs=warmup_epochs, augment=augment, seed=seed,
                      device=device, compile=compile, workers=workers, max_steps_per_epoch=max_steps_per_epoch,
                      accum_steps=accum_steps, sync_bn=sync_bn)
    check_out_folder(out)
    kwargs = parse_arch_kwargs(arch_kwargs)
    main = launch_env()[0] == 0  # under torchrun only rank 0 talks
    progress = make_progress() if main else None
    try:
        with progress or contextlib.nullcontext():
            result = run_train(source, out, cfg, resume=resume, extend_to=epochs if resume else None,
                               progress=progress, arch_kwargs=kwargs, asked=typed_options(ctx, cfg),
                               log=say_plain(progress) if progress else None, force=force)
    finally:
        cleanup_distributed()
    if result.metrics and main:
        final = result.metrics[-1]
        epochs_text = f"{final['epoch']} epoch" + ("" if final["epoch"] == 1 else "s")
        if "test_map" in final:
            scores = f"test mAP@[.5:.95] {final['test_map']:.4f}, mAP@.5 {final['test_map50']:.4f}"
        elif "test_miou" in final:
            scores = f"test mIoU {final['test_miou']:.4f}, pixel accuracy {final['test_pixel_accuracy']:.4f}"
        else:
            scores = f"test top-1 {final['test_top1']:.4f}, top-5 {final['test_top5']:.4f}"
        console.print(f"final: {scores} after {epochs_text}; wrote {out}/checkpoint.pt, metrics.json, curves.png",
                      highlight=False, markup=False)
