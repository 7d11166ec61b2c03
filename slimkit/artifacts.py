"""What a user names on the command line -> a model, its plan, or a model to time.

Commands accept four kinds of argument: a training checkpoint (``.pt``, trained weights), a plan
(``.json``, fresh weights from G), an ONNX file, or an architecture (the full model): a name or
the user's own factory (``python:pkg.mod:build_net``, ``nets.py:build_net``; see slimkit.registry).
:func:`classify` is the one place that decides which a text is; everything else here builds on
it: :func:`load_model` (export, bench), :func:`plan_of` (train), :func:`default_export_path`
(export) and :func:`load_candidate` (bench, the CI gate, run). Checkpoints are read and validated
here too, so every command reads them the same way and a damaged one is one clear error.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from slimkit import registry
from slimkit.errors import PlanError, SlimkitError
from slimkit.exporters.onnx import export, input_shape, slimkit_metadata
from slimkit.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, load_weights,  # noqa: F401 (re-exported)
                                write_checkpoint)
from slimkit.flops import format_count
from slimkit.generator import full_plan, generate, verified_plan
from slimkit.latency import Candidate, LatencyError, model_fingerprint
from slimkit.models.tasks import is_detector, set_detector_input_size
from slimkit.plan import ChannelPlan
from slimkit import validate as limits
from slimkit.validate import check_input_size, check_number, check_type, show

__all__ = ["classify", "LoadedModel", "load_model", "plan_of", "default_export_path", "calibrate_bn",
           "CHECKPOINT_FORMAT", "CheckpointError", "load_checkpoint", "load_weights", "write_checkpoint", "model_from_checkpoint",
           "onnx_candidate", "export_for_timing", "load_candidate", "plan_candidate", "candidate_from_spec",
           "onnx_metadata", "reference_candidate", "baseline_candidates"]

# Suffixes that mark a file name rather than an architecture (timm names may hold a dot: resnet50.a1_in1k).
FILE_SUFFIXES = (".pt", ".pth", ".json", ".onnx", ".txt", ".yaml", ".yml", ".ckpt", ".bin", ".safetensors", ".tar")


# ---------------------------------------------------------------------------- what is this argument
def classify(text: str) -> str:
    """``'checkpoint'``, ``'plan'``, ``'onnx'`` or ``'arch'``: what a command-line argument names.

    By suffix first (``.pt``/``.pth``, ``.json``, ``.onnx``); an existing file of another suffix is a
    checkpoint when it is a zip archive (``torch.save``'s format); a text that looks like a path but
    names nothing is "file not found"; anything else is an architecture name. A factory reference
    (``nets.py:build_net``) is an architecture, though it names a file.
    """
    text = _text_argument("classify", "text", text)
    if registry.is_user_code(text):
        return "arch"
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        return "checkpoint"
    if suffix == ".json":
        return "plan"
    if suffix == ".onnx":
        return "onnx"
    if path.is_dir():
        inside = path / "checkpoint.pt"
        raise SlimkitError(f"{path} is a folder{_also_an_arch(text)}: pass a checkpoint (.pt"
                           + (f", e.g. {inside}" if inside.is_file() else "")
                           + "), a plan (.json), an ONNX file or an architecture name")
    if path.is_file():
        if zipfile.is_zipfile(path):
            return "checkpoint"
        raise SlimkitError(f"{path} is neither a checkpoint (.pt, from `slimkit train`) nor a plan (.json, from "
                           f"`slimkit prune`){_also_an_arch(text)}; pass one of those or an architecture name")
    if "/" in text or suffix in FILE_SUFFIXES:
        raise SlimkitError(f"file not found: {path}")
    return "arch"


def _text_argument(function: str, name: str, value: Any) -> str:
    """A command-line-like argument of a public function here (a path or an architecture name) as text; a
    TypeError naming the function and argument for anything else (None, a plan, a model)."""
    check_type(function, name, value, (str, os.PathLike), "a file path or an architecture name like 'resnet20'")
    return os.fspath(value)


def _also_an_arch(text: str) -> str:
    """When a file or folder here has an architecture's name: how to name the architecture instead."""
    try:
        spec = registry.resolve(text)
    except SlimkitError:
        return ""
    return f" (for the architecture, write {spec.canonical}: a path here takes precedence over a bare name)"


def plan_of(source: str | ChannelPlan) -> ChannelPlan | None:
    """The plan a training source names (a plan or a plan file), its counts verified
    (:func:`slimkit.generator.verified_plan`), or None for an architecture name."""
    check_type("plan_of", "source", source, (str, os.PathLike, ChannelPlan),
               "a ChannelPlan, a plan file path or an architecture name like 'resnet20'")
    if isinstance(source, ChannelPlan):
        return verified_plan(source)
    source = os.fspath(source)
    kind = classify(source)
    if kind == "plan":
        return verified_plan(source)
    if kind == "arch":
        return None
    if kind == "checkpoint":
        raise SlimkitError(f"{source} is a checkpoint: train takes a plan (.json) or an architecture name; to "
                           "continue that run, pass its folder as --out with --resume")
    raise SlimkitError(f"{source} is an ONNX file: train takes a plan (.json) or an architecture name")


def default_export_path(source: str) -> Path:
    """Where ``slimkit export SOURCE`` writes by default: beside the checkpoint or plan it came from."""
    source = _text_argument("default_export_path", "source", source)
    kind = classify(source)
    p = Path(source)
    if kind == "checkpoint":
        return p.with_name("model.onnx")
    if kind == "plan":
        return p.with_suffix(".onnx")
    if kind == "onnx":
        raise SlimkitError(f"{p} is already ONNX: export takes a checkpoint (.pt), a plan (.json) "
                           "or an architecture name")
    return Path(source.split(":")[-1] + ".onnx")


# ---------------------------------------------------------------------------- checkpoints
def model_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, ChannelPlan]:
    """Rebuild the trained model from the checkpoint alone (its plan + G)."""
    ckpt = load_checkpoint(path)
    plan = ckpt["plan"]
    return load_weights(generate(plan), ckpt["model"], path), plan


