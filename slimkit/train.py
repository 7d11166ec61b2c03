"""Training a plan's architecture from scratch, with the papers' recipe, resumably.

"Rethinking the Value of Network Pruning" (Liu et al. 2019): a pruned architecture trained from
random init matches fine-tuning when it gets enough training. Schedules: Scratch-E trains as many
epochs as the full model; Scratch-B trains for the same total compute, epochs × full FLOPs /
pruned FLOPs, with the LR schedule stretched along: uncapped on CIFAR-style data, capped at 2× on
ImageNet-style (ImageFolder) data, as the paper does.
Recipe ("Pruning from Scratch"): SGD, Nesterov momentum 0.9, linear warm-up then cosine LR,
label smoothing 0.1, weight decay 4e-5 (MobileNets), batch size and LR scaled together.

Fine-tuning (``init="inherit"``, ``schedule="finetune"``): the thin model starts from the trained
parent's kept channels (G with ``weights=``) and trains for ``epochs`` at a constant LR, 0.001
unless given: the Rethinking paper's fine-tuning (its official l1-norm-pruning code: 40 epochs at
0.001 on CIFAR, a quarter of the parent's 160; 20 on ImageNet).

The loop reads top to bottom like torchvision's reference trainer: ``train_one_epoch``,
``evaluate``, a checkpoint written atomically after every epoch holding weights, optimizer,
scheduler, epoch, RNG state, config, metrics and the plan (as JSON text, so
``torch.load(weights_only=True)`` can read it), and ``--resume`` that continues exactly.

Segmentation models (torchvision's LR-ASPP, DeepLabV3, FCN) train the same way on the shapes data
by default, with their own loss (slimkit.task_losses: cross-entropy on 'out' + 0.5 aux, no label
smoothing, as torchvision's segmentation reference) and are evaluated by mIoU and pixel accuracy;
the shapes loader draws new images rather than cropping and flipping (masks would have to follow).
Detectors (torchvision's SSD, SSDlite, RetinaNet, FCOS, Faster/Mask R-CNN) train on the shapes
boxes (or a COCO-format folder) with the losses they return in train mode (slimkit.task_losses), no
label smoothing, their own transform resizing every image to the plan's input size (the size its MACs
were counted at), and are evaluated by COCO mAP@[.5:.95] and mAP@.5 (pycocotools).
Each task has one headline metric (``headline_metric``: top-1, mIoU, mAP) that the CLI and
``slimkit run`` report and compare.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Collection

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from slimkit import registry, runtime
from slimkit.artifacts import (CheckpointError, check_kwargs_fixed_by_plan, load_checkpoint, load_weights, plan_of,
                               write_checkpoint)
from slimkit.checkpoint import (classifier_of, full_model_weights, head_classes, missing_checkpoint, parent_shape,
                                weights_fingerprint)
from slimkit.data import DEFAULT_DATASET, load_data, make_loader, takes_augment
from slimkit.errors import PlanError, SlimkitError
from slimkit import validate as limits
from slimkit.files import (RUN_RECIPE_NAME, Output, atomic_write_text, check_outputs, folder_lock, is_json_with, plot_of,
                           same_path)
from slimkit.generator import (build_model, check_not_widened, choose_channels, full_plan, generate, verified_plan,
                               with_num_classes)
from slimkit.models.tasks import set_detector_input_size
from slimkit.plan import ChannelPlan, load_plan
from slimkit.plots import TRAINING, plot_training
from slimkit.runtime import all_reduce_sum, autocast, out_of_place_activations, place_batch, place_model
from slimkit.task_losses import (IGNORE_INDEX, class_scores, detection_loss, evaluate_detection, evaluate_segmentation,
                                 segmentation_output_loss, to_device)
from slimkit.validate import check_callable, check_number, check_type

__all__ = ["TrainConfig", "scratch_b_epochs", "scratch_b_cap", "train", "SCHEDULES", "FINETUNE", "FINETUNE_LR",
           "FINETUNE_EPOCHS", "INITS", "TASK_DATA", "HEADLINE_METRICS", "headline_metric",
           "check_task_data", "check_task_options"]

SCHEDULES = ("fixed", "scratch-e", "scratch-b")  # how many epochs a pruned model trains (Rethinking)
# Scratch-B's stretch past which a plan is more likely wrong than meant (a plan at 5% of the full
# model's MACs already trains 20x as long); beyond it, train with --schedule fixed and say how long.
MAX_SCRATCH_B_STRETCH = 20.0
FINETUNE = "finetune"  # inherited weights: --epochs at a constant LR
FINETUNE_LR = 0.001  # Rethinking's official fine-tuning LR (CIFAR and ImageNet)
FINETUNE_EPOCHS = 40  # ... and its CIFAR epochs (a quarter of the parent's 160; 20 on ImageNet)
INITS = ("scratch", "inherit")  # fresh weights from G, or the kept channels of a trained full model
# What a segmentation or detection model trains on (the first: its default), and what those sets hold.
TASK_DATA = {"segmentation": ("shapes", "voc:PATH"), "detection": ("shapes", "coco:PATH", "voc:PATH")}
_TASK_LABELS = {"segmentation": "masks", "detection": "boxes"}
# The one number each task's results are compared by: (metrics.json key of the final epoch, its name).
HEADLINE_METRICS = {"classification": ("test_top1", "test top-1"), "segmentation": ("test_miou", "test mIoU"),
                    "detection": ("test_map", "test mAP@[.5:.95]")}


def scratch_b_cap(data: str) -> float | None:
    """Rethinking's cap on Scratch-B's stretch: 2x on ImageNet (ImageFolder data here), none on
    CIFAR (and the other small in-memory sets: Fashion-MNIST, synthetic)."""
    return 2.0 if data.startswith("imagefolder:") else None


def scratch_b_epochs(epochs: int, full_flops: int, plan_flops: int, cap: float | None = 2.0) -> int:
    """Scratch-B (Liu et al. 2019): the same total compute as training the full model for
    ``epochs`` — epochs × full / pruned FLOPs — but at most ``cap`` × epochs when a cap is given
    (their ImageNet rule; ``scratch_b_cap`` picks it from the data)."""
    for name, value in (("epochs", epochs), ("full_flops", full_flops), ("plan_flops", plan_flops)):
        check_type("scratch_b_epochs", name, value, int, "a whole number")
    check_type("scratch_b_epochs", "cap", cap, (int, float, type(None)), "a number or None")
    if plan_flops <= 0 or full_flops <= 0:
        raise ValueError("FLOPs must be positive")
    factor = full_flops / plan_flops if cap is None else min(full_flops / plan_flops, cap)
    return max(epochs, math.ceil(epochs * factor - 1e-9))


@dataclass
class TrainConfig:
    data: str | None = None  # None: the model's task's default (DEFAULT_DATASET for a classifier, TASK_DATA's first)
    data_dir: str | None = None
    epochs: int = 30  # the full model's epochs; Scratch-B stretches them
    schedule: str = "scratch-e"  # scratch-e | scratch-b | fixed
    batch_size: int = 128
    lr: float | None = None  # default: 0.05 × batch / 256 (paper: 0.05 at batch 256, cosine)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    no_decay_bn_bias: bool = True
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # CUDA only: bf16 autocast
    channels_last: bool = True  # NHWC on every device (slimkit/runtime.py says why)
    compile: bool = False
    workers: int = 4
    max_steps_per_epoch: int | None = None  # for smoke tests and quick looks
    accum_steps: int = 1  # gradient accumulation: a small machine reproduces a large global batch
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch
    init: str = "scratch"  # scratch | inherit (the kept channels of init_from)
    init_from: str | None = None  # checkpoint of the trained full model, for init="inherit"

    def base_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return FINETUNE_LR if self.schedule == FINETUNE else 0.05 * self.batch_size / 256


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_top1: float
    test_top5: float
    lr: float
    seconds: float
    images_per_second: float


@dataclass
class TrainResult:
    out_dir: Path
    epochs: int
    metrics: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------- the loop
def _param_groups(model: nn.Module, weight_decay: float, no_decay_bn_bias: bool) -> list[dict]:
    if not no_decay_bn_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# Warm-up takes at most this share of a run: one warm-up epoch is right for 30 epochs, but a 1-epoch
# run would spend all of it warming up (and end where the LR has just peaked).
MAX_WARMUP_SHARE = 0.1


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, epochs: int) -> int:
    """Steps of linear warm-up: ``warmup_epochs``, capped at MAX_WARMUP_SHARE of the run."""
    return min(round(warmup_epochs * steps_per_epoch), int(MAX_WARMUP_SHARE * epochs * steps_per_epoch))


def _scheduler(opt: torch.optim.Optimizer, warmup_steps: int, total_steps: int, constant: bool = False):
    """Linear warm-up then cosine to zero, stepped per iteration (torchvision's reference); or, for
    fine-tuning, the LR held constant (Rethinking's)."""
    if constant:
        return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps - warmup_steps))
    if warmup_steps <= 0:
        return cosine
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(opt, [warm, cosine], milestones=[warmup_steps])


