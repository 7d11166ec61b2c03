"""Trainer: Scratch-B arithmetic, exact resume, safe checkpoints, clear errors."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from slimkit.cli import app
from slimkit.errors import PlanError, SlimkitError
from slimkit.plan import save_plan
from slimkit.prune import prune
from slimkit.artifacts import CheckpointError, load_checkpoint, model_from_checkpoint
from slimkit.train import TrainConfig, scratch_b_cap, scratch_b_epochs, train


def test_scratch_b_epochs_follow_the_papers_rule():
    # same compute: epochs x full / pruned FLOPs ...
    assert scratch_b_epochs(160, 1000, 800) == 200
    assert scratch_b_epochs(100, 1000, 1000) == 100
    # ... capped at 2x (their ImageNet rule)
    assert scratch_b_epochs(90, 1000, 250) == 180
    assert scratch_b_epochs(10, 3, 2) == 15
    with pytest.raises(ValueError):
        scratch_b_epochs(10, 1000, 0)


def test_scratch_b_cap_is_rethinkings_per_dataset_rule():
    """Uncapped on CIFAR-style data (Rethinking's CIFAR runs), 2x on ImageNet-style folders."""
    for data in ("cifar10", "cifar100", "fashion-mnist", "synthetic"):
        assert scratch_b_cap(data) is None
    assert scratch_b_cap("imagefolder:/data/imagenet") == 2.0
    assert scratch_b_epochs(90, 1000, 250, cap=scratch_b_cap("cifar10")) == 360  # 4x the compute, uncapped
    assert scratch_b_epochs(90, 1000, 250, cap=scratch_b_cap("imagefolder:/x")) == 180


@pytest.fixture(scope="module")
def plan():
    return prune("resnet20", "50%", method="uniform", num_classes=10, round_to=1)


def cfg(**kw):
    base = dict(data="synthetic", epochs=2, batch_size=32, max_steps_per_epoch=4, workers=0, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_train_writes_artifacts_and_checkpoint_rebuilds_model(plan, tmp_path):
    res = train(plan, tmp_path / "run", cfg())
    assert len(res.metrics) == 2 and 0.0 <= res.metrics[-1]["test_top1"] <= 1.0
    for f in ("checkpoint.pt", "metrics.json", "curves.png", "plan.json", "config.json"):
        assert (tmp_path / "run" / f).exists(), f
    model, p = model_from_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert p.groups == plan.groups
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resume_continues_exactly(plan, tmp_path):
    c = cfg(epochs=3)
    full = train(plan, tmp_path / "a", c)
    part = tmp_path / "b"
    _train_epochs(plan, part, c, stop_after=1)  # killed during epoch 2
    assert load_checkpoint(part / "checkpoint.pt")["epoch"] == 1  # at most one epoch lost
    resumed = train(plan, part, c, resume=True)
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    b = load_checkpoint(part / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["test_top1"] for m in resumed.metrics] == [m["test_top1"] for m in full.metrics]


def _train_epochs(plan, out, c, stop_after):
    """Run the same schedule but kill it after ``stop_after`` epochs (as SIGKILL would, between
    epochs: the checkpoint of the last completed epoch is what survives)."""
    import slimkit.train as t

    real = t.evaluate
    calls = {"n": 0}

    def evaluate_then_die(*a, **k):
        calls["n"] += 1
        if calls["n"] > stop_after:
            raise KeyboardInterrupt
        return real(*a, **k)

    t.evaluate = evaluate_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            train(plan, out, c)
    finally:
        t.evaluate = real


def test_corrupt_checkpoint_is_a_clear_error_and_untouched(plan, tmp_path):
    run = tmp_path / "run"
    train(plan, run, cfg(epochs=1))
    ckpt = run / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        train(plan, run, cfg(epochs=2), resume=True)
    assert ckpt.read_bytes() == data[: len(data) // 2]


def test_existing_run_needs_resume(plan, tmp_path):
    run = tmp_path / "run"
    train(plan, run, cfg(epochs=1))
    with pytest.raises(SlimkitError, match="--resume"):
        train(plan, run, cfg(epochs=1))


def test_resume_refuses_another_model_and_names_ignored_options(plan, tmp_path):
    run = tmp_path / "run"
    train(plan, run, cfg(epochs=1, max_steps_per_epoch=1))
    before = (run / "checkpoint.pt").read_bytes()
    other = prune("resnet20", "30%", method="uniform", num_classes=10, round_to=1)
    for source in (other, "resnet56", "resnet20"):  # resnet20 alone is the *full* model, not this plan
        with pytest.raises(SlimkitError, match="holds a run of slimkit:resnet20"):
            train(source, run, cfg(epochs=2, max_steps_per_epoch=1), resume=True)
    assert (run / "checkpoint.pt").read_bytes() == before
    said = []
    res = train(plan, run, cfg(epochs=2, max_steps_per_epoch=1, lr=0.5), resume=True, log=said.append)
    assert any("using the checkpoint's lr=None (asked 0.5)" in m for m in said)
    assert any("using the checkpoint's epochs=1 (asked 2)" in m for m in said) and res.epochs == 1


def test_resume_names_a_typed_option_even_when_it_equals_the_default(plan, tmp_path):
    run = tmp_path / "run"
    train(plan, run, cfg(epochs=1, max_steps_per_epoch=1, seed=1))
    said = []
    train(plan, run, cfg(epochs=1, max_steps_per_epoch=1, seed=0), resume=True, log=said.append, asked={"seed"})
    assert any("using the checkpoint's seed=1 (asked 0)" in m for m in said), said
    # the CLI passes what was typed: `--seed 0` is the default, and was still asked for
    save_plan(plan, tmp_path / "plan.json")
    r = CliRunner().invoke(app, ["train", str(tmp_path / "plan.json"), "--out", str(run), "--resume", "--seed", "0", "--data",
                                 "synthetic", "--epochs", "1", "--max-steps-per-epoch", "1"])
    assert r.exit_code == 0 and "using the checkpoint's seed=1 (asked 0)" in r.output, r.output


def test_plan_for_other_class_count_is_rejected(tmp_path):
    p = prune("resnet20", "50%", method="uniform", num_classes=7, round_to=1)
    with pytest.raises(PlanError, match="7 classes"):
        train(p, tmp_path / "run", cfg())
    assert not (tmp_path / "run").exists()


def test_plan_with_the_models_default_head_trains_from_scratch_on_the_datas_classes(tmp_path):
    """`slimkit prune ARCH` keeps the model's 1000-class head by default; training that plan from scratch
    on 10-class data sizes the (random) head for the data, as `slimkit train ARCH` does, instead of
    refusing the plan the headline commands write. The run's plan says so and --resume accepts the plan."""
    p = prune("timm:test_resnet", "50%", method="uniform", input_size=(3, 32, 32), round_to=1)
    assert p.num_classes is None
    said = []
    res = train(p, tmp_path / "run", cfg(epochs=1, max_steps_per_epoch=1), log=said.append)
    model, ran = model_from_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert ran.num_classes == 10 and ran.search["head_sized_for_data"] == 10 and ran.widths == p.widths
    assert ran.flops < p.flops and res.epochs == 1  # counted with the 10-class head
    assert any("sizes it for synthetic's 10 classes" in m for m in said), said
    train(p, tmp_path / "run", cfg(epochs=2, max_steps_per_epoch=1), resume=True)  # the same plan resumes
    # inheriting from a parent trained on this data: its classifier has the data's rows, so the head takes them
    # (the refusal told the user to inherit from a model trained on this data, which this parent is)
    from slimkit.generator import full_plan

    train(full_plan("timm:test_resnet", num_classes=10, input_size=(3, 32, 32)), tmp_path / "parent",
          cfg(epochs=1, max_steps_per_epoch=1))
    said.clear()
    train(p, tmp_path / "inherit", cfg(epochs=1, max_steps_per_epoch=1, init="inherit", schedule="finetune",
                                       init_from=str(tmp_path / "parent" / "checkpoint.pt")), log=said.append)
    model, ran = model_from_checkpoint(tmp_path / "inherit" / "checkpoint.pt")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10) and ran.num_classes == 10
    assert any("has synthetic's 10 classes, so the head takes them" in m for m in said), said


def test_scratch_b_budget_stretches_epochs(plan, tmp_path):
    res = train(plan, tmp_path / "run", cfg(epochs=1, schedule="scratch-b", max_steps_per_epoch=1))
    # 50% FLOPs (2.02x fewer MACs after rounding) -> at least 2x the compute, in whole epochs; uncapped
    # on synthetic (CIFAR-style) data since #14, so 3 rather than the old 2x cap's 2
    assert res.epochs == math.ceil(plan.search["full_flops"] / plan.flops) == 3


def test_scratch_b_is_uncapped_on_small_data(tmp_path):
    quarter = prune("resnet20", "25%", method="uniform", num_classes=10, round_to=1)
    res = train(quarter, tmp_path / "run", cfg(epochs=1, schedule="scratch-b", max_steps_per_epoch=1))
    stretch = quarter.search["full_flops"] / quarter.flops  # ~4: 25% FLOPs
    assert res.epochs == math.ceil(stretch - 1e-9) >= 4  # uncapped on synthetic (CIFAR-style) data, past 2x


def test_cli_train_and_errors(plan, tmp_path):
    runner = CliRunner()
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    r = runner.invoke(app, ["train", str(path), "--data", "synthetic", "--epochs", "1", "--batch-size", "32",
                            "--max-steps-per-epoch", "2", "--workers", "0", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]["epoch"] == 1
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "slimkit.plan/1"}')
    r = runner.invoke(app, ["train", str(bad), "--data", "synthetic", "--out", str(tmp_path / "run2")])
    assert r.exit_code != 0 and "Traceback" not in r.output and "lacks the required field" in r.output


def test_architecture_name_trains_the_full_model(tmp_path):
    res = train("resnet20", tmp_path / "run", cfg(epochs=1, max_steps_per_epoch=1))
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert all(g["width"] == g["full"] for g in plan["groups"].values())
    assert plan["arch_kwargs"] == {"num_classes": 10} and len(res.metrics) == 1


def test_a_run_folder_has_one_writer(plan, tmp_path):
    """A second command on a folder in use fails at once; a holder that dies (SIGKILL) frees it."""
    import subprocess
    import sys
    import time

    from slimkit.files import LOCK_NAME, folder_lock

    out = tmp_path / "run"
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    args = ["train", str(path), "--data", "synthetic", "--epochs", "1", "--batch-size", "32",
            "--max-steps-per-epoch", "1", "--workers", "0", "--out", str(out)]
    with folder_lock(out):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and "in use by another slimkit run (pid" in r.output and "Traceback" not in r.output
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # nothing written
    assert not out.exists()  # the lock made the folder and cleans it up
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from slimkit.files import folder_lock\n"
                               f"with folder_lock({str(out)!r}): print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert CliRunner().invoke(app, args).exit_code == 2
    holder.kill()
    holder.wait()
    time.sleep(0.1)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert not (out / LOCK_NAME).exists() and (out / "checkpoint.pt").is_file()


def test_resume_extends_a_finished_run_on_the_schedule_of_the_longer_run(plan, tmp_path):
    """--resume --epochs N past the run's end: the cosine schedule is the one a run started for N epochs
    follows, replayed to the step reached; shortening is refused."""
    out = tmp_path / "run"
    train(plan, out, cfg(epochs=1))
    notes = []
    res = train(plan, out, cfg(epochs=1), resume=True, extend_to=3, log=notes.append)
    assert [m["epoch"] for m in res.metrics] == [1, 2, 3] and res.epochs == 3
    assert any("extending to 3 epochs" in n for n in notes)
    longer = train(plan, tmp_path / "long", cfg(epochs=3))
    assert [m["lr"] for m in res.metrics[1:]] == pytest.approx([m["lr"] for m in longer.metrics[1:]])
    with pytest.raises(SlimkitError, match="cannot be shortened"):
        train(plan, out, cfg(epochs=1), resume=True, extend_to=2)


def test_damaged_checkpoints_are_one_clear_error(plan, tmp_path):
    out = tmp_path / "run"
    train(plan, out, cfg(epochs=1))
    good = torch.load(out / "checkpoint.pt", weights_only=True)
    for change, needle in ((lambda c: c.pop("plan"), "'plan' is missing"),
                           (lambda c: c.update(plan="{not json"), "damaged"),
                           (lambda c: c.update(epoch="one"), "not a count of epochs"),
                           (lambda c: c["model"].pop(next(iter(c["model"]))), "do not fit")):
        bad = {**good, "model": dict(good["model"])}
        change(bad)
        path = tmp_path / "bad" / "checkpoint.pt"
        path.parent.mkdir(exist_ok=True)
        torch.save(bad, path)
        with pytest.raises(CheckpointError, match=needle):
            model_from_checkpoint(path)


def test_train_refuses_a_slimkit_run_folder(plan, tmp_path):
    """A `slimkit run` folder's plan.json belongs to its summary and latency report: training into it
    would replace it silently (#17 class 8)."""
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    (run_folder / "recipe.yaml").write_text("name: x\n")
    (run_folder / "plan.json").write_text(plan.to_json())
    with pytest.raises(SlimkitError, match="slimkit run` folder"):
        train(plan, run_folder, cfg(epochs=1))
    assert (run_folder / "plan.json").read_text() == plan.to_json()


def test_sync_bn_in_a_single_process_says_it_changes_nothing(plan, tmp_path):
    """Not refused (the same command runs under torchrun), but not silently ignored either."""
    said = []
    train(plan, tmp_path / "run", cfg(epochs=1, max_steps_per_epoch=1, sync_bn=True), log=said.append)
    assert any("--sync-bn: this is one process" in m for m in said), said
