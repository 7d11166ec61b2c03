"""``slimkit.prune``: architecture name + budget -> ChannelPlan (orchestration only).

Methods: ``uniform`` scales every channel group by one factor (the papers' baseline);
``scratch`` learns channel gates on random frozen weights and thresholds them (Wang et al. 2020).
How the gates are learned (:class:`GateOptions`) and where a latency budget is measured
(:class:`LatencyOptions`) are grouped options; their defaults, and the ones below, are the only
copy: the CLI and the recipe schema read them from here. Of the gate options, ``selection`` turns
gates into widths by a global threshold (the paper's Algorithm 1) or by gate value per unit of
marginal cost (``"cost-aware"``, slimkit.budget); ``search_space="paper"`` reproduces the paper's
official code (residual streams kept at their expanded width, only block-internal channels gated,
r against the unexpanded model, its snapshot rule, crop + flip, eval-mode BN; slimkit.search_space).

From trained weights (``gates.weights``, a checkpoint of the full model), ``criterion`` also says
which channels the plan keeps, so G can inherit them: ``"l1"`` ranks filters by their L1 norm
within uniform widths (Li et al. 2017; with ``search_space="paper"`` only block-internal channels
shrink, in the spirit of Rethinking's ResNet-56/110-A/B), ``"gates"`` keeps the channels whose
gates, learned on the trained weights, are highest.

Gates learn from a task loss. Classifiers: cross-entropy on ``gates.data``. torchvision's
segmentation models (LR-ASPP, DeepLabV3, FCN): their loss (cross-entropy on 'out', + 0.5 aux) on the
shapes data (:mod:`slimkit.shapes`), chosen automatically, snapshots picked by held-out mIoU. Any
model on the user's own data: ``prune(model, '50%', loss_fn=..., data=loader)``, ``loss_fn(model,
batch)`` returning the batch's loss, snapshots picked by the lowest loss on ``val_data`` (default: the
first few batches of ``data``).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimkit import registry
from slimkit import validate as limits
from slimkit.checkpoint import CheckpointError, full_model_weights, missing_checkpoint, parent_shape
from slimkit.budget import (SELECTIONS, Budget, SearchResult, check_budget, max_widths, parse_budget,
                            search_cost_aware, search_threshold, search_uniform)
from slimkit.data import DEFAULT_DATASET, load_data
from slimkit.errors import BudgetError, PlanError, SlimkitError
from slimkit.exporters.int8 import int8_unsupported
from slimkit.flops import count_params, model_macs
from slimkit.attention import input_size_kwargs
from slimkit.gates import attach_gates
from slimkit.generator import (build_model, channel_graph, choose_channels, generate, load_full_weights, resize_model,
                               source_fields, thinned_failure)
from slimkit.latency_search import PRECISIONS, LatencyMeter, resolve_target, search_latency
from slimkit.layer_latency import layer_latency_per_mac
from slimkit.plan import CRITERIA, ChannelPlan
from slimkit.latency import BACKENDS, LatencyError, check_backend, check_mode, timing_enabled
from slimkit.rounding import AUTO, RoundingChoice, auto_round_to, documented_multiple, is_ragged, parse_round_to
from slimkit.runtime import resolve_device
from slimkit.search import PRESETS, GateSearchConfig, GateTask, search_gates, steps_for_epochs
from slimkit.shapes import ShapesLoader
from slimkit.task_losses import (LossFn, check_classification_batch, class_scores, check_loader, detection_loss,
                                 evaluate_segmentation, segmentation_loss, to_device)
from slimkit.search_space import SEARCH_SPACES, residual_stream_groups
from slimkit.structures import get_structure, structure_widths
from slimkit.validate import check_callable, check_input_size, check_number, check_type, show

__all__ = ["prune", "GateOptions", "LatencyOptions", "uniform_reference", "METHODS", "DEFAULT_METHOD",
           "DEFAULT_ROUND_TO", "default_method"]

METHODS = ("scratch", "uniform")
# A classifier's default. The paired-seed structure study (docs/search.md, sections 6-7) found learned
# gates level with or better than a uniform width in accuracy, but their plans no faster than uniform's
# at the resolution models ship at (MobileNet-V1 at 224 px: 1.07-1.11x), so its pre-registered rule
# picks uniform. Detection and segmentation models learn gates by default (default_method).
DEFAULT_METHOD = "uniform"
DEFAULT_ROUND_TO: int | str = AUTO  # measured per machine and backend (slimkit.rounding); ragged counts run up to 2x slower

# A CPU cannot run the papers' gate budgets interactively: a short run at a reduced resolution.
CPU_STEPS = 300
CPU_LR = 0.05  # the CPU default, whatever the steps: a larger Adam step than the paper's 0.01
PAPER_LR = 0.01
CPU_SEARCH_SIDE = 64
CPU_VAL_IMAGES = 2000
# Dense prediction on a CPU: a segmentation step at 64 px costs ~10x a classifier's, so the short run
# is shorter and its snapshots are scored on fewer held-out images.
CPU_DENSE_STEPS = 100
CPU_DENSE_VAL_IMAGES = 64
DENSE_DATA = "shapes"  # what segmentation and detection models learn gates on from the CLI
USER_VAL_BATCHES = 4  # without val_data: snapshots scored on this many batches of the user's data


@dataclass
class GateOptions:
    """How ``method='scratch'`` learns its gates. ``None`` means: the preset's value (or, on a CPU, the
    short default run). ``epochs`` and ``steps`` count gate-learning epochs and steps."""

    data: str | None = None  # None: the model's default (fashion-mnist for a classifier, shapes for a dense model)
    data_dir: str | None = None
    preset: str | None = None  # cifar | imagenet; default from the data
    gamma: float | None = None
    lr: float | None = None
    batch_size: int | None = None
    epochs: float | None = None
    steps: int | None = None
    search_size: int | None = None  # image side for gate learning
    val_size: int | None = None  # training images held out to choose the snapshot
    device: str = "auto"
    weights: str | None = None  # a trained full-model checkpoint instead of random weights
    selection: str = "threshold"  # threshold (Algorithm 1) | cost-aware (gate value per marginal cost)
    search_space: str = "full"  # full | paper (the official code's: residual streams kept, its snapshot rule)


@dataclass
class LatencyOptions:
    """Where a latency budget is measured."""

    backend: str = "ort-cpu"
    threads: int | None = None  # default: physical cores
    batch: int = 1
    precision: str = "fp32"  # int8: time candidates as `slimkit export --int8` ships them
    mode: str = "served"  # served: onnxruntime's defaults, each model alone (as deployed); or interleaved
    check: bool = True  # time the finished plan beside the uniform plan at its budget (a few seconds)


def default_method(arch: str | nn.Module | Callable[..., nn.Module], *, criterion: str | None = None,
                   learns_gates: bool = False) -> str:
    """The method ``prune`` uses when none is given: what ``criterion`` needs ('l1' ranks filters within
    uniform widths, 'gates' learns them); 'scratch' when gate-learning options or data were given;
    'scratch' for detection and segmentation models (their learned plan ran at 0.62x the uniform plan's
    latency at 520 px, LR-ASPP MobileNet-V3 at 50%); otherwise ``DEFAULT_METHOD`` (uniform)."""
    if criterion is not None:
        return "uniform" if criterion == "l1" else "scratch"
    if learns_gates:
        return "scratch"
    return DEFAULT_METHOD if registry.model_task(arch) == "classification" else "scratch"


def prune(arch: str | nn.Module | Callable[..., nn.Module], budget: str | Budget | None = None, *,
          method: str | None = None,
          num_classes: int | None = None, in_chans: int | None = None, input_size: tuple[int, int, int] | None = None,
          arch_kwargs: dict[str, Any] | None = None, expand: float = 1.0,
          round_to: int | str = DEFAULT_ROUND_TO, seed: int = 0, tolerance: float | None = None, verify: bool = True,
          gates: GateOptions | None = None, latency: LatencyOptions | None = None, criterion: str | None = None,
          structure: str | None = None, loss_fn: LossFn | None = None, data: Iterable | None = None,
          val_data: Iterable | None = None, progress: Any | None = None,
          log: Callable[[str], None] | None = None) -> ChannelPlan:
    """Plan the widths of ``arch`` so it meets ``budget`` (e.g. '150M', '50%', '3.5Mp').

    ``arch`` is an architecture name, a factory reference (``python:pkg.mod:build_net``,
    ``nets.py:build_net``), or a Python object: a function that builds the model (called with
    ``arch_kwargs``) or an ``nn.Module``. A model object's plan can be regenerated only in this
    process (or with ``slimkit.generate(plan, model=...)``); a factory's anywhere its code is.

    ``method='scratch'`` learns gates on random frozen weights (``gates`` says how and on which
    data) and turns them into widths (``gates.selection``); ``method='uniform'`` scales every group
    by one factor. ``method=None`` (the default) picks with :func:`default_method`: uniform for a
    classifier, scratch when ``gates``, ``loss_fn`` or ``data`` is given or for a detection or
    segmentation model. The call is quiet: ``progress`` (a ``rich.progress.Progress``, or any object with its
    ``add_task``/``update``/``remove_task``) gets a bar per long stage, ``log`` (e.g. ``print``) one-line
    notes. ``input_size`` is (C, H, W) (default: the model's). A latency budget ('8ms', or '50%' with
    ``Budget(kind='latency')``) is measured as ``latency`` says (see :mod:`slimkit.latency_search`);
    ``tolerance`` then defaults to 5%. ``round_to='auto'`` measures the channel multiple the target
    backend runs fastest (:mod:`slimkit.rounding`; recorded in ``plan.search['rounding']``). Unless
    ``latency.check`` is off, the plan is then timed beside the uniform plan at the same budget on the
    target backend at the plan's input size (``plan.search['latency_check']``). ``gates.weights`` (a checkpoint of the full model) learns the
    gates on those trained weights instead of random ones: the paper's comparison with structures
    from trained weights; ``criterion`` ('l1' with ``method='uniform'``, 'gates' with 'scratch')
    records in the plan which of those weights' channels it keeps (module docstring).

    ``structure`` (e.g. ``'resnet56-a'``, see :mod:`slimkit.structures`) takes a published structure's
    widths instead of a budget and a method; with ``gates.weights`` and ``criterion='l1'`` the plan keeps
    the channels with the largest filters, as the paper did.

    ``data`` (a DataLoader, or any re-iterable of batches) learns the gates on your own data, with
    ``loss_fn(model, batch)`` returning the batch's loss as a scalar tensor (default: cross-entropy on
    ``(images, labels)`` batches); snapshots are scored on ``val_data`` (default: the first
    batches of ``data``). torchvision segmentation models learn on the shapes data by default.
    """
    _check_arguments(arch, budget, method, input_size, verify, gates, latency, progress, log, structure)
    learns_gates = gates is not None or loss_fn is not None or data is not None or val_data is not None
    if budget is not None and structure is not None:
        raise SlimkitError("give a budget ('50%', '150M', '2.1Mp', '8ms') or a structure ('resnet56-a'), not both")
    input_size = check_input_size("prune", input_size)
    gates = gates or GateOptions()
    latency_options = latency or LatencyOptions()
    if method is not None and method not in METHODS:
        raise SlimkitError(f"unknown method '{method}': choose one of {', '.join(METHODS)}")
    round_to = parse_round_to(round_to)
    check_mode(latency_options.mode)
    for name, value, allowed in (  # the CLI checks the same ranges by its options' names; this is for Python callers
            ("expand", expand, limits.EXPAND), ("round_to", None if round_to == AUTO else round_to, limits.ROUND_TO),
            ("seed", seed, limits.SEED),
            ("tolerance", tolerance, limits.TOLERANCE), ("gates.gamma", gates.gamma, limits.GAMMA), ("gates.lr", gates.lr, limits.LR),
            ("gates.batch_size", gates.batch_size, limits.COUNT), ("gates.epochs", gates.epochs, limits.EPOCHS_FRACTIONAL),
            ("gates.steps", gates.steps, limits.COUNT), ("gates.search_size", gates.search_size, limits.SIDE),
            ("gates.val_size", gates.val_size, limits.NON_NEGATIVE_COUNT),
            ("latency.threads", latency_options.threads, limits.THREADS),
            ("latency.batch", latency_options.batch, limits.SMALL_COUNT), ("num_classes", num_classes, limits.SMALL_COUNT),
            ("in_chans", in_chans, limits.IN_CHANS)):
        check_number(f"prune: '{name}'", value, allowed)
    if gates.weights is not None and missing_checkpoint(gates.weights):  # before any tracing
        raise CheckpointError(f"--weights: {missing_checkpoint(gates.weights)}")
    if structure is not None:
        return _prune_structure(arch, structure, num_classes=num_classes, in_chans=in_chans, input_size=input_size,
                                arch_kwargs=arch_kwargs, expand=expand, seed=seed, criterion=criterion,
                                weights=gates.weights, verify=verify, say=log or (lambda _msg: None))
    if method is None:
        method = default_method(arch, criterion=criterion, learns_gates=learns_gates)
    if gates.selection not in SELECTIONS:
        raise SlimkitError(f"unknown selection '{gates.selection}': choose one of {', '.join(SELECTIONS)}")
    if gates.search_space not in SEARCH_SPACES:
        raise SlimkitError(f"unknown search space '{gates.search_space}': choose one of {', '.join(SEARCH_SPACES)}")
    if method == "uniform" and gates.selection != "threshold":
        raise SlimkitError("--selection chooses how learned gates become widths: use it with --method scratch")
    if criterion is not None:
        if criterion not in CRITERIA:
            raise SlimkitError(f"unknown criterion '{criterion}': choose one of {', '.join(CRITERIA)}")
        if gates.weights is None:
            raise SlimkitError(f"--criterion {criterion} ranks the channels of a trained model: pass its checkpoint "
                               "with --weights CKPT")
        if expand != 1.0:
            raise SlimkitError("--criterion keeps channels of a trained model: it cannot be combined with --expand")
        wanted = "uniform" if criterion == "l1" else "scratch"
        if method != wanted:
            raise SlimkitError(f"--criterion {criterion} goes with --method {wanted}: "
                               + ("l1 ranks filters within uniform widths; for gates learned on the trained "
                                  "weights use --criterion gates" if criterion == "l1" else
                                  "it keeps the channels with the highest learned gates; for filter norms "
                                  "use --criterion l1"))
    elif method == "uniform" and gates.weights is not None:
        raise SlimkitError("--weights with --method uniform: add --criterion l1 to keep the trained model's "
                           "channels with the largest filters")
    user_task = _user_task(loss_fn, data, val_data, method, gates)
    spec = registry.resolve(registry.model_source(arch))
    task = registry.model_task(spec.canonical)
    # dense prediction: the task's own loss on the shapes data, unless the user gives theirs
    dense = task if method == "scratch" and task != "classification" and user_task is None else None
    if dense and gates.data not in (None, DENSE_DATA):
        raise SlimkitError(f"{spec.canonical} is a {dense} model: it learns gates on --data {DENSE_DATA} "
                           f"({'masks' if dense == 'segmentation' else 'boxes'}), not {gates.data}; drop --data, or "
                           "pass loss_fn= and data= (Python API)")
    if criterion is not None:  # the parent's classes and resolution, unless asked otherwise
        num_classes, in_chans, input_size = _parent_shape(gates.weights, arch, num_classes, in_chans, input_size)
    b = parse_budget(budget) if isinstance(budget, str) else budget
    if latency_options.precision not in PRECISIONS:
        raise SlimkitError(f"unknown --precision '{latency_options.precision}': choose one of {', '.join(PRECISIONS)}")
    no_int8 = int8_unsupported(task, spec.canonical) if latency_options.precision == "int8" else None
    if no_int8:  # the file it would time could never be exported (as `slimkit export --int8` refuses it)
        raise SlimkitError(f"--precision int8 times candidates as int8 files: {no_int8}: drop --precision")
    if latency_options.precision != "fp32" and b.kind != "latency" and round_to != AUTO:
        raise SlimkitError(f"--precision {latency_options.precision} says how a latency budget (or --round-to auto) is "
                           f"measured; a {b.kind} budget at --round-to {round_to} does not depend on it: drop --precision")
    _check_timing_backend(latency_options, timed=b.kind == "latency" or gates.selection == "latency-aware")
    if tolerance is None:
        tolerance = 0.05 if b.kind == "latency" else 0.01  # measured latency is noisier than counted FLOPs
    say = log or (lambda _msg: None)
    size = tuple(input_size) if input_size else registry.default_input_size(spec.canonical, in_chans=in_chans)
    bundle = None
    classes_from = None  # the data's name, where the classes are its and not --num-classes
    data_name = DENSE_DATA if dense else gates.data or DEFAULT_DATASET
    if method == "scratch" and user_task is None:
        dev = resolve_device(gates.device)
        side = gates.search_size or (size[1] if dev.type == "cuda" else min(size[1], CPU_SEARCH_SIDE))
        if side != size[1] and input_size_kwargs(build_model(spec.canonical,
                                                             registry.arch_kwargs_for(None, in_chans, arch_kwargs)),
                                                 (size[0], side, side)):
            say(f"{spec.canonical} is built for one image size: gates are learned at {size[1]} px "
                "(pass a smaller --input-size for a faster search)")
            side = size[1]
        bundle = load_data(data_name, data_dir=gates.data_dir, input_size=(size[0], side, side * size[2] // size[1]),
                           val_size=gates.val_size, seed=seed)
        if num_classes is None:
            num_classes, classes_from = bundle.num_classes, data_name
        elif num_classes != bundle.num_classes:
            raise SlimkitError(f"--num-classes {num_classes} but {data_name} has {bundle.num_classes} classes: "
                               "drop --num-classes or use matching data")
        if spec.user_code and not registry.accepts(spec.canonical, "num_classes"):
            _check_outputs(spec.canonical, registry.arch_kwargs_for(None, in_chans, arch_kwargs), size,
                           bundle.num_classes, data_name)
            num_classes = None  # the model builds its own head, of the data's size (checked above)
    kwargs = registry.arch_kwargs_for(num_classes, in_chans, arch_kwargs, classes_from=classes_from)
    if input_size and tuple(size) != registry.default_input_size(spec.canonical, in_chans=in_chans):
        # transformers with a stored image size (timm's img_size, torchvision ViT's image_size)
        # are built for the asked size; the plan records it in arch_kwargs, so G rebuilds the same
        kwargs.update(input_size_kwargs(build_model(spec.canonical, kwargs), size))
    graph = channel_graph(spec.canonical, kwargs, size)
    if not graph.groups:
        raise SlimkitError(f"{spec.canonical} has no prunable channel groups (all are frozen)")
    if criterion == "l1":  # weights that do not fit the architecture are refused before the search, not after
        _load_full_weights(build_model(spec.canonical, kwargs), gates.weights, spec.canonical, kwargs)
    full_flops = graph.count_flops()
    timing_device = (str(resolve_device(gates.device)) if latency_options.backend.startswith("torch")
                     else "cpu")  # ort-*: the backend says where
    if round_to == AUTO and expand == 1.0 and b.kind in ("flops", "params"):
        # a budget above the full model fails at every multiple (at expand 1 the largest plan is the full
        # model): say so before timing the multiples, not after
        check_budget(graph, b, 1, expand)
    if round_to == AUTO:  # measured before any gate learning: it decides which widths exist
        probe = ChannelPlan.from_widths(spec.canonical, size, {n: g.width for n, g in graph.groups.items()},
                                        arch_kwargs=kwargs, expand=expand, round_to=1, method=method, seed=seed,
                                        **source_fields(spec.canonical, graph))
        rounding = auto_round_to(graph, probe, b, backend=latency_options.backend,
                                 precision=latency_options.precision, threads=latency_options.threads, batch=latency_options.batch, device=timing_device,
                                 say=say)
        round_to = rounding.multiple
    else:
        rounding = RoundingChoice(round_to, "explicit", "--round-to given", latency_options.backend,
                                  latency_options.precision)
    # The unpruned model with this run's settings: the latency meter's reference, and the plan's template.
    base = ChannelPlan.from_widths(spec.canonical, size, {n: g.width for n, g in graph.groups.items()},
                                   arch_kwargs=kwargs, expand=expand, round_to=round_to, method=method, seed=seed,
                                   **source_fields(spec.canonical, graph))
    # the paper's space: residual streams stay at their expanded, rounded width
    pinned = {} if gates.search_space == "full" else {
        n: w for n, w in max_widths(graph, expand, round_to).items() if n in set(residual_stream_groups(graph))}
    meter = None
    if b.kind == "latency":  # measure the full and smallest models first: fail before any gate learning
        meter = LatencyMeter(base, graph, backend=latency_options.backend, threads=latency_options.threads,
                             batch=latency_options.batch, device=timing_device, precision=latency_options.precision,
                             mode=latency_options.mode)
        target_ratio, _, _ = resolve_target(meter, b, tolerance, say)
        flops_guess = Budget("flops", b.text, round(target_ratio * full_flops))  # gates' r: latency ~ FLOPs
    else:
        b = check_budget(graph, b, round_to, expand, pinned)  # before any gate learning: fail in seconds
    if bundle is not None:
        say(f"data: {bundle.description}" + (
            " (a segmentation model: its loss, snapshots by held-out mIoU)" if dense == "segmentation" else
            " (a detection model: its own training losses, snapshots by held-out loss)" if dense else ""))
    elif user_task is not None and method == "scratch":
        say(f"data: {user_task.description}")
    learned = None
    learned_gates = None  # the gate values the search learned, for --criterion gates
    latency_record = None
    if meter is not None:
        if method == "scratch":
            gates_result, search = _learn_gates(spec.canonical, kwargs, graph, flops_guess, bundle, gates,
                                                expand=expand, seed=seed, progress=progress, say=say,
                                                user_task=user_task, dense=dense)
            learned = learned_gates = gates_result.gates
        else:
            search = {}
        weights = _layer_costs(gates.selection, base, graph, latency_options, say, search) if learned else None
        result, b, latency_record = _search_latency(meter, graph, b, learned, round_to, expand, tolerance, say,
                                                    gates.selection, pinned, weights)
        search["latency_search"] = latency_record.pop("search")
        meter.close()
    elif method == "uniform":
        result = search_uniform(graph, b, round_to=round_to, expand=expand, tolerance=tolerance, pinned=pinned)
        search = {"factor": round(result.value, 6), "iterations": result.iterations,
                  "selection": result.selection}
        if result.filled:  # no single factor landed within tolerance under channel rounding
            search["one_step_wider"] = result.filled
    else:
        assert bundle is not None or user_task is not None
        gates_result, search = _learn_gates(spec.canonical, kwargs, graph, b, bundle, gates, expand=expand,
                                            seed=seed, progress=progress, say=say, user_task=user_task, dense=dense)
        learned_gates = gates_result.gates
        if gates.selection in ("cost-aware", "latency-aware"):
            weights = _layer_costs(gates.selection, base, graph, latency_options, say, search)
            result = search_cost_aware(graph, gates_result.gates, b, round_to=round_to, expand=expand,
                                       tolerance=tolerance, pinned=pinned, rank_weights=weights)
            search.update({"threshold": None, "selection_steps": result.iterations, "selection": gates.selection})
        else:
            result = search_threshold(graph, gates_result.gates, b, round_to=round_to, expand=expand,
                                      tolerance=tolerance, pinned=pinned)
            filled = result.selection.startswith("gate-order fill")  # no single τ fit: channels added in gate order
            search.update({"threshold": None if filled else round(result.value, 6),
                           "threshold_iterations": result.iterations, "selection": result.selection})
    if method == "scratch" or pinned:
        search.update({"search_space": gates.search_space, "pinned": sorted(pinned)})
    search.update({"tolerance": tolerance, "full_flops": full_flops, "full_params": graph.count_params(),
                   "rounding": rounding.to_json()})
    plan = base.with_widths(result.widths, budget=b.to_json(), flops=result.flops, params=result.params,
                            search=search, latency=latency_record)
    if verify:  # before anything else runs the thin model (the latency check below)
        _verify(plan)
    if latency_options.check and latency_record is None and timing_enabled():
        plan.search["latency_check"] = check_latency(plan, graph, latency_options, timing_device, say)
    block = documented_multiple(latency_options.backend, latency_options.precision, timing_device)[0]
    if rounding.how == "explicit" and is_ragged(result.widths, graph.full_widths(), block):
        check = plan.search.get("latency_check")
        cost = (f"this plan runs at {check['plan_ratio_to_full']:.2f}x the full model's latency on {check['backend']} "
                f"({check['threads']} thread(s), {check['mode']} timing)" if check else
                "ragged counts run up to 2x slower on onnxruntime's CPU kernels")
        warning = (f"--round-to {round_to} leaves channel counts off the runtime's {block}-channel blocks: {cost}; "
                   "use --round-to auto")
        plan.search["warnings"] = [warning]
        say(f"warning: {warning}")
    if criterion is not None:
        say(f"kept channels: {criterion} on {gates.weights}")
        plan = choose_channels(plan, gates.weights, criterion, gates=learned_gates)
    return plan


def _verify(plan: ChannelPlan) -> None:
    """The contract: G(plan) counts exactly the plan's FLOPs and parameters."""
    thin = generate(plan)
    try:
        flops, params = model_macs(registry.traced_part(thin), tuple(plan.input_size)), count_params(thin)
    except Exception as exc:  # noqa: BLE001 - the model's own code fails at these widths (the probe's passed)
        raise thinned_failure(plan.arch, exc, thin) from exc
    if (flops, params) != (plan.flops, plan.params):
        raise PlanError(
            f"internal error: G(plan) counts {flops} MACs / {params} params, plan says "
            f"{plan.flops} / {plan.params}; please report this with the architecture name"
        )


