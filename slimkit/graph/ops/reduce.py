"""Reductions: over the channels they work for any width; over other dims the channels move."""

from __future__ import annotations

from typing import Any

from slimkit.graph.tracing import meta_shape
from slimkit.graph.walk import OpCall, Walk, rule


def _reduce(walk: Walk, node: Any, ins: list, args: list) -> Any:
    """``args``: (input, dims, keepdim) as the reduction ops take them."""
    cm = walk.cmap_of(ins[0])
    if cm is None:
        return None
    in_shape = meta_shape(args[0])
    nd = len(in_shape)
    dims = args[1] if len(args) > 1 else None
    if dims is None or dims == []:
        return None
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = [d % nd for d in dims]
    if cm[0] in dims:
        return None  # channels reduced away: works for any width
    keepdim = bool(args[2]) if len(args) > 2 else bool(node.kwargs.get("keepdim", False))
    d = cm[0] if keepdim else cm[0] - sum(1 for x in dims if x < cm[0])
    return (d, cm[1])


@rule("mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp")
def reduction(walk: Walk, call: OpCall) -> Any:
    return _reduce(walk, call.node, call.ins, call.args)


@rule("linalg_vector_norm")
def vector_norm(walk: Walk, call: OpCall) -> Any:
    """(x, ord, dim, keepdim): F.normalize's norm, SSD300's L2Norm on conv4_3."""
    node, args = call.node, call.args
    dim = args[2] if len(args) > 2 else node.kwargs.get("dim")
    keepdim = args[3] if len(args) > 3 else node.kwargs.get("keepdim", False)
    return _reduce(walk, node, call.ins[:1], [args[0], dim, keepdim])
