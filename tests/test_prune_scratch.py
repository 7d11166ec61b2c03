"""`prune(method='scratch')` end to end on small models and synthetic data (fast settings)."""

import json
import statistics

import pytest
from typer.testing import CliRunner

from slimkit import count_flops, generate
from slimkit.cli import app
from slimkit.prune import GateOptions, prune

FAST = dict(gates=GateOptions(data="synthetic", steps=30, batch_size=32, gamma=5.0, lr=0.05, val_size=64))


@pytest.fixture(scope="module")
def plan():
    return prune("resnet20", "50%", round_to=1, seed=0, **FAST)


def test_scratch_plan_meets_budget_and_g_counts_it(plan):
    assert plan.method == "scratch"
    assert abs(plan.flops - plan.budget["value"]) / plan.budget["value"] <= 0.01
    assert count_flops(generate(plan), plan.input_size) == plan.flops
    s = plan.search
    assert {"gamma", "lr", "steps", "target_r", "threshold", "chosen_step", "gates", "history"} <= set(s)
    assert plan.arch_kwargs == {"num_classes": 10}  # from the data


def test_searched_plan_is_not_uniform(plan):
    ratios = list(plan.keep_ratios().values())
    assert statistics.pstdev(ratios) / statistics.mean(ratios) > 0.1


def test_same_seed_same_plan_other_seed_other_plan(plan):
    again = prune("resnet20", "50%", round_to=1, seed=0, **FAST)
    assert again.groups == plan.groups
    other = prune("resnet20", "50%", round_to=1, seed=1, **FAST)
    assert other.groups != plan.groups


def test_expanded_supernet(tmp_path):
    p = prune("resnet20", "50%", round_to=1, expand=1.25, **FAST)
    assert p.expand == 1.25
    assert abs(p.flops - p.budget["value"]) / p.budget["value"] <= 0.01


@pytest.mark.parametrize("arch", ["timm:mobilenetv2_100", "timm:efficientnet_b0", "timm:ghostnet_100",
                                  "torchvision:mobilenet_v3_small", "timm:regnety_008"])
def test_scratch_over_the_zoo_at_tiny_size(arch):
    p = prune(arch, "50%", input_size=(3, 64, 64), round_to=1, tolerance=0.02,
              gates=GateOptions(search_size=32, data="synthetic", steps=3, batch_size=8, val_size=16, gamma=5.0, lr=0.05))
    assert abs(p.flops - p.budget["value"]) / p.budget["value"] <= 0.02


runner = CliRunner()


def test_cli_scratch_writes_plan_and_plot(tmp_path):
    out = tmp_path / "p.json"
    r = runner.invoke(app, ["prune", "resnet20", "--flops", "50%", "--round-to", "1", "--data", "synthetic",
                            "--steps", "10", "--batch-size", "32", "--val-size", "64", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["method"] == "scratch"
    assert "SYNTHETIC" in r.output
    assert out.with_suffix(".png").exists()


@pytest.mark.parametrize("args,needle", [
    (["--data", "mnist-ish"], "unknown dataset"),
    (["--data", "fashion-mnist", "--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
    (["--data", "cifar10", "--data-dir", "/nonexistent/dir"], "cifar"),
    (["--data", "synthetic", "--num-classes", "7"], None),
])
def test_cli_data_errors(tmp_path, args, needle):
    out = tmp_path / "p.json"
    r = runner.invoke(app, ["prune", "resnet20", "--flops", "50%", "--round-to", "1", "--steps", "2",
                            "--out", str(out), *args])
    if needle is None:  # synthetic honours --num-classes? it must match the data's 10 classes
        assert r.exit_code != 0 and "classes" in r.output
    else:
        assert r.exit_code != 0 and "Traceback" not in r.output
        assert needle.lower() in r.output.lower()
    assert not out.exists()


def test_gates_can_be_learned_on_trained_weights(tmp_path):
    """The paper's comparison: the same gate method on a trained full model (and only a full one)."""
    from slimkit.errors import SlimkitError
    from slimkit.train import TrainConfig, train

    cfg = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=16)
    train("resnet20", tmp_path / "full", cfg)
    plan = prune("resnet20", "50%", round_to=1, gates=GateOptions(data="synthetic", steps=2, batch_size=16,
                 weights=str(tmp_path / "full" / "checkpoint.pt")))
    assert plan.search["weights"].startswith("trained")
    thin = prune("resnet20", "50%", method="uniform", round_to=1, num_classes=10)
    train(thin, tmp_path / "thin", cfg)
    with pytest.raises(SlimkitError, match="not the full"):
        prune("resnet20", "50%", round_to=1, gates=GateOptions(data="synthetic", steps=2, batch_size=16,
              weights=str(tmp_path / "thin" / "checkpoint.pt")))
