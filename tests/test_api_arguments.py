"""The public Python API checks its arguments: a wrong type or shape is a TypeError (or a SlimkitError,
a ValueError) naming the function, the argument and what it takes, raised before any work, never an
AttributeError from deep inside."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import slimkit
from slimkit import artifacts
from slimkit.artifacts import load_model, model_from_checkpoint
from slimkit.checkpoint import load_checkpoint
from slimkit.errors import PlanError, SlimkitError
from slimkit.generator import build_model, choose_channels
from slimkit.latency import Candidate, measure
from slimkit.train import TrainConfig, scratch_b_epochs, train

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
    # callables of the wrong shape: the caller's lambda failed deep inside, after the work began
    (lambda p: slimkit.prune("resnet20", "50%", method="uniform", log=lambda: None), TypeError,
     ["prune: 'log' must be a function taking one string", "cannot be called with 1 argument ()"]),
    (lambda p: slimkit.prune("resnet20", "50%", data=[], loss_fn=lambda model: 0.0), TypeError,
     ["prune: 'loss_fn'", "cannot be called with 2 arguments (model)"]),
    (lambda p: slimkit.run_recipe(slimkit.load_recipe(RECIPE), "/nonexistent/run",
                                  hooks=slimkit.pipeline.RunHooks(log=lambda: None)), TypeError,
     ["run_recipe: 'hooks.log'"]),
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
    (lambda p: slimkit.full_plan(None), TypeError, ["full_plan: 'arch'"]),
    (lambda p: slimkit.full_plan("resnet20", input_size=32), TypeError, ["'input_size'"]),
    (lambda p: slimkit.full_plan("resnet20", num_classes=0), SlimkitError, ["'num_classes'"]),
    (lambda p: slimkit.load_recipe(None), TypeError, ["load_recipe: 'path'"]),
    (lambda p: slimkit.load_recipe(RECIPE, overrides="train.epochs=1"), TypeError, ["'overrides'"]),
    (lambda p: slimkit.run_recipe(RECIPE), TypeError, ["run_recipe: 'recipe'", "load_recipe"]),
    # the trained-weights path: generate(weights=), choose_channels, training's inherit config, checkpoints
    (lambda p: slimkit.generate(p, weights={"conv1.weight": 3}), TypeError,
     ["generate: 'weights' must be a state dict", "'conv1.weight': int"]),
    (lambda p: choose_channels(None, {}), TypeError, ["choose_channels: 'plan'"]),
    (lambda p: choose_channels(p, 3), TypeError, ["choose_channels: 'weights'"]),
    (lambda p: choose_channels(p, {}, 3), TypeError, ["choose_channels: 'criterion'"]),
    (lambda p: choose_channels(p, {}, "gates"), PlanError, ["criterion 'gates' needs the learned gates"]),
    (lambda p: choose_channels(p, {}, "l1", gates=3), TypeError, ["choose_channels: 'gates'"]),
    (lambda p: train(p, "/nonexistent/run", TrainConfig(init="inherit", init_from=3, schedule="finetune")), TypeError,
     ["train: 'cfg.init_from' must be a string"]),
    (lambda p: train(p, "/nonexistent/run", {"epochs": 1}), TypeError, ["train: 'cfg'", "TrainConfig"]),
    (lambda p: train(p, None, TrainConfig()), TypeError, ["train: 'out_dir' must be a folder path", "None"]),
    (lambda p: train(3, "/nonexistent/run", TrainConfig()), TypeError, ["train: 'plan_or_arch'", "ChannelPlan"]),
    (lambda p: train(p, "/nonexistent/run", TrainConfig(), resume="yes"), TypeError, ["train: 'resume'"]),
    (lambda p: train(p, "/nonexistent/run", TrainConfig(), log=1), TypeError, ["train: 'log'"]),
    # numbers are named as the caller wrote them, not by the CLI's option names
    (lambda p: slimkit.create_model("resnet20", num_classes="10"), SlimkitError, ["create_model: 'num_classes'"]),
    (lambda p: train(p, "/nonexistent/run", TrainConfig(epochs="1")), SlimkitError, ["train: 'cfg.epochs'"]),
    (lambda p: slimkit.prune("resnet20", "50%", method="uniform", round_to=0), SlimkitError, ["prune: 'round_to'"]),
    (lambda p: slimkit.prune("resnet20", "50%", latency=slimkit.LatencyOptions(threads=0)), SlimkitError,
     ["prune: 'latency.threads'"]),
    (lambda p: slimkit.count_flops(slimkit.create_model("resnet20"), (1, 32, 32)), SlimkitError,
     ["count_flops: CifarResNet cannot run on a batch of shape [1, 1, 32, 32]", "to have 3 channels"]),
    (lambda p: train(p, "/nonexistent/run", TrainConfig(), log=lambda a, b: None), TypeError,
     ["train: 'log'", "cannot be called with 1 argument (a, b)"]),
    (lambda p: load_checkpoint(None), TypeError, ["checkpoint must be given as a file path", "None"]),
    (lambda p: model_from_checkpoint(3), TypeError, ["checkpoint must be given as a file path"]),
    # load_model (the docs' "any checkpoint / plan / name -> model"), TrainConfig's switches, scratch_b_epochs
    (lambda p: load_model(None), TypeError, ["load_model: 'source' must be a checkpoint or plan file path", "None"]),
    (lambda p: load_model("resnet20", calibrate="no"), TypeError, ["load_model: 'calibrate' must be True or False"]),
    (lambda p: load_model("resnet20", num_classes="4"), SlimkitError, ["load_model: 'num_classes'"]),
    (lambda p: load_model("resnet20", arch_kwargs=[1]), TypeError, ["load_model: 'arch_kwargs'"]),
    # a model where its state dict goes: one line (a module's repr spans many), saying what to pass
    (lambda p: slimkit.generate(p, weights=slimkit.create_model("resnet20")), TypeError,
     ["generate: 'weights'", "model.state_dict()", "got CifarResNet( (co"]),
    (lambda p: scratch_b_epochs("160", 1000, 500), TypeError, ["scratch_b_epochs: 'epochs' must be a whole number"]),
    # latency.measure and the artifacts helpers a library user times with: named, never an AttributeError,
    # a KeyError, a str < int comparison, or a million threads started
    (lambda p: measure("m.onnx"), TypeError, ["measure: 'candidates' must be a list of slimkit.latency.Candidate"]),
    (lambda p: measure(["m.onnx"]), TypeError, ["measure: 'candidates[0]' must be a slimkit.latency.Candidate"]),
    (lambda p: measure([Candidate("m", 32, onnx_path=Path("m.onnx"))]), TypeError,
     ["measure: candidates[0].input_shape", "(1, 3, 224, 224)"]),
    (lambda p: measure([_candidate()], runs="10"), SlimkitError, ["measure: 'runs' must be a number"]),
    (lambda p: measure([_candidate()], runs=10, threads=2000), SlimkitError, ["measure: 'threads' must be in [1, 1024]"]),
    (lambda p: measure([_candidate()], runs=10, threads=0), SlimkitError, ["measure: 'threads'"]),
    (lambda p: measure([_candidate()], runs=10, warmup=-1), SlimkitError, ["measure: 'warmup'"]),
    (lambda p: measure([_candidate()], runs=10, progress=3), TypeError, ["measure: 'progress'"]),
    (lambda p: slimkit.count_flops(torch.nn.Conv2d(3, 8, 3), None), TypeError, ["count_flops: 'input_size'", "None"]),
    (lambda p: artifacts.classify(None), TypeError, ["classify: 'text'"]),
    (lambda p: artifacts.default_export_path(None), TypeError, ["default_export_path: 'source'"]),
    (lambda p: artifacts.plan_of(p.to_dict()), TypeError, ["plan_of: 'source'", "ChannelPlan"]),
    (lambda p: artifacts.onnx_candidate(None, 1), TypeError, ["onnx_candidate: 'path'"]),
    (lambda p: artifacts.onnx_candidate(Path("m.onnx"), "1"), SlimkitError, ["onnx_candidate: 'batch'"]),
    (lambda p: artifacts.calibrate_bn("resnet20", (3, 32, 32)), TypeError, ["calibrate_bn: 'model'"]),
    (lambda p: artifacts.calibrate_bn(torch.nn.Conv2d(3, 8, 3), 32), TypeError, ["calibrate_bn: 'input_size'"]),
    (lambda p: artifacts.calibrate_bn(torch.nn.Conv2d(3, 8, 3), None), TypeError, ["calibrate_bn: 'input_size'"]),
    (lambda p: artifacts.load_weights("resnet20", {}, "x.pt"), TypeError, ["load_weights: 'model'"]),
    (lambda p: artifacts.plan_candidate(p.to_dict(), Path("/nonexistent"), 1, "x"), TypeError,
     ["plan_candidate: 'plan'"]),
    (lambda p: artifacts.reference_candidate("m.onnx", Path("/nonexistent"), 1), TypeError,
     ["reference_candidate: 'model'"]),
    (lambda p: artifacts.onnx_metadata(torch.nn.Conv2d(3, 8, 3)), TypeError, ["onnx_metadata: 'loaded'"]),
    (lambda p: artifacts.export_for_timing(torch.nn.Conv2d(3, 8, 3), Path("/nonexistent/x.onnx"), 1, "x", {}),
     TypeError, ["export_for_timing: 'loaded'"]),
    (lambda p: artifacts.candidate_from_spec({"kind": "onnx"}, Path("/nonexistent"), 1, "x", Path(".")), SlimkitError,
     ["records no file path", "--update-baseline"]),
]


def _candidate():
    """A candidate measure() would time, were its arguments right (its file is never opened)."""
    return Candidate("m", (1, 3, 32, 32), onnx_path=Path("/nonexistent/m.onnx"))


@pytest.mark.parametrize("case", range(len(WRONG_CALLS)))
def test_wrong_arguments_name_the_argument(case, full):
    call, kind, needles = WRONG_CALLS[case]
    with pytest.raises(kind) as info:
        call(full)
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


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


def test_choose_channels_checks_the_gates_it_ranks_by(full):
    """Gates that do not cover a narrowed group, or have its width wrong, were a KeyError or a keep list of
    the wrong length blamed on the plan."""
    narrow = full.with_widths({**full.widths, "layer1.0.conv1": 8})
    state = build_model("resnet20", {"num_classes": 10}).state_dict()
    for gates, words in (({}, "gates['layer1.0.conv1'] must be 16 finite numbers (one per channel), got None"),
                         ({"layer1.0.conv1": [1.0]}, "got [1.0]"),
                         ({"layer1.0.conv1": [float("nan")] * 16}, "finite numbers")):
        with pytest.raises(PlanError) as info:
            choose_channels(narrow, state, "gates", gates=gates)
        assert words in str(info.value)
    kept = choose_channels(narrow, state, "gates", gates={"layer1.0.conv1": [i % 5 for i in range(16)]})
    assert kept.groups["layer1.0.conv1"]["keep"] == [2, 3, 4, 7, 8, 9, 13, 14]  # the 4s, the 3s, two lowest 2s


def test_paths_in_a_train_config_may_be_paths(tmp_path):
    """TrainConfig(init_from=Path(...)) trained its first epoch and then failed writing config.json
    ('Object of type PosixPath is not JSON serializable'), the epoch lost."""
    torch.save(build_model("resnet20", {"num_classes": 10}).state_dict(), tmp_path / "parent.pt")
    cfg = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=16, schedule="finetune",
                      init="inherit", init_from=tmp_path / "parent.pt")
    train(slimkit.full_plan("resnet20", num_classes=10), tmp_path / "run", cfg)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["init_from"] == str(tmp_path / "parent.pt")


def test_run_recipe_checks_force_and_source_before_writing_the_folder(tmp_path):
    """run_recipe(force='yes') wrote recipe.yaml into the run folder, then failed inside the train stage with
    "train: 'force'"; source=5 was a raw "expected str, bytes or os.PathLike object"."""
    recipe = slimkit.load_recipe(RECIPE)
    with pytest.raises(TypeError, match="run_recipe: 'force' must be True or False"):
        slimkit.run_recipe(recipe, tmp_path / "a", force="yes")
    with pytest.raises(TypeError, match="run_recipe: 'source' must be a string"):
        slimkit.run_recipe(recipe, tmp_path / "b", source=5)
    assert list(tmp_path.iterdir()) == []


def test_load_model_takes_a_path_object(tmp_path, full):
    path = tmp_path / "plan.json"
    slimkit.save_plan(full, path)
    assert load_model(path, calibrate=False).plan.builds_same_network_as(full)


@pytest.mark.parametrize("switch", ["augment", "compile", "sync_bn", "nesterov"])
def test_train_config_switches_must_be_booleans(switch, tmp_path, full):
    """TrainConfig(augment="no") trained with augmentation: any non-empty string is true."""
    cfg = TrainConfig(epochs=1, max_steps_per_epoch=1, data="synthetic", workers=0, **{switch: "no"})
    with pytest.raises(TypeError, match=f"train: 'cfg.{switch}' must be True or False, got 'no'"):
        train(full, tmp_path / "run", cfg)
    assert list(tmp_path.iterdir()) == []


def test_path_objects_name_files_to_the_artifacts_helpers(tmp_path, full):
    path = tmp_path / "plan.json"
    slimkit.save_plan(full, path)
    assert artifacts.classify(path) == "plan"
    assert artifacts.default_export_path(path) == tmp_path / "plan.onnx"
    assert artifacts.plan_of(path).arch == full.arch
