"""G: ChannelPlan -> thin (or widened) nn.Module, for any model the registry builds.

G builds the source architecture with fresh random weights, then resizes every parameter and
buffer that the channel graph ties to a group: conv/linear/norm modules get real smaller (or
larger) tensors and their size attributes (``out_channels``, ``groups``, ``num_features``, ...)
follow, and split sizes stored on modules (mixed-kernel convs' ``splits``, Res2Net's ``width``)
are rewritten to the new piece widths. No masks, no per-architecture code: timm's ``_prune.py`` rebuilds specific model families
from a width file; G does the same for any traced model.

New tensors are freshly initialised: Kaiming-normal (fan_out) for convs, as torchvision and timm
CNNs do; tensors that were constant in the source model (BN scale 1, bias 0, running stats,
layer-scale 1e-6, zero-init residual BN) keep that constant; other tensors are redrawn with the
source tensor's mean and standard deviation (rescaled to the new fan-in for linear weights).
"""

from __future__ import annotations

import copy
import math
import os
from collections import defaultdict
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from slimkit import registry
from slimkit.attention import rewrite_attention_modules
from slimkit.errors import PlanError
from slimkit.flops import count_flops
from slimkit.graph import ChannelGraph, analyze
from slimkit.plan import ChannelPlan, load_plan

__all__ = ["generate", "full_plan", "build_model", "channel_graph", "resize_model", "source_fields"]


def _kwargs_key(arch: str, arch_kwargs: dict[str, Any], input_size: tuple[int, ...]) -> str:
    return repr((registry.resolve(arch).canonical, sorted(arch_kwargs.items()), tuple(input_size)))


_GRAPHS: dict[str, ChannelGraph] = {}
TASK_OUTPUT = "read by the detector's fixed tail (anchors, box decoding, NMS, RoI heads): the task fixes its width"


def build_model(arch: str, arch_kwargs: dict[str, Any] | None = None) -> nn.Module:
    return registry.create_model(arch, **(arch_kwargs or {}))


def channel_graph(arch: str, arch_kwargs: dict[str, Any] | None, input_size: tuple[int, ...],
                  model: nn.Module | None = None) -> ChannelGraph:
    """Channel groups of ``arch`` at ``input_size`` (traced once per process, then cached)."""
    arch_kwargs = dict(arch_kwargs or {})
    key = _kwargs_key(arch, arch_kwargs, input_size)
    if key not in _GRAPHS:
        model = model if model is not None else build_model(arch, arch_kwargs)
        graph = _analyze(model, tuple(input_size))
        _GRAPHS[key] = graph
    return _GRAPHS[key]


def _analyze(model: nn.Module, input_size: tuple[int, ...]) -> ChannelGraph:
    traced = registry.traced_part(model)  # a detector's dense core (slimkit.models.tasks)
    graph = analyze(traced, input_size)
    if traced is not model:  # the core's outputs are what the detector's fixed tail reads: say so
        graph.frozen = {name: TASK_OUTPUT if why == "network output" else why for name, why in graph.frozen.items()}
    # MACs outside conv/linear weights and tracked attention (frozen matmuls) stay constant.
    graph.other_macs = count_flops(traced, input_size) - graph.count_flops()
    return graph


def source_fields(arch: str, graph: ChannelGraph) -> dict[str, Any]:
    """Plan fields that pin the user's own code: the fingerprint of the graph it traced to, and whether
    another process can rebuild it (not from a model object). Library models need neither."""
    spec = registry.resolve(arch)
    if not spec.user_code:
        return {}
    return {"graph_fingerprint": graph.fingerprint, "regenerable": spec.source != "object"}


