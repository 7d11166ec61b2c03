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

With ``weights=`` (a trained full model) G *inherits* instead: every resized tensor is the trained
one with only the kept channels, selected along every dimension the channel graph ties to a group
(conv and linear in/out channels, depthwise convs, norms and their running statistics, biases,
flattened C×H×W inputs, concatenated pieces), so a plan that keeps every channel is the parent
exactly. Which channels a plan keeps is chosen here too (:func:`choose_channels`): by the L1 norm
of the filters that write each channel (Li et al. 2017, "Pruning Filters for Efficient ConvNets",
the main baseline of "Rethinking the Value of Network Pruning"; its official code ranks the first
conv of each block by Σ|w|), or by learned gate values.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from slimkit import registry
from slimkit import validate as limits
from slimkit.attention import rewrite_attention_modules
from slimkit.checkpoint import full_model_weights, weights_fingerprint
from slimkit.errors import PlanError
from slimkit.files import same_path
from slimkit.flops import model_macs
from slimkit.graph import ChannelGraph, GraphError, analyze, failing_module, model_error
from slimkit.plan import CRITERIA, ChannelPlan, load_plan
from slimkit.runtime import available_memory_bytes
from slimkit.validate import check_input_size, check_number, check_type, show

__all__ = ["generate", "full_plan", "build_model", "channel_graph", "resize_model", "verified_plan", "l1_scores",
           "select_channels", "choose_channels", "check_parent", "kept_index", "source_fields", "load_full_weights",
           "thinned_failure"]


def _kwargs_key(arch: str, arch_kwargs: dict[str, Any], input_size: tuple[int, ...]) -> str:
    return repr((registry.resolve(arch).canonical, sorted(arch_kwargs.items()), tuple(input_size)))


_GRAPHS: dict[str, ChannelGraph] = {}
TASK_OUTPUT = "read by the detector's fixed tail (anchors, box decoding, NMS, RoI heads): the task fixes its width"