# ---------------------------------------------------------------------------- models
@torch.no_grad()
def calibrate_bn(model: nn.Module, input_size: tuple[int, ...], *, batches: int = 4, batch_size: int = 8,
                 seed: int = 0) -> nn.Module:
    """Set BatchNorm running statistics from random inputs.

    A freshly initialised network has running mean 0 / var 1 everywhere, so in eval mode its
    activations explode (ResNet-56 logits ~2e3) or vanish (EfficientNet-B0 ~1e-13). Calibrated
    statistics give the activation ranges a trained network has, so checks on untrained models
    (ONNX parity, numerics, latency) test something real. Weights are untouched.
    """
    check_type("calibrate_bn", "model", model, nn.Module, "a torch.nn.Module")
    input_size = check_input_size("calibrate_bn", input_size, required=True)
    for name, value in (("batches", batches), ("batch_size", batch_size)):
        check_number(f"calibrate_bn: '{name}'", value, limits.COUNT)
    check_number("calibrate_bn: 'seed'", seed, limits.SEED)
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
    traced = registry.traced_part(model)  # a detector in train mode wants targets: run its dense core
    for _ in range(batches):
        traced(torch.randn(batch_size, *input_size, generator=gen).to(device))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.train(was_training)
    return model


@dataclass
class LoadedModel:
    model: nn.Module
    plan: ChannelPlan
    trained: bool  # weights from a checkpoint (True) or fresh from G (False)
    description: str
    train_config: dict[str, Any] | None = None  # a checkpoint's training config (its data, for int8 calibration)

    @property
    def input_size(self) -> tuple[int, int, int]:
        c, h, w = self.plan.input_size
        return (c, h, w)