def _prune_structure(arch: Any, name: str, *, num_classes: int | None, in_chans: int | None,
                     input_size: tuple[int, int, int] | None, arch_kwargs: dict[str, Any] | None, expand: float,
                     seed: int, criterion: str | None, weights: str | None, verify: bool, say) -> ChannelPlan:
    """A published structure's plan (slimkit.structures); with ``weights`` and ``criterion='l1'``, the
    channels it keeps are the parent's with the largest filter L1 norm. The plan's budget is the
    structure's own MACs, so a uniform plan can be compared at the same cost."""
    if not isinstance(arch, str):
        raise SlimkitError(f"structure {name} is defined for a named architecture: pass its name, not a model object")
    if expand != 1.0:
        raise SlimkitError(f"structure {name} fixes the widths of the unexpanded model: drop --expand")
    if criterion not in (None, "l1"):
        raise SlimkitError(f"structure {name} keeps the filters with the largest L1 norm, as its paper does: use "
                           "--criterion l1 (or no --criterion and no --weights, for the widths alone)")
    if criterion is None and weights is not None:
        raise SlimkitError(f"--weights with structure {name}: add --criterion l1 to keep the trained model's "
                           "channels with the largest filters")
    if criterion is not None and weights is None:
        raise SlimkitError(f"--criterion {criterion} ranks the channels of a trained model: pass its checkpoint "
                           "with --weights CKPT")
    spec = registry.resolve(registry.model_source(arch))
    structure = get_structure(name, spec.canonical)
    if weights is not None:  # the parent's classes and resolution, unless asked otherwise
        num_classes, in_chans, input_size = _parent_shape(weights, arch, num_classes, in_chans, input_size)
    kwargs = registry.arch_kwargs_for(num_classes, in_chans, arch_kwargs)
    size = tuple(input_size) if input_size else registry.default_input_size(spec.canonical, in_chans=in_chans)
    graph = channel_graph(spec.canonical, kwargs, size)
    if weights is not None:  # weights that do not fit the architecture are refused before anything else
        _load_full_weights(build_model(spec.canonical, kwargs), weights, spec.canonical, kwargs)
    widths = structure_widths(structure, graph)
    flops, full_flops = graph.count_flops(widths), graph.count_flops()
    record = {**structure.to_json(), "flops_reduction": round(1 - flops / full_flops, 4)}
    base = ChannelPlan.from_widths(spec.canonical, size, {n: g.width for n, g in graph.groups.items()},
                                   arch_kwargs=kwargs, round_to=1, method="structure", seed=seed,
                                   **source_fields(spec.canonical, graph))
    plan = base.with_widths(widths, budget={"kind": "flops", "text": structure.name, "value": flops}, flops=flops,
                            params=graph.count_params(widths),
                            search={"structure": record, "full_flops": full_flops,
                                    "full_params": graph.count_params()})
    say(f"structure {structure.name}: block-internal channels pruned by {list(structure.stage_prune)} per stage, "
        f"layers {list(structure.skip_layers)} kept whole; MACs -{100 * record['flops_reduction']:.1f}% "
        f"(paper: -{100 * structure.reported_flops_reduction:.1f}%)")
    if criterion is not None:
        say(f"kept channels: {criterion} on {weights}")
        plan = choose_channels(plan, weights, criterion)
    if verify:
        _verify(plan)
    return plan