def _micro_batches(x, y, parts: int) -> list[tuple]:
    """A batch split into ``parts`` micro-batches: tensors along dim 0, a detector's lists of images and
    of targets into consecutive runs."""
    if isinstance(x, torch.Tensor):
        return list(zip(x.tensor_split(parts), y.tensor_split(parts)))
    bounds = torch.arange(len(x)).tensor_split(parts)
    return [(x[int(b[0]):int(b[-1]) + 1], y[int(b[0]):int(b[-1]) + 1]) for b in bounds if len(b)]


def train_one_epoch(model, loader, opt, sched, cfg: TrainConfig, device, progress=None, task=None,
                    segmentation: bool = False, detection: bool = False):
    """One pass. ``loader`` yields this process's share of each global batch; it is split into
    ``cfg.accum_steps`` micro-batches whose gradients add up (DDP syncs only on the last one).
    Returns the mean loss, the accuracy (of pixels, for ``segmentation``; None for ``detection``), the
    images seen and seconds."""
    model.train()
    total_loss = correct = seen = images = 0
    start = time.perf_counter()
    accum = max(1, cfg.accum_steps)
    for step, (x, y) in enumerate(loader):
        if cfg.max_steps_per_epoch is not None and step >= cfg.max_steps_per_epoch:
            break
        if detection:  # lists of images and of target dicts: each image is a sample
            x, y = to_device(list(x), device), to_device(list(y), device)
            samples = len(x)
        else:
            x, y = place_batch(x, device, cfg.channels_last), y.to(device, non_blocking=True)
            samples = int((y != IGNORE_INDEX).sum()) if segmentation else y.numel()  # void pixels are no samples
        opt.zero_grad(set_to_none=True)
        chunks = _micro_batches(x, y, accum)
        for i, (xm, ym) in enumerate(chunks):
            sync = i == len(chunks) - 1 or not hasattr(model, "no_sync")
            if detection:
                with (contextlib.nullcontext() if sync else model.no_sync()), autocast(device, cfg.amp):
                    loss = detection_loss(model, (xm, ym)).float()
                (loss * (len(xm) / samples)).backward()
                total_loss += loss.item() * len(xm)
                continue
            with (contextlib.nullcontext() if sync else model.no_sync()), autocast(device, cfg.amp):
                logits = model(xm)
            if segmentation:  # every labelled pixel is a sample
                loss = segmentation_output_loss(logits, ym)
                counted = ym != IGNORE_INDEX
                hits = int(((logits["out"] if isinstance(logits, dict) else logits).argmax(1) == ym)[counted].sum())
                part = int(counted.sum())
                if part == 0:  # a micro-batch of void pixels only: its mean loss is 0/0, and it teaches nothing
                    continue
            else:
                logits = class_scores(logits, model)
                loss = F.cross_entropy(logits.float(), ym, label_smoothing=cfg.label_smoothing)
                hits = int((logits.argmax(1) == ym).sum())
                part = ym.numel()
            (loss * (part / samples)).backward()  # the mean over the whole local batch
            total_loss += loss.item() * part
            correct += hits
        opt.step()
        sched.step()
        seen += samples
        images += len(x)
        if progress is not None:
            rate = images / max(time.perf_counter() - start, 1e-9)
            progress.update(task, advance=1, description=(
                f"loss {total_loss / seen:.3f}  " + ("" if detection else f"acc {correct / seen:.3f}  ")
                + f"{rate:.0f} img/s"))
    secs = time.perf_counter() - start
    total_loss, correct, seen, images = all_reduce_sum(total_loss, correct, seen, images, device=device)
    return total_loss / max(seen, 1), None if detection else correct / max(seen, 1), int(images), secs


