"""The counter reproduces the papers' reference counts (MACs at 224², params)."""

import pytest

from slimkit import count_flops, count_params, create_model
from slimkit.flops import count_flops_per_layer, format_count

# name -> (MACs, params) as the papers report them (docs/method.md), checked to 1%.
PAPER = {
    "mobilenet_v1": (569e6, 4.2e6),
    "timm:mobilenetv2_100": (300e6, 3.5e6),
    "torchvision:mobilenet_v2": (300e6, 3.5e6),
    "torchvision:resnet50": (4.1e9, 25.5e6),
    "timm:resnet50": (4.1e9, 25.5e6),
}


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_reference_counts(name):
    model = create_model(name)
    macs, params = count_flops(model, (3, 224, 224)), count_params(model)
    want_macs, want_params = PAPER[name]
    assert abs(macs - want_macs) / want_macs < 0.01, macs
    assert abs(params - want_params) / want_params < 0.01 + 0.01, params  # paper rounds to 0.1M


def test_mobilenet_v1_exact_macs():
    # The exact figure measured for timm mobilenetv1_100.
    assert count_flops(create_model("mobilenet_v1"), (3, 224, 224)) == 568_740_352


def test_per_layer_breakdown_sums_to_total():
    model = create_model("resnet20")
    per = count_flops_per_layer(model, (3, 32, 32))
    assert sum(per.values()) == count_flops(model, (3, 32, 32))
    assert "conv1" in per and "fc" in per


def test_format_count():
    assert format_count(149_497_088) == "149.5M"
    assert format_count(4_090_000_000) == "4.09G"
    assert format_count(512) == "512"
