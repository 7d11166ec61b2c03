"""Gated supernet and gate learning on small models and synthetic data."""

import pytest
import torch
from torch.nn.utils import parametrize

from slimkit.data import load_data
from slimkit.gates import attach_gates
from slimkit.generator import build_model, channel_graph
from slimkit.search import GateSearchConfig, search_gates


@pytest.fixture()
def resnet20():
    graph = channel_graph("resnet20", {}, (3, 32, 32))
    model = build_model("resnet20")
    return graph, model, attach_gates(model, graph, graph.full_widths())


def test_weights_frozen_and_gates_folded_into_bn(resnet20):
    graph, model, supernet = resnet20
    assert not any(p.requires_grad for p in model.parameters())  # gates live outside the model
    assert parametrize.is_parametrized(model.bn1, "weight")
    assert len(list(supernet.parameters())) == len(graph.groups)
    x = torch.randn(4, 3, 32, 32)
    model(x).sum().backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in supernet.parameters())
    frozen = [p for n, p in model.named_parameters() if "original" in n or "conv" in n]
    assert all(p.grad is None for p in frozen)


def test_zero_gate_removes_channel_output(resnet20):
    _, model, supernet = resnet20
    model.eval()
    with torch.no_grad():
        supernet.gate("layer1.0.conv1")[:] = 0.0
    captured = {}
    model.layer1[0].bn1.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    model(torch.randn(2, 3, 32, 32))
    assert captured["out"].abs().max() == 0


def test_gate_hook_for_groups_without_batchnorm():
    graph = channel_graph("timm:efficientnet_b0", {}, (3, 64, 64))
    model = build_model("timm:efficientnet_b0")
    supernet = attach_gates(model, graph, graph.full_widths())
    se = "blocks.1.0.se.conv_reduce"
    assert se in graph.groups and supernet._hooks
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert supernet.gate(se).grad.abs().sum() > 0


def test_remove_restores_plain_model(resnet20):
    _, model, supernet = resnet20
    supernet.remove()
    assert not parametrize.is_parametrized(model)


def test_search_drives_gate_mean_to_target_and_is_deterministic():
    graph = channel_graph("resnet20", {}, (3, 32, 32))
    data = load_data("synthetic", data_dir=None, input_size=(3, 32, 32), synthetic_size=256, seed=0)

    def run(seed):
        torch.manual_seed(seed)
        model = build_model("resnet20")
        supernet = attach_gates(model, graph, graph.full_widths())
        cfg = GateSearchConfig(target=0.6, gamma=5.0, lr=0.05, batch_size=32, steps=40, evals=4, seed=seed)
        return search_gates(supernet, data, cfg)

    a, b = run(0), run(0)
    assert a.gates == b.gates and a.step == b.step
    assert a.gate_mean < 0.8  # moved from 1.0 towards r
    assert all(0.0 <= v <= 1.0 for vs in a.gates.values() for v in vs)
    assert len(a.history) == 4
    assert a.qualified == (a.gate_mean <= 0.6 + 1e-6)