def _check_arguments(arch: Any, budget: Any, method: Any, input_size: Any, verify: Any, gates: Any, latency: Any,
                     progress: Any, log: Any, structure: Any = None) -> None:
    """prune()'s arguments have the types its docstring gives (the CLI and recipes always pass them so;
    a Python caller learns which argument is wrong, not an AttributeError from deep inside)."""
    if not (isinstance(arch, (str, nn.Module)) or callable(arch)):
        raise TypeError(f"prune: 'arch' must be an architecture name like 'resnet20', a function returning an "
                        f"nn.Module, or an nn.Module, got {show(arch)}")
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        hint = f"'{budget * 100:g}%'" if 0 < budget <= 1 else f"'{budget:g}' (MACs) or '{budget:g}p' (params)"
        raise TypeError(f"prune: 'budget' must be a budget string like '50%', '150M', '2.1Mp' or '8ms', "
                        f"got the number {budget!r}: write {hint}")
    check_type("prune", "structure", structure, (str, type(None)), "a structure name like 'resnet56-a', or None")
    check_type("prune", "budget", budget, (str, Budget) if structure is None else (str, Budget, type(None)),
               "a budget string like '50%', '150M', '2.1Mp' or '8ms' (or None with a structure)")
    check_type("prune", "method", method, (str, type(None)), f"one of {', '.join(repr(m) for m in METHODS)}, or None")
    check_type("prune", "verify", verify, bool, "True or False")
    check_type("prune", "gates", gates, (GateOptions, type(None)), "a slimkit.GateOptions or None")
    check_type("prune", "latency", latency, (LatencyOptions, type(None)), "a slimkit.LatencyOptions or None")
    text, text_or_none = (str,), (str, os.PathLike, type(None))
    for prefix, options, kinds in (  # their text fields too: GateOptions(data=3) is no AttributeError later
            ("gates", gates, {"data": (str, type(None)), "data_dir": text_or_none, "preset": text_or_none, "device": text,
                              "weights": text_or_none, "selection": text, "search_space": text}),
            ("latency", latency, {"backend": text, "precision": text, "mode": text, "check": (bool,)})):
        for field, allowed in kinds.items() if options is not None else ():
            check_type("prune", f"{prefix}.{field}", getattr(options, field), allowed,
                       "True or False" if allowed == (bool,) else "a string" + (" or None" if type(None) in allowed
                                                                                 else ""))
    check_callable("prune", "log", log, 1, "a function taking one string (e.g. print)")
    if progress is not None and not all(hasattr(progress, m) for m in ("add_task", "update", "remove_task")):
        raise TypeError("prune: 'progress' must be a rich.progress.Progress (or an object with add_task, update "
                        f"and remove_task), got {show(progress)}")