def evaluate(model, loader, device, amp: bool = True, channels_last: bool = True) -> tuple[float, float, float]:
    """Loss, top-1 and top-5 accuracy (top-k capped at the number of classes)."""
    model.eval()
    total_loss = top1 = top5 = seen = 0
    with torch.no_grad(), autocast(device, amp):
        for x, y in loader:
            x, y = place_batch(x, device, channels_last), y.to(device, non_blocking=True)
            logits = class_scores(model(x), model).float()
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            k = min(5, logits.shape[1])
            topk = logits.topk(k, dim=1).indices
            top1 += int((topk[:, 0] == y).sum())
            top5 += int((topk == y[:, None]).any(1).sum())
            seen += y.numel()
    total_loss, top1, top5, seen = all_reduce_sum(total_loss, top1, top5, seen, device=device)
    return total_loss / max(seen, 1), top1 / max(seen, 1), top5 / max(seen, 1)


def headline_metric(arch: str) -> tuple[str, str]:
    """(metrics.json key, its name) of the number ``arch``'s training is judged by: test top-1 for a
    classifier, mIoU for a segmenter, mAP@[.5:.95] for a detector."""
    return HEADLINE_METRICS[registry.model_task(arch)]


def _data_kind(name: str) -> str:
    """A data name as TASK_DATA lists it: 'coco:/data/x' -> 'coco:PATH'."""
    prefix, colon, _ = name.partition(":")
    return f"{prefix}:PATH" if colon else name


def check_task_data(task: str, data: str, option: str = "--data") -> None:
    """A segmentation or detection model on data with its labels (masks, boxes), a classifier on data
    with class labels: one line naming the data to use otherwise (``option``: what the user set)."""
    dense = TASK_DATA.get(task)
    if dense is not None and _data_kind(data) not in dense:
        raise SlimkitError(f"a {task} model trains on {_TASK_LABELS[task]}: {option} {' or '.join(dense)} (the first "
                           f"is its default), not {data}")
    if dense is None and any(_data_kind(data) in sets for sets in TASK_DATA.values()):
        raise SlimkitError(f"{option} {data} holds masks or boxes, for segmentation and detection models; train a "
                           "classifier on fashion-mnist, cifar10, cifar100 or imagefolder:PATH")


_DEFAULT_CONFIG = TrainConfig()  # read only: what "not set on purpose" compares against


def was_asked(cfg: TrainConfig, key: str, asked: Collection[str] | None) -> bool:
    """Whether the caller set ``cfg.key`` on purpose: named in ``asked`` (the CLI passes the options typed,
    defaults included), or for None, set to something other than TrainConfig's default."""
    return key in asked if asked is not None else getattr(cfg, key) != getattr(_DEFAULT_CONFIG, key)


def check_task_options(task: str, cfg: TrainConfig, asked: Collection[str] | None, augmentable: bool = True,
                       option: str = "--label-smoothing") -> None:
    """Options the model's task or data does not use are refused when the caller set them (``asked``, or
    for None a value other than TrainConfig's default), instead of being accepted and ignored: label
    smoothing (a segmentation or detection model trains on its task's own loss), a warm-up typed for
    ``--schedule finetune`` (constant LR), and augmentation
    (``augmentable`` False: the data is not augmented, as boxes and the shapes data are not; see
    :func:`slimkit.data.takes_augment`). ``option`` names label smoothing as the caller set it."""
    def chosen(key: str) -> bool:
        return was_asked(cfg, key, asked)

    if task != "classification" and cfg.label_smoothing and chosen("label_smoothing"):
        raise SlimkitError(f"{option} {cfg.label_smoothing:g} applies to classifiers: a {task} model trains "
                           f"on its task's own loss, which is not smoothed; drop the option")
    if cfg.schedule == FINETUNE and cfg.warmup_epochs and asked is not None and "warmup_epochs" in asked:
        # typed only: a recipe's train.warmup_epochs is its full and scratch trainings', and reaches the
        # fine-tuning's config too
        raise SlimkitError(f"--warmup-epochs {cfg.warmup_epochs:g} applies to training from scratch: --schedule "
                           f"finetune trains at a constant LR with no warm-up; drop the option")
    if cfg.augment and not augmentable and chosen("augment"):
        why = "every shapes image is drawn new" if cfg.data == "shapes" else "its boxes would have to follow a crop"
        raise SlimkitError(f"--augment: {cfg.data} is not augmented when a {task} model trains on it ({why}); "
                           "drop the option")


def _parent_classes(path: str | None, arch: str) -> int | None:
    """The classes of the model whose weights ``path`` holds, 0 where it holds no classifier (a backbone), None
    where it has ``arch``'s default head or cannot be told (an unreadable file is reported where the weights
    are loaded)."""
    try:
        return parent_shape(path, arch)[0] if path else None
    except SlimkitError:
        return None


def _default_classes(plan: ChannelPlan) -> int | None:
    """The classes of ``plan``'s architecture built without a num_classes (its default head), None where it has
    no linear head or no default (a user's factory whose num_classes must be given)."""
    try:
        return head_classes(build_model(plan.arch, {k: v for k, v in plan.arch_kwargs.items() if k != "num_classes"}))
    except SlimkitError:
        return None


def _sized_for(plan: ChannelPlan, classes: int) -> tuple[ChannelPlan, str]:
    """``plan`` with its head sized for ``classes``, and what that did to its MACs, for the log."""
    before = verified_plan(plan).flops
    plan = with_num_classes(plan, classes)
    return plan, f"MACs {before / 1e6:.1f}M -> {plan.flops / 1e6:.1f}M"


def _inherit_mismatch(held: str, classes: int | None, cfg: TrainConfig, data_classes: int, arch: str,
                      classifier: bool) -> PlanError:
    """A plan whose head does not fit the data, to inherit into: pruning again with --num-classes would not
    fit the parent's classifier either, so the advice is about the data or the parent. Why no new rows: the
    model is a detector or segmenter, takes no num_classes, or (a classifier that takes one) slimkit finds no
    output layer to resize."""
    if not classifier:
        why = (f"new class rows only to a classifier, and {arch} is a {registry.model_task(arch)} model (its class "
               "outputs keep the parent's classes)")
    elif registry.accepts(arch, "num_classes"):
        why = ("the classifier new rows only to a classifier whose output layer it finds (timm's get_classifier(), "
               f"else the last nn.Linear; {arch}'s is neither)")
    else:
        why = "the classifier new rows only to a model built with a num_classes argument"
    return PlanError(f"{held} but {cfg.data} has {data_classes}: --init inherit gives {why}, "
                     f"so fine-tune on data with its {f'{classes} ' if classes else ''}classes, or prune and inherit "
                     f"from a model trained on {cfg.data}")


