"""G(plan): the contract other tools rely on."""

import json

import pytest
import torch

import slimkit
from slimkit import PlanError, count_flops, count_params, generate, load_plan
from slimkit.plan import save_plan
from slimkit.prune import GateOptions, prune

FAST_GATES = GateOptions(data="synthetic", steps=20, batch_size=32, val_size=64)


@pytest.fixture(scope="module")
def plan():  # a learned plan, on fast gate settings: these tests are about G, not gate learning
    return prune("resnet20", "50%", num_classes=10, round_to=1, gates=FAST_GATES)


def test_generate_matches_plan_counts(plan):
    model = generate(plan)
    assert count_flops(model, plan.input_size) == plan.flops
    assert count_params(model) == plan.params
    assert model(torch.randn(2, *plan.input_size)).shape == (2, 10)
    assert model.conv1.out_channels == plan.groups["conv1"]["width"]


def test_generate_accepts_path_dict_and_plan(plan, tmp_path):
    path = save_plan(plan, tmp_path / "p.json")
    shapes = [[tuple(p.shape) for p in generate(x).parameters()]
              for x in (plan, str(path), path, json.loads(path.read_text()))]
    assert all(s == shapes[0] for s in shapes)


def test_generate_is_deterministic_per_seed(plan):
    a, b = generate(plan), generate(plan)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    c = generate(plan, seed=1)
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))


def test_plan_json_round_trip(plan, tmp_path):
    path = save_plan(plan, tmp_path / "p.json")
    assert load_plan(path).to_dict() == plan.to_dict()
    data = json.loads(path.read_text())
    assert data["format"] == "slimkit.plan/1"
    assert set(data) >= {"arch", "arch_kwargs", "input_size", "expand", "round_to", "method", "seed",
                         "budget", "groups", "flops", "params", "latency", "search", "slimkit_version"}
    assert data["slimkit_version"] == slimkit.__version__


def test_expansion_plan_builds_wider_modules():
    p = prune("resnet20", "150%", num_classes=10, expand=1.5, round_to=1, gates=FAST_GATES)
    model = generate(p)
    assert max(g["width"] / g["full"] for g in p.groups.values()) > 1.0
    assert count_flops(model, p.input_size) == p.flops


def _mutated(plan, **change):
    d = plan.to_dict()
    d.update(change)
    return d


@pytest.mark.parametrize("change,match", [
    ({"format": "slimkit.plan/0"}, "format"),
    ({"groups": {}}, "non-empty"),
    ({"input_size": [3, 32]}, "input_size"),
    ({"colour": "red"}, "unknown fields"),
])
def test_invalid_plans_are_rejected(plan, change, match):
    with pytest.raises(PlanError, match=match):
        generate(_mutated(plan, **change))


def test_plan_for_other_architecture_is_rejected(plan):
    d = plan.to_dict()
    d["groups"] = dict(list(d["groups"].items())[:-1])
    with pytest.raises(PlanError, match="does not fit"):
        generate(d)
    d = plan.to_dict()
    d["groups"]["conv1"] = {"full": 17, "width": 8}
    with pytest.raises(PlanError, match="full width"):
        generate(d)


def test_missing_and_corrupt_plan_files(tmp_path):
    with pytest.raises(PlanError, match="not found"):
        load_plan(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        load_plan(bad)


def test_full_plan_is_the_uniform_plan_at_100_percent():
    from slimkit.generator import full_plan

    full = full_plan("resnet20", num_classes=10)
    same = prune("resnet20", "100%", method="uniform", num_classes=10, round_to=1, verify=False)
    assert full.to_dict() | {"search": {}} == same.to_dict() | {"search": {}}
    assert {k: full.search[k] for k in ("full_flops", "full_params")} == \
        {k: same.search[k] for k in ("full_flops", "full_params")}
    assert count_flops(generate(full), full.input_size) == full.flops