def _check_outputs(arch: str, kwargs: dict[str, Any], size: tuple[int, ...], classes: int, data: str) -> None:
    """A model whose builder does not take num_classes must already output one score per class of the data
    gates are learned on (else the loss fails deep inside the search)."""
    model = build_model(arch, kwargs).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, *size))
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != classes:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SlimkitError(f"{arch} outputs {shape}, but learning gates on {data} needs [batch, {classes}] class "
                           f"scores: give the factory a num_classes parameter, or prune with --method uniform")


def _user_task(loss_fn: Any, data: Any, val_data: Any, method: str, opts: GateOptions) -> GateTask | None:
    """The user's own gate-learning data and loss as a GateTask (None when neither is given)."""
    if loss_fn is None and data is None and val_data is None:
        return None
    if data is None:
        raise SlimkitError("loss_fn and val_data need the data to learn gates on: pass data=loader")
    check_callable("prune", "loss_fn", loss_fn, 2, "a function loss_fn(model, batch) -> scalar tensor")
    if method != "scratch":
        raise SlimkitError(f"loss_fn and data are for learning gates: use method='scratch', not '{method}'")
    if opts.data is not None or opts.data_dir is not None:
        raise SlimkitError("give the gate-learning data once: as a loader (data=) or by name (GateOptions.data)")
    check_loader(data, "data")
    if val_data is not None:
        check_loader(val_data, "val_data")
    held_out = list(val_data) if val_data is not None else list(itertools.islice(iter(data), USER_VAL_BATCHES))
    if not held_out:
        raise SlimkitError(("val_data" if val_data is not None else "data") + " yields no batch: give a loader "
                           "with at least one batch")
    if loss_fn is None:  # slimkit's own: cross-entropy on (images, labels), snapshots by held-out accuracy
        for batch in held_out[:1]:
            check_classification_batch(batch)

        def classification_loss(model: nn.Module, batch: Any) -> torch.Tensor:
            images, labels = check_classification_batch(batch)
            return torch.nn.functional.cross_entropy(class_scores(model(images), model).float(), labels)

        def accuracy(model: nn.Module) -> float:
            hits = seen = 0
            device = next(iter(model.parameters())).device
            for batch in held_out:
                images, labels = check_classification_batch(to_device(batch, device))
                hits += int((class_scores(model(images), model).argmax(1) == labels).sum())
                seen += labels.numel()
            return hits / max(seen, 1)

        loss, evaluate, score = classification_loss, accuracy, "accuracy"
    else:
        def minus_loss(model: nn.Module) -> float:  # the snapshot with the lowest held-out loss scores highest
            device = next(iter(model.parameters())).device
            return -sum(float(loss_fn(model, to_device(b, device))) for b in held_out) / len(held_out)

        loss, evaluate, score = loss_fn, minus_loss, "-loss"
    try:
        steps = len(data)  # type: ignore[arg-type]
    except TypeError:
        steps = None
    where = f"{len(held_out)} batch(es) of " + ("val_data" if val_data is not None else "data (not held out)")
    return GateTask(train=data, loss=loss, evaluate=evaluate, score_name=score, steps_per_epoch=steps,
                    description=f"your loader ({steps if steps is not None else 'unknown number of'} batches per "
                                f"epoch), loss {'cross-entropy' if loss_fn is None else 'loss_fn'}, snapshots scored "
                                f"by {score} on {where}")