def load_model(source: str | os.PathLike, *, num_classes: int | None = None, input_size: tuple[int, int, int] | None = None,
               calibrate: bool = True, arch_kwargs: dict[str, Any] | None = None) -> LoadedModel:
    """A checkpoint, a plan or an architecture name -> the model in eval mode, with its plan.

    Untrained models (plans, names) get BN statistics calibrated on random inputs (see
    :func:`calibrate_bn`) unless ``calibrate=False``. A detector's own transform resizes every image to
    the plan's input size, as `slimkit train` trains and scores it (not the size it was built for).
    """
    check_type("load_model", "source", source, (str, os.PathLike),
               "a checkpoint or plan file path, or an architecture name like 'resnet20'")
    source = os.fspath(source)
    check_number("load_model: 'num_classes'", num_classes, limits.SMALL_COUNT)
    input_size = check_input_size("load_model", input_size)
    check_type("load_model", "calibrate", calibrate, bool, "True or False")
    check_type("load_model", "arch_kwargs", arch_kwargs, (dict, type(None)), "a dict of factory arguments, or None")
    kind = classify(source)
    if kind == "checkpoint":
        ckpt = load_checkpoint(source)
        plan = verified_plan(ckpt["plan"], f"the plan in {source}")
        _check_fixed_by_plan(plan, source, "checkpoint", num_classes, input_size)
        check_kwargs_fixed_by_plan(plan, source, "checkpoint", arch_kwargs)
        model = _as_trained(load_weights(generate(plan), ckpt["model"], source), plan)
        return LoadedModel(model.eval(), plan, True, f"checkpoint {source} (trained weights)",
                           train_config=ckpt["config"])
    if kind == "onnx":
        raise SlimkitError(f"{source} is already ONNX: give a checkpoint (.pt), a plan (.json) "
                           "or an architecture name")
    if kind == "plan":
        plan = verified_plan(source)
        _check_fixed_by_plan(plan, source, "plan", num_classes, input_size)
        check_kwargs_fixed_by_plan(plan, source, "plan", arch_kwargs)
        what = f"plan {source} (fresh weights from G)"
    else:
        plan = full_plan(source, num_classes=num_classes, input_size=input_size, arch_kwargs=arch_kwargs)
        what = f"{plan.arch} full model (fresh weights)"
    model = _as_trained(generate(plan), plan)
    if calibrate:
        calibrate_bn(model, tuple(plan.input_size), seed=plan.seed)
    return LoadedModel(model.eval(), plan, False, what)


def _as_trained(model: nn.Module, plan: ChannelPlan) -> nn.Module:
    """A detector resizes every image to the plan's input size, the size `slimkit train` trains and scores it
    at (and its MACs are counted at): a whole detector exported from a 128 px plan runs at 128 px, not at the
    320 px its builder chose."""
    if is_detector(model):
        set_detector_input_size(model, (plan.input_size[1], plan.input_size[2]))
    return model


def _check_fixed_by_plan(plan: ChannelPlan, source: str, kind: str, num_classes: int | None,
                         input_size: tuple[int, int, int] | None) -> None:
    """--num-classes and --input-size shape a model built from a name; a plan or checkpoint already
    fixes both (its groups and MACs were found at its size, its head has its classes), so a value that
    differs is refused instead of silently ignored."""
    classes = plan.num_classes
    if num_classes is not None and num_classes != classes:
        held = f"{classes} classes" if classes is not None else "the architecture's own number of classes"
        fix = ("prune again with --num-classes" if kind == "plan"
               else "train a model with that many classes (`slimkit prune ARCH --num-classes N`, then "
               "`slimkit train PLAN`)")
        raise SlimkitError(f"--num-classes {num_classes} does not apply to {kind} {source}: it has {held}; "
                           f"drop the option, or {fix}")
    if input_size is not None and tuple(input_size[1:]) != tuple(plan.input_size[1:]):
        shown = str(input_size[1]) if input_size[1] == input_size[2] else f"{input_size[1]}x{input_size[2]}"
        raise SlimkitError(f"--input-size {shown} does not apply to {kind} {source}: "
                           f"it was made for input {list(plan.input_size)} (its channel groups and MACs are counted "
                           "there); drop the option, or prune again with --input-size")


