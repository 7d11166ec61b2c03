"""What a user names on the command line -> a model and the plan it was built from.

``export`` and ``bench`` accept a training checkpoint (trained weights), a plan JSON (fresh
weights from G) or an architecture name (the full model). One function turns any of them into a
:class:`ModelSource`, so every command reads the same three things the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
import zipfile
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from slimkit.errors import SlimkitError
from slimkit.plan import ChannelPlan, load_plan

__all__ = ["ModelSource", "load_source", "full_model_plan", "full_plan_of", "calibrate_bn"]


@dataclass
class ModelSource:
    model: nn.Module
    plan: ChannelPlan
    trained: bool  # weights from a checkpoint (True) or fresh from G (False)
    description: str

    @property
    def input_size(self) -> tuple[int, int, int]:
        c, h, w = self.plan.input_size
        return (c, h, w)


def full_model_plan(arch: str, *, num_classes: int | None = None,
                    input_size: tuple[int, int, int] | None = None) -> ChannelPlan:
    """The plan of an unpruned architecture (every group at full width)."""
    from slimkit.prune import prune

    return prune(arch, "100%", method="uniform", num_classes=num_classes, round_to=1, input_size=input_size,
                 verify=False)


@torch.no_grad()
def calibrate_bn(model: nn.Module, input_size: tuple[int, ...], *, batches: int = 4, batch_size: int = 8,
                 seed: int = 0) -> nn.Module:
    """Set BatchNorm running statistics from random inputs.

    A freshly initialised network has running mean 0 / var 1 everywhere, so in eval mode its
    activations explode (ResNet-56 logits ~2e3) or vanish (EfficientNet-B0 ~1e-13). Calibrated
    statistics give the activation ranges a trained network has, so checks on untrained models
    (ONNX parity, numerics) test something real. Weights are untouched.
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        return model
    was_training = model.training
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    model.train()
    for _ in range(batches):
        model(torch.randn(batch_size, *input_size, generator=gen).to(device))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.train(was_training)
    return model


# Suffixes that mark a file name rather than an architecture (timm names may hold a dot: resnet50.a1_in1k).
FILE_SUFFIXES = (".pt", ".pth", ".json", ".onnx", ".txt", ".yaml", ".yml", ".ckpt", ".bin", ".safetensors", ".tar")


def load_source(source: str, *, num_classes: int | None = None,
                input_size: tuple[int, int, int] | None = None, calibrate: bool = True) -> ModelSource:
    """A checkpoint (``.pt``), a plan (``.json``) or an architecture name -> model in eval mode.

    Untrained models (plans, names) get BN statistics calibrated on random inputs (see
    :func:`calibrate_bn`) unless ``calibrate=False``.
    """
    from slimkit.generator import generate
    from slimkit.train import model_from_checkpoint

    path = Path(source)
    if path.is_file() and path.suffix not in (".pt", ".pth", ".json", ".onnx") and not zipfile.is_zipfile(path):
        raise SlimkitError(f"{path} is neither a checkpoint (.pt, from `slimkit train`) nor a plan (.json, from "
                           "`slimkit prune`); pass one of those or an architecture name")
    if not path.exists() and path.suffix not in (".pt", ".pth", ".json") and (
            "/" in str(source) or path.suffix.lower() in FILE_SUFFIXES):  # .pt/.json: their loaders say more
        raise SlimkitError(f"file not found: {path}")
    if path.suffix in (".pt", ".pth") or path.is_file() and path.suffix not in (".json", ".onnx"):
        model, plan = model_from_checkpoint(path)
        return ModelSource(model.eval(), plan, True, f"checkpoint {path} (trained weights)")
    if path.suffix == ".onnx":
        raise SlimkitError(f"{path} is already ONNX: export takes a checkpoint (.pt), a plan (.json) "
                           "or an architecture name")
    if path.suffix == ".json" or path.exists():
        plan = load_plan(path)
        model = generate(plan)
        what = f"plan {path} (fresh weights from G)"
    else:
        plan = full_model_plan(source, num_classes=num_classes, input_size=input_size)
        model = generate(plan)
        what = f"{plan.arch} full model (fresh weights)"
    if calibrate:
        calibrate_bn(model, tuple(plan.input_size), seed=plan.seed)
    return ModelSource(model.eval(), plan, False, what)


def full_plan_of(plan: ChannelPlan) -> ChannelPlan:
    """The unpruned model a plan was cut from (every group at its source width, no expansion)."""
    return ChannelPlan(arch=plan.arch, input_size=list(plan.input_size), arch_kwargs=dict(plan.arch_kwargs),
                       groups={n: {"full": g["full"], "width": g["full"]} for n, g in plan.groups.items()},
                       expand=1.0, round_to=1, method="uniform", seed=plan.seed,
                       flops=plan.search.get("full_flops"), params=plan.search.get("full_params"))
