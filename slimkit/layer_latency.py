"""Per-layer latency lookup table at the deployment resolution (NetAdapt / HALP style).

MACs are a poor guide to where time goes: at 224 px MobileNet-V1's early layers (112x112 maps,
depthwise convs that are memory-bound) cost far more per MAC than its late pointwise convs, so a
plan that keeps the early layers wide runs slower than uniform width scaling at the same MACs.
``--selection latency-aware`` therefore ranks channels by gate value per unit of *measured*
latency. The cost of a channel is the latency of the layers it feeds or comes from, and each
layer's latency per MAC comes from this table: every conv/linear layer of the full model, rebuilt
alone with its input shape at the plan's input size, exported and timed on the target backend
(layers of equal configuration are timed once). A layer timed alone misses fusions and layout
changes between layers, but it ranks layers by what they cost on this machine, which is what the
selection needs; the plan's real latency is measured afterwards either way.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.exporters.onnx import TIMING_EXPORTERS, export
from slimkit.generator import generate
from slimkit.graph import ChannelGraph
from slimkit.latency import Candidate, measure
from slimkit.plan import ChannelPlan
from slimkit.registry import traced_part

__all__ = ["layer_latency_per_mac"]


def _layer_inputs(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """module name -> (module, input shape) for every conv/linear the forward pass runs."""
    found: dict[str, tuple[nn.Module, tuple[int, ...]]] = {}

    def record(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(mod: nn.Module, args: tuple) -> None:  # returns None: the input passes unchanged
            found.setdefault(name, (mod, tuple(args[0].shape)))
        return hook

    hooks = [mod.register_forward_pre_hook(record(name)) for name, mod in model.named_modules()
             if isinstance(mod, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_size))
    finally:
        for h in hooks:
            h.remove()
    return found


def _standalone(mod: nn.Module) -> tuple[nn.Module, tuple]:
    """A fresh copy of one layer's configuration (weights do not change latency) and its config key."""
    if isinstance(mod, nn.Conv2d):
        cfg = (mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.dilation,
               mod.groups, mod.bias is not None, mod.padding_mode)
        layer = nn.Conv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                          mod.dilation, mod.groups, mod.bias is not None, mod.padding_mode)
        return layer, ("conv", cfg)
    layer = nn.Linear(mod.in_features, mod.out_features, mod.bias is not None)
    return layer, ("linear", (mod.in_features, mod.out_features, mod.bias is not None))


def layer_latency_per_mac(plan: ChannelPlan, graph: ChannelGraph, *, backend: str = "ort-cpu",
                          threads: int | None = None, mode: str = "served", runs: int = 30,
                          say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """{weight fqn: latency per MAC relative to the model's mean} for every conv/linear weight the
    channel graph counts MACs for, measured at ``plan``'s input size on ``backend`` (batch 1);
    plus ``"_layers"``: how many distinct layer configurations were timed."""
    say = say or (lambda _m: None)
    model = traced_part(generate(plan))  # a detector: its dense core at the plan's size, as it is timed
    inputs = _layer_inputs(model, tuple(plan.input_size))
    positions = {fqn: pos for fqn, pos in graph.mac_terms}
    by_config: dict[tuple, tuple[nn.Module, tuple[int, ...], list[str]]] = {}
    for name, (mod, shape) in inputs.items():
        fqn = f"{name}.weight"
        if fqn not in positions:
            continue
        layer, key = _standalone(mod)
        key = (*key, shape)
        by_config.setdefault(key, (layer, shape, []))[2].append(fqn)
    if not by_config:
        return {"_layers": 0}
    say(f"latency-aware: timing {len(by_config)} distinct layers of {plan.arch} at "
        f"{'x'.join(map(str, plan.input_size))} on {backend} ({mode} timing)")
    with tempfile.TemporaryDirectory(prefix="slimkit-layers-") as tmp:
        cands = []
        for i, (layer, shape, fqns) in enumerate(by_config.values()):
            path = Path(tmp) / f"layer{i}.onnx"
            export(layer.eval(), tuple(shape[1:]), path, batch=1, exporter=TIMING_EXPORTERS, simplify=False,
                   check_parity=False)
            cands.append(Candidate(name=f"layer{i}", input_shape=tuple(shape), onnx_path=path))
        report = measure(cands, backend=backend, threads=threads, warmup=5, runs=runs, mode=mode)
    per_mac: dict[str, float] = {}
    for (layer, _shape, fqns), m in zip(by_config.values(), report.models):
        macs = math.prod(layer.weight.shape) * positions[fqns[0]]
        for fqn in fqns:
            per_mac[fqn] = m["stats"]["median_ms"] / max(macs, 1)
    mean = sum(per_mac.values()) / len(per_mac)
    out: dict[str, Any] = {fqn: v / mean for fqn, v in per_mac.items()}
    out["_layers"] = len(by_config)
    return out