def check_kwargs_fixed_by_plan(plan: ChannelPlan, source: str, kind: str, arch_kwargs: dict[str, Any] | None) -> None:
    """--arch-kwargs shape a model built from a name; a plan or checkpoint records the ones it was built with,
    so one that differs is refused instead of silently ignored (the plan's model was exported or trained)."""
    differ = {k: v for k, v in (arch_kwargs or {}).items() if k not in plan.arch_kwargs or plan.arch_kwargs[k] != v}
    if differ:
        raise SlimkitError(f"--arch-kwargs {show(differ)} does not apply to {kind} {source}: it was built with "
                           f"{show(plan.arch_kwargs)}; drop the option, or prune again with --arch-kwargs")


def onnx_metadata(loaded: LoadedModel) -> dict[str, str]:
    """What every exported file carries: slimkit version, plan, where it came from, weights, input size."""
    check_type("onnx_metadata", "loaded", loaded, LoadedModel, "a LoadedModel (from slimkit.artifacts.load_model)")
    return slimkit_metadata(loaded.plan.to_json(), source=loaded.description, input_size=loaded.input_size,
                            weights="trained" if loaded.trained else "random init, BN statistics calibrated on noise")


# ---------------------------------------------------------------------------- models to time
def onnx_candidate(path: Path, batch: int, name: str | None = None) -> Candidate:
    """An ONNX file as it is; slimkit's metadata (when present) gives its plan, MACs and params."""
    path = Path(_text_argument("onnx_candidate", "path", path))
    check_number("onnx_candidate: 'batch'", batch, limits.SMALL_COUNT, LatencyError)
    if not path.is_file():
        raise LatencyError(f"model file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        shape = input_shape(proto)
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError and friends
        raise LatencyError(f"{path} is not an ONNX model ({type(exc).__name__}); export one with "
                           "`slimkit export PLAN --onnx`") from exc
    _check_foreign_onnx(proto, path, shape)
    if any(isinstance(d, int) and d < 1 for d in shape[1:]) or any(isinstance(d, str) for d in shape[1:]):
        raise LatencyError(f"{path}: only the batch dimension may be dynamic (input shape {shape})")
    if isinstance(shape[0], int) and shape[0] not in (0, batch):
        raise LatencyError(f"{path} was exported for batch {shape[0]}, not --batch {batch}: re-export with "
                           "--dynamic-batch or --batch")
    meta = {p.key: p.value for p in proto.metadata_props}
    plan = _plan_metadata(meta["slimkit.plan"], path) if "slimkit.plan" in meta else {}
    return Candidate(name=name or path.stem, input_shape=(batch, *shape[1:]), onnx_path=path,
                     spec={"kind": "onnx", "path": str(path)}, flops=plan.get("flops"), params=plan.get("params"),
                     plan=plan or None)


MAX_INPUT_VALUES = 1 << 28  # 1 GiB of float32 per input batch: far beyond any image model


def _check_foreign_onnx(proto, path: Path, shape: list) -> None:
    """ONNX files slimkit did not write: one float image input of a sane size, or a one-line error."""
    initializers = {t.name for t in proto.graph.initializer}  # old exporters list weights as inputs too
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise LatencyError(f"{path} takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)[:80]}); slimkit times "
                           "models with one image input: export one with `slimkit export`")
    elem = inputs[0].type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        name = onnx.TensorProto.DataType.Name(elem) if elem in onnx.TensorProto.DataType.values() else str(elem)
        raise LatencyError(f"{path} takes {name.lower()} input; slimkit feeds float32 images: export a float32 "
                           "model (slimkit export writes one)")
    if len(shape) < 2:
        raise LatencyError(f"{path} takes input of shape {shape}; slimkit times image models (N, C, H, W)")
    static = [d for d in shape[1:] if isinstance(d, int) and d > 0]
    values = math.prod(static) * (shape[0] if isinstance(shape[0], int) and shape[0] > 0 else 1)
    if values > MAX_INPUT_VALUES:
        raise LatencyError(f"{path} takes input {'x'.join(map(str, shape))} ({values:.2e} values): too large to "
                           "time; export it at a realistic input size")


def _plan_metadata(text: str, path: Path) -> dict[str, Any]:
    """The plan slimkit stores in an ONNX file's metadata, checked (a damaged one is an error, not a crash),
    with its MACs and parameters recounted from its widths like every plan read for work: an edited count
    is refused, never shown in a report. A plan of the user's own code that cannot be built here keeps
    no counts (none that slimkit can vouch for)."""
    try:
        plan = ChannelPlan.from_dict(json.loads(text), source="the plan")
        try:
            plan = verified_plan(plan, f"{path}'s slimkit.plan metadata")
        except PlanError as exc:
            if not registry.is_user_code(plan.arch):
                raise LatencyError(str(exc).replace("regenerate it with `slimkit prune`",
                                                    "re-export the model with `slimkit export`")) from None
            plan = replace(plan, flops=None, params=None)
        return plan.to_dict()
    except LatencyError:
        raise
    except (json.JSONDecodeError, TypeError, ValueError) as exc:  # PlanError is a ValueError
        why = str(exc).splitlines()[0] if isinstance(exc, SlimkitError) else f"not a plan: {type(exc).__name__}"
        raise LatencyError(f"{path}: its slimkit.plan metadata is damaged ({why[:160]}); re-export the model with "
                           "`slimkit export`") from None


def export_for_timing(loaded: LoadedModel, out: Path, batch: int, name: str, spec: dict[str, Any],
                      **export_options: Any) -> Candidate:
    """A loaded model exported to ONNX at ``out`` for timing (weights do not change latency)."""
    check_type("export_for_timing", "loaded", loaded, LoadedModel, "a LoadedModel (from slimkit.artifacts.load_model)")
    export(registry.traced_part(loaded.model), loaded.input_size, out, batch=batch,  # a detector: its dense core
           metadata={"slimkit.plan": loaded.plan.to_json()}, **export_options)
    return Candidate(name=name, input_shape=(batch, *loaded.input_size), onnx_path=out,
                     module=registry.traced_part(loaded.model),
                     spec=spec, flops=loaded.plan.flops, params=loaded.plan.params, plan=loaded.plan.to_dict())


def load_candidate(text: str, workdir: Path, *, batch: int = 1, num_classes: int | None = None,
                   input_size: tuple[int, int, int] | None = None, name: str | None = None,
                   arch_kwargs: dict[str, Any] | None = None) -> Candidate:
    """An ONNX file as is; a checkpoint, plan or architecture name exported to ``workdir`` first."""
    text = _text_argument("load_candidate", "text", text)
    workdir = Path(_text_argument("load_candidate", "workdir", workdir))
    path = Path(text)
    kind = classify(text)
    if kind == "onnx":
        return onnx_candidate(path, batch, name)
    loaded = load_model(text, num_classes=num_classes, input_size=input_size, arch_kwargs=arch_kwargs)
    label = name or (path.stem if kind in ("plan", "checkpoint") else loaded.plan.arch.split(":")[-1])
    spec = {"kind": "checkpoint", "path": str(path)} if loaded.trained else {"kind": "plan",
                                                                             "plan": loaded.plan.to_dict()}
    return export_for_timing(loaded, workdir / f"{label}.onnx", batch, label, spec)


def plan_candidate(plan: ChannelPlan, workdir: Path, batch: int, name: str, **export_options: Any) -> Candidate:
    """A plan's model (fresh weights, BN calibrated) exported for timing."""
    check_type("plan_candidate", "plan", plan, ChannelPlan, "a ChannelPlan (slimkit.load_plan reads a plan file)")
    model = calibrate_bn(generate(plan), tuple(plan.input_size), seed=plan.seed).eval()
    loaded = LoadedModel(model, plan, False, name)
    return export_for_timing(loaded, workdir / f"{name}.onnx", batch, name, {"kind": "plan", "plan": plan.to_dict()},
                             **export_options)


def candidate_from_spec(spec: dict[str, Any], workdir: Path, batch: int, name: str, base_dir: Path) -> Candidate:
    """Rebuild a baseline's reference model from its recorded spec."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind in ("onnx", "checkpoint"):
        if not isinstance(spec.get("path"), str) or not spec["path"]:
            raise LatencyError(f"baseline reference ({kind}) records no file path; re-record it with --update-baseline")
        p = Path(spec["path"])
    if kind == "onnx":
        return onnx_candidate(p if p.is_absolute() else base_dir / p, batch, name)
    if kind == "checkpoint":
        return load_candidate(str(p if p.is_absolute() else base_dir / p), workdir, batch=batch, name=name)
    if kind == "plan":
        try:
            plan = verified_plan(spec["plan"], "the baseline's reference plan")
        except (PlanError, KeyError) as exc:
            raise LatencyError(f"baseline reference plan is damaged ({exc}); re-record it with --update-baseline") \
                from None
        return plan_candidate(plan, workdir, batch, name)
    raise LatencyError(f"baseline reference has unknown kind {kind!r}; re-record it with --update-baseline")


def reference_candidate(model: Candidate, workdir: Path, batch: int, *, reference: str | None = None,
                        arch: str | None = None, arch_kwargs: dict[str, Any] | None = None) -> Candidate:
    """What ``model`` is compared against in the same run: ``reference`` (any artifact), the full
    ``arch``, or by default the full model of the plan ``model`` carries."""
    check_type("reference_candidate", "model", model, Candidate,
               "a slimkit.latency.Candidate (slimkit.artifacts.load_candidate makes one from a file)")
    if reference:
        return load_candidate(reference, workdir, batch=batch, name=None)
    plan = verified_plan(model.plan, f"the plan of {model.name}") if model.plan else None
    if arch:
        full = full_plan(arch, num_classes=plan.num_classes if plan else None,
                         input_size=tuple(model.input_shape[1:]), arch_kwargs=arch_kwargs)
    elif plan is not None:
        full = plan.unpruned()
    else:
        raise LatencyError(f"{model.name} carries no slimkit plan, so its full model is unknown: pass "
                           "--reference REF.onnx or --arch NAME")
    return plan_candidate(full, workdir, batch, "full-" + full.arch.split(":")[-1])


def baseline_candidates(baseline: dict[str, Any], model_text: str, workdir: Path,
                        base_dir: Path) -> tuple[Candidate, Candidate]:
    """The reference a baseline recorded and the model to check, both ready to time at the baseline's
    batch; a model other than the one the baseline was recorded for is refused."""
    gate, batch = baseline["gate"], int(baseline["batch"])
    model = load_candidate(model_text, workdir, batch=batch)
    if list(model.input_shape) != list(gate["input_shape"]):
        raise LatencyError(f"{model_text} takes input {'x'.join(map(str, model.input_shape))} but the baseline was "
                           f"recorded at {'x'.join(map(str, gate['input_shape']))}: re-record it with --update-baseline")
    if model_fingerprint(model) != gate["model_fingerprint"]:
        # name both by file and MACs: two runs' files are both "model" (model.onnx)
        recorded = next((m for m in baseline.get("models", []) if isinstance(m, dict) and m.get("name") == gate["model"]),
                        {})
        def described(name: Any, path: Any, flops: Any) -> str:
            return (f"{path or name}" + (f", {format_count(flops)} MACs" if isinstance(flops, int) else ""))
        raise LatencyError(f"the baseline was recorded for another model "
                           f"({described(gate['model'], recorded.get('onnx'), recorded.get('flops'))}), not "
                           f"{described(model_text, None, model.flops)}: check the model it was recorded for, "
                           "or re-record it with --update-baseline")
    ref = candidate_from_spec(gate["reference_spec"], workdir, batch, gate["reference"], base_dir)
    if list(ref.input_shape) != list(gate["input_shape"]):  # a ratio to another input size means nothing
        raise LatencyError(f"the baseline's reference {ref.name} takes input {'x'.join(map(str, ref.input_shape))} but "
                           f"the baseline was recorded at {'x'.join(map(str, gate['input_shape']))}: the baseline was "
                           "edited or damaged; re-record it with --update-baseline")
    return ref, model
