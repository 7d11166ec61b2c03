"""Cost-aware selection (gate value per unit of marginal cost) on hand-made networks whose right
answers are known, and on ResNet-20 (landing, rounding, pinned groups)."""

import itertools
import random

import pytest
import torch
from torch import nn

from slimkit.budget import (Budget, max_widths, min_widths, parse_budget, search_cost_aware,
                            search_threshold)
from slimkit.errors import BudgetError
from slimkit.generator import channel_graph
from slimkit.graph import analyze


class TwoStage(nn.Module):
    """A channel of ``a`` (full resolution) costs about 4x the MACs of a channel of ``b`` (a
    quarter of the positions): the shape of ResNet-20's stage 1 vs stage 3."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.a = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(width)
        self.b = nn.Conv2d(width, width, 3, 2, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = torch.relu(self.bn_a(self.a(x)))
        x = torch.relu(self.bn_b(self.b(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def two_stage():
    graph = analyze(TwoStage(), (3, 16, 16))
    assert set(graph.groups) == {"a", "b"}
    return graph


def _value(gates, widths):
    return sum(sum(sorted(gates[n], reverse=True)[:w]) for n, w in widths.items())


def test_equal_gates_keep_the_cheap_channels(two_stage):
    """All gates equal: every channel is worth the same, so the budget is best spent on the cheap
    group. Cost-aware keeps ``b`` whole and thins ``a``; a threshold cannot tell them apart."""
    gates = {"a": [1.0] * 16, "b": [1.0] * 16}
    res = search_cost_aware(two_stage, gates, parse_budget("50%"), round_to=1)
    assert res.widths["b"] == 16
    assert res.widths["a"] < 16
    full = two_stage.count_flops()
    assert abs(res.flops - 0.5 * full) <= 0.01 * 0.5 * full  # one channel of a moves 12%: just over wins


def test_unimportant_group_goes_first_even_when_cheap(two_stage):
    """Gates of ``b`` ten times lower outweigh its 4x lower cost: ``b`` is thinned first."""
    gates = {"a": [1.0] * 16, "b": [0.1] * 16}
    res = search_cost_aware(two_stage, gates, parse_budget("80%"), round_to=1, tolerance=0.05)
    assert res.widths["a"] == 16 and res.widths["b"] < 16


@pytest.mark.parametrize("kind", ["flops", "params"])
def test_matches_the_exhaustive_optimum(two_stage, kind):
    """Two groups, every width pair enumerated: the greedy plan keeps as much gate value as the
    best plan under the same budget (within one channel's gate), counting MACs or parameters."""
    count = two_stage.count_flops if kind == "flops" else two_stage.count_params
    rng = random.Random(3)
    for trial in range(4):
        gates = {n: [rng.random() for _ in range(16)] for n in ("a", "b")}
        budget = Budget(kind, "x", round((0.3 + 0.15 * trial) * count()))
        # one channel moves this toy's parameters by ~6%: a 10% tolerance
        res = search_cost_aware(two_stage, gates, budget, round_to=1, tolerance=0.1)
        assert count(res.widths) <= budget.value * 1.1
        best = max(_value(gates, {"a": a, "b": b}) for a, b in itertools.product(range(1, 17), repeat=2)
                   if count({"a": a, "b": b}) <= count(res.widths))
        assert _value(gates, res.widths) >= best - 1.0


@pytest.fixture(scope="module")
def resnet20():
    return channel_graph("resnet20", {"num_classes": 10}, (3, 32, 32))


@pytest.mark.parametrize("budget,round_to,expand", [("50%", 1, 1.0), ("25%", 1, 1.25), ("25%", 8, 1.0)])
def test_lands_within_one_percent_with_rounding_and_minimums(resnet20, budget, round_to, expand):
    rng = random.Random(0)
    sizes = max_widths(resnet20, expand, round_to=1)
    gates = {n: [rng.random() for _ in range(sizes[n])] for n in resnet20.groups}
    res = search_cost_aware(resnet20, gates, parse_budget(budget), round_to=round_to, expand=expand)
    target = parse_budget(budget).resolve(resnet20.count_flops()).value
    assert abs(res.flops - target) / target <= 0.01
    assert res.flops == resnet20.count_flops(res.widths)
    lows = min_widths(resnet20, round_to)
    for name, w in res.widths.items():
        assert w >= lows[name]
        assert w % round_to == 0 or w == lows[name] or w == sizes[name]


def test_pinned_groups_keep_their_width(resnet20):
    rng = random.Random(1)
    sizes = max_widths(resnet20, 1.25, round_to=1)
    gates = {n: [rng.random() for _ in range(sizes[n])] for n in resnet20.groups}
    stream = {"conv1": 20, "layer2.0.conv2": 40, "layer3.0.conv2": 80}
    for search in (search_cost_aware, search_threshold):
        res = search(resnet20, gates, parse_budget("50%"), round_to=1, expand=1.25, pinned=stream)
        assert {n: res.widths[n] for n in stream} == stream
        assert abs(res.flops / resnet20.count_flops() - 0.5) <= 0.01


def test_unreachable_budget_names_the_fix(resnet20):
    gates = {n: [1.0] * w for n, w in resnet20.full_widths().items()}
    with pytest.raises(BudgetError, match="below the smallest"):
        search_cost_aware(resnet20, gates, parse_budget("0.1%"), round_to=8)