def _with_new_classifier(fresh: nn.Module, parent: nn.Module) -> nn.Module:
    """``fresh`` (the plan built for the data's classes) with every weight of ``parent`` (the same plan built
    for the parent's classes) whose shape the classes do not change: fine-tuning onto new classes. What the
    classes shape is the classifier wherever it is: a last linear, a conv head (SqueezeNet), a distilled
    model's two heads, GoogLeNet's auxiliary classifiers."""
    mine, theirs = fresh.state_dict(), parent.state_dict()
    if set(mine) != set(theirs):  # one plan, two numbers of classes: only shapes may differ
        other = sorted(set(mine) ^ set(theirs))[0]
        raise PlanError(f"the parent's network and the plan's differ in more than the classifier ({other}): fine-tune "
                        "on data with the parent's classes")
    fresh.load_state_dict({k: theirs[k] if theirs[k].shape == v.shape else v for k, v in mine.items()})
    return fresh


def _with_stand_in_classifier(path: str, plan: ChannelPlan) -> dict[str, torch.Tensor]:
    """The weights of a backbone saved without its classifier (timm's ``num_classes=0``, ``fc = nn.Identity()``) in
    ``path``, with a fresh stand-in for every head weight the file lacks (a whole ``classifier`` Sequential too)
    and for every weight the number of classes shapes (GoogLeNet's auxiliary heads): what choosing and slicing
    the channels of the full model reads. The head is replaced by :func:`_with_new_classifier` afterwards."""
    full = build_model(plan.arch, plan.arch_kwargs)
    head = classifier_of(full)
    names = {id(m): n for n, m in full.named_modules()}
    if not isinstance(head, nn.Module) or id(head) not in names:
        raise PlanError(f"{path} holds no classifier and slimkit cannot find {plan.arch}'s to give it a new one: "
                        "pass the checkpoint with its classifier")
    top = names[id(head)].split(".")[0]  # the head's module tree: a last linear's Sequential too
    mine = full.state_dict()
    other = build_model(plan.arch, {**plan.arch_kwargs, "num_classes": (plan.num_classes or 1) + 1}).state_dict()
    by_classes = {k for k, v in mine.items() if k in other and other[k].shape != v.shape}
    theirs = full_model_weights(path, plan.arch, plan.arch_kwargs)
    stand_in = {k: v for k, v in mine.items() if k in by_classes or (k.startswith(f"{top}.") and k not in theirs)}
    return {**theirs, **stand_in}


def _check_resumed_model(plan_or_arch: str | ChannelPlan | None, plan: ChannelPlan, out: Path) -> None:
    """--resume continues the checkpoint's model: a different plan or architecture is an error, not
    something to ignore silently."""
    if plan_or_arch is None:
        return
    given = plan_of(plan_or_arch)
    if given is not None:
        given = given.sized_as(plan)
        same = given.builds_same_network_as(plan)
        what = "this plan" + (" (it keeps other channels of the parent)" if given.has_keep and plan.has_keep and
                              given.keep != plan.keep else "")
    else:
        same = registry.resolve(str(plan_or_arch)).canonical == plan.arch and all(
            g["width"] == g["full"] for g in plan.groups.values())
        what = f"the full {plan_or_arch}"
    if not same:
        held = f"{plan.arch} ({plan.method}, {plan.flops / 1e6:.1f}M MACs)" if plan.flops else plan.arch
        raise SlimkitError(f"--resume: {out} holds a run of {held}, not {what}; resume it with its own plan "
                           f"({out / 'plan.json'}) or choose another --out")


def check_config(cfg: TrainConfig) -> None:
    """Every number of the config finite and in range (the CLI checks the same ranges; this is for
    Python callers and recipes), and the init and schedule consistent, before a folder is created or
    data is read."""
    check_type("train", "cfg", cfg, TrainConfig, "a slimkit.train.TrainConfig")
    for name in ("data", "data_dir", "init_from"):  # written to config.json after the first epoch: text only
        check_type("train", f"cfg.{name}", getattr(cfg, name), (str, type(None)), "a string (a name or a path), or None")
    for name in ("schedule", "init", "device"):
        check_type("train", f"cfg.{name}", getattr(cfg, name), str, "a string")
    for name in ("nesterov", "no_decay_bn_bias", "augment", "amp", "channels_last", "compile", "sync_bn"):
        check_type("train", f"cfg.{name}", getattr(cfg, name), bool, "True or False")
    if cfg.schedule not in (*SCHEDULES, FINETUNE):
        raise SlimkitError(f"unknown --schedule '{cfg.schedule}': choose one of {', '.join((*SCHEDULES, FINETUNE))}")
    if cfg.init not in INITS:
        raise SlimkitError(f"unknown --init '{cfg.init}': choose one of {', '.join(INITS)}")
    if cfg.init == "inherit" and not cfg.init_from:
        raise SlimkitError("--init inherit needs the trained full model: add --from CKPT (its checkpoint.pt)")
    if cfg.init == "scratch" and cfg.init_from:
        raise SlimkitError("--from names weights to inherit: add --init inherit (or drop --from)")
    if cfg.schedule == FINETUNE and cfg.init != "inherit":
        raise SlimkitError("--schedule finetune continues trained weights: add --init inherit --from CKPT "
                           "(or train from scratch with --schedule scratch-e / scratch-b)")
    for name, value, allowed in (
            ("epochs", cfg.epochs, limits.COUNT), ("batch_size", cfg.batch_size, limits.COUNT), ("lr", cfg.lr, limits.LR),
            ("momentum", cfg.momentum, limits.Range(0.0, 1.0, high_open=True)),
            ("weight_decay", cfg.weight_decay, limits.WEIGHT_DECAY),
            ("label_smoothing", cfg.label_smoothing, limits.LABEL_SMOOTHING),
            ("warmup_epochs", cfg.warmup_epochs, limits.WARMUP_EPOCHS), ("seed", cfg.seed, limits.SEED),
            ("workers", cfg.workers, limits.Range(0, 256, integer=True)),
            ("max_steps_per_epoch", cfg.max_steps_per_epoch, limits.COUNT),
            ("accum_steps", cfg.accum_steps, limits.Range(1, 65_536, integer=True))):
        check_number(f"train: 'cfg.{name}'", value, allowed)  # the CLI checked its options by their own names


