"""Checkpoints: a trained model's weights with the plan, config and metrics they belong to.

Written atomically by ``slimkit train`` after every epoch and read back safely
(``torch.load(weights_only=True)``): the plan and metrics are JSON text inside the file, so reading
never unpickles code. Every reader goes through :func:`load_checkpoint`, so a damaged file is one
clear error wherever it is named; :func:`full_model_weights` is what weight inheritance (G with
``weights=``) and gate learning on trained weights read.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from slimkit import registry
from slimkit.errors import PlanError, SlimkitError
from slimkit.files import atomic_write
from slimkit.plan import ChannelPlan

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "write_checkpoint", "load_checkpoint", "load_weights",
           "full_model_weights"]

CHECKPOINT_FORMAT = "slimkit.checkpoint/1"


class CheckpointError(SlimkitError):
    """A checkpoint that cannot be read or does not match the run."""


def write_checkpoint(path: str | os.PathLike, *, model: dict, plan: ChannelPlan, config: dict[str, Any],
                     epoch: int, metrics: list[dict[str, Any]], optimizer: dict | None = None,
                     scheduler: dict | None = None, rng: torch.Tensor | None = None) -> Path:
    """Everything a run needs to continue or be rebuilt, written atomically. The plan and metrics are
    JSON text so ``torch.load(weights_only=True)`` can read the file without unpickling code."""
    obj = {"format": CHECKPOINT_FORMAT, "model": model, "optimizer": optimizer, "scheduler": scheduler,
           "epoch": epoch, "rng": rng, "config": config, "metrics": json.dumps(metrics), "plan": plan.to_json(),
           "slimkit_version": plan.slimkit_version}
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) and check its structure, once, here: any damage
    is a one-line error. The returned dict holds the plan as a :class:`ChannelPlan` under ``"plan"``
    and the metrics as a list, so no caller parses them again."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, pickle error, wrong file type
        what = _file_kind(p)
        if what is not None:
            raise CheckpointError(f"{p} is {what}, not a checkpoint: pass a checkpoint.pt from `slimkit train`") from exc
        # Never advise deleting a file that could not be read as a checkpoint: it may be something else.
        raise CheckpointError(
            f"{p} is not a readable checkpoint ({type(exc).__name__}): if `slimkit train` wrote it, it is truncated "
            "(restore a good copy, or move it aside to train again); otherwise pass a checkpoint.pt from `slimkit train`"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p} is a PyTorch file but not a slimkit checkpoint (expected format {CHECKPOINT_FORMAT}): "
                              "pass a checkpoint.pt from `slimkit train`")
    damaged = f"{p} is a damaged slimkit checkpoint"
    fix = "delete it to start over, or restore a good copy"
    for key, kind in (("model", dict), ("plan", str), ("config", dict), ("metrics", str)):
        if not isinstance(ckpt.get(key), kind):
            raise CheckpointError(f"{damaged}: '{key}' is missing or not a {kind.__name__}; {fix}")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["model"].items()):
        raise CheckpointError(f"{damaged}: its weights are not a state dict of tensors; {fix}")
    epoch = ckpt.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CheckpointError(f"{damaged}: epoch {epoch!r} is not a count of epochs; {fix}")
    for key in ("optimizer", "scheduler"):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], dict):
            raise CheckpointError(f"{damaged}: '{key}' is not a state dict; {fix}")
    if ckpt.get("rng") is not None and not isinstance(ckpt["rng"], torch.Tensor):
        raise CheckpointError(f"{damaged}: its RNG state is not a tensor; {fix}")
    try:
        plan = ChannelPlan.from_dict(json.loads(ckpt["plan"]), source=f"{p}'s plan")
        metrics = json.loads(ckpt["metrics"])
    except (json.JSONDecodeError, PlanError) as exc:
        raise CheckpointError(f"{damaged}: {str(exc).splitlines()[0][:200]}; {fix}") from None
    if not isinstance(metrics, list) or not all(isinstance(m, dict) for m in metrics):
        raise CheckpointError(f"{damaged}: its metrics are not a list of epochs; {fix}")
    return {**ckpt, "plan": plan, "metrics": metrics}


def _file_kind(path: Path) -> str | None:
    """What a file that is not a checkpoint is, when it is one of slimkit's other files (a plan, an
    ONNX model, a recipe or other text); None when it cannot be told (it may be a damaged checkpoint)."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
    if head.startswith(b"PK") or zipfile.is_zipfile(path):  # a zip archive, as torch.save writes: maybe damaged
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "a text file" if text.strip() else "an empty file"
        if isinstance(data, dict) and str(data.get("format", "")).startswith("slimkit.plan/"):
            return "a ChannelPlan (from `slimkit prune`)"
        return "a JSON file"
    try:
        onnx.load(str(path), load_external_data=False)
        return "an ONNX model"
    except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends: not ONNX
        return None


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike) -> nn.Module:
    """``state`` into ``model``, or a one-line error when the weights do not fit the plan's model."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise CheckpointError(f"{path}: its weights do not fit the model its plan describes ({first[0].strip()[:160]}); "
                              "the file was edited or mixed from two runs: restore a good copy") from None
    return model


def full_model_weights(path: str | os.PathLike, arch: str, arch_kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint of the *full* (unpruned, unexpanded) ``arch`` built with
    ``arch_kwargs``: what inheriting weights and learning gates on trained weights start from."""
    ckpt = load_checkpoint(path)
    plan = ckpt["plan"]
    canonical = registry.resolve(arch).canonical
    if registry.resolve(plan.arch).canonical != canonical or plan.arch_kwargs != arch_kwargs or \
            any(g["width"] != g["full"] for g in plan.groups.values()) or plan.expand != 1.0:
        held = f"{plan.arch} {plan.arch_kwargs}" + ("" if all(g["width"] == g["full"] for g in plan.groups.values())
                                                    else " (a pruned plan)")
        raise CheckpointError(f"{path} holds {held}, not the full {canonical} {arch_kwargs}: train the full model "
                              f"with `slimkit train {canonical.split(':')[-1]}` and pass its checkpoint.pt")
    return ckpt["model"]
