"""Recipes that prune a trained model and fine-tune it (Rethinking's fine-tuned vs Scratch-E/B arms)."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from slimkit.checkpoint import load_checkpoint, weights_fingerprint
from slimkit.cli import app
from slimkit.errors import SlimkitError
from slimkit.generator import build_model
from slimkit.pipeline import RunHooks, _check_trained_parent, run_recipe, train_state
from slimkit.plan import load_plan
from slimkit.recipe import RecipeError, load_recipe, parse_recipe, read_yaml
from slimkit.prune import prune
from slimkit.train import TrainConfig, scratch_b_epochs, train

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
BASE = "name: r\narch: resnet56\nnum_classes: 10\n"


def test_the_cifar10_rethinking_recipe_loads_with_the_papers_settings():
    r = load_recipe(RECIPES / "cifar10_resnet56_rethinking.yaml")
    assert (r.data.name, r.prune.structure, r.prune.weights, r.prune.criterion) == \
        ("cifar10", "resnet56-a", "full", "l1")
    assert (r.train.epochs, r.train.schedule, r.train.init, r.train.init_from) == (160, "finetune", "inherit", "full")
    assert (r.train.main_epochs, r.train.finetune_lr, r.train.lr) == (40, 0.001, 0.1)
    assert r.train.compare == ["full", "scratch-e", "scratch-b"]


@pytest.mark.parametrize("text, words", [
    ("prune: {structure: resnet56-z}", "prune.structure: unknown structure 'resnet56-z'"),
    ("prune: {structure: resnet110-a}", "defined for slimkit:resnet110, not slimkit:resnet56"),
    ("prune: {structure: resnet56-a, flops: 50%}", "got flops and structure"),
    ("prune: {structure: resnet56-a, method: uniform}", "remove prune.method"),
    ("prune: {flops: 50%, criterion: l1}", "set prune.weights"),
    ("prune: {flops: 50%, method: uniform, weights: a.pt}", "set prune.criterion"),
    ("prune: {flops: 50%, method: scratch, weights: a.pt, criterion: l1}", "goes with prune.method uniform"),
    ("prune: {structure: resnet56-a, weights: a.pt, criterion: gates}", "set prune.criterion l1"),
    ("prune: {structure: resnet56-a, weights: full, criterion: l1}", "add full to train.compare"),
    ("prune: {flops: 50%}\ntrain: {init_from: a.pt}", "set train.init: inherit"),
    ("prune: {flops: 50%}\ntrain: {init: inherit}", "set train.init_from"),
    ("prune: {flops: 50%}\ntrain: {schedule: finetune}", "set train.init: inherit"),
    ("prune: {flops: 50%}\ntrain: {finetune_epochs: 10}", "applies to train.schedule finetune"),
    ("prune: {flops: 50%}\ntrain: {schedule: finetune, init: inherit, init_from: full}", "add full to train.compare"),
    ("prune: {flops: 50%}\ntrain: {compare: [scratch-e]}", "remove it from train.compare"),
    ("prune: {flops: 50%, method: uniform, weights: a.pt, criterion: l1}\ntrain: {schedule: finetune, init: inherit, "
     "init_from: b.pt}", "train.init_from 'b.pt' is not prune.weights 'a.pt'"),
    ("prune: {structure: resnet56-a, weights: full, criterion: l1}\ntrain: {schedule: finetune, init: inherit, "
     "init_from: a.pt, compare: [full]}", "set train.init_from: full"),
])
def test_inherit_keys_that_do_not_fit_together_are_one_line(text, words):
    with pytest.raises(RecipeError) as err:
        parse_recipe(read_yaml(BASE + text))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_checkpoint_paths_are_relative_to_the_recipe(tmp_path):
    (tmp_path / "r.yaml").write_text(BASE + "prune: {flops: 50%, method: uniform, weights: p.pt, criterion: l1}\n"
                                     "train: {schedule: finetune, init: inherit, init_from: p.pt}\n")
    r = load_recipe(tmp_path / "r.yaml")
    assert r.prune.weights == r.train.init_from == str(tmp_path / "p.pt")


def test_the_same_parent_spelled_two_ways_is_one_parent(tmp_path):
    (tmp_path / "r.yaml").write_text(BASE + "prune: {flops: 50%, method: uniform, weights: ./p.pt, criterion: l1}\n"
                                     "train: {schedule: finetune, init: inherit, init_from: sub/../p.pt}\n")
    r = load_recipe(tmp_path / "r.yaml")
    assert r.train.init == "inherit"


def test_a_fine_tuned_folder_of_a_parent_replaced_since_is_refused(tmp_path):
    """train.init_from replaced after its fine-tuning finished (a widths-only plan: the prune stage never
    read the parent): the run said 'done: skip' and exported the old parent's model."""
    parent, state = tmp_path / "p.pt", build_model("resnet20", {"num_classes": 10}).state_dict()
    torch.save(state, parent)
    plan = prune("resnet20", "50%", method="uniform", round_to=1, num_classes=10)
    cfg = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=16, schedule="finetune",
                      init="inherit", init_from=str(parent))
    train(plan, tmp_path / "train", cfg)
    _check_trained_parent(tmp_path / "train", cfg)  # the same parent: nothing to say
    state["fc.weight"] += 1.0
    torch.save(state, parent)  # another training's weights
    with pytest.raises(SlimkitError, match="was fine-tuned from weights sha256:.* now holds sha256:"):
        _check_trained_parent(tmp_path / "train", cfg)