def _dense_task(task: str, bundle, batch_size: int, seed: int, device: torch.device) -> GateTask:
    """Segmentation or detection on the shapes data. Segmentation: its loss on training batches,
    snapshots by held-out mIoU (BatchNorm on batch statistics, as the gates learn: the running
    statistics of random frozen weights say nothing). Detection: the detector's own training losses
    (it returns them in train mode, given targets), snapshots by the lowest held-out loss."""
    val = bundle.val if bundle.val is not None else bundle.test
    if device.type == "cpu" and len(val) > CPU_DENSE_VAL_IMAGES:
        val = val.subset(torch.arange(CPU_DENSE_VAL_IMAGES))
    detection = task == "detection"
    train_loader = ShapesLoader(bundle.train, batch_size, shuffle=True, seed=seed, drop_last=True, detection=detection)
    val_loader = ShapesLoader(val, batch_size, shuffle=False, seed=seed, drop_last=False, detection=detection)
    if detection:
        def minus_loss(model: nn.Module) -> float:
            return -sum(float(detection_loss(model, to_device(b, device))) for b in val_loader) / max(len(val_loader), 1)

        return GateTask(train=train_loader, loss=detection_loss, evaluate=minus_loss, score_name="-loss",
                        steps_per_epoch=len(train_loader), description=bundle.description)

    def miou(model: nn.Module) -> float:
        return evaluate_segmentation(model, val_loader, device, bundle.num_classes, True, eval_mode=False)["miou"]

    return GateTask(train=train_loader, loss=segmentation_loss, evaluate=miou, score_name="mIoU",
                    steps_per_epoch=len(train_loader), description=bundle.description)


