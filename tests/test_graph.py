"""Channel groups on real architectures: what must share a width does, and what cannot be
resized safely is frozen."""

import random

import pytest
import torch

from torch import nn

import slimkit
from slimkit import count_flops, count_params
from slimkit.generator import build_model, channel_graph, resize_model
from slimkit.graph import GraphError


def test_resnet56_residual_stages_are_one_group_each():
    g = channel_graph("resnet56", {}, (3, 32, 32))
    # 27 inner block convs + 3 residual stages (stem, adds and projections share them)
    assert len(g.groups) == 30
    stage1 = g.groups["conv1"]
    assert stage1.width == 16
    assert {"layer1.0.conv2", "layer1.8.conv2"} <= set(stage1.producers)
    assert "fc" in g.frozen  # the logits keep num_classes


def test_depthwise_convs_join_their_input_group():
    g = channel_graph("mobilenet_v1", {}, (3, 224, 224))
    assert len(g.groups) == 14  # stem + 13 pointwise convs; depthwise convs follow them
    assert g.conv_kinds["blocks.0.0.conv_dw"] == ("depthwise", 1)
    assert "blocks.0.0.conv_dw" in g.groups["conv_stem"].producers


def test_densenet_concat_pieces_are_separate_groups():
    g = channel_graph("timm:densenet121", {}, (3, 64, 64))
    assert len(g.frozen) == 1 and len(g.groups) == 120
    # a transition conv reads the concat of the stem-derived block input and 6 new layers
    segs = g.param_dims["features.transition1.conv.weight"][1]
    assert len(segs) == 7 and all(isinstance(k, str) for k, _ in segs)


def test_ghostnet_shortcut_is_expressed_as_the_ghost_concat():
    g = channel_graph("timm:ghostnet_100", {}, (3, 64, 64))
    assert list(g.frozen) == ["classifier"]
    segs = g.param_dims["conv_stem.weight"][0]
    assert len(segs) == 2 and segs[0][0] == segs[1][0]  # 16 = 8 primary + 8 cheap channels