TINY = """\
name: tiny_ft
arch: resnet20
num_classes: 10
data: {name: synthetic}
prune: {method: uniform, flops: 50%, round_to: 1, weights: full, criterion: l1}
train: {epochs: 1, batch_size: 16, max_steps_per_epoch: 2, warmup_epochs: 0, schedule: finetune, init: inherit,
        init_from: full, finetune_epochs: 2, compare: [full, scratch-b]}
export: {exporter: torchscript}
bench: {runs: 5, threads: 1}
"""


class Interrupted(Exception):
    pass


@pytest.mark.slow  # four short trainings, an export and a timing: about a minute of CPU
def test_a_recipe_trains_the_parent_prunes_it_and_fine_tunes_resumably(tmp_path):
    (tmp_path / "r.yaml").write_text(TINY)
    recipe = load_recipe(tmp_path / "r.yaml")
    out = tmp_path / "run"
    job = {}

    def stop_in_the_second_fine_tuning_epoch(text):
        if job.get("label", "").startswith("pruned") and text.startswith("epoch 2/2"):
            raise Interrupted  # as a kill would: after epoch 1's checkpoint, before epoch 2's
    with pytest.raises(Interrupted):
        run_recipe(recipe, out, hooks=RunHooks(stage=lambda name, text: job.update(label=text),
                                               log=stop_in_the_second_fine_tuning_epoch))
    parent = out / "train-full" / "checkpoint.pt"
    assert train_state(out / "train-full")[0] == "done" and train_state(out / "train") == ("resume", 1, 2)
    plan = load_plan(out / "plan.json")
    assert plan.criterion == {"kind": "l1", "weights": str(parent),
                              "fingerprint": weights_fingerprint(load_checkpoint(parent)["model"])} and plan.has_keep

    stages = []
    summary = run_recipe(recipe, out, hooks=RunHooks(stage=lambda name, text: stages.append(text)))
    assert any("pruned model (fine-tuned from" in s and "resuming after epoch 1" in s for s in stages), stages
    history = json.loads((out / "train" / "metrics.json").read_text())["history"]
    assert [h["lr"] for h in history] == [0.001, 0.001]  # the paper's constant fine-tuning lr, across the resume
    assert load_plan(out / "train" / "plan.json").keep == plan.keep
    configs = {f: json.loads((out / f / "config.json").read_text())
               for f in ("train", "train-full", "train-scratch-b")}
    assert (configs["train"]["init"], configs["train"]["init_from"]) == ("inherit", str(parent))
    assert [configs[f]["init"] for f in ("train-full", "train-scratch-b")] == ["scratch"] * 2
    assert not (out / "train-scratch-e").exists()
    # the same compute as the full model's 1 epoch: ceil(full / plan MACs), the plan being just under 50%
    stretched = scratch_b_epochs(1, plan.search["full_flops"], plan.flops, None)
    assert configs["train-scratch-b"]["epochs_run"] == stretched > 1
    rows = {row["name"]: row for row in summary["models"]}
    assert list(rows) == ["pruned", "scratch-b", "uniform", "full"]
    assert rows["pruned"]["training"] == f"finetune from {parent}"
    assert rows["scratch-b"]["epochs"] == configs["train-scratch-b"]["epochs_run"]
    assert rows["scratch-b"]["macs"] == rows["pruned"]["macs"]

    again = []
    run_recipe(recipe, out, hooks=RunHooks(stage=lambda name, text: again.append(text)))
    assert all("skip" in s for s in again), again

    # a parent trained anew: the plan is cut again from it, and the fine-tuning of the old cut is refused
    ckpt = torch.load(parent, weights_only=True)
    w = ckpt["model"]["layer1.0.conv1.weight"]
    norms = w.abs().sum((1, 2, 3))
    rank = norms.argsort().argsort().float()  # 0 = the smallest filter: make it the largest
    ckpt["model"]["layer1.0.conv1.weight"] = w / norms.view(-1, 1, 1, 1) * (w.shape[0] - rank).view(-1, 1, 1, 1)
    torch.save(ckpt, parent)
    with pytest.raises(Exception, match="was trained from another plan"):
        run_recipe(recipe, out)
    assert load_plan(out / "plan.json").keep["layer1.0.conv1"] != plan.keep["layer1.0.conv1"]