def build_model(arch: str, arch_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """``arch`` with random weights; the first build of each model in a process checks, from its shapes
    alone, that its weights fit in memory (check_weights_memory)."""
    key = _kwargs_key(arch, dict(arch_kwargs or {}), ())
    if key not in _MEMORY_CHECKED:
        check_weights_memory(arch, arch_kwargs)
        _MEMORY_CHECKED.add(key)
    return registry.create_model(arch, **(arch_kwargs or {}))


def channel_graph(arch: str, arch_kwargs: dict[str, Any] | None, input_size: tuple[int, ...],
                  model: nn.Module | None = None) -> ChannelGraph:
    """Channel groups of ``arch`` at ``input_size`` (traced once per process, then cached)."""
    arch_kwargs = dict(arch_kwargs or {})
    key = _kwargs_key(arch, arch_kwargs, input_size)
    if key not in _GRAPHS:
        model = model if model is not None else build_model(arch, arch_kwargs)
        _check_same_build(arch, arch_kwargs, model)
        graph = _analyze(model, tuple(input_size), arch)
        _freeze_what_g_breaks(graph, arch, arch_kwargs, tuple(input_size))
        _GRAPHS[key] = graph
    return _GRAPHS[key]


def _check_same_build(arch: str, arch_kwargs: dict[str, Any], model: nn.Module) -> None:
    """The user's factory builds the same shapes on every call: G rebuilds a plan's model through it, so a
    factory that draws its widths at random makes plans no later build fits. Library models are fixed."""
    if not registry.resolve(arch).user_code:
        return
    first = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    with torch.random.fork_rng(devices=[]):
        again = {name: tuple(t.shape) for name, t in build_model(arch, arch_kwargs).state_dict().items()}
    if again != first:
        name = next((n for n in first if again.get(n) != first[n]), None) or next(n for n in again if n not in first)
        raise PlanError(f"{arch} builds a different model on each call ({name}: {list(first.get(name, ()))} then "
                        f"{list(again.get(name, ()))}): a plan must rebuild the model it was made from; make the "
                        "factory deterministic (fix or seed its random choices)")


# A forward pass holds an op's input and output, a norm's output beside them and often a residual:
# about five of the largest activation, in fp32 (measured: ResNet-20 at 8192 px peaks near 4.5).
_LIVE_ACTIVATIONS = 5


def forward_bytes(graph: ChannelGraph, batch: int = 1) -> int:
    """Memory one forward pass of the traced model needs, roughly: the largest conv/linear output
    (``mac_terms`` holds each call's output positions) times what is alive beside it."""
    largest = max((positions * graph.tensor_shapes[fqn][0] for fqn, positions in graph.mac_terms
                   if fqn in graph.tensor_shapes), default=0)
    return _LIVE_ACTIVATIONS * 4 * largest * batch


MEMORY_SHARE = 0.8  # of the memory free: the rest of the process, the system and the estimates' error


def memory_refusal(need: int, free: int) -> str:
    """"more than the N GiB slimkit uses here (80% of the M GiB free)": the figure compared, and where it
    comes from (saying only "the M GiB free" read as "needs 13.7, more than 15.9")."""
    return (f"more than the {MEMORY_SHARE * free / 2**30:.1f} GiB slimkit uses here ({MEMORY_SHARE:.0%} of the "
            f"{free / 2**30:.1f} GiB free)")


def check_memory(arch: str, graph: ChannelGraph) -> None:
    """Refuse, in one line, an input size whose forward pass cannot fit in this machine's free memory
    (``--input-size 8192``): the alternative is an out-of-memory traceback, or the kernel killing us."""
    need, free = forward_bytes(graph), available_memory_bytes()
    if free is not None and need > MEMORY_SHARE * free:
        c, h, w = graph.input_size
        raise PlanError(f"{arch} at input {h}x{w} needs about {need / 2**30:.1f} GiB for one forward pass, "
                        f"{memory_refusal(need, free)}: use a smaller --input-size")


# Tracing and checking a model holds its weights about twice: the model, and the thinned copy that
# proves G can run it (built full-size before it is resized).
_WEIGHT_COPIES = 2


@contextlib.contextmanager
def _parameters_on_meta():
    """Build a model with every parameter moved to the meta device as it is registered: its shapes,
    without its memory (each layer's weight exists for a moment only). Buffers stay real."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


_MEMORY_CHECKED: set[Any] = set()  # build_model's: models whose weights were found to fit


def weights_bytes(arch: str, arch_kwargs: dict[str, Any] | None = None) -> int | None:
    """The bytes of ``arch``'s parameters, counted without allocating them (None when the model
    cannot be built that way)."""
    # Wholly on the meta device first: nothing is allocated, not even one layer (a user's factory given
    # width=100000 builds a single 360 GB conv). Models whose construction reads tensor values (timm's
    # drop-path rates via .item()/.tolist()) fail there and are built with each parameter moved to meta
    # as it is registered.
    for on_meta in (lambda: torch.device("meta"), _parameters_on_meta):
        try:
            with torch.random.fork_rng(devices=[]), on_meta():
                model = registry.create_model(arch, **(arch_kwargs or {}))
        except Exception:  # noqa: BLE001 - a model that cannot be built this way is built for real next
            continue
        return sum(p.numel() * p.element_size() for p in model.parameters())
    return None


def check_weights_memory(arch: str, arch_kwargs: dict[str, Any] | None = None) -> None:
    """Refuse, in one line, a model whose weights cannot fit in this machine's free memory (timm's
    billion-parameter models on a small machine): the alternative is the kernel killing us."""
    free = available_memory_bytes()
    weights = weights_bytes(arch, arch_kwargs) if free is not None else None
    if weights is not None and _WEIGHT_COPIES * weights > MEMORY_SHARE * free:
        raise PlanError(f"{arch}'s weights take {weights / 2**30:.1f} GiB: tracing and checking it needs about "
                        f"{_WEIGHT_COPIES * weights / 2**30:.1f} GiB, {memory_refusal(_WEIGHT_COPIES * weights, free)}: "
                        "use a machine with more memory, or free some"
                        + (", or build it smaller (--arch-kwargs)" if registry.resolve(arch).user_code else ""))


# Probe widths: groups shrink by different factors so that two groups the analysis wrongly keeps
# apart are very likely to disagree; rounds, each freezing what the previous one broke (one module
# a round: PVT-v2-B5, whose every block's attention reads a width G cannot rewrite, needs about 60).
_PROBE_FACTORS = (0.5, 0.75, 0.625)


def _probe_widths(graph: ChannelGraph) -> dict[str, int]:
    widths = {}
    for i, (name, g) in enumerate(sorted(graph.groups.items())):
        d = max(1, g.divisor)
        if g.width % d == 0 and g.width > d:
            widths[name] = max(d, int(g.width * _PROBE_FACTORS[i % len(_PROBE_FACTORS)]) // d * d)
    return widths


def _freeze_what_g_breaks(graph: ChannelGraph, arch: str, arch_kwargs: dict[str, Any],
                          input_size: tuple[int, ...]) -> None:
    """Run a thinned copy of the model once; where it fails (a reshape to a width computed from
    another tensor, a module that keeps its own size), freeze the groups of the failing module and
    try again. What the analysis could not prove safe costs pruning freedom, never a broken model."""
    rounds = len(graph.groups) + 1  # each failed round freezes at least one group: a deep model may need one per block
    for _ in range(rounds):
        widths = _probe_widths(graph)
        if not widths:
            return
        try:  # on the meta device first: shapes only, no weights drawn, no arithmetic (fast for any size)
            with torch.device("meta"):
                _run_thinned(arch, arch_kwargs, graph, widths, input_size)
            return
        except Exception:  # noqa: BLE001 - some models do not run on meta tensors: the real check decides
            pass
        try:
            _run_thinned(arch, arch_kwargs, graph, widths, input_size)
            return
        except _ThinnedFailure as failure:  # freeze what broke, and try again
            exc, thin = failure.error, failure.model
            failed_in = failing_module(exc, thin)
            text = " ".join(str(exc).split())[:120] or type(exc).__name__
            where, touched = _module_to_freeze(graph, failed_in)
            if not touched:
                raise model_error(f"running a thinned {arch}", exc, thin) from exc
            inside = f", failed in {failed_in}" if failed_in != where else ""
            graph.freeze_groups(touched, f"G cannot resize {where or 'the model'} "
                                         f"({type(thin.get_submodule(where) if where else thin).__name__}{inside}): {text}")
    raise GraphError(f"{arch}: a thinned copy still fails after freezing the groups of {rounds} modules: "
                     "this model cannot be pruned yet")


class _ThinnedFailure(Exception):
    def __init__(self, error: Exception, model: nn.Module):
        super().__init__(str(error))
        self.error, self.model = error, model


def thinned_failure(arch: str, exc: BaseException, thin: nn.Module) -> GraphError:
    """One line for a thinned model whose own code fails at a plan's widths although the probe's widths
    ran: the module reads a width from somewhere the trace cannot see, and the probe's happened to fit."""
    error = model_error(f"running {arch} thinned to these widths", exc, thin)
    return GraphError(f"{error}: G cannot resize that module at these widths (its code reads a width slimkit "
                      "cannot see); try another budget or --round-to")


