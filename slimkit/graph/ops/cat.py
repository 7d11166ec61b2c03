"""Concatenation and stacking.

A concat along the channels is kept as the ordered list of its inputs' spaces (DenseNet/Inception
concats stay prunable); along another dim (and ``stack``) the inputs' channels must line up.
"""

from __future__ import annotations

from typing import Any

from slimkit.graph.tracing import meta_shape
from slimkit.graph.walk import OpCall, Walk, rule


@rule("cat")
def cat(walk: Walk, call: OpCall) -> Any:
    node, args = call.node, call.args
    vals, arg_nodes, dim = call.ins[0], args[0], args[1] if len(args) > 1 else 0
    shapes = [meta_shape(a) for a in arg_nodes]
    nd = len(shapes[0])
    dim %= nd
    cms = [walk.cmap_of(v) for v in vals]
    if any(cm is not None and cm[0] == dim for cm in cms):
        segs: list[tuple[int, int]] = []
        for cm, shape in zip(cms, shapes):
            if cm is not None and cm[0] == dim:
                segs.extend(cm[1])
            else:  # an untracked piece keeps its width
                if cm is not None:
                    walk.freeze_value(cm, "concatenated with channels elsewhere")
                sid = walk.sp.new(shape[dim], "cat-constant")
                walk.sp.freeze(sid, "untracked input of a concat")
                segs.append((sid, 1))
        return (dim, tuple(segs))
    # concatenation along another dim (batch/tokens): the channel dims must agree
    tracked = [(a, cm) for a, cm in zip(arg_nodes, cms)]
    return walk.tie_elementwise("cat", tracked, tuple(meta_shape(node)))


@rule("stack")
def stack(walk: Walk, call: OpCall) -> Any:
    """(selective-kernel paths): inputs share channels, a new dim appears."""
    args = call.args
    shape = meta_shape(args[0][0])
    dim = (args[1] if len(args) > 1 else 0) % (len(shape) + 1)
    res = walk.tie_elementwise("stack", [(a, walk.cmap_of(v)) for a, v in zip(args[0], call.ins[0])], shape)
    return None if res is None else (res[0] + 1 if dim <= res[0] else res[0], res[1])
