"""Normalisation layers: their affine parameters follow the normalised channels."""

from __future__ import annotations

import math
from typing import Any

from slimkit.graph.tracing import meta_shape
from slimkit.graph.walk import OpCall, ParamRef, Walk, rule


@rule("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "native_batch_norm",
      "_native_batch_norm_legit_functional", "instance_norm")
def batch_norm(walk: Walk, call: OpCall) -> Any:
    """Per-channel statistics and affine parameters (arguments 1-4) over dim 1."""
    node, ins = call.node, call.ins
    cm = walk.cmap_of(ins[0])
    refs = [ins[i] for i in (1, 2, 3, 4) if i < len(ins) and isinstance(ins[i], ParamRef)]
    if cm is None or cm[0] != 1:
        for r in refs:
            walk.used.add(r.fqn)
        if cm is not None:
            walk.freeze_value(cm, "normalisation over an untracked dimension")
        return None
    for r in refs:
        walk.tie(r.fqn, 0, cm[1], walk.module_of(r.fqn))
    if isinstance(node.meta.get("val"), (tuple, list)):
        return [cm] + [None] * (len(node.meta["val"]) - 1)
    return cm


@rule("group_norm")
def group_norm(walk: Walk, call: OpCall) -> Any:
    """GroupNorm keeps its group count: the width must stay a multiple of it."""
    ins, args = call.ins, call.args
    cm = walk.cmap_of(ins[0])
    refs = [v for v in ins[2:4] if isinstance(v, ParamRef)]
    if cm is None or cm[0] != 1 or not isinstance(args[1], int):
        walk.freeze_value(cm, "group_norm over an untracked dimension")
        for r in refs:
            walk.used.add(r.fqn)
        return None
    segs = walk.sp.expand(cm[1])
    if args[1] > 1:
        if len(segs) > 1:
            walk.freeze_value(cm, f"group_norm with {args[1]} groups over concatenated channels")
            return None
        root = walk.sp.find(segs[0][0])
        walk.sp.divisor[root] = math.lcm(walk.sp.divisor[root], args[1])
    for r in refs:
        walk.tie(r.fqn, 0, cm[1], walk.module_of(r.fqn))
    return cm


@rule("layer_norm")
def layer_norm(walk: Walk, call: OpCall) -> Any:
    """Over the channels alone (last dim) its parameters follow them; over other dims it is
    width-agnostic; over channels and other dims together it freezes them."""
    node, ins = call.node, call.ins
    cm = walk.cmap_of(ins[0])
    shape = meta_shape(node.args[0])
    normalized = list(node.args[1])
    refs = [v for v in ins[2:4] if isinstance(v, ParamRef)]
    if cm is None:
        for r in refs:
            walk.used.add(r.fqn)
        return None
    if cm[0] == len(shape) - 1 and len(normalized) == 1:
        for r in refs:
            walk.tie(r.fqn, 0, cm[1], walk.module_of(r.fqn))
        return cm
    if cm[0] < len(shape) - len(normalized):  # normalising other dims: width-agnostic
        for r in refs:
            walk.used.add(r.fqn)
        return cm
    walk.freeze_value(cm, "layer_norm over channels and other dims")
    for r in refs:
        walk.used.add(r.fqn)
    return None