def full_plan(arch: str, *, num_classes: int | None = None, in_chans: int | None = None,
              input_size: tuple[int, int, int] | None = None, arch_kwargs: dict[str, Any] | None = None) -> ChannelPlan:
    """The unpruned ``arch`` as a plan: every group at full width (what `slimkit train ARCH` trains and
    what latency reports compare against). The same plan as a uniform prune to 100% at round_to 1."""
    spec = registry.resolve(arch)
    size = tuple(input_size) if input_size else registry.default_input_size(spec.canonical, in_chans=in_chans)
    if num_classes is not None and spec.user_code and not registry.accepts(spec.canonical, "num_classes"):
        num_classes = None  # a factory without the argument builds its own head (checked where data meets it)
    kwargs = registry.arch_kwargs_for(num_classes, in_chans, arch_kwargs)
    graph = channel_graph(spec.canonical, kwargs, size)
    full = {n: g.width for n, g in graph.groups.items()}
    flops, params = graph.count_flops(), graph.count_params()
    return ChannelPlan.from_widths(
        spec.canonical, size, full, arch_kwargs=kwargs, expand=1.0, round_to=1, method="uniform",
        budget={"kind": "flops", "text": "100%", "value": flops, "fraction": 1.0}, flops=flops, params=params,
        search={"full_flops": flops, "full_params": params}, **source_fields(spec.canonical, graph))


def _init_tensor(new: torch.Tensor, old: torch.Tensor, module: nn.Module, attr: str) -> None:
    with torch.no_grad():
        if old.numel() == 0 or not old.is_floating_point():
            new.zero_()
            return
        lo, hi = old.min(), old.max()
        if lo == hi:  # constant init (BN scale/shift, running stats, layer scale)
            new.fill_(lo.item())
        elif not isinstance(getattr(module, attr), nn.Parameter) and old.dim() == new.dim():
            # a fixed buffer (a blur filter repeated per channel): keep its values, cycling them
            index = [torch.arange(n, device=old.device) % m for n, m in zip(new.shape, old.shape)]
            new.copy_(old[torch.meshgrid(*index, indexing="ij")])
        elif isinstance(module, _ConvNd) and attr == "weight":
            nn.init.kaiming_normal_(new, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear) and attr == "weight":
            scale = math.sqrt(old.shape[1] / new.shape[1])
            new.normal_(0.0, old.float().std().item() * scale)
        else:
            new.normal_(old.float().mean().item(), old.float().std().item())


def _fix_module_attrs(name: str, module: nn.Module, graph: ChannelGraph) -> None:
    """Make a module's size attributes agree with its (resized) tensors."""
    if isinstance(module, _ConvNd):
        out = module.weight.shape[0]
        kind, per = graph.conv_kinds.get(name, ("dense", 1))
        if kind in ("depthwise", "grouped"):
            module.groups = out // per
        module.out_channels = out
        module.in_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, _BatchNorm):
        ref = module.weight if module.weight is not None else module.running_mean
        module.num_features = ref.shape[0]
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:
        module.normalized_shape = tuple(module.weight.shape)
    elif isinstance(module, nn.GroupNorm) and module.weight is not None:
        module.num_channels = module.weight.shape[0]


