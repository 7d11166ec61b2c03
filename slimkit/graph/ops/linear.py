"""Linear layers: the input's channels (last dim) tie to the weight's columns; the output starts a space."""

from __future__ import annotations

import math

from slimkit.graph.tracing import meta_shape
from slimkit.graph.walk import CMap, OpCall, ParamRef, Walk, rule


@rule("linear")
def linear(walk: Walk, call: OpCall) -> CMap:
    node, ins, out_shape = call.node, call.ins, call.out_shape
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    if not isinstance(w, ParamRef):
        raise ValueError("linear with a computed weight")
    module = walk.module_of(w.fqn)
    walk.used.add(w.fqn)
    walk.mac_terms.append((w.fqn, math.prod(out_shape) // w.shape[0]))
    cm = walk.cmap_of(x)
    in_ndim = len(meta_shape(node.args[0]))
    if cm is not None:
        if cm[0] == in_ndim - 1:
            walk.tie(w.fqn, 1, cm[1], module)
        else:
            walk.freeze_value(cm, f"{module}: linear over a non-channel dimension")
    sid = walk.sp.new(w.shape[0], module, producer=module)
    walk.tie(w.fqn, 0, ((sid, 1),), module)
    if isinstance(b, ParamRef):
        walk.tie(b.fqn, 0, ((sid, 1),), module)
    return (len(out_shape) - 1, ((sid, 1),))