def _learn_gates(arch: str, kwargs: dict[str, Any], graph, budget: Budget, bundle, opts: GateOptions, *,
                 expand: float, seed: int, progress: Any, say: Any, user_task: GateTask | None = None,
                 dense: str | None = None):
    """Build the (expanded) supernet with frozen random weights and learn its gates.

    Default space: all groups gated, r against the expanded supernet, γ adaptive so a short run
    reaches r. Paper space: the official code's settings (module docstring), γ fixed."""
    preset = opts.preset or ("shapes" if dense else "imagenet" if (opts.data or "").startswith("imagefolder:")
                             else "cifar")
    if preset not in PRESETS:
        raise SlimkitError(f"unknown --preset '{preset}': choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    dev = resolve_device(opts.device)
    bs = opts.batch_size or p["batch_size"]
    paper = opts.search_space == "paper"
    # The learning rate depends on the device and the search space only, never on --steps or
    # --epochs: asking for more steps must not silently change the step size.
    lr = opts.lr
    if lr is None:
        lr = CPU_LR if dev.type == "cpu" and not paper else PAPER_LR
    if user_task is not None:
        bs = getattr(user_task.train, "batch_size", None) or bs  # the loader's own batches
    gate_data = user_task if user_task is not None else \
        _dense_task(dense, bundle, bs, seed, dev) if dense else bundle
    if opts.steps is None and opts.epochs is None and dev.type == "cpu" and not paper:
        n_steps = CPU_DENSE_STEPS if dense else CPU_STEPS
        say(f"CPU: a short gate search of {n_steps} steps at lr {lr} (paper: {p['epochs']:g} epochs at lr 0.01); "
            "pass --epochs or --steps for more")
    elif opts.steps is None and isinstance(gate_data, GateTask):
        if gate_data.steps_per_epoch is None:
            raise SlimkitError("data has no length, so epochs cannot be counted: pass GateOptions(steps=N)")
        n_steps = max(1, math.ceil((opts.epochs if opts.epochs is not None else p["epochs"])
                                   * gate_data.steps_per_epoch))
    else:
        n_steps = opts.steps or steps_for_epochs(opts.epochs if opts.epochs is not None else p["epochs"],
                                                 len(bundle.train), bs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = registry.create_model(arch, **kwargs)
    if opts.weights is not None:
        _load_full_weights(model, opts.weights, arch, kwargs)
        if expand != 1.0:
            raise SlimkitError("--weights learns gates on a trained full model: it cannot be combined with --expand")
    widths = max_widths(graph, expand, round_to=1)
    if expand != 1.0:
        resize_model(model, graph, widths)
    fixed = residual_stream_groups(graph) if paper else []
    supernet = attach_gates(model, graph, widths, fixed=fixed)
    reference = graph.full_widths() if paper else widths  # the paper's r is a share of the unexpanded model
    r = min(1.0, budget.value / graph.count_flops(reference)) if budget.kind == "flops" else \
        min(1.0, budget.value / graph.count_params(reference))
    cfg = GateSearchConfig(target=r, gamma=opts.gamma if opts.gamma is not None else p["gamma"], lr=lr,
                           batch_size=bs if user_task is None else 1, steps=n_steps, evals=10,
                           val_images=CPU_VAL_IMAGES if dev.type == "cpu" else None, seed=seed, device=str(dev),
                           snapshot_rule="nonzero" if paper else "mean", augment=paper, eval_bn=paper,
                           adaptive_gamma=not paper)
    gated = sum(w for n, w in widths.items() if n not in fixed)
    search_input = list(bundle.train.input_size) if bundle is not None else "your data"
    say(f"gates: {gated} channels in {len(widths) - len(fixed)} groups"
        + (f" ({len(fixed)} residual-stream groups kept at full width)" if fixed else "")
        + f", r = {r:.3f}, γ = {cfg.gamma}{' (adaptive)' if cfg.adaptive_gamma else ''}, lr {lr}, "
        f"batch {bs}, {n_steps} steps at {search_input} on {dev}")
    res = search_gates(supernet, gate_data, cfg, progress=progress)
    if not res.qualified and paper:
        say(f"note: no snapshot had a share of non-zero gates <= r ({r:.3f}); using the final gates "
            f"(non-zero share {res.nonzero_fraction:.3f}), as the paper's code does")
    elif not res.qualified:
        say(f"warning: no snapshot reached mean gate <= r ({r:.3f}); using the sparsest (mean {res.gate_mean:.3f})")
    flat = [v for vs in res.gates.values() for v in vs]
    info = {"weights": "random" if opts.weights is None else f"trained ({opts.weights})",
            "preset": preset, "gamma": cfg.gamma, "gamma_final": res.gamma, "adaptive_gamma": cfg.adaptive_gamma,
            "snapshot_rule": cfg.snapshot_rule, "augment": cfg.augment, "eval_bn": cfg.eval_bn,
            "nonzero_fraction": round(res.nonzero_fraction, 4), "lr": lr, "batch_size": bs, "steps": n_steps,
            "target_r": round(r, 6), "penalty_target": round(res.aim, 6), "search_input": search_input,
            "data": "your loader" if user_task is not None else bundle.name,
            "device": str(dev), "chosen_step": res.step,
            **({"val_accuracy": round(res.val_accuracy, 4)} if res.score_name == "accuracy" else
               {"val_score": round(res.val_accuracy, 4), "val_score_name": res.score_name}),
            "qualified": res.qualified, "seconds": round(res.seconds, 1),
            "gates": {"mean": round(sum(flat) / len(flat), 4), "min": round(min(flat), 4),
                      "max": round(max(flat), 4),
                      "zero": sum(1 for v in flat if v <= 0.0), "one": sum(1 for v in flat if v >= 1.0)},
            "history": [{k: round(v, 4) for k, v in h.items()} for h in res.history]}
    return res, info


def _check_timing_backend(options: LatencyOptions, *, timed: bool) -> None:
    """--backend is known, and this install can time on it when the search or the latency check will (before
    any gate learning: the check runs last, and a missing runtime lost the minutes before it)."""
    if options.backend not in BACKENDS:
        check_backend(options.backend)  # unknown: said, though nothing may be timed
    if not (timed or (options.check and timing_enabled())):
        return
    try:
        check_backend(options.backend)
    except LatencyError as exc:
        if timed:
            raise
        raise LatencyError(f"{exc}; or plan without the latency check: --no-latency-check") from None


def _layer_costs(selection: str, base: ChannelPlan, graph, options: LatencyOptions, say,
                 search: dict[str, Any]) -> dict[str, float] | None:
    """``latency-aware``: each layer's measured latency per MAC at the plan's input size (None for
    other selections, which rank by MACs or by gate alone)."""
    if selection != "latency-aware":
        return None
    if not timing_enabled():
        raise SlimkitError("--selection latency-aware times every layer on --backend, and SLIMKIT_NO_TIMING is set: "
                           "unset it, or use --selection threshold")
    table = layer_latency_per_mac(base.with_widths({n: g["full"] for n, g in base.groups.items()}), graph,
                                  backend=options.backend, threads=options.threads, mode=options.mode, say=say)
    layers = table.pop("_layers")
    search["layer_latency"] = {"backend": options.backend, "mode": options.mode, "layers_timed": layers,
                               "input_size": list(base.input_size)}
    return table


def _search_latency(meter, graph, budget: Budget, gates, round_to: int, expand: float, tolerance: float, say,
                    selection: str = "threshold", pinned: dict[str, int] | None = None,
                    rank_weights: dict[str, float] | None = None):
    """Latency budget -> widths, the resolved budget and the plan's ``latency`` record."""
    full_flops = graph.count_flops()

    def plan_at(f: float) -> dict[str, int]:
        b = Budget("flops", f"{f:.1%}", round(f * full_flops))
        for tol in (0.01, 0.03, 0.1, 10.0):  # the latency search wants a plan near f, not exactly at it
            try:
                if gates is None:
                    return search_uniform(graph, b, round_to=round_to, expand=expand, tolerance=tol).widths
                if selection in ("cost-aware", "latency-aware"):
                    return search_cost_aware(graph, gates, b, round_to=round_to, expand=expand, tolerance=tol,
                                             pinned=pinned, rank_weights=rank_weights).widths
                return search_threshold(graph, gates, b, round_to=round_to, expand=expand, tolerance=tol,
                                        pinned=pinned).widths
            except BudgetError:
                continue
        raise BudgetError(f"no plan near {f:.1%} of the full model's MACs")

    res = search_latency(meter, budget, plan_at, tolerance=tolerance, log=say)
    m = res.measurement
    resolved = Budget("latency", budget.text, res.target_ratio * res.full_ms / 1000.0, budget.fraction)
    latency = {"backend": meter.backend, "device": meter.device_text, "threads": meter.threads, "batch": meter.batch,
               "precision": meter.precision, "mode": meter.mode, **({"quantization": meter.quantization} if meter.quantization else {}),
               "median_ms": round(m.median_ms, 4), "p90_ms": round(m.stats["p90_ms"], 4),
               "std_ms": round(m.stats["std_ms"], 4), "ratio_to_full": round(m.ratio, 4),
               # the full model's median from the same paired run as the plan's (the machine drifts between
               # runs: a pair from two runs read 9.9 against 69 ms at a 0.50 ratio); the budget in ms was fixed
               # by the first run's full model
               "ratio_ci": [round(m.ci[0], 4), round(m.ci[1], 4)], "full_median_ms": round(m.full_median_ms, 4),
               "target_ratio": round(res.target_ratio, 4), "budget_ms": round(res.target_ratio * res.full_ms, 4),
               "runs": m.runs, "measured": True,
               "search": {"measured_plans": res.measured_plans, "seconds": round(res.seconds, 1),
                          "tolerance": tolerance, "selection": res.selection, "trace": res.trace}}
    say(f"latency: {m.ratio:.3f}x the full model ({m.median_ms:.3f} ms; budget {budget.text} = "
        f"{res.target_ratio * res.full_ms:.3f} ms), {res.measured_plans} plans measured in {res.seconds:.0f}s")
    widths = res.widths
    return (SearchResult(widths, graph.count_flops(widths), graph.count_params(widths), None, 0,
                         selection="latency search"), resolved, latency)


def _parent_shape(path: str, arch: str, num_classes: int | None, in_chans: int | None,
                  input_size: tuple[int, ...] | None) -> tuple[int | None, int | None, tuple[int, ...] | None]:
    """``(num_classes, in_chans, input_size)`` of a plan of the parent in ``path``: the parent's
    (:func:`slimkit.checkpoint.parent_shape`) where not given. A size given without ``in_chans`` takes the
    parent's input channels (``--input-size 64`` reads as 3x64x64 before the parent is read, and no other
    number of channels loads its first conv). A backbone saved without its classifier is refused: its
    channels are ranked on the full model, and training inherits them from it on a widths-only plan."""
    parent_classes, parent_chans, parent_size = parent_shape(path, arch)
    if parent_classes == 0:
        raise SlimkitError(f"{path} holds {arch} without its classifier (a backbone, timm's num_classes=0): prune "
                           f"without --weights (the widths alone) and train with `--init inherit --from {path}`, "
                           "which keeps the channels with the largest filters and gives the classifier new rows")
    num_classes = parent_classes if num_classes is None else num_classes
    if input_size is None and in_chans is None:
        input_size = parent_size
    if in_chans is None and parent_chans is not None and input_size is not None:
        input_size = (parent_chans, *tuple(input_size)[1:])
    in_chans = parent_chans if in_chans is None else in_chans
    return num_classes, in_chans, input_size


def _load_full_weights(model, path: str, arch: str, kwargs: dict[str, Any]) -> None:
    """Trained weights for gate learning: a checkpoint of the *full* model of the same architecture."""
    load_full_weights(model, full_model_weights(path, arch, kwargs), path, arch, kwargs)


def check_latency(plan: ChannelPlan, graph, options: LatencyOptions, device: str, say) -> dict[str, Any]:
    """Time ``plan`` and the uniform plan at its budget against the full model, on the target backend at
    the plan's input size: a pruned plan that runs slower than plain width scaling must say so.
    Interleaved: it is a comparison, and interleaved timing compares soundly even on a busy machine."""
    meter = LatencyMeter(plan, graph, backend=options.backend, threads=options.threads, batch=options.batch,
                         device=device, precision=options.precision, mode="interleaved")
    try:
        mine = meter.measure({n: g["width"] for n, g in plan.groups.items()})
        uniform = None
        if plan.method != "uniform":
            ref = uniform_reference(plan, graph)
            if ref is not None:
                uniform = meter.measure({n: g["width"] for n, g in ref.groups.items()})
    finally:
        meter.close()
    out = {"backend": options.backend, "precision": options.precision, "mode": meter.mode, "threads": meter.threads,
           "batch": options.batch, "input_size": list(plan.input_size), "device": meter.device_text,
           "full_median_ms": round(mine.full_median_ms, 4), "plan_median_ms": round(mine.median_ms, 4),
           "plan_ratio_to_full": round(mine.ratio, 4)}
    text = (f"latency on {options.backend} ({meter.mode} timing, {meter.threads} thread(s), batch {options.batch}, "
            f"{'x'.join(map(str, plan.input_size))}): this plan {mine.median_ms:.3f} ms = {mine.ratio:.3f}x the full "
            f"model's {mine.full_median_ms:.3f} ms")
    if uniform is not None:
        vs = mine.ratio / uniform.ratio
        out.update({"uniform_median_ms": round(uniform.median_ms, 4), "uniform_ratio_to_full": round(uniform.ratio, 4),
                    "plan_vs_uniform": round(vs, 4)})
        text += f"; the uniform plan at the same budget {uniform.ratio:.3f}x, so this plan runs at {vs:.2f}x uniform's"
        if vs > 1.03:  # beyond timing noise
            text += (" — SLOWER than plain width scaling here: for speed use --method uniform, or a --latency "
                     "budget (it times every candidate)")
    say(text)
    return out


def uniform_reference(plan: ChannelPlan, graph=None) -> ChannelPlan | None:
    """The uniform plan at ``plan``'s budget, for comparison (None when rounding cannot meet it)."""
    graph = graph or channel_graph(plan.arch, plan.arch_kwargs, tuple(plan.input_size))
    b = plan.budget or {}
    try:
        res = search_uniform(graph, Budget(b["kind"], b["text"], b["value"]), round_to=plan.round_to,
                             expand=plan.expand, tolerance=0.05)
    except (BudgetError, KeyError):
        return None
    return plan.with_widths(res.widths, method="uniform", flops=res.flops, params=res.params, search={},
                            latency=None)