def train(plan_or_arch: str | ChannelPlan, out_dir: str | os.PathLike, cfg: TrainConfig, *, resume: bool = False,
          extend_to: int | None = None, progress: Any | None = None, log: Any | None = None,
          force: bool = False, arch_kwargs: dict[str, Any] | None = None,
          asked: Collection[str] | None = None) -> TrainResult:
    """Train ``plan_or_arch`` (a plan, a plan file, or an architecture name: its full model, built with
    ``arch_kwargs``) from scratch.

    ``resume`` continues the run in ``out_dir``; with ``extend_to`` (more epochs than it was started
    with, finished or not) the cosine schedule is stretched to end there instead, from the step reached.
    A resumed run keeps the checkpoint's settings and says which of ``asked`` (the ``cfg`` fields the
    caller set on purpose; the CLI passes the options typed) it overrode; None: the fields that differ
    from TrainConfig's defaults.
    A new run refuses to replace files in ``out_dir`` that are not a training run's (``force`` replaces them)."""
    if isinstance(cfg, TrainConfig):  # a Path is a path: kept as text, as the config file records it
        cfg = replace(cfg, **{name: os.fspath(getattr(cfg, name)) for name in ("data_dir", "init_from")
                              if isinstance(getattr(cfg, name), os.PathLike)})
    check_type("train", "plan_or_arch", plan_or_arch, (str, os.PathLike, ChannelPlan),
               "a ChannelPlan, a plan file path or an architecture name like 'resnet20'")
    check_type("train", "out_dir", out_dir, (str, os.PathLike), "a folder path (str or os.PathLike)")
    for name, flag in (("resume", resume), ("force", force)):
        check_type("train", name, flag, bool, "True or False")
    check_type("train", "arch_kwargs", arch_kwargs, (dict, type(None)), "a dict of factory arguments, or None")
    check_type("train", "asked", asked, (list, tuple, set, frozenset, type(None)), "a collection of TrainConfig "
               "field names, or None")
    check_callable("train", "log", log, 1, "a function taking one string (e.g. print)")
    check_config(cfg)
    if not str(out_dir).strip():
        raise SlimkitError("the run folder (--out) is empty: give a folder name")
    writer = runtime.launch_env()[0] == 0  # under torchrun, rank 0 alone writes the folder
    with folder_lock(out_dir, "train") if writer else contextlib.nullcontext():
        return _train(plan_or_arch, out_dir, cfg, resume=resume, extend_to=extend_to, progress=progress, log=log,
                      force=force, arch_kwargs=arch_kwargs, asked=asked)


def run_outputs(out: Path, plan: ChannelPlan | None) -> list[Output]:
    """What a new training run writes into ``out``; a file already there may be replaced only when it is
    that file of an earlier run (for plan.json: this very plan), else it is the user's."""
    def same_plan(path: Path) -> bool:
        try:
            old = load_plan(path)
        except PlanError:
            return False
        return plan is not None and plan.builds_same_network_as(old)

    return [Output(out / "checkpoint.pt", "the checkpoint"),  # a new run: any file there is not ours to replace
            Output(out / "plan.json", "the trained plan", same_plan),
            Output(out / "config.json", "the training config", is_json_with("epochs_run", "schedule", "seed")),
            Output(out / "metrics.json", "the training metrics", is_json_with("history", "final", "epochs")),
            Output(out / "curves.png", "the training curves", plot_of(TRAINING))]


