"""Attention's tensor ops: indexing that keeps the heads, ``scaled_dot_product_attention`` and the
batched products over heads. Their logic is :class:`slimkit.attention.AttentionAnalysis`'s (beside
the attention modules G rewrites); these rules hand each call to it."""

from __future__ import annotations

from typing import Any

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
    """A product over heads (Q·Kᵀ, softmax·V); any other product mixes channels (the default rule)."""
    if call.out_shape is not None:
        product = walk.visit_matmul(call.node, call.ins, call.args, call.out_shape)
        if product is not None:
            return product
    return default_rule(walk, call)
