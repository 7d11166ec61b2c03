"""Slices: along another dim they keep the channels; a full-range slice of the channels to a stored
width may shrink, never grow; a slice to a fixed narrower width freezes them."""

from __future__ import annotations

from typing import Any

from slimkit.graph.tracing import meta_shape
from slimkit.graph.walk import OpCall, Walk, rule


@rule("alias")
def alias(walk: Walk, call: OpCall) -> Any:
    # timm's GhostNet slices out[:, :self.out_chs]; export sees a no-op alias.
    return walk.mark_no_expand(walk.cmap_of(call.ins[0]))


@rule("slice")
def slice_(walk: Walk, call: OpCall) -> Any:
    args, out_shape = call.args, call.out_shape
    cm = walk.cmap_of(call.ins[0])
    if cm is None:
        return None
    in_shape = meta_shape(args[0])
    dim = (args[1] if len(args) > 1 else 0) % len(in_shape)
    if dim != cm[0]:
        return cm
    if out_shape is not None and out_shape[dim] == in_shape[dim]:
        return walk.mark_no_expand(cm)
    walk.freeze_value(cm, "slice of channels to a fixed width")
    return None
