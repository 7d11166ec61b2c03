"""The channel graph's op rules: one registry (slimkit.graph.walk.RULES) that the walk dispatches on.

A toy custom op shows the mechanism end to end: without a rule it freezes the channels it touches,
with a reason naming it; registering a rule for it (as a module of slimkit/graph/ops does) makes
them prunable."""

import pytest
import torch
from torch import nn

from slimkit.graph import analyze
from slimkit.graph.walk import RULES, OpCall, Walk, rule, tensor_operands


@torch.library.custom_op("slimkit_test::blend", mutates_args=())
def blend(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise, channel by channel: the kind of op a new model brings that the graph has no rule for."""
    return 0.5 * (a + b)


@blend.register_fake
def _(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(a)


class Blended(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(3, 8, 1)
        self.right = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(blend(self.left(x), self.right(x)))


def test_an_op_without_a_rule_freezes_with_a_reason_naming_it():
    graph = analyze(Blended(), (3, 8, 8))
    assert "blend" not in RULES
    assert {"left", "right"} <= set(graph.frozen), graph.frozen
    assert graph.frozen["left"] == graph.frozen["right"] == "blend mixes channels"


def test_a_registered_rule_is_what_the_walk_applies():
    @rule("blend")
    def blend_rule(walk: Walk, call: OpCall):
        return walk.tie_elementwise(call.op, [(a, walk.cmap_of(v)) for a, v in tensor_operands(call)],
                                    call.out_shape)

    try:
        with pytest.raises(ValueError, match="already has a rule"):
            rule("blend")(blend_rule)  # one rule per op: a second registration is refused
        graph = analyze(Blended(), (3, 8, 8))
    finally:
        del RULES["blend"]
    assert not {"left", "right"} & set(graph.frozen), graph.frozen
    (group,) = [g for g in graph.groups.values() if "left" in g.producers]
    assert group.producers == ["left", "right"] and group.width == 8
    assert graph.param_dims["head.weight"][1] == [(group.name, 1)]  # the head's input follows the tied width


# Every op the walk had a rule for before the rules moved into slimkit/graph/ops: an op module left out of
# slimkit/graph/ops/__init__.py drops its ops back to the default rule, which this catches.
RULED_OPS = {
    "conv1d", "conv2d", "conv3d", "convolution", "_convolution", "batch_norm", "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit", "native_batch_norm", "_native_batch_norm_legit_functional", "instance_norm",
    "layer_norm", "group_norm", "linear", "getitem", "flatten", "split", "split_with_sizes", "chunk", "unsafe_split",
    "unsafe_split_with_sizes", "unsafe_chunk", "view", "reshape", "_unsafe_view", "unsqueeze", "squeeze",
    "unflatten", "permute", "transpose", "swapaxes", "cat", "stack", "mean", "sum", "amax", "amin", "max", "min",
    "std", "var", "logsumexp", "linalg_vector_norm", "alias", "slice", "new_zeros", "new_ones", "new_full",
    "new_empty", "unbind", "select", "index", "scaled_dot_product_attention", "matmul", "bmm",
    *(f"{op}{suffix}" for op in ("add", "sub", "mul", "div", "where", "maximum", "minimum", "addcmul", "lerp", "copy",
                                 "expand_as") for suffix in ("", "_")),
}


def test_every_op_family_is_registered_from_the_ops_package():
    assert RULED_OPS <= set(RULES), sorted(RULED_OPS - set(RULES))
    assert {fn.__module__.rsplit(".", 1)[0] for fn in RULES.values()} == {"slimkit.graph.ops"}