def test_a_missing_parent_stops_the_run_before_it_writes_anything(tmp_path):
    """train.init_from naming no file: the run wrote plan.json, uniform.json and plan.png, then stopped at
    the training stage (and the dry run said every stage would run)."""
    text = TINY.replace("weights: full, criterion: l1", "").replace("init_from: full", "init_from: gone.pt")
    (tmp_path / "r.yaml").write_text(text)
    recipe = load_recipe(tmp_path / "r.yaml")
    with pytest.raises(SlimkitError, match=f"train.init_from: checkpoint not found: {tmp_path / 'gone.pt'}"):
        run_recipe(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    r = CliRunner().invoke(app, ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), "--dry-run"])
    assert r.exit_code == 0 and "would stop before its first stage: train.init_from" in " ".join(r.output.split())


FINETUNED = """\
name: ft
arch: resnet20
num_classes: 10
data: {name: synthetic}
prune: {method: uniform, flops: 50%, round_to: 1, weights: p.pt, criterion: l1}
train: {epochs: 1, batch_size: 16, max_steps_per_epoch: 1, warmup_epochs: 0, schedule: finetune, init: inherit,
        init_from: p.pt, finetune_epochs: 1, compare: []}
"""


def _stopped_before_export(recipe, out):
    def stop(name, text):
        if name == "export":
            raise Interrupted  # as a Ctrl-C would: the plans and the fine-tuning done, nothing exported
    with pytest.raises(Interrupted):
        run_recipe(recipe, out, hooks=RunHooks(stage=stop))