def resize_model(model: nn.Module, graph: ChannelGraph, widths: dict[str, int]) -> nn.Module:
    """Resize ``model`` in place so every group takes its width in ``widths``."""
    shapes = graph.shapes(widths)
    modules = dict(model.named_modules())
    touched: dict[str, nn.Module] = {}
    for fqn, shape in shapes.items():
        mod_name, _, attr = fqn.rpartition(".")
        module = modules[mod_name]
        old = getattr(module, attr)
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        _init_tensor(new, old, module, attr)
        if isinstance(old, nn.Parameter):
            setattr(module, attr, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            module._buffers[attr] = new
        touched[mod_name] = module
    old_classifier_in = _classifier_in(model)
    for name, module in touched.items():
        _fix_module_attrs(name, module, graph)
    # Split sizes the forward pass reads from the module (self.splits, self.width, ...).
    for (mod_name, attr), value in graph.stored_size_values(widths).items():
        setattr(model.get_submodule(mod_name) if mod_name else model, attr, value)
    rewrite_attention_modules(model, graph.attention_modules)  # num_heads etc. follow the heads
    # timm models record their feature width (used by reset_classifier / forward_head).
    new_classifier_in = _classifier_in(model)
    if old_classifier_in is not None and new_classifier_in != old_classifier_in:
        for attr in ("num_features", "head_hidden_size"):
            if getattr(model, attr, None) == old_classifier_in:
                setattr(model, attr, new_classifier_in)
    return model


def _classifier_in(model: nn.Module) -> int | None:
    get = getattr(model, "get_classifier", None)
    if get is None:
        return None
    head = get()
    return getattr(head, "in_features", None) or getattr(head, "in_channels", None)


def check_plan_fits(plan: ChannelPlan, graph: ChannelGraph) -> None:
    """The plan's groups must be exactly the architecture's groups, with the same full widths."""
    mine, theirs = set(plan.groups), set(graph.groups)
    if mine != theirs:
        missing, extra = sorted(theirs - mine), sorted(mine - theirs)
        raise PlanError(
            f"plan does not fit {plan.arch} at input {plan.input_size}: "
            f"{len(missing)} groups missing (e.g. {missing[:2]}), {len(extra)} unknown (e.g. {extra[:2]}); "
            "regenerate the plan with this slimkit version"
        )
    for name, g in plan.groups.items():
        if g["full"] != graph.groups[name].width:
            raise PlanError(
                f"plan group '{name}' says full width {g['full']} but {plan.arch} has "
                f"{graph.groups[name].width}: the plan was made for other arch_kwargs"
            )


def check_fingerprint(plan: ChannelPlan, graph: ChannelGraph, what: str) -> None:
    """A plan of user code is built only from a model that traces to the graph it was planned on."""
    if plan.graph_fingerprint is not None and graph.fingerprint != plan.graph_fingerprint:
        raise PlanError(f"{what} now traces to a different graph ({graph.fingerprint}) than the plan was made from "
                        f"({plan.graph_fingerprint}): its code or arguments changed; prune it again, or restore "
                        "the code the plan was made with")


def generate(plan: ChannelPlan | dict | str | os.PathLike, seed: int | None = None,
             model: nn.Module | None = None) -> nn.Module:
    """G(plan): the thin network a plan describes, freshly initialised.

    Initialisation is seeded from ``seed`` (default: the plan's seed), so the same plan gives the
    same weights; the global RNG is left untouched. ``model`` (an instance of the plan's source
    architecture) is used instead of building one: a copy of it is resized, the model itself is not
    changed. A plan made from a model object needs it outside the process that made the plan.
    """
    plan = load_plan(plan)
    if model is not None:
        graph = _analyze(model, tuple(plan.input_size))
        check_fingerprint(plan, graph, "the model given")
        check_plan_fits(plan, graph)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(plan.seed if seed is None else seed)
            thin = copy.deepcopy(model)
            resize_model(thin, graph, plan.widths)
        return thin
    if not plan.regenerable and not registry.is_held(plan.arch):
        raise PlanError(f"this plan was made from a model object ({plan.arch}) in another Python process and cannot "
                        "be regenerated here: pass the model, slimkit.generate(plan, model=...), or prune a "
                        "python: factory (python:package.module:build_net or nets.py:build_net)")
    try:
        graph = channel_graph(plan.arch, plan.arch_kwargs, tuple(plan.input_size))
    except PlanError:
        raise
    except (ValueError, TypeError) as exc:
        raise PlanError(f"cannot build {plan.arch} from the plan: {exc}") from exc
    check_fingerprint(plan, graph, plan.arch + (f" {plan.arch_kwargs}" if plan.arch_kwargs else ""))
    check_plan_fits(plan, graph)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(plan.seed if seed is None else seed)
        model = build_model(plan.arch, plan.arch_kwargs)
        resize_model(model, graph, plan.widths)
    return model


def group_module_map(graph: ChannelGraph) -> dict[str, list[str]]:
    """Group name -> modules whose tensors follow it (for reports)."""
    out: dict[str, list[str]] = defaultdict(list)
    for fqn, dims in graph.param_dims.items():
        for segs in dims.values():
            for key, _ in segs:
                if isinstance(key, str):
                    mod = fqn.rpartition(".")[0]
                    if mod not in out[key]:
                        out[key].append(mod)
    return dict(out)
