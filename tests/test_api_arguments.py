"""The public Python API checks its arguments: a wrong type or shape is a TypeError (or a SlimkitError,
a ValueError) naming the function, the argument and what it takes, raised before any work, never an
AttributeError from deep inside."""

from __future__ import annotations

import copy

import pytest
import torch

import slimkit
from slimkit.errors import PlanError, SlimkitError

RECIPE = "recipes/fmnist_resnet20_50.yaml"


@pytest.fixture(scope="module")
def full():
    return slimkit.full_plan("resnet20", num_classes=10)


WRONG_CALLS = [
    # (call, exception type, words the message must hold)
    (lambda p: slimkit.prune("resnet20", 0.5), TypeError, ["'budget'", "'50%'"]),
    (lambda p: slimkit.prune("resnet20", 150), TypeError, ["'budget'", "'150'"]),
    (lambda p: slimkit.prune(None, "50%"), TypeError, ["prune: 'arch'"]),
    (lambda p: slimkit.prune("resnet20", None), TypeError, ["'budget'"]),
    (lambda p: slimkit.prune("resnet20", "50%", method="uniform", input_size=32), TypeError,
     ["'input_size'", "(3, 32, 32)"]),
    (lambda p: slimkit.prune("resnet20", "50%", method="uniform", input_size=(3, 32)), TypeError, ["'input_size'"]),
    (lambda p: slimkit.prune("resnet20", "50%", method=1), TypeError, ["'method'"]),
    (lambda p: slimkit.prune("resnet20", "50%", gates={"steps": 3}), TypeError, ["'gates'", "GateOptions"]),
    (lambda p: slimkit.prune("resnet20", "50%", latency="ort-cpu"), TypeError, ["'latency'"]),
    (lambda p: slimkit.prune("resnet20", "50%", method="uniform", log=1), TypeError, ["'log'"]),
    (lambda p: slimkit.prune("resnet20", "50%", method="uniform", progress=print), TypeError, ["'progress'"]),
    (lambda p: slimkit.prune("resnet20", "50%", method="uniform", verify="yes"), TypeError, ["'verify'"]),
    (lambda p: slimkit.prune("resnet20", "50%", method="uniform", round_to="eight"), SlimkitError, ["round-to"]),
    (lambda p: slimkit.prune("resnet20", "50%", method="scratch", gates=slimkit.GateOptions(data=3)), TypeError,
     ["prune: 'gates.data' must be a string"]),
    (lambda p: slimkit.prune("resnet20", "50%", method="scratch", gates=slimkit.GateOptions(weights=1)), TypeError,
     ["'gates.weights' must be a string or None"]),
    (lambda p: slimkit.prune("resnet20", "5ms", latency=slimkit.LatencyOptions(backend=3)), TypeError,
     ["prune: 'latency.backend' must be a string"]),
    (lambda p: slimkit.prune("resnet20", "5ms", latency=slimkit.LatencyOptions(check="no")), TypeError,
     ["'latency.check' must be True or False"]),
    (lambda p: slimkit.load_plan(None), TypeError, ["load_plan", "None"]),
    (lambda p: slimkit.load_plan(3), TypeError, ["load_plan"]),
    (lambda p: slimkit.generate(None), TypeError, ["generate: 'plan'"]),
    (lambda p: slimkit.generate(p, seed="x"), SlimkitError, ["'seed'"]),
    (lambda p: slimkit.generate(p, model="resnet20"), TypeError, ["generate: 'model'", "nn.Module"]),
    (lambda p: slimkit.generate(p, weights=3), TypeError, ["generate: 'weights'"]),
    (lambda p: slimkit.save_plan({}, "/nonexistent/p.json"), TypeError, ["save_plan: 'plan'", "ChannelPlan"]),
    (lambda p: slimkit.save_plan(p, None), TypeError, ["save_plan: 'path'"]),
    (lambda p: slimkit.count_flops(None, (3, 32, 32)), TypeError, ["count_flops: 'model'"]),
    (lambda p: slimkit.count_flops(torch.nn.Conv2d(3, 8, 3), 32), TypeError, ["'input_size'", "(3, 32, 32)"]),
    (lambda p: slimkit.count_params("resnet20"), TypeError, ["count_params: 'model'"]),
    (lambda p: slimkit.create_model(None), TypeError, ["create_model: 'name'"]),
    (lambda p: slimkit.create_model("resnet20", num_classes="10"), SlimkitError, ["num-classes"]),
    (lambda p: slimkit.full_plan(None), TypeError, ["full_plan: 'arch'"]),
    (lambda p: slimkit.full_plan("resnet20", input_size=32), TypeError, ["'input_size'"]),
    (lambda p: slimkit.full_plan("resnet20", num_classes=0), SlimkitError, ["'num_classes'"]),
    (lambda p: slimkit.load_recipe(None), TypeError, ["load_recipe: 'path'"]),
    (lambda p: slimkit.load_recipe(RECIPE, overrides="train.epochs=1"), TypeError, ["'overrides'"]),
    (lambda p: slimkit.run_recipe(RECIPE), TypeError, ["run_recipe: 'recipe'", "load_recipe"]),
]


@pytest.mark.parametrize("case", range(len(WRONG_CALLS)))
def test_wrong_arguments_name_the_argument(case, full):
    call, kind, needles = WRONG_CALLS[case]
    with pytest.raises(kind) as info:
        call(full)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


@pytest.mark.parametrize("width, words", [(0, "int >= 1"), (7.5, "int >= 1"), (10_000_000, "wider than its full")])
def test_generate_checks_a_plan_built_in_python(full, width, words):
    """A ChannelPlan edited in Python gets the checks a plan file gets (10^7 channels: 2.9G params)."""
    plan = copy.deepcopy(full)
    name = next(iter(plan.groups))
    plan.groups[name] = {"full": plan.groups[name]["full"], "width": width}
    with pytest.raises(PlanError, match=words):
        slimkit.generate(plan)
    with pytest.raises(PlanError, match=words):
        slimkit.save_plan(plan, "/nonexistent/never-written.json")
