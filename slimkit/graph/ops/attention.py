"""Attention's tensor ops: indexing that keeps the heads, ``scaled_dot_product_attention`` and the
batched products over heads. Their logic is :class:`slimkit.attention.AttentionAnalysis`'s (beside
the attention modules G rewrites); these rules hand each call to it."""

from __future__ import annotations

import math
from typing import Any

from slimkit.graph.tracing import meta_shape
from slimkit.graph.walk import OpCall, Walk, default_rule, rule


@rule("unbind")
def unbind(walk: Walk, call: OpCall) -> Any:
    return walk.visit_unbind(call.node, call.ins, call.args)


@rule("select")
def select(walk: Walk, call: OpCall) -> Any:
    return walk.visit_select(call.node, call.ins, call.args)


@rule("index")
def index(walk: Walk, call: OpCall) -> Any:
    return walk.visit_index(call.node, call.ins, call.args)


@rule("scaled_dot_product_attention")
def scaled_dot_product_attention(walk: Walk, call: OpCall) -> Any:
    return walk.visit_sdpa(call.node, call.ins, call.args)


@rule("matmul", "bmm")
def matmul(walk: Walk, call: OpCall) -> Any:
    """A product over heads (Q·Kᵀ, softmax·V), or one that keeps each channel's row to itself; any
    other product mixes channels (the default rule)."""
    if call.out_shape is not None:
        product = walk.visit_matmul(call.node, call.ins, call.args, call.out_shape)
        if product is None:
            product = _channels_as_rows(walk, call)
        if product is not None:
            return product
    return default_rule(walk, call)


def _channels_as_rows(walk: Walk, call: OpCall) -> Any:
    """A product whose one operand holds the channels as its rows (the left operand's dim -2, or the
    right operand's columns, dim -1) while the other holds a single map: every channel is multiplied
    on its own (global-context pooling, ``x.view(B, 1, C, HW) @ softmax(attn)``), so the width
    passes through. Its MACs grow linearly with the width: a linear term, like attention's products."""
    out = call.out_shape
    shapes = [meta_shape(a) for a in call.node.args[:2]]
    cms = [walk.cmap_of(x) for x in call.ins[:2]]
    if len(out) < 2 or any(s is None or len(s) < 2 for s in shapes):
        return None
    # The other operand holds only single-channel spaces (GC's one attention map per position,
    # flattened): a width that cannot shrink, kept as it is. An operand with no tracked channels at
    # all is left to the default rule: there the product is usually attention over frozen heads
    # (ConViT's gated softmax·V), and the width it would let through is read back from another
    # tensor further on (``reshape(B, N, C)``), which G cannot follow.
    single = [cm is not None and all(walk.sp.size[walk.sp.find(sid)] == 1 for sid, _ in walk.sp.expand(cm[1]))
              for cm in cms]
    if cms[0] is not None and single[1] and not single[0] and cms[0][0] == len(shapes[0]) - 2:
        dim, cm, other, inner = len(out) - 2, cms[0], cms[1], shapes[0][-1]
    elif cms[1] is not None and single[0] and not single[1] and cms[1][0] == len(shapes[1]) - 1:
        dim, cm, other, inner = len(out) - 1, cms[1], cms[0], shapes[1][-2]
    else:
        return None
    walk.freeze_value(other, "a single map multiplied with every channel: kept at width 1")
    walk.attention_terms.append((tuple(cm[1]), math.prod(out) // out[dim] * inner))
    return (dim, cm[1])
