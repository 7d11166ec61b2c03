"""The paper's search space (residual streams kept, block-internal channels gated), its snapshot
rule, and adaptive γ on the default path."""

import pytest
import torch

from slimkit.budget import max_widths
from slimkit.data import load_data
from slimkit.gates import attach_gates
from slimkit.generator import build_model, channel_graph
from slimkit.prune import GateOptions, prune
from slimkit.search import GateSearchConfig, search_gates
from slimkit.search_space import residual_stream_groups

STREAMS = ["conv1", "layer2.0.conv2", "layer3.0.conv2"]  # ResNet-20's three stage streams


@pytest.fixture(scope="module")
def graph():
    return channel_graph("resnet20", {}, (3, 32, 32))


@pytest.fixture(scope="module")
def data():
    return load_data("synthetic", data_dir=None, input_size=(3, 32, 32), synthetic_size=256, seed=0)


def test_residual_streams_are_found_from_the_graph(graph):
    assert residual_stream_groups(graph) == STREAMS
    # MobileNet-V1 has no residual adds: a depthwise conv passes its input's channels through
    assert residual_stream_groups(channel_graph("mobilenet_v1", {}, (3, 32, 32))) == []


def _search(graph, data, fixed=(), **cfg):
    torch.manual_seed(0)
    supernet = attach_gates(build_model("resnet20"), graph, graph.full_widths(), fixed=fixed)
    base = dict(batch_size=32, steps=12, evals=4, seed=0, val_images=64)
    return supernet, search_gates(supernet, data, GateSearchConfig(**{**base, **cfg}))


def test_fixed_groups_do_not_learn_and_leave_the_mean(graph, data):
    supernet, res = _search(graph, data, fixed=STREAMS, target=0.3, gamma=50.0, lr=0.1)
    assert len(list(supernet.parameters())) == len(graph.groups) - len(STREAMS)
    for name in STREAMS:
        assert res.gates[name] == [1.0] * graph.groups[name].width
    learnable = [v for n, vs in res.gates.items() if n not in STREAMS for v in vs]
    assert res.gate_mean == pytest.approx(sum(learnable) / len(learnable), abs=1e-6)
    assert res.gate_mean < 0.9  # the internal gates did move


def test_snapshot_rules_differ_where_the_paper_says(graph, data):
    """Gates that shrink without reaching zero meet 'mean <= r' but not the official rule (share
    of non-zero gates <= r): the official rule then falls back to the final gates."""
    small_steps = dict(target=0.95, gamma=50.0, lr=0.01)  # 12 steps of 0.01: no gate reaches 0
    _, by_mean = _search(graph, data, snapshot_rule="mean", **small_steps)
    _, official = _search(graph, data, snapshot_rule="nonzero", **small_steps)
    assert by_mean.qualified and by_mean.gate_mean <= 0.95
    assert not official.qualified and official.nonzero_fraction == 1.0
    assert official.step == 12  # the final gates
    assert official.gate_mean < 1.0  # the gates did move: the fallback is the rule, not a stalled run



@pytest.mark.parametrize("target,qualified", [(0.6, True), (0.4, False)])
def test_official_rule_counts_zero_gates(graph, data, target, qualified):
    """Half of every learnable gate vector at exactly 0 and lr 0 (the gates cannot move): the
    share of non-zero gates is 0.5, so r = 0.6 qualifies the first snapshot and r = 0.4 falls
    back to the final gates."""
    torch.manual_seed(0)
    supernet = attach_gates(build_model("resnet20"), graph, graph.full_widths(), fixed=STREAMS)
    with torch.no_grad():
        for g in supernet.parameters():
            g[: g.numel() // 2] = 0.0
    cfg = GateSearchConfig(target=target, gamma=0.5, lr=0.0, batch_size=32, steps=6, evals=2, seed=0,
                           val_images=64, snapshot_rule="nonzero")
    res = search_gates(supernet, data, cfg)
    assert res.nonzero_fraction == pytest.approx(0.5, abs=0.01)
    assert res.qualified is qualified
    assert res.step == (3 if qualified else 6)  # the first of equal snapshots, or the final gates


def test_adaptive_gamma_reaches_r_where_the_papers_gamma_does_not(graph, data):
    fixed_gamma = dict(target=0.3, gamma=0.5, lr=0.05, steps=30, evals=5)
    _, plain = _search(graph, data, **fixed_gamma)
    _, adaptive = _search(graph, data, adaptive_gamma=True, **fixed_gamma)
    assert not plain.qualified
    assert adaptive.qualified and adaptive.gate_mean <= 0.3 and adaptive.gamma > 0.5


def test_paper_search_space_plan(graph):
    fast = dict(round_to=1, expand=1.25)
    plan = prune("resnet20", "50%", gates=GateOptions(data="synthetic", steps=10, batch_size=32, val_size=64,
                                                      search_space="paper"), **fast)
    wide = max_widths(graph, 1.25, round_to=1)
    assert {n: plan.groups[n]["width"] for n in STREAMS} == {n: wide[n] for n in STREAMS}  # 20/40/80
    s = plan.search
    assert s["search_space"] == "paper" and s["pinned"] == sorted(STREAMS)
    assert s["target_r"] == pytest.approx(0.5, abs=1e-3)  # against the unexpanded model, not 0.5/1.25^2
    assert (s["snapshot_rule"], s["augment"], s["eval_bn"], s["adaptive_gamma"]) == ("nonzero", True, True, False)
    assert abs(plan.flops - plan.budget["value"]) / plan.budget["value"] <= 0.01
    default = prune("resnet20", "50%", gates=GateOptions(data="synthetic", steps=10, batch_size=32, val_size=64),
                    **fast)
    assert default.search["target_r"] == pytest.approx(0.5 / 1.25 ** 2, abs=1e-3)
    assert default.search["adaptive_gamma"] and default.search["search_space"] == "full"
    assert default.search["penalty_target"] < default.search["target_r"]  # adaptive γ aims below r


def test_lr_does_not_depend_on_steps():
    fast = dict(data="synthetic", batch_size=32, val_size=64, device="cpu", steps=5)
    assert prune("resnet20", "50%", round_to=1, gates=GateOptions(**fast)).search["lr"] == 0.05
    assert prune("resnet20", "50%", round_to=1,
                 gates=GateOptions(search_space="paper", **fast)).search["lr"] == 0.01


def test_adaptive_gamma_aims_below_r_and_presses_until_the_mean_is_at_or_below_r():
    from slimkit.search import _aim, _lags
    r = 0.264
    assert r - 0.01 <= _aim(r) < r and _aim(0.05) == pytest.approx(0.045)  # never more than r/10 below
    steps = 300
    assert not _lags(0.86, 30, steps, r)  # within 0.02 of the pace early in the run (0.85 at step 30)
    assert _lags(0.9, 100, steps, r)  # behind it later
    # second half: the pace has reached its aim; a mean just above r still lags (the old rule let
    # 0.2641 stand for r = 0.264, and no snapshot qualified), one at or below r does not
    assert _lags(0.2641, 200, steps, r) and not _lags(0.264, 200, steps, r) and not _lags(0.26, 290, steps, r)