def _run_thinned(arch: str, arch_kwargs: dict[str, Any], graph: ChannelGraph, widths: dict[str, int],
                 input_size: tuple[int, ...]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        thin = build_model(arch, arch_kwargs)
        resize_model(thin, graph, widths)
    try:
        model_macs(registry.traced_part(thin), input_size)
    except Exception as exc:  # noqa: BLE001 - the caller decides what a failure means
        raise _ThinnedFailure(exc, thin) from exc
    return thin


def _module_to_freeze(graph: ChannelGraph, failed_in: str | None) -> tuple[str | None, set[str]]:
    """The module whose groups to freeze after a thinned copy failed in ``failed_in``, and those groups:
    the failing module's own, or, where it holds none still resized, the nearest enclosing module's
    (not the whole model's). A wrong width often comes from the enclosing module's code: PVT-v2's
    attention reshapes its reduced keys to the block's width (``sr(x).reshape(B, C, -1)``), and the
    norm after it is where that fails."""
    where = failed_in
    while where:
        touched = _groups_in_module(graph, where)
        if touched:
            return where, touched
        where = where.rpartition(".")[0]
    return failed_in, set()


def _groups_in_module(graph: ChannelGraph, module: str | None) -> set[str]:
    """Groups with a tensor in ``module`` or below it (all groups for the root module)."""
    if module is None:
        return set()
    prefix = module + "." if module else ""
    return {key for fqn, dims in graph.param_dims.items() if fqn.startswith(prefix)
            for segs in dims.values() for key, _ in segs if isinstance(key, str)}


def _analyze(model: nn.Module, input_size: tuple[int, ...], arch: str = "the model") -> ChannelGraph:
    traced = registry.traced_part(model)  # a detector's dense core (slimkit.models.tasks)
    graph = analyze(traced, input_size)  # fake tensors: no real activation is made
    check_memory(arch, graph)  # before the first real forward pass (the MACs count below)
    if traced is not model:  # the core's outputs are what the detector's fixed tail reads: say so
        graph.frozen = {name: TASK_OUTPUT if why == "network output" else why for name, why in graph.frozen.items()}
    # MACs outside conv/linear weights and tracked attention (frozen matmuls) stay constant.
    try:
        graph.other_macs = model_macs(traced, input_size) - graph.count_flops()
    except Exception as exc:  # noqa: BLE001 - a model's own code failing is reported as one line
        raise model_error(f"counting the MACs of {arch} at input {list(input_size)}", exc, traced) from exc
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
    check_type("full_plan", "arch", arch, str, "an architecture name like 'resnet20' or 'timm:resnet50'")
    input_size = check_input_size("full_plan", input_size)
    check_number("full_plan: 'num_classes'", num_classes, limits.SMALL_COUNT)
    check_number("full_plan: 'in_chans'", in_chans, limits.IN_CHANS)
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
    if new.is_meta:  # a shapes-only model (the probe in channel_graph): there are no values to draw
        return
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


def kept_index(fqn: str, dim: int, graph: ChannelGraph, keep: Mapping[str, list[int]]) -> torch.Tensor:
    """Indices along ``dim`` of tensor ``fqn`` that survive when every group keeps ``keep[group]``:
    each segment of the dimension (a group's channels, each repeated ``rep`` times as a flatten of
    C×H×W lays them out, or a frozen piece) in order."""
    parts, offset = [], 0
    for key, rep in graph.param_dims[fqn][dim]:
        full = graph.groups[key].width if isinstance(key, str) else key
        size = int(full * rep)
        kept = keep.get(key) if isinstance(key, str) else None
        if kept is None or len(kept) == full:
            parts.append(torch.arange(offset, offset + size))
        elif float(rep).is_integer():
            channels = torch.as_tensor(kept, dtype=torch.long)
            parts.append(offset + (channels[:, None] * int(rep) + torch.arange(int(rep))[None]).flatten())
        else:  # a grouped conv that keeps its group count reads width/groups channels per group
            raise PlanError(f"cannot inherit weights of {fqn}: it reads group '{key}' through a grouped conv that "
                            "keeps its group count, so kept channels do not map to its slices; train this plan "
                            "from scratch (--init scratch)")
        offset += size
    return torch.cat(parts)


def resize_model(model: nn.Module, graph: ChannelGraph, widths: dict[str, int],
                 keep: Mapping[str, list[int]] | None = None) -> nn.Module:
    """Resize ``model`` in place so every group takes its width in ``widths``: new tensors freshly
    initialised, or with ``keep`` (group -> kept channel indices) the model's own tensors with only
    those channels (weight inheritance)."""
    shapes = graph.shapes(widths)
    modules = dict(model.named_modules())
    touched: dict[str, nn.Module] = {}
    for fqn, shape in shapes.items():
        mod_name, _, attr = fqn.rpartition(".")
        module = modules[mod_name]
        old = getattr(module, attr)
        if keep is None:
            new = torch.empty(shape, dtype=old.dtype, device=old.device)
            _init_tensor(new, old, module, attr)
        else:
            new = old.detach()
            for dim in graph.param_dims[fqn]:
                new = new.index_select(dim, kept_index(fqn, dim, graph, keep).to(old.device))
            new = new.clone()
            if tuple(new.shape) != tuple(shape):  # a graph/plan mismatch, never silently
                raise PlanError(f"internal error: inheriting {fqn} gave shape {tuple(new.shape)}, the plan needs "
                                f"{tuple(shape)}; please report this with the architecture name")
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
    """The plan's groups must be exactly the architecture's groups, with the same full widths; a narrowed
    group's width and kept channels come in whole blocks of channels kept together (a grouped conv's
    group, an attention head): every path that reads a plan against its architecture checks here."""
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
        _check_blocks(plan, graph, name)


def _check_blocks(plan: ChannelPlan, graph: ChannelGraph, name: str) -> None:
    """A narrowed group keeps whole blocks (:func:`_block`): a width between blocks leaves a head with
    part of its channels (the model fails in its forward), and kept indices that split a block mix
    the channels of different heads (the model runs, on weights that mean nothing)."""
    g, block = plan.groups[name], _block(graph, name)
    if block == 1 or g["width"] >= g["full"]:
        return
    what = "an attention head" if name in graph.head_dims else "channels a grouped layer reads together"
    if g["width"] % block:
        raise PlanError(f"plan group {show(name, 40)} is {g['width']} channels wide, but it narrows in blocks of "
                        f"{block} ({what}): give it a multiple of {block}, or regenerate the plan with `slimkit prune`")
    keep = g.get("keep")
    if keep is None:
        return
    blocks = [keep[i:i + block] for i in range(0, len(keep), block)]
    if any(b[0] % block or b != list(range(b[0], b[0] + block)) for b in blocks):
        example = ", ".join(f"{k * block}..{k * block + block - 1}" for k in range(len(blocks)))
        raise PlanError(f"plan group {show(name, 40)} keeps channels that split its blocks of {block} ({what}: kept "
                        f"or dropped together): its 'keep' must list {len(blocks)} whole blocks k*{block}..k*{block}+"
                        f"{block - 1} (e.g. {example}); regenerate the plan with `slimkit prune --weights`")


def check_fingerprint(plan: ChannelPlan, graph: ChannelGraph, what: str) -> None:
    """A plan of user code is built only from a model that traces to the graph it was planned on."""
    if plan.graph_fingerprint is not None and graph.fingerprint != plan.graph_fingerprint:
        raise PlanError(f"{what} now traces to a different graph ({graph.fingerprint}) than the plan was made from "
                        f"({plan.graph_fingerprint}): its code or arguments changed; prune it again, or restore "
                        "the code the plan was made with")


def _plan_graph(plan: ChannelPlan) -> ChannelGraph:
    """The channel graph a plan is read against (traced once per architecture and size), checked to fit."""
    try:
        graph = channel_graph(plan.arch, plan.arch_kwargs, tuple(plan.input_size))
    except PlanError:
        raise
    except (ValueError, TypeError) as exc:
        raise PlanError(f"cannot build {plan.arch} from the plan: {exc}") from exc
    check_fingerprint(plan, graph, registry.arch_text(plan.arch, plan.arch_kwargs))
    check_plan_fits(plan, graph)
    return graph


# How far a stored count may sit from the recount before the plan counts as edited: counting changes
# between slimkit versions move a count by well under this; a hand-edited number does not hide in it.
COUNT_TOLERANCE = 0.01


def verified_plan(plan: ChannelPlan | dict | str | os.PathLike, source: str | None = None) -> ChannelPlan:
    """The plan with every count recomputed from its widths by the channel graph (no model is built):
    its MACs and parameters, and the full model's (``search.full_flops`` / ``full_params``). A stored
    count that disagrees with the recount by more than :data:`COUNT_TOLERANCE` is a
    :class:`PlanError` (the plan was edited or damaged); everything derived from the counts
    (Scratch-B epochs, reports, summaries) then reads these verified numbers, never the stored ones."""
    source = source or (str(plan) if isinstance(plan, (str, os.PathLike)) else "the plan")
    plan = load_plan(plan)
    graph = _plan_graph(plan)
    counted = {"flops": graph.count_flops(plan.widths), "params": graph.count_params(plan.widths),
               "full_flops": graph.count_flops(), "full_params": graph.count_params()}
    stored = {"flops": plan.flops, "params": plan.params, "full_flops": plan.search.get("full_flops"),
              "full_params": plan.search.get("full_params")}
    for key, value in stored.items():
        if value is None:
            continue
        true = counted[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or \
                abs(value - true) > max(1, COUNT_TOLERANCE * true):
            field = key if key in ("flops", "params") else f"search.{key}"
            raise PlanError(f"{source}: '{field}' says {value!r} but its widths count {true:,} (the channel graph of "
                            f"{plan.arch}): the plan was edited or damaged; regenerate it with `slimkit prune`")
    return replace(plan, flops=counted["flops"], params=counted["params"],
                   search={**plan.search, "full_flops": counted["full_flops"], "full_params": counted["full_params"]})


def with_num_classes(plan: ChannelPlan, num_classes: int) -> ChannelPlan:
    """The plan with its classifier sized for ``num_classes`` and every count recomputed: a plan that
    keeps the model's default head (no ``num_classes``), trained from scratch on data with its own
    classes. The widths are the plan's; only the head's output changes (``search.head_sized_for_data``
    records it, so the run's plan says so and ``--resume`` knows the plan it came from). A plan of user
    code pins the graph of its new head, once its own build is checked to be the one it was made from."""
    kwargs = {**plan.arch_kwargs, "num_classes": num_classes}
    fingerprint = plan.graph_fingerprint
    if fingerprint is not None:  # the same code built with another num_classes: not code that changed
        _plan_graph(plan)
        fingerprint = channel_graph(plan.arch, kwargs, tuple(plan.input_size)).fingerprint
    resized = replace(plan, arch_kwargs=kwargs, flops=None, params=None, graph_fingerprint=fingerprint,
                      search={**plan.search, "full_flops": None, "full_params": None,
                              "head_sized_for_data": num_classes})
    return verified_plan(resized)


def generate(plan: ChannelPlan | dict | str | os.PathLike, seed: int | None = None,
             weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
             model: nn.Module | None = None) -> nn.Module:
    """G(plan): the thin network a plan describes, freshly initialised.

    Initialisation is seeded from ``seed`` (default: the plan's seed), so the same plan gives the
    same weights; the global RNG is left untouched. With ``weights`` (a checkpoint of the full
    model, or its state dict) the thin network inherits the trained weights of the channels the
    plan keeps (its ``keep`` indices; see :func:`choose_channels` for a widths-only plan).
    ``model`` (an instance of the plan's source architecture) is used instead of building one: a
    copy of it is resized (with ``weights``, after they are loaded into the copy), the model itself is
    not changed. A plan made from a model object needs it outside the process that made the plan.
    """
    check_type("generate", "plan", plan, (ChannelPlan, dict, str, os.PathLike),
               "a ChannelPlan, a plan dict or a plan file path")
    check_number("generate: 'seed'", seed, limits.SEED)
    check_type("generate", "weights", weights, (str, os.PathLike, Mapping, type(None)),
               "a checkpoint path or a state dict of the full model (model.state_dict() for a model), or None")
    check_type("generate", "model", model, (nn.Module, type(None)), "an nn.Module of the plan's architecture, or None")
    plan = load_plan(plan)
    if weights is not None:
        return _inherit(plan, weights, model)
    if model is not None:
        graph = _given_model_graph(plan, model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(plan.seed if seed is None else seed)
            thin = copy.deepcopy(model)
            resize_model(thin, graph, plan.widths)
        return thin
    if not plan.regenerable and not registry.is_held(plan.arch):
        raise PlanError(f"this plan was made from a model object ({plan.arch}) in another Python process and cannot "
                        "be regenerated here: pass the model, slimkit.generate(plan, model=...), or prune a "
                        "python: factory (python:package.module:build_net or nets.py:build_net)")
    graph = _plan_graph(plan)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(plan.seed if seed is None else seed)
        model = build_model(plan.arch, plan.arch_kwargs)
        resize_model(model, graph, plan.widths)
    return model


def _state_of(plan: ChannelPlan, weights: str | os.PathLike | Mapping[str, torch.Tensor],
              function: str = "generate") -> dict[str, torch.Tensor]:
    if isinstance(weights, Mapping):
        wrong = next(((k, v) for k, v in weights.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))),
                     None)
        if wrong is not None:
            raise TypeError(f"{function}: 'weights' must be a state dict (parameter names -> tensors), e.g. "
                            f"model.state_dict(), got {show(wrong[0])}: {type(wrong[1]).__name__}")
        return dict(weights)
    return full_model_weights(weights, plan.arch, plan.arch_kwargs)


def _given_model_graph(plan: ChannelPlan, model: nn.Module) -> ChannelGraph:
    """The graph of the model a caller passed for the plan's architecture, checked to be that model."""
    graph = _analyze(model, tuple(plan.input_size))
    check_fingerprint(plan, graph, "the model given")
    check_plan_fits(plan, graph)
    return graph


def _full_model(plan: ChannelPlan, state: Mapping[str, torch.Tensor], source: str,
                model: nn.Module | None = None) -> tuple[nn.Module, ChannelGraph]:
    """The plan's unpruned architecture holding ``state`` (one line naming the first mismatches): built
    from the plan, or a copy of ``model`` (the caller's instance of it; the model itself is not changed)."""
    if model is not None:
        graph = _given_model_graph(plan, model)
        full = copy.deepcopy(model)
    else:
        graph = channel_graph(plan.arch, plan.arch_kwargs, tuple(plan.input_size))
        check_plan_fits(plan, graph)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(plan.seed)
            full = build_model(plan.arch, plan.arch_kwargs)
    return load_full_weights(full, state, source, plan.arch, plan.arch_kwargs), graph


def load_full_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, arch: str,
                      arch_kwargs: dict[str, Any]) -> nn.Module:
    """``state`` into the full ``model``, or one line naming the first missing, unexpected and misshapen
    keys: how every trained full model (a slimkit checkpoint or a state dict from elsewhere) is loaded."""
    mine = model.state_dict()
    # A BatchNorm's step counter is no weight: PyTorch before 0.4.1 did not save it, converted and older
    # published weights lack it, and torch's own load_state_dict accepts a state dict without it.
    counters = {f"{name}.num_batches_tracked" for name, m in model.named_modules()
                if isinstance(m, _BatchNorm) and m.num_batches_tracked is not None}
    state = {**{k: mine[k] for k in counters if k in mine and k not in state}, **state}
    missing = [k for k in mine if k not in state]
    unexpected = [k for k in state if k not in mine]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in mine.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        what = "; ".join(f"{label} {', '.join(items[:3])}" + (f" (+{len(items) - 3})" if len(items) > 3 else "")
                         for label, items in (("missing", missing), ("unexpected", unexpected),
                                              ("shape", wrong)) if items)
        size_key = next((k for k in ("img_size", "image_size") if k in arch_kwargs), None)
        if not missing and not unexpected and \
                any("pos" in w.split(" ")[0].lower() for w in wrong):  # a transformer built for another size
            built = arch_kwargs[size_key] if size_key is not None else "the architecture's default"
            fix = (f"its position embeddings are for another image size than {built}: prune at the input size it "
                   "was trained at (--input-size; without it, the architecture's default)")
        else:
            fix = ("pass a checkpoint of that architecture, or name the architecture and the arguments it was trained "
                   "with (--num-classes, --in-chans, --arch-kwargs)")
        raise PlanError(f"{source} does not hold weights of the full {registry.arch_text(arch, arch_kwargs)} "
                        f"({what}); {fix}")
    # Ranking channels by NaN norms keeps arbitrary ones, and load_state_dict would silently round integers
    # into float weights: a diverged training's checkpoint (or a wrong file) is refused before either.
    hollow = [f"{k} ({'on the meta device: shapes without values' if v.is_meta else v.layout})" for k, v in state.items()
              if v.is_meta or v.layout != torch.strided]
    if hollow:
        raise PlanError(f"{source} holds tensors slimkit cannot copy weights from: {hollow[0]}"
                        + (f" (+{len(hollow) - 1})" if len(hollow) > 1 else "")
                        + "; save the trained model's dense weights with torch.save(model.state_dict(), path)")
    kinds = [f"{k} ({state[k].dtype})" for k, v in mine.items() if v.is_floating_point() and not state[k].is_floating_point()]
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if kinds or broken:
        first = kinds or broken
        more = f" (+{len(first) - 1})" if len(first) > 1 else ""
        raise PlanError(f"{source} holds " + (f"integer values where {arch} has float weights: {first[0]}{more}; pass "
                                               "the trained model's float weights" if kinds else
                                               f"NaN or infinite values in {first[0]}{more}: the training that wrote it "
                                               "diverged; pass a checkpoint from before it did"))
    model.load_state_dict(state)
    return model