def _train(plan_or_arch: str | ChannelPlan, out_dir: str | os.PathLike, cfg: TrainConfig, *, resume: bool,
           extend_to: int | None, progress: Any | None, log: Any | None, force: bool = False,
           arch_kwargs: dict[str, Any] | None = None, asked: Collection[str] | None = None) -> TrainResult:
    device, dist_info = runtime.local_device(cfg.device)
    main = dist_info.is_main
    say = (log or (lambda _m: None)) if main else (lambda _m: None)
    progress = progress if main else None
    out = Path(out_dir)
    if (out / RUN_RECIPE_NAME).is_file():  # its plan.json belongs to the run's summary and latency report
        raise SlimkitError(f"{out} is a `slimkit run` folder: training into it would replace its plan.json; "
                           f"choose another --out (the run trains into {out / 'train'} itself)")
    ckpt_path = out / "checkpoint.pt"
    ckpt = None
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        saved = dict(ckpt["config"])
        if "budget" in saved and "schedule" not in saved:  # written before the field was renamed
            saved["schedule"] = saved.pop("budget")
        how = ("device", "workers", "accum_steps", "sync_bn")  # how to run it may change on resume; what to run may not
        for key, value in asdict(cfg).items():
            if key in saved and key not in how and saved[key] != value and was_asked(cfg, key, asked) \
                    and not (key == "epochs" and extend_to is not None):
                say(f"resume: using the checkpoint's {key}={saved[key]!r} (asked {value!r})")
        cfg = TrainConfig(**{**asdict(cfg), **{k: v for k, v in saved.items() if k in asdict(cfg) and k not in how}})
        check_config(cfg)  # what the checkpoint says is checked like what the user asked
        if extend_to is not None and extend_to != cfg.epochs:
            if extend_to < cfg.epochs:
                raise SlimkitError(f"--resume --epochs {extend_to}: the run was started for {cfg.epochs} epochs and "
                                   "cannot be shortened; train a new run with another --out")
            cfg = TrainConfig(**{**asdict(cfg), "epochs": extend_to})
        else:
            extend_to = None
        plan = ckpt["plan"]
        _check_resumed_model(plan_or_arch, plan, out)
        if main:  # the run's other files are rewritten too: a user's file put in their place is not replaced
            check_outputs([o for o in run_outputs(out, plan) if o.path != ckpt_path], force=force)
    elif resume:
        raise CheckpointError(f"--resume: no checkpoint in {out}; drop --resume to start a new run")
    elif cfg.init == "inherit" and ckpt_path.exists() and same_path(ckpt_path, cfg.init_from):
        raise SlimkitError(f"--from {cfg.init_from} is where this run writes its checkpoint: training into {out} "
                           "would replace the parent it inherits from; choose another --out")
    elif ckpt_path.exists():
        raise SlimkitError(f"{out} already holds a run (checkpoint.pt): pass --resume to continue it, "
                           "or choose another --out")
    else:
        plan = plan_of(plan_or_arch)  # None for an architecture name: the full model, once the data gives the classes
        given_classes = plan.num_classes if plan is not None else None  # what --resume recognises the plan by
        if main:
            check_outputs(run_outputs(out, plan), force=force)
        if cfg.init == "inherit" and (problem := missing_checkpoint(cfg.init_from)):  # a resumed run holds its weights
            raise CheckpointError(f"--from: {problem}")
        if cfg.init == "inherit" and plan is not None:
            check_not_widened(plan)  # before the data is loaded

    task = registry.model_task(plan.arch if plan is not None else str(plan_or_arch))
    segmentation, detection = task == "segmentation", task == "detection"
    if plan is not None:
        check_kwargs_fixed_by_plan(plan, str(plan_or_arch) if isinstance(plan_or_arch, (str, Path)) else "given",
                                   "plan", arch_kwargs)
        size = tuple(plan.input_size)
    else:
        size = registry.default_input_size(str(plan_or_arch))
    if cfg.data is None:
        cfg = replace(cfg, data=TASK_DATA[task][0] if task in TASK_DATA else DEFAULT_DATASET)
    check_task_data(task, cfg.data)
    data = load_data(cfg.data, data_dir=cfg.data_dir, input_size=size, val_size=0, seed=cfg.seed, detection=detection)
    check_task_options(task, cfg, asked, augmentable=takes_augment(data.train))
    if plan is None:
        registry.arch_kwargs_for(data.num_classes, None, arch_kwargs, classes_from=cfg.data)  # --arch-kwargs' classes
        plan = full_plan(str(plan_or_arch), num_classes=data.num_classes, input_size=size, arch_kwargs=arch_kwargs)
    classifier = task == "classification"
    # Fine-tuning a parent trained on other classes (an ImageNet checkpoint onto the user's 10 classes): every
    # weight is inherited but the classifier's, which gets rows for the data's classes, as timm's
    # create_model(pretrained=True, num_classes=N) does. new_head holds the parent's classes then.
    new_head = None
    head_note = None  # said once the parent's weights are in: a refusal on the way must not follow a claim they are
    if cfg.init == "inherit" and ckpt is None and classifier and registry.accepts(plan.arch, "num_classes"):
        parent = _parent_classes(cfg.init_from, plan.arch)
        plan_classes = plan.num_classes
        default = _default_classes(plan) if parent is None or not plan_classes else None  # one build
        if parent is None:  # the architecture's default head
            parent = default
        rows = plan_classes or default
        macs = None
        if parent is not None and rows != data.num_classes:
            plan, macs = _sized_for(plan, data.num_classes)
        if parent is not None and parent != data.num_classes:
            new_head = parent
            if parent == 0 and plan.has_keep:  # its channels were ranked on a whole model, not on this backbone
                raise PlanError(f"{cfg.init_from} holds no classifier, but the plan's channels were chosen on "
                                f"{plan.criterion.get('weights', 'a trained model')}: inherit from that checkpoint, or "
                                "give a widths-only plan (`slimkit prune` without --weights) to fine-tune this backbone")
            held = "holds no classifier (a backbone)" if parent == 0 else f"was trained for {parent} classes"
            head_note = (f"classes: {cfg.init_from} {held} and {cfg.data} has {data.num_classes}: every weight but "
                         f"the classifier's is inherited, and the classifier gets {data.num_classes} new rows "
                         f"(fine-tuning onto new classes" + (f"; {macs})" if macs else ")"))
        elif macs:
            held = (f"the plan is for {rows} classes" if plan_classes else
                    f"the plan keeps {plan.arch}'s default classifier" + (f" ({rows} classes)" if rows else ""))
            head_note = (f"classes: {held}; {cfg.init_from} has {cfg.data}'s {data.num_classes} classes, so the head "
                         f"takes them ({macs})")
    if plan.num_classes not in (None, data.num_classes):
        if cfg.init == "inherit":
            raise _inherit_mismatch(f"the plan is for {plan.num_classes} classes", plan.num_classes, cfg, data.num_classes,
                                    plan.arch, classifier)
        if not (plan.criterion and classifier and registry.accepts(plan.arch, "num_classes")):
            raise PlanError(f"the plan is for {plan.num_classes} classes but {cfg.data} has {data.num_classes}: "
                            "prune again with this data (or `slimkit prune ... --num-classes N`)")
        # a plan cut from a parent holds the parent's classes, not a choice (Scratch-E/B of an ImageNet
        # parent's cut, on the user's data): from scratch the head is random either way
        held = plan.num_classes
        plan, macs = _sized_for(plan, data.num_classes)
        say(f"classes: the plan holds its parent's {held} classes; training from scratch sizes it for {cfg.data}'s "
            f"{data.num_classes} ({macs})")
    if plan.num_classes is None and not registry.is_user_code(plan.arch):  # user models build their own head
        rows = head_classes(build_model(plan.arch, plan.arch_kwargs)) if classifier else None
        if rows != data.num_classes:  # a default head with the data's classes (the CIFAR nets' 10) trains as is
            held = f"the plan keeps {plan.arch}'s default classifier" + (f" ({rows} classes)" if rows else "")
            if classifier and registry.accepts(plan.arch, "num_classes") and cfg.init == "scratch":
                # from scratch the head is random either way (as with `slimkit train ARCH`); inheriting, it was
                # sized above
                plan, macs = _sized_for(plan, data.num_classes)
                say(f"classes: {held}; training from scratch sizes it for {cfg.data}'s {data.num_classes} classes "
                    f"({macs})")
            elif cfg.init == "inherit":
                raise _inherit_mismatch(held, rows, cfg, data.num_classes, plan.arch, classifier)
            else:
                raise PlanError(f"{held}; prune again with --num-classes {data.num_classes} for {cfg.data} (a plan "
                                f"learned with --method scratch --data {cfg.data} gets it too)")

    plan = verified_plan(plan, f"the plan in {ckpt_path}" if ckpt is not None else None)  # counts from widths
    full_flops = plan.search["full_flops"]
    epochs = cfg.epochs
    if cfg.schedule == "scratch-b" and plan.flops:
        epochs = scratch_b_epochs(cfg.epochs, full_flops, plan.flops, cap=scratch_b_cap(cfg.data))
        if epochs > MAX_SCRATCH_B_STRETCH * cfg.epochs:
            raise SlimkitError(f"--schedule scratch-b would train {epochs:,} epochs ({full_flops / plan.flops:.0f}x the "
                               f"full model's {cfg.epochs}: the plan keeps {100 * plan.flops / full_flops:.2g}% of its "
                               f"MACs), beyond the {MAX_SCRATCH_B_STRETCH:g}x slimkit allows; use --schedule fixed "
                               "--epochs N to train that plan for N epochs")
    say(f"data: {data.description}")
    if cfg.schedule == FINETUNE:
        say(f"schedule finetune: {epochs} epoch{'' if epochs == 1 else 's'} at a constant LR of {cfg.base_lr():g}")
    else:
        say(f"schedule {cfg.schedule}: {epochs} epoch{'' if epochs == 1 else 's'} (full model: {cfg.epochs}; plan at "
            f"{100 * plan.flops / full_flops:.1f}% of its FLOPs)")

    world, accum = dist_info.world_size, max(1, cfg.accum_steps)
    if cfg.batch_size % (world * accum):
        raise SlimkitError(f"--batch-size {cfg.batch_size} (the global batch) must divide by {world} process(es) x "
                           f"{accum} accumulation step(s); pick a multiple of {world * accum}")
    if world > 1 or accum > 1:
        say(f"global batch {cfg.batch_size} = {world} process(es) x {accum} accumulation step(s) x "
            f"{cfg.batch_size // (world * accum)} images; LR {cfg.base_lr():g} is for the global batch"
            + (f"; {dist_info.backend} process group" if world > 1 else ""))

    torch.manual_seed(cfg.seed)
    if cfg.init == "inherit" and ckpt is None:
        narrowed = any(g["width"] < g["full"] for g in plan.groups.values())
        # the head the parent has; a backbone without one is given a stand-in, replaced below like any other
        parent_plan = plan if new_head in (None, 0) else with_num_classes(plan, new_head)
        weights = cfg.init_from if new_head != 0 else _with_stand_in_classifier(cfg.init_from, plan)
        if not parent_plan.has_keep:  # a widths-only plan (e.g. the default method's): keep the largest filters
            parent_plan = choose_channels(parent_plan, weights, "l1", weights_name=cfg.init_from)
            if narrowed:  # the full model (an architecture name) keeps every channel: nothing was chosen
                say(f"init: the plan records widths only; keeping each group's channels with the largest filter "
                    f"L1 norm in {cfg.init_from}")
        model = generate(parent_plan, weights=weights)
        if new_head is None:
            plan = parent_plan
        else:  # the same channels, the data's classifier
            plan = with_num_classes(parent_plan, data.num_classes)
            model = _with_new_classifier(generate(plan), model)
        if new_head == 0 and (plan.criterion or {}).get("fingerprint"):  # the backbone file's, not its stand-in's
            plan = plan.with_keep(plan.keep, {**plan.criterion, "fingerprint": weights_fingerprint(
                full_model_weights(cfg.init_from, plan.arch, plan.arch_kwargs))})
        if head_note:
            say(head_note)
        but = "" if new_head is None else " but the classifier's"
        say(f"init: inherited the kept channels' weights of {cfg.init_from}{but} ({plan.criterion['kind']} criterion)"
            if narrowed else f"init: every weight of {cfg.init_from}{but} (the plan keeps every channel)")
    else:
        model = generate(plan)
    if ckpt is None and plan.search.get("head_sized_for_data"):  # the plan given, however often resized on the way
        plan = replace(plan, search={**plan.search, "head_sized_from": given_classes})
    if detection:  # at the size its MACs were counted at, not the one its builder chose (320 for SSDlite)
        set_detector_input_size(model, (plan.input_size[1], plan.input_size[2]))
    if cfg.channels_last and registry.is_user_code(plan.arch) and \
            not runtime.runs_channels_last(model, torch.zeros(1, *plan.input_size)):
        cfg = replace(cfg, channels_last=False)
        say(f"layout: {type(model).__name__} fails on channels-last batches (a .view over a feature map, say): it "
            "trains in the NCHW layout its code needs (slower steps, the same maths)")
    model = place_model(model, device, cfg.channels_last)
    out_of_place_activations(model)
    if cfg.sync_bn and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif cfg.sync_bn:  # not refused: the same command runs alone and under torchrun
        say("--sync-bn: this is one process (no torchrun), so BatchNorm statistics are its own, as without it")
    train_loader = make_loader(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True,
                               augment=cfg.augment, num_workers=cfg.workers, detection=detection
                               ).shard(dist_info.rank, world)
    eval_batch = max(32 if detection else 256, cfg.batch_size)  # a detector keeps every image's boxes in memory
    test_loader = make_loader(data.test, eval_batch - eval_batch % world, shuffle=False, seed=cfg.seed,
                              num_workers=cfg.workers, detection=detection).shard(dist_info.rank, world)
    steps_per_epoch = len(train_loader) if cfg.max_steps_per_epoch is None else min(
        len(train_loader), cfg.max_steps_per_epoch)
    if steps_per_epoch == 0:  # no full batch: nothing would train, yet a checkpoint would be written
        raise SlimkitError(f"--batch-size {cfg.batch_size} is larger than the {len(data.train):,} training images of "
                           f"{cfg.data}: not one step would run; use --batch-size {len(data.train)} or less")
    lr = cfg.base_lr()
    opt = torch.optim.SGD(_param_groups(model, cfg.weight_decay, cfg.no_decay_bn_bias), lr=lr,
                          momentum=cfg.momentum, nesterov=cfg.nesterov)
    constant = cfg.schedule == FINETUNE
    warm = 0 if constant else warmup_steps(cfg.warmup_epochs, steps_per_epoch, epochs)
    if not constant and warm < round(cfg.warmup_epochs * steps_per_epoch):
        say(f"warm-up: {warm} steps ({warm / steps_per_epoch:.2g} epoch), not {cfg.warmup_epochs:g} epoch(s): "
            f"warm-up takes at most {MAX_WARMUP_SHARE:.0%} of a run")
    sched = _scheduler(opt, warm, epochs * steps_per_epoch, constant)
    metrics: list[dict[str, Any]] = []
    start_epoch = 0
    if ckpt is not None:
        load_weights(model, ckpt["model"], ckpt_path)
        try:
            opt.load_state_dict(ckpt["optimizer"])
            if extend_to is None:
                sched.load_state_dict(ckpt["scheduler"])
            else:  # the same schedule as a run started for the new length, replayed to the step reached
                was = opt.param_groups[0]["lr"]
                for group in opt.param_groups:
                    group["lr"] = group.pop("initial_lr")
                sched = _scheduler(opt, 0 if constant else warmup_steps(cfg.warmup_epochs, steps_per_epoch, epochs),
                                   epochs * steps_per_epoch, constant)
                with warnings.catch_warnings():  # replaying the schedule: no optimizer step is due
                    warnings.simplefilter("ignore", UserWarning)
                    for _ in range(ckpt["epoch"] * steps_per_epoch):
                        sched.step()
                if constant:  # fine-tuning: no schedule to stretch
                    say(f"extending to {epochs} epochs at the constant LR of {opt.param_groups[0]['lr']:.4g}")
                else:
                    say(f"extending to {epochs} epochs: the cosine schedule now ends at epoch {epochs}; LR {was:.4g} "
                        f"-> {opt.param_groups[0]['lr']:.4g} at epoch {ckpt['epoch']}")
            torch.set_rng_state(ckpt["rng"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{ckpt_path}: its optimizer, schedule or RNG state does not fit this run "
                                  f"({type(exc).__name__}); start a new run with another --out") from None
        metrics = ckpt["metrics"]
        start_epoch = ckpt["epoch"]
        say(f"resumed from {ckpt_path} after epoch {start_epoch}")
    trainee = model
    if world > 1:
        trainee = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    step_fn = torch.compile(trainee) if cfg.compile else trainee

    def write_run_files() -> None:  # with the first checkpoint: a run that fails before it leaves no folder
        plan_path = out / "plan.json"
        source = plan_or_arch if isinstance(plan_or_arch, (str, os.PathLike)) else None
        is_source = source is not None and plan_path.is_file() and same_path(plan_path, source)
        if not is_source and not (plan_path.is_file() and plan_path.read_text() == plan.to_json()):
            atomic_write_text(plan_path, plan.to_json())  # the plan trained from stays as the user wrote it
        atomic_write_text(out / "config.json", json.dumps({**asdict(cfg), "epochs_run": epochs,
                                                           "world_size": world}, indent=2))

    run_files_written = False
    epoch_task = progress.add_task("epochs", total=epochs, completed=start_epoch) if progress else None
    for epoch in range(start_epoch, epochs):
        train_loader.set_epoch(epoch)
        step_task = progress.add_task(f"epoch {epoch + 1}", total=steps_per_epoch) if progress else None
        loss, acc, seen, secs = train_one_epoch(step_fn, train_loader, opt, sched, cfg, device, progress, step_task,
                                                segmentation=segmentation, detection=detection)
        if progress is not None:
            progress.remove_task(step_task)
        if detection:
            scores = evaluate_detection(model, test_loader, device, data.num_classes, cfg.amp)
            metrics.append({"epoch": epoch + 1, "train_loss": round(loss, 5), "test_map": round(scores["map"], 5),
                            "test_map50": round(scores["map50"], 5), "lr": round(opt.param_groups[0]["lr"], 7),
                            "seconds": round(secs, 2), "images_per_second": round(seen / max(secs, 1e-9), 1)})
            say(f"epoch {epoch + 1}/{epochs}  loss {loss:.4f}  test mAP@[.5:.95] {scores['map']:.4f}  mAP@.5 "
                f"{scores['map50']:.4f}  ({metrics[-1]['images_per_second']:.0f} img/s)")
        elif segmentation:
            scores = evaluate_segmentation(model, test_loader, device, data.num_classes, cfg.amp, cfg.channels_last)
            metrics.append({"epoch": epoch + 1, "train_loss": round(loss, 5), "train_pixel_accuracy": round(acc, 5),
                            "test_loss": round(scores["loss"], 5), "test_miou": round(scores["miou"], 5),
                            "test_pixel_accuracy": round(scores["pixel_accuracy"], 5),
                            "test_iou": [None if v is None else round(v, 5) for v in scores["iou"]],
                            "lr": round(opt.param_groups[0]["lr"], 7), "seconds": round(secs, 2),
                            "images_per_second": round(seen / max(secs, 1e-9), 1)})
            say(f"epoch {epoch + 1}/{epochs}  loss {loss:.4f}  train pixel acc {acc:.4f}  test mIoU "
                f"{scores['miou']:.4f}  pixel acc {scores['pixel_accuracy']:.4f}  "
                f"({metrics[-1]['images_per_second']:.0f} img/s)")
        else:
            test_loss, top1, top5 = evaluate(model, test_loader, device, cfg.amp, cfg.channels_last)
            m = EpochMetrics(epoch + 1, round(loss, 5), round(acc, 5), round(test_loss, 5), round(top1, 5),
                             round(top5, 5), round(opt.param_groups[0]["lr"], 7), round(secs, 2),
                             round(seen / max(secs, 1e-9), 1))
            metrics.append(asdict(m))
            say(f"epoch {epoch + 1}/{epochs}  loss {loss:.4f}  train acc {acc:.4f}  test top-1 {top1:.4f}  "
                f"top-5 {top5:.4f}  ({m.images_per_second:.0f} img/s)")
        in_sync = runtime.replicas_identical(model) if world > 1 else None  # every rank takes part
        if not main:
            continue
        if not run_files_written:
            write_run_files()
            run_files_written = True
        write_checkpoint(ckpt_path, model=model.state_dict(), plan=plan, config=asdict(cfg), epoch=epoch + 1,
                         metrics=metrics, optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                         rng=torch.get_rng_state())
        atomic_write_text(out / "metrics.json", json.dumps(
            {"epochs": epochs, "schedule": cfg.schedule, "final": metrics[-1], "history": metrics,
             "flops": plan.flops, "params": plan.params, "world_size": world,
             "replicas_identical": in_sync}, indent=1))
        if progress is not None:
            progress.update(epoch_task, advance=1)
    runtime.barrier()  # nobody leaves before rank 0's last checkpoint is on disk
    if metrics and main:
        plot_training(metrics, out / "curves.png", title=f"{plan.arch} ({plan.method}, {cfg.schedule})")
    return TrainResult(out, epochs, metrics)

