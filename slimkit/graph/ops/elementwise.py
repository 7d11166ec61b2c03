"""Element-wise ops of several tensors (residual adds, squeeze-excite multiplies, layer scales):
every operand's channels must be one channel list, so their spaces merge.

Single-tensor element-wise ops (activations, ``x * 2``) need no rule: :func:`default_rule` keeps
any op's channels that keeps the channel dimension where it was.
"""

from __future__ import annotations

from typing import Any

from slimkit.graph.walk import OpCall, Walk, default_rule, rule, tensor_operands

# The in-place variant of each ("add_") is the same rule.
_MULTI_TENSOR = ("add", "sub", "mul", "div", "where", "maximum", "minimum", "addcmul", "lerp", "copy", "expand_as")


@rule(*_MULTI_TENSOR, *(f"{op}_" for op in _MULTI_TENSOR))
def elementwise(walk: Walk, call: OpCall) -> Any:
    operands = tensor_operands(call)
    if len(operands) > 1 and call.out_shape is not None:
        tracked = [(a, walk.cmap_of(v)) for a, v in operands]
        if any(cm is not None for _, cm in tracked):
            return walk.tie_elementwise(call.op, tracked, call.out_shape)
    return default_rule(walk, call)  # one tensor (``x + 1``) or none tracked