def test_channel_shuffle_is_followed_not_broken():
    """ShuffleNetV2's view(B, 2, C/2)->transpose->flatten and chunk(2): the two rows are tied to
    one width, so stages prune; what stays frozen names the op that froze it."""
    from slimkit.budget import min_widths

    g = channel_graph("torchvision:shufflenet_v2_x0_5", {}, (3, 64, 64))
    assert len(g.groups) >= 18
    assert all(("chunk at" in why or "concat" in why or why == "network output") for why in g.frozen.values())
    widths = min_widths(g, 8)
    thin = resize_model(build_model("torchvision:shufflenet_v2_x0_5"), g, widths).eval()
    assert thin(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    assert count_flops(thin, (3, 64, 64)) == g.count_flops(widths) < 0.5 * g.count_flops()


def test_grouped_conv_keeps_group_width_as_divisor():
    g = channel_graph("timm:regnety_008", {}, (3, 64, 64))
    grouped = [m for m, (kind, _) in g.conv_kinds.items() if kind == "grouped"]
    assert grouped
    assert any(grp.divisor > 1 for grp in g.groups.values())


def test_ecas_conv_over_the_channel_vector_keeps_the_blocks_prunable():
    """ECA views the pooled channels as (B, 1, C) and slides a width-agnostic Conv1d(1, 1) over
    them: its weight is not a channel tensor, and nothing freezes (it used to fail G 8 times)."""
    g = channel_graph("timm:eca_resnext26ts", {}, (3, 64, 64))
    assert g.frozen == {"head.fc": "network output"}
    assert "stages.0.0.attn.conv.weight" not in g.param_dims


def test_global_context_pooling_keeps_the_blocks_prunable():
    """GC blocks pool with ``x.view(B, 1, C, HW) @ softmax(attn)``: each channel's row is multiplied on
    its own, so the block's channels stay prunable; only the single attention map keeps width 1."""
    g = channel_graph("timm:gcresnext26ts", {}, (3, 64, 64))
    assert len(g.groups) == 23
    assert all(name == "head.fc" or name.endswith("attn.conv_attn") for name in g.frozen)


def test_levit_norms_over_flattened_tokens_keep_their_channels():
    """LeViT normalises ``bn(x.flatten(0, 1)).reshape_as(x)``: the channels stay the last dim through
    both, so the linears stay prunable (every one froze on "reshape_as mixes channels")."""
    g = channel_graph("timm:levit_128s", {"img_size": 64}, (3, 64, 64))
    assert not [why for why in g.frozen.values() if "reshape_as" in why]
    assert len(g.groups) >= 15


def test_convnext_layer_scale_follows_its_group():
    g = channel_graph("timm:convnext_atto", {}, (3, 64, 64))
    assert "stages.0.blocks.0.gamma" in g.param_dims


@pytest.mark.parametrize("arch,size", [
    ("resnet20", (3, 32, 32)), ("timm:efficientnet_b0", (3, 64, 64)),
    ("torchvision:mobilenet_v3_large", (3, 64, 64)), ("timm:densenet121", (3, 64, 64)),
    ("timm:ghostnet_100", (3, 64, 64)), ("timm:convnext_atto", (3, 64, 64)),
    ("timm:regnety_008", (3, 64, 64)), ("torchvision:inception_v3", (3, 96, 96)),
    ("timm:eca_resnext26ts", (3, 64, 64)), ("timm:gcresnext26ts", (3, 64, 64)),
])
def test_predicted_counts_equal_counted_for_random_widths(arch, size):
    """The graph's MACs/params for arbitrary widths equal what the resized model counts."""
    g = channel_graph(arch, {}, size)
    rng = random.Random(0)
    widths = {}
    for name, grp in g.groups.items():
        hi = grp.width * 5 // 4 if grp.can_expand else grp.width
        widths[name] = grp.divisor * rng.randint(1, max(1, hi // grp.divisor))
    classes = build_model(arch).eval()(torch.randn(1, *size)).shape[-1]
    model = resize_model(build_model(arch), g, widths)
    out = model.eval()(torch.randn(1, *size))
    assert out.shape[-1] == classes
    assert count_flops(model, size) == g.count_flops(widths)
    assert count_params(model) == g.count_params(widths)


_HIDDEN_WIDTH: dict[int, int] = {}  # a width the forward reads from outside the module: G cannot rewrite it


class _HiddenReshape(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(width)
        _HIDDEN_WIDTH[id(self)] = width

    def forward(self, y):
        y = self.norm(y)
        return y.reshape(y.shape[0], _HIDDEN_WIDTH[id(self)], -1).softmax(-1).reshape(y.shape)


class _Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.inner, self.mix, self.out = nn.Conv2d(16, width, 1), _HiddenReshape(width), nn.Conv2d(width, 16, 1)

    def forward(self, x):
        return x + self.out(self.mix(self.inner(x)))


def _dozen_blocks(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_chans, 16, 3, padding=1), *[_Block(8 + 4 * i) for i in range(12)],
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def test_a_model_with_a_dozen_blocks_g_cannot_resize_still_prunes_the_rest():
    """Each block reshapes to a width the trace sees as a constant: the graph calls it prunable and the
    thinned copy fails there, one block per probe round. Twelve such blocks (Twins-SVT's attention in
    every block) used to exhaust 8 rounds; each now freezes and the stem/residual width still prunes."""
    # at 7x7 px (49 positions, odd) a thinned width never reshapes to the full one: the probe sees it fail
    plan = slimkit.prune(_dozen_blocks, "80%", method="uniform", input_size=(3, 7, 7), round_to=1, tolerance=0.1)
    assert plan.widths == {"0": plan.widths["0"]} and plan.widths["0"] < 16  # the residual stream prunes


def test_widths_the_probe_missed_that_break_the_model_are_one_error_naming_the_module():
    """At 8x8 px the probe's widths happen to reshape without error (64 positions divide evenly), so the
    blocks stay prunable; the plan's own widths do not: one line naming the module, not torch's traceback."""
    with pytest.raises(GraphError, match=r"failed in module '\d+\.mix' \(_HiddenReshape\): RuntimeError: .*"
                                         "G cannot resize that module at these widths"):
        slimkit.prune(_dozen_blocks, "80%", method="uniform", input_size=(3, 8, 8), round_to=1, tolerance=0.1)