def _dry_run_rows(recipe_path, out) -> str:
    r = CliRunner().invoke(app, ["run", str(recipe_path), "--out", str(out), "--dry-run"], env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    return " ".join(r.output.split())


def test_the_dry_run_says_what_a_run_would_do_after_the_parent_changed(tmp_path):
    """A fine-tuned folder whose parent was replaced since: the dry run said 'done: skip' (and the plan
    'exists: skip') where a run cuts the plan again and refuses the folder; it asks the run's own checks."""
    parent = tmp_path / "p.pt"
    torch.save(build_model("resnet20", {"num_classes": 10}).state_dict(), parent)
    (tmp_path / "r.yaml").write_text(FINETUNED)
    recipe, out = load_recipe(tmp_path / "r.yaml"), tmp_path / "run"
    _stopped_before_export(recipe, out)
    rows = _dry_run_rows(tmp_path / "r.yaml", out)
    assert "plan.json" in rows and "exists: skip" in rows and "done (1 epochs): skip" in rows, rows

    state = torch.load(parent, weights_only=True)
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"].flip(0)  # another parent: other filters kept
    torch.save(state, parent)
    rows = _dry_run_rows(tmp_path / "r.yaml", out)
    assert "would run (its parent checkpoint changed since it was cut)" in rows, rows
    assert "done (1 epochs): skip" not in rows and "refused:" in rows and "was fine-tuned from weights" in rows, rows
    assert "not reached (the run stops at train)" in rows, rows
    with pytest.raises(SlimkitError, match="was trained from another plan|was fine-tuned from weights"):
        run_recipe(recipe, out)  # as the dry run said


def test_a_run_that_stopped_before_its_first_stage_does_not_lock_its_folder_to_that_recipe(tmp_path):
    """prune.weights naming a plan (or a pruned or diverged checkpoint) wrote the run folder's recipe.yaml and
    then failed at the prune stage; the corrected recipe was then refused: "holds a run of a different recipe
    (prune.weights ...): delete the folder", though nothing of that run existed."""
    full = build_model("resnet20", {"num_classes": 10})
    torch.save(full.state_dict(), tmp_path / "parent.pt")
    (tmp_path / "plan.json").write_text(json.dumps({"format": "slimkit.plan/1"}))
    text = ("name: r\narch: resnet20\nnum_classes: 10\ndata: {name: synthetic}\n"
            "prune: {flops: 50%, method: uniform, weights: WEIGHTS, criterion: l1}\n")
    recipe = tmp_path / "r.yaml"
    out = tmp_path / "run"
    recipe.write_text(text.replace("WEIGHTS", "plan.json"))
    with pytest.raises(SlimkitError, match="is a ChannelPlan .*, not trained weights"):
        run_recipe(load_recipe(recipe), out, source=str(recipe))
    assert sorted(p.name for p in out.iterdir()) == ["recipe.yaml"]
    recipe.write_text(text.replace("WEIGHTS", "parent.pt"))
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "different recipe" not in result.output
    # a folder where a stage did run stays bound to its recipe (recipe.yaml still names plan.json: a dry run writes none)
    (out / "plan.json").write_text("{}")
    with pytest.raises(SlimkitError, match="holds a run of a different recipe"):
        run_recipe(load_recipe(recipe), out, source=str(recipe))


def test_a_recipe_fine_tunes_a_parent_trained_on_other_classes(tmp_path):
    """prune.weights and train.init_from a 5-class parent, data with 10 classes: the prune stage built the
    data's 10-class model and refused the parent ('fc.weight (5, 64) vs (10, 64)'), where `slimkit prune
    --weights` takes the parent's classes and `slimkit train --init inherit` gives the classifier new rows.
    Then the run's own fine-tuned folder was refused on the next run ('trained from another plan'), the
    summary gave the 5-class plan's MACs and parameters instead of the trained model's, and the full model
    and the uniform plan were benched and counted with the parent's 5 classes."""
    torch.save(build_model("resnet20", {"num_classes": 5}).state_dict(), tmp_path / "parent.pt")
    (tmp_path / "r.yaml").write_text(
        "name: other_classes\narch: resnet20\ndata: {name: synthetic}\n"
        "prune: {method: uniform, flops: 50%, round_to: 1, weights: parent.pt, criterion: l1}\n"
        "train: {epochs: 1, batch_size: 16, max_steps_per_epoch: 1, schedule: finetune, init: inherit,\n"
        "        init_from: parent.pt, finetune_epochs: 1, compare: [full, scratch-e]}\n"
        "export: {exporter: torchscript}\nbench: {runs: 5, threads: 1}\n")
    recipe = load_recipe(tmp_path / "r.yaml")
    out = tmp_path / "run"
    summary = run_recipe(recipe, out)
    assert load_plan(out / "plan.json").num_classes == 5
    trained = load_plan(out / "train" / "plan.json")
    assert trained.num_classes == 10
    rows = {row["name"]: row for row in summary["models"]}
    assert (rows["pruned"]["macs"], rows["pruned"]["params"]) == (trained.flops, trained.params)
    for name, folder in (("scratch-e", "train-scratch-e"), ("full", "train-full")):  # from scratch: 10 classes
        held = load_plan(out / folder / "plan.json")
        assert held.num_classes == 10 and (rows[name]["macs"], rows[name]["params"]) == (held.flops, held.params)
    again = []
    run_recipe(recipe, out, hooks=RunHooks(stage=lambda name, text: again.append(text)))
    assert all("skip" in s for s in again), again