def check_not_widened(plan: ChannelPlan) -> None:
    """A plan wider than its full model cannot inherit trained weights: refused before anything runs."""
    if plan.expand != 1.0 or any(g["width"] > g["full"] for g in plan.groups.values()):
        raise PlanError("a widened plan (--expand) has channels no trained model holds: inherit weights only "
                        "into plans at expand 1.0")


def _inherit(plan: ChannelPlan, weights: str | os.PathLike | Mapping[str, torch.Tensor],
             model: nn.Module | None = None) -> nn.Module:
    check_not_widened(plan)
    narrowed = [n for n, g in plan.groups.items() if g["width"] < g["full"]]
    if narrowed and not plan.has_keep:
        raise PlanError(f"the plan records widths only (group '{narrowed[0]}' is narrowed, with no 'keep'): make it "
                        "with `slimkit prune --weights CKPT --criterion l1` (or let `slimkit train --init inherit` "
                        "choose the channels by L1 norm)")
    source = "the weights given" if isinstance(weights, Mapping) else str(weights)
    state = _state_of(plan, weights)
    full, graph = _full_model(plan, state, source, model)  # weights of another architecture say so first
    check_parent(plan, state, source)
    return resize_model(full, graph, plan.widths, keep=plan.keep)


def check_parent(plan: ChannelPlan, state: Mapping[str, torch.Tensor], source: str) -> None:
    """The weights to inherit are the parent the plan's channels were ranked on (its criterion's
    fingerprint): channels chosen on one trained model mean nothing in another. Plans written before
    the fingerprint was recorded cannot be checked; a plan that keeps every channel (a fine-tuned full
    model's run plan) chose none, and inherits from any parent of its architecture."""
    recorded = (plan.criterion or {}).get("fingerprint")
    if recorded is None or all(g["width"] == g["full"] for g in plan.groups.values()):
        return
    held = weights_fingerprint(state)
    if held != recorded:
        ranked = plan.criterion["weights"]
        if source == ranked or (Path(ranked).exists() and Path(source).exists() and same_path(ranked, source)):
            raise PlanError(f"{source} has changed since the plan's channels were chosen on it (weights {recorded}, now "
                            f"{held}; trained again?): cut the plan again from it (`slimkit prune --weights {source} "
                            f"--criterion {plan.criterion['kind']}`), or restore the weights it was cut from")
        raise PlanError(f"the plan's channels were chosen on {ranked} (weights {recorded}), but {source} holds other "
                        f"weights ({held}): inherit from the model the plan was cut from, or cut the plan again "
                        f"from this one (`slimkit prune --weights {source} --criterion {plan.criterion['kind']}`)")


