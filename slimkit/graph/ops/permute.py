"""Permutes and transposes: the channels move to another dimension, untouched."""

from __future__ import annotations

from typing import Any

from slimkit.graph.tracing import meta_shape
from slimkit.graph.walk import OpCall, Walk, rule


@rule("permute")
def permute(walk: Walk, call: OpCall) -> Any:
    cm = walk.cmap_of(call.ins[0])
    if cm is None:
        return None
    dims = [d % len(call.args[1]) for d in call.args[1]]
    return (dims.index(cm[0]), cm[1])


@rule("transpose", "swapaxes")
def transpose(walk: Walk, call: OpCall) -> Any:
    args = call.args
    cm = walk.cmap_of(call.ins[0])
    if cm is None:
        return None
    nd = len(meta_shape(args[0]))
    a, b = args[1] % nd, args[2] % nd
    return (b if cm[0] == a else a if cm[0] == b else cm[0], cm[1])
