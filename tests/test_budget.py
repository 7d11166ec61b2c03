import pytest

from slimkit.budget import (make_divisible, max_widths, parse_budget, search_threshold, search_uniform,
                            uniform_widths)
from slimkit.errors import BudgetError
from slimkit.generator import channel_graph
from slimkit.search_space import residual_stream_groups


@pytest.mark.parametrize("text,kind,value", [
    ("150M", "flops", 150e6), ("1.2G", "flops", 1.2e9), ("150000000", "flops", 150e6),
    ("3.5Mp", "params", 3.5e6), ("20ms", "latency", 0.02), ("500us", "latency", 5e-4),
    ("2.5K", "flops", 2500),
])
def test_parse_budget(text, kind, value):
    b = parse_budget(text)
    assert b.kind == kind and b.value == pytest.approx(value)


def test_parse_fraction_resolves_against_full_model():
    b = parse_budget("50%")
    assert b.value is None and b.fraction == 0.5
    assert b.resolve(1000).value == 500


def test_params_flag_reads_plain_numbers_as_params():
    assert parse_budget("2.1M", kind="params").kind == "params"
    with pytest.raises(BudgetError):
        parse_budget("50%", kind="params")


@pytest.mark.parametrize("bad", ["150X", "fast", "", "-5M", "M150", "10 parsecs"])
def test_unknown_units_are_errors(bad):
    with pytest.raises(BudgetError, match="cannot read budget"):
        parse_budget(bad)


def test_make_divisible_is_torchvisions_rule():
    assert make_divisible(32 * 0.5, 8) == 16
    assert make_divisible(3, 8) == 8  # never below the divisor
    assert make_divisible(20, 8) == 24  # 16 would lose more than 10%
    assert make_divisible(100, 8) == 104


@pytest.fixture(scope="module")
def mnv1_graph():
    return channel_graph("mobilenet_v1", {}, (3, 224, 224))


def test_uniform_half_width_is_the_papers_0_5x_mobilenet(mnv1_graph):
    widths = uniform_widths(mnv1_graph, 0.5)
    assert mnv1_graph.count_flops(widths) == pytest.approx(149.5e6, rel=0.005)
    assert all(w % 8 == 0 for w in widths.values())


def test_search_uniform_meets_budget(mnv1_graph):
    res = search_uniform(mnv1_graph, parse_budget("300M"))
    assert abs(res.flops - 300e6) / 300e6 <= 0.01


def test_search_uniform_params_budget(mnv1_graph):
    res = search_uniform(mnv1_graph, parse_budget("2.0M", kind="params"))
    assert abs(res.params - 2.0e6) / 2.0e6 <= 0.01


@pytest.mark.parametrize("budget,match", [("1G", "above the largest"), ("1M", "below the smallest")])
def test_impossible_budgets(mnv1_graph, budget, match):
    with pytest.raises(BudgetError, match=match):
        search_uniform(mnv1_graph, parse_budget(budget))


def test_expansion_raises_the_ceiling(mnv1_graph):
    res = search_uniform(mnv1_graph, parse_budget("700M"), expand=1.25)
    assert abs(res.flops - 700e6) / 700e6 <= 0.01
    assert max(res.widths[n] / g.width for n, g in mnv1_graph.groups.items()) > 1.0


def test_uniform_fill_lands_under_rounding_one_step_per_group():
    """resnet20 at 50% with --round-to 8: no single factor lands within 1% (its 16/32/64-wide
    groups have few widths), so groups widen one rounding step each, widest first."""
    g = channel_graph("resnet20", {}, (3, 32, 32))
    target = 0.5 * g.count_flops()
    res = search_uniform(g, parse_budget("50%"), round_to=8)
    assert target * 0.99 <= res.flops <= target
    assert res.filled  # the fill ran and says which groups it moved
    base = uniform_widths(g, res.value, round_to=8)
    for name, width in res.widths.items():
        step = 8 if name in res.filled else 0
        assert width == base[name] + step  # uniform up to one step
    widest_first = sorted(res.filled, key=lambda n: -g.groups[n].width)
    assert [g.groups[n].width for n in res.filled] == [g.groups[n].width for n in widest_first]


def test_fill_never_exceeds_the_budget_and_fails_loudly_when_short():
    g = channel_graph("resnet20", {}, (3, 32, 32))
    with pytest.raises(BudgetError, match="--round-to 1"):
        search_uniform(g, parse_budget("50%"), round_to=8, tolerance=1e-6)
    res = search_uniform(g, parse_budget("50%"), round_to=1)
    assert abs(res.flops / g.count_flops() - 0.5) <= 0.01


