"""The built-in CIFAR networks: sizes match the papers, shapes work, and torch.export traces them."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from slimkit.models.cifar import BUILTIN_DESCRIPTIONS, BUILTIN_MODELS, BasicBlock

# (params, MACs) at 3x32x32, 10 classes. ResNets: He et al. 2016 (0.27M / 0.85M / 1.7M params,
# plus ~0.3% for option-B projections); VGG: Liu et al. 2019 (VGG-16 14.7M / 313M, VGG-19 20.0M / 399M).
EXPECTED = {
    "resnet20": (0.27e6, 41e6),
    "resnet56": (0.855e6, 126e6),
    "resnet110": (1.73e6, 253e6),
    "vgg16_cifar": (14.7e6, 313e6),
    "vgg19_cifar": (20.0e6, 399e6),
}


def count_flops(model: nn.Module, input_size: tuple[int, int, int]) -> float:
    # FlopCounterMode counts a multiply-add as 2 FLOPs; the papers count MACs.
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_size))
    return counter.get_total_flops() / 2


def test_registry_lists_every_builder_with_a_description() -> None:
    assert set(BUILTIN_MODELS) == set(EXPECTED)
    assert set(BUILTIN_DESCRIPTIONS) == set(BUILTIN_MODELS)
    assert all(desc and "\n" not in desc for desc in BUILTIN_DESCRIPTIONS.values())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_params_and_macs_match_papers(name: str) -> None:
    model = BUILTIN_MODELS[name]().eval()
    params = sum(p.numel() for p in model.parameters())
    macs = count_flops(model, (3, 32, 32))
    want_params, want_macs = EXPECTED[name]
    assert params == pytest.approx(want_params, rel=0.02)
    assert macs == pytest.approx(want_macs, rel=0.02)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_forward_shapes_and_default_input_size(name: str) -> None:
    model = BUILTIN_MODELS[name](num_classes=100, in_chans=1).eval()
    assert model.default_input_size == (1, 32, 32)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 100)
        # Global pooling lets a larger input through unchanged in output shape.
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 100)


def test_larger_input_scales_macs_by_area() -> None:
    model = BUILTIN_MODELS["resnet20"]().eval()
    small, large = count_flops(model, (3, 32, 32)), count_flops(model, (3, 64, 64))
    # Convs scale with area; only the classifier's 640 MACs do not.
    assert large == pytest.approx(4 * small, rel=1e-4)


def test_resnet_uses_option_b_projection_shortcuts() -> None:
    model = BUILTIN_MODELS["resnet56"]()
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 27
    projections = [b for b in blocks if not isinstance(b.shortcut, nn.Identity)]
    # One projection per stage transition (16->32, 32->64), each a 1x1 strided conv + BN.
    assert len(projections) == 2
    for block in projections:
        conv, bn = block.shortcut
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (2, 2)
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels
        assert conv.in_channels == block.conv1.in_channels
        assert conv.out_channels == block.conv2.out_channels


def test_init_is_kaiming_fan_out_and_identity_batchnorm() -> None:
    torch.manual_seed(0)
    model = BUILTIN_MODELS["vgg16_cifar"]()
    conv = model.features[-3]
    assert isinstance(conv, nn.Conv2d)
    fan_out = conv.out_channels * math.prod(conv.kernel_size)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


@pytest.mark.parametrize("name", ["resnet20", "vgg16_cifar"])
def test_torch_export_traces_and_matches_eager(name: str) -> None:
    model = BUILTIN_MODELS[name]().eval()
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(model, (x,), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))
    # Every conv must be a module call in the graph: no channel counts hidden in forward code.
    convs = [n for n in exported.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    assert len(convs) == sum(isinstance(m, nn.Conv2d) for m in model.modules())