def _block(graph: ChannelGraph, name: str) -> int:
    """Channels that are kept or dropped together: a conv group's channels, an attention head."""
    return math.lcm(graph.groups[name].divisor, graph.head_dims.get(name, 1))


def l1_scores(graph: ChannelGraph, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per group, per channel: Σ|w| of the conv and linear filters that write the channel (Li et al.
    2017). A block-internal channel of a ResNet has one writer, its block's first conv, as in the
    official code; a residual-stream channel sums every conv that adds into it."""
    scores = {n: torch.zeros(g.width, dtype=torch.float64) for n, g in graph.groups.items()}
    writers = {fqn for fqn, _ in graph.mac_terms}  # conv/linear weights: dim 0 is the output channels
    for fqn in writers:
        dims = graph.param_dims.get(fqn, {})
        if 0 not in dims:
            continue
        per_output = state[fqn].detach().abs().flatten(1).sum(1).double()
        offset = 0
        for key, rep in dims[0]:
            full = graph.groups[key].width if isinstance(key, str) else key
            size = int(full * rep)
            if isinstance(key, str) and float(rep).is_integer():
                scores[key] += per_output[offset:offset + size].view(full, int(rep)).sum(1)
            offset += size
    return scores


def select_channels(scores: torch.Tensor | list[float], width: int, block: int = 1) -> list[int]:
    """The ``width`` channels with the highest scores (one per channel), in whole blocks of ``block``
    channels scored by their sum; ties go to the lower index. Ascending."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    n_blocks = scores.numel() // block
    block_scores = scores.view(n_blocks, block).sum(1).tolist()
    order = sorted(range(n_blocks), key=lambda b: (-block_scores[b], b))[: width // block]
    return sorted(b * block + j for b in order for j in range(block))


def choose_channels(plan: ChannelPlan, weights: str | os.PathLike | Mapping[str, torch.Tensor],
                    criterion: str = "l1", gates: Mapping[str, list[float]] | None = None,
                    weights_name: str | None = None) -> ChannelPlan:
    """``plan`` with the channels each narrowed group keeps, chosen on the trained full model
    ``weights``: by filter L1 norm (``"l1"``), or by the learned ``gates`` (``"gates"``: one value per
    channel, or per attention head). Widths are unchanged."""
    check_type("choose_channels", "plan", plan, (ChannelPlan, dict, str, os.PathLike),
               "a ChannelPlan, a plan dict or a plan file path")
    check_type("choose_channels", "weights", weights, (str, os.PathLike, Mapping),
               "a checkpoint path or a state dict of the full model")
    check_type("choose_channels", "criterion", criterion, str, f"one of {', '.join(map(repr, CRITERIA))}")
    check_type("choose_channels", "gates", gates, (Mapping, type(None)),
               "a dict of group name -> gate values, or None")
    check_type("choose_channels", "weights_name", weights_name, (str, type(None)), "a string, or None")
    if criterion not in CRITERIA or (criterion == "gates") != (gates is not None):
        raise PlanError(f"choose_channels: criterion {show(criterion)} " + (
            f"is unknown: choose one of {', '.join(CRITERIA)}" if criterion not in CRITERIA else
            "needs the learned gates (gates=...)" if criterion == "gates" else "takes no gates (they are for 'gates')"))
    plan = load_plan(plan)
    state = _state_of(plan, weights, "choose_channels")
    _, graph = _full_model(plan, state, "the weights given" if isinstance(weights, Mapping) else str(weights))
    if criterion == "l1":
        scores = l1_scores(graph, state)
    else:
        scores = _gate_scores(plan, graph, gates)
    keep = {}
    for name, g in plan.groups.items():
        if g["width"] == g["full"]:  # kept whole (and not gated at all in the paper's search space)
            keep[name] = list(range(g["full"]))
            continue
        block = _block(graph, name)
        values = scores[name]
        if values.numel() * block == g["full"] and block > 1:  # one value per block (a head's gate)
            values = values.repeat_interleave(block)
        keep[name] = select_channels(values, g["width"], block)
    name = weights_name if weights_name is not None else (
        "state dict" if isinstance(weights, Mapping) else str(weights))
    return plan.with_keep(keep, {"kind": criterion, "weights": name, "fingerprint": weights_fingerprint(state)})


def _gate_scores(plan: ChannelPlan, graph: ChannelGraph, gates: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``gates`` as one score tensor per narrowed group: one value per channel, or per block of channels
    kept together (an attention head); anything else is a PlanError naming the group."""
    scores = {}
    for name, g in plan.groups.items():
        if g["width"] == g["full"]:
            continue
        values = gates.get(name)
        blocks = g["full"] // _block(graph, name)
        try:
            tensor = torch.as_tensor(values, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            tensor = None
        if tensor is None or tensor.dim() != 1 or tensor.numel() not in (g["full"], blocks) or \
                not bool(torch.isfinite(tensor).all()):
            per_block = f" or {blocks} (one per block of channels kept together)" if blocks != g["full"] else ""
            raise PlanError(f"choose_channels: gates[{show(name, 40)}] must be {g['full']} finite numbers (one per "
                            f"channel){per_block}, got {show(values)}")
        scores[name] = tensor
    return scores


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