def test_gate_order_fill_meets_budget_and_follows_gate_order(monkeypatch):
    """When no single threshold lands within tolerance (one channel of a wide residual group can
    move MACs by more than 1%), channels are added in gate order without exceeding the budget."""
    import random

    import slimkit.budget as budget_mod

    g = channel_graph("resnet20", {}, (3, 32, 32))
    rng = random.Random(0)
    widths = max_widths(g, 1.25, round_to=1)
    gates = {n: [rng.random() for _ in range(widths[n])] for n in g.groups}
    target = 0.5 * g.count_flops()

    def no_threshold_fits(*args, **kwargs):
        raise budget_mod.BudgetError("no plan within 1%")

    monkeypatch.setattr(budget_mod, "_bisect", no_threshold_fits)
    res = budget_mod.search_threshold(g, gates, parse_budget("50%"), round_to=1, expand=1.25)
    assert res.selection == "gate-order fill"
    assert target * 0.99 <= res.flops <= target


def test_uniform_fill_takes_more_rounds_when_one_step_per_group_is_not_enough():
    """A few coarse groups and many fine ones (a transformer's embedding width vs its MLPs; here
    resnet20 at 16 px, where one step of 8 channels is 12-50% of a 16-64-wide group): one step per
    group cannot land, so the fill goes round again, widening groups a second step, evenly."""
    g = channel_graph("resnet20", {}, (3, 16, 16))
    target = 0.6 * g.count_flops()
    res = search_uniform(g, parse_budget("60%"), round_to=8)
    assert target * 0.99 <= res.flops <= target
    base = uniform_widths(g, res.value, round_to=8)
    steps = {n: (w - base[n]) // 8 for n, w in res.widths.items()}
    assert max(steps.values()) == 2 and res.selection == "uniform up to 2 steps"
    # rounds: the second round starts only after every group took its first step or was refused it,
    # so a group left without a step could not take one (it would exceed the budget) or is full
    for name in (n for n, k in steps.items() if k == 0):
        wider = {**res.widths, name: res.widths[name] + 8}
        assert res.widths[name] + 8 > g.groups[name].width or g.count_flops(wider) > target, name


def test_a_swap_lands_where_every_single_step_is_coarser_than_the_tolerance():
    """resnet20 at 16 px and 30%, --round-to 8: every remaining step moves MACs by more than 1%, so
    adding alone stops short (it used to fail at -1.5%); one group a rung wider and another a rung
    thinner lands, and the plan says so."""
    g = channel_graph("resnet20", {}, (3, 16, 16))
    target = 0.3 * g.count_flops()
    res = search_uniform(g, parse_budget("30%"), round_to=8)
    assert target * 0.99 <= res.flops <= target
    assert res.selection.endswith("swap") or "swaps" in res.selection
    gates = {n: [1.0 - i / grp.width for i in range(grp.width)] for n, grp in g.groups.items()}
    plan = search_threshold(g, gates, parse_budget("30%"), round_to=8)  # the gate-order fill lands too
    assert target * 0.99 <= plan.flops <= target and "swap" in plan.selection


def test_a_swap_with_pinned_groups_leaves_them_whole():
    """`prune --criterion l1 --search-space paper` (the guide's command): the residual streams are pinned
    at full width and have no ladder; when the fill has to swap, the swap moves only the groups that may
    move (it used to look every group up in the ladders: KeyError 'conv1', a traceback)."""
    g = channel_graph("resnet20", {"num_classes": 10}, (3, 32, 32))
    pinned = {n: g.groups[n].width for n in residual_stream_groups(g)}
    target = 0.5 * g.count_flops()
    res = search_uniform(g, parse_budget("50%"), round_to=8, pinned=pinned)
    assert target * 0.99 <= res.flops <= target and "swap" in res.selection
    assert all(res.widths[n] == w for n, w in pinned.items())


def test_a_budget_missed_at_round_to_1_does_not_advise_round_to_1():
    """Every width already moves one channel at a time: the advice is a larger tolerance or another
    budget, not the --round-to 1 the user already gave."""
    graph = channel_graph("resnet20", {"num_classes": 10}, (3, 32, 32))
    with pytest.raises(BudgetError, match="larger --tolerance") as caught:
        search_uniform(graph, parse_budget("50%"), round_to=1, tolerance=1e-9)
    assert "--round-to 1" not in str(caught.value)
