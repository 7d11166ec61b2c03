"""Which method `slimkit prune` uses when none is given: uniform for classifiers (the structure
study's rule with latency measured where models ship: docs/search.md section 7), learned gates for
detection and segmentation models and whenever a gate-learning option is given."""

import json

import pytest
from typer.testing import CliRunner

from slimkit.cli import app
from slimkit.prune import DEFAULT_METHOD, GateOptions, default_method, prune
from slimkit.recipe import parse_recipe

runner = CliRunner()


def test_the_default_follows_the_model_and_the_options():
    assert DEFAULT_METHOD == "uniform"
    assert default_method("resnet20") == "uniform"
    assert default_method("timm:resnet18") == "uniform"
    assert default_method("lraspp_mobilenet_v3_large") == "scratch"
    assert default_method("torchvision:ssdlite320_mobilenet_v3_large") == "scratch"
    assert default_method("resnet20", learns_gates=True) == "scratch"
    assert default_method("resnet20", criterion="gates") == "scratch"
    assert default_method("lraspp_mobilenet_v3_large", criterion="l1") == "uniform"


def test_the_api_plans_a_classifier_uniformly_and_learns_gates_when_asked():
    plan = prune("resnet20", "50%", round_to=1, latency=None, verify=False)
    assert plan.method == "uniform"
    learned = prune("resnet20", "50%", round_to=1, verify=False,
                    gates=GateOptions(data="synthetic", steps=2, batch_size=8, val_size=16))
    assert learned.method == "scratch"


FAST_GATES = ["--batch-size", "8", "--val-size", "16"]


@pytest.mark.parametrize("extra, method", [
    ([], "uniform"),
    (["--steps", "2", "--data", "synthetic", *FAST_GATES], "scratch"),  # a gate option: gates
    (["--method", "scratch", "--steps", "2", "--data", "synthetic", *FAST_GATES], "scratch"),
])
def test_cli_without_method_is_uniform_and_gate_options_mean_gates(tmp_path, extra, method):
    out = tmp_path / "p.json"
    r = runner.invoke(app, ["prune", "resnet20", "--flops", "50%", "--round-to", "1", "--no-latency-check",
                            "--no-plot", "--out", str(out), *extra])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["method"] == method


def test_cli_data_named_outright_means_gates_even_when_it_is_the_default_data(tmp_path):
    """--data fashion-mnist is a gate option like any --data (it planned uniformly, for 5 classes here, as
    if no data had been named); learning gates on it, the 5-class head is refused at once."""
    r = runner.invoke(app, ["prune", "resnet20", "--flops", "50%", "--data", "fashion-mnist", "--num-classes", "5",
                            "--no-latency-check", "--no-plot", "--out", str(tmp_path / "p.json")])
    assert r.exit_code == 2 and "fashion-mnist has 10 classes" in r.output, r.output


def test_a_recipe_without_method_takes_the_same_default():
    r = parse_recipe({"name": "t", "arch": "resnet20", "prune": {"flops": "50%"}}, "r.yaml")
    assert r.prune.method == "uniform"
    r = parse_recipe({"name": "t", "arch": "resnet20", "prune": {"flops": "50%", "steps": 30}}, "r.yaml")
    assert r.prune.method == "scratch"
