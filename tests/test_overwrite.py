"""Nothing a user did not name is overwritten, stages of a run belong together, stored counts are
checked, and output or resources never lose work (issue 29, classes 1, 2, 3, 6 and three of 8).

Each test leaves every file it was not asked to write byte-identical, and checks so.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

import slimkit
from slimkit.cli import app
from slimkit.errors import PlanError, SlimkitError
from slimkit.files import (MARKDOWN_MARK, NAME_MAX, Output, OutputError, atomic_write, atomic_write_text,
                           check_outputs, has_mark, plot_of, scratch_path)
from slimkit.checkpoint import write_checkpoint
from slimkit.generator import channel_graph, check_memory, verified_plan
from slimkit.pipeline import (Layout, RunHooks, StageRecord, _check_trained_config, _check_trained_plan,
                              _prune_stage, build_summary, summary_markdown)
from slimkit.plan import save_plan
from slimkit.plots import CHANNELS
from slimkit.recipe import parse_recipe, read_yaml
from slimkit.train import TrainConfig, train

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_refused(result, *needles):
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text and "error:" in text, text
    flat = text[text.rindex("error:"):].replace("\n", " ")
    for n in needles:
        assert n in flat, text


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def plan():
    return slimkit.prune("resnet20", "50%", method="uniform", num_classes=10, round_to=1)


@pytest.fixture
def plan_file(plan, tmp_path):
    path = tmp_path / "in" / "p.json"
    save_plan(plan, path)
    return path


# ---------------------------------------------------------------------------- class 1: the mechanism
def test_check_outputs_refuses_what_is_not_ours(tmp_path):
    mine = tmp_path / "notes.md"
    mine.write_text("my notes\n")
    ours = tmp_path / "report.md"
    ours.write_text("# report\n" + MARKDOWN_MARK + "\n")
    check_outputs([Output(ours, "the report", has_mark)])  # slimkit's own file: may be replaced
    with pytest.raises(OutputError, match="notes.md exists and is not the report written by slimkit.*--force"):
        check_outputs([Output(mine, "the report", has_mark)])
    check_outputs([Output(mine, "the report", has_mark)], force=True)
    with pytest.raises(OutputError, match="both be written"):
        check_outputs([Output(tmp_path / "a.png", "the plan"), Output(tmp_path / "a.png", "the plot")])
    with pytest.raises(OutputError, match="is also an input"):
        check_outputs([Output(ours, "the report", has_mark)], inputs=[tmp_path / "." / "report.md"], force=True)
    (tmp_path / "side.png").mkdir()
    with pytest.raises(OutputError, match="side.png is a folder"):
        check_outputs([Output(tmp_path / "side.png", "the plot")])
    with pytest.raises(OutputError, match="longer than 255 bytes"):
        check_outputs([Output(tmp_path / ("x" * 252 + ".latency.json"), "the report")])
    assert mine.read_text() == "my notes\n"


def test_a_folder_given_as_a_file_to_write_is_one_error(tmp_path, plan, monkeypatch):
    """save_plan(plan, '.') raised a raw OSError ('Device or resource busy: . -> .')."""
    monkeypatch.chdir(tmp_path)
    for folder in (".", tmp_path, "sub"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(OutputError, match="is a folder, not a file"):
            save_plan(plan, folder)
        with pytest.raises(OutputError, match="is a folder, not a file"):
            atomic_write_text(folder, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"] and not any((tmp_path / "sub").iterdir())


def test_a_legal_255_byte_name_is_written_and_errors_name_it(tmp_path):
    """The temporary name beside it used to be longer than the file system allows (after the work)."""
    path = tmp_path / ("p" * (NAME_MAX - 5) + ".json")
    atomic_write_text(path, "{}")
    assert path.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == [path.name]

    def full_disk(tmp):
        raise OSError(errno.ENOSPC, "No space left on device", tmp)

    with pytest.raises(OSError) as err:
        atomic_write(tmp_path / "full.json", full_disk)
    assert err.value.filename == str(tmp_path / "full.json")  # the user's name, not the temporary one
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    scratch = scratch_path(path, "export")
    assert len(os.fsencode(scratch.name + ".data")) <= NAME_MAX and scratch.parent == tmp_path


# ---------------------------------------------------------------------------- class 1: every command
def test_prune_never_replaces_a_file_it_did_not_write(tmp_path):
    (tmp_path / "important.png").write_bytes(b"\x89PNG user's picture")
    before = snapshot(tmp_path)
    assert_refused(run("prune", "resnet20", "--flops", "50%", "--method", "uniform", "--out",
                       tmp_path / "important.json"), "important.png exists", "--force")
    assert_refused(run("prune", "resnet20", "--flops", "50%", "--method", "uniform", "--out", tmp_path / "plan.png"),
                   "both be written to")
    (tmp_path / "side.png").mkdir()
    assert_refused(run("prune", "resnet20", "--flops", "50%", "--method", "uniform", "--out", tmp_path / "side.json"),
                   "side.png is a folder")
    assert snapshot(tmp_path) == before and not (tmp_path / "important.json").exists()
    # its own plot beside its own plan is replaced on a rerun; --force replaces the user's
    for _ in range(2):
        r = run("prune", "resnet20", "--flops", "50%", "--method", "uniform", "--out", tmp_path / "mine.json")
        assert r.exit_code == 0, r.output
    assert has_mark(tmp_path / "mine.png")
    r = run("prune", "resnet20", "--flops", "50%", "--method", "uniform", "--out", tmp_path / "important.json",
            "--force")
    assert r.exit_code == 0 and has_mark(tmp_path / "important.png"), r.output


def test_prune_never_writes_over_the_model_factory_it_reads_even_with_force(tmp_path, monkeypatch):
    source = tmp_path / "nets.py"
    source.write_text("import torch\n\ndef build(num_classes=10):\n    return torch.nn.Sequential(torch.nn.Conv2d("
                      "3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), "
                      "torch.nn.Linear(8, num_classes))\n")
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    for arch in (f"{source}:build", "python:nets:build"):  # the file form, and a module in the current folder
        assert_refused(run("prune", arch, "--flops", "50%", "--method", "uniform", "--input-size", 32, "--out", source,
                           "--force"), "is also an input")
    assert snapshot(tmp_path) == before


def test_empty_out_is_refused_by_every_command(tmp_path, plan_file):
    for args in (["prune", "resnet20", "--flops", "50%"], ["train", plan_file], ["export", plan_file],
                 ["bench", plan_file], ["run", ROOT / "recipes" / "fmnist_resnet20_50.yaml"]):
        for out in (["--out", ""], ["--out="], ["-o", " "]):
            r = run(*args, *out)
            assert r.exit_code == 2 and "is empty" in r.output, (args, out, r.output)
    assert list(Path.cwd().glob("checkpoint.pt")) == []


def test_an_out_ending_in_a_slash_is_a_folder_not_a_file_name(tmp_path, plan_file, monkeypatch):
    """`--out runs/` names a folder; Path() drops the slash, and the plan would land in a file called `runs`."""
    monkeypatch.chdir(tmp_path)
    for args, example in ((["prune", "resnet20", "--flops", "50%", "--method", "uniform"], "new/plan.json"),
                          (["export", plan_file, "--no-bench"], "new/model.onnx"),
                          (["bench", plan_file, "--runs", "5"], "new/latency"),
                          (["bench", plan_file, "--update-baseline", "--baseline"], "new/baseline.json")):
        for out in (["--out", "new/"], ["--out=new/"]) if args[0] != "bench" or "--baseline" not in args else [["new/"]]:
            r = run(*args, *out)
            assert r.exit_code == 2 and "ends in '/'" in r.output and example in r.output, (args, out, r.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_a_report_stem_naming_a_folder_is_refused_not_written_beside_it(tmp_path, plan_file, monkeypatch):
    """`bench MODEL --out reports` (an existing folder) wrote reports.json, .md and .png beside the folder,
    in a place the user did not choose."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    for out in (["--out", "reports"], ["--out=reports"], ["-o", str(tmp_path / "reports")]):
        r = run("bench", plan_file, "--runs", "5", *out)
        flat = " ".join(r.output.replace("│", " ").split())
        assert r.exit_code == 2 and "reports is a folder" in flat and "give a name inside it" in flat, r.output
        assert "reports/latency" in flat or out[0] == "-o", r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "reports"] and not any((tmp_path / "reports").iterdir())


def test_export_and_bench_never_replace_inputs_or_foreign_side_files(tmp_path, plan_file):
    keep = tmp_path / "keep.latency.json"
    keep.write_text('{"mine": 1}\n')
    (tmp_path / "x.onnx").write_bytes(b"not slimkit's")
    (tmp_path / "y.int8.onnx").write_bytes(b"mine")
    baseline = tmp_path / "bl.json"
    baseline.write_text('{"gate": "mine"}\n')
    before = {**snapshot(tmp_path), "plan": plan_file.read_bytes()}
    assert_refused(run("export", plan_file, "--out", tmp_path / "keep.onnx"), "keep.latency.json exists")
    assert_refused(run("export", plan_file, "--out", tmp_path / "x.onnx", "--no-bench"), "x.onnx exists")
    assert_refused(run("export", plan_file, "--out", tmp_path / "y.onnx", "--int8", "--data", "synthetic",
                       "--no-bench"), "y.int8.onnx exists")
    assert_refused(run("bench", plan_file, "--baseline", baseline, "--out", tmp_path / "bl"), "is also an input")
    assert_refused(run("bench", plan_file, "--out", plan_file.with_suffix("")), "is also an input")
    assert_refused(run("bench", plan_file, "--baseline", tmp_path / "keep.latency.json", "--update-baseline"),
                   "not the latency baseline written by slimkit")
    # the message names the option at fault: --baseline when recording, --backend when one is given twice
    assert_refused(run("bench", plan_file, "--baseline", plan_file, "--update-baseline"),
                   f"--baseline {plan_file} is also an input", "choose another --baseline")
    assert_refused(run("bench", plan_file, "--backend", "ort-cpu", "--backend", "ort-cpu", "--out", tmp_path / "two"),
                   "--backend ort-cpu is given twice")
    assert {**snapshot(tmp_path), "plan": plan_file.read_bytes()} == before


def test_train_refuses_a_folder_of_someone_elses_files(tmp_path, plan_file, plan):
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("config.json", "metrics.json", "plan.json"):
        (out / name).write_text('{"mine": 1}\n')
    before = snapshot(out)
    assert_refused(run("train", plan_file, "--out", out, "--data", "synthetic"), "plan.json exists", "--force")
    assert snapshot(out) == before
    # the plan being trained may sit in the folder it trains into: same plan, nothing lost
    folder = tmp_path / "run"
    save_plan(plan, folder / "plan.json")
    r = train(folder / "plan.json", folder, TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1,
                                                        batch_size=16, workers=0))
    assert r.metrics and (folder / "checkpoint.pt").is_file()


def test_train_resume_never_replaces_a_users_file_among_the_run_files(tmp_path, plan_file):
    out = tmp_path / "run"
    cfg = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=16, workers=0)
    train(plan_file, out, cfg)
    (out / "curves.png").write_bytes(b"my own figure")  # the user's file, where the run draws its curves
    before = snapshot(out)
    assert_refused(run("train", plan_file, "--out", out, "--resume", "--epochs", 2, "--data", "synthetic",
                       "--max-steps-per-epoch", 1, "--batch-size", 16, "--workers", 0), "curves.png exists", "--force")
    assert snapshot(out) == before


def test_the_plan_trained_from_stays_byte_identical_in_the_run_folder(tmp_path, plan):
    folder = tmp_path / "run"
    folder.mkdir()
    source = folder / "plan.json"
    source.write_text(json.dumps(json.loads(plan.to_json())))  # the same plan, written by the user's own script
    before = source.read_bytes()
    train(source, folder, TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=1, batch_size=16, workers=0))
    assert (folder / "checkpoint.pt").is_file() and source.read_bytes() == before


def test_run_refuses_a_folder_that_is_not_a_run_folder(tmp_path, plan_file):
    recipe = ROOT / "recipes" / "fmnist_resnet20_50.yaml"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "plan.json").write_bytes(plan_file.read_bytes())  # a slimkit plan, but not this run's
    (foreign / "model.onnx").write_bytes(b"mine")
    before = snapshot(foreign)
    assert_refused(run("run", recipe, "--out", foreign), "foreign/plan.json exists", "not a `slimkit run` folder")
    assert snapshot(foreign) == before
    # a user's own recipe.yaml in the folder is not a run's record, and never replaced (it is the input here)
    own = tmp_path / "own"
    own.mkdir()
    (own / "recipe.yaml").write_text(recipe.read_text())
    assert_refused(run("run", own / "recipe.yaml", "--out", own, "--force"), "is also an input")
    assert_refused(run("run", recipe, "--out", own), "recipe.yaml exists")
    assert (own / "recipe.yaml").read_text() == recipe.read_text()


# ---------------------------------------------------------------------------- class 2: stages belong together
def _run_folder(tmp_path, plan):
    recipe = parse_recipe(read_yaml("name: tiny\narch: resnet20\ndata:\n  name: synthetic\nprune:\n  flops: 50%\n"
                                    "  method: uniform\n  round_to: 1\n"), "tiny")
    lay = Layout(tmp_path / "run")
    lay.root.mkdir()
    lay.recipe.write_text("# The resolved recipe of this run folder (test)\n")
    save_plan(plan, lay.plan)
    save_plan(plan, lay.uniform)
    record = StageRecord(lay)
    record.record("prune", [lay.plan, lay.uniform], [lay.plan, lay.uniform])
    return recipe, lay


def test_a_replaced_plan_is_refused_not_mixed_into_the_run(tmp_path, plan):
    recipe, lay = _run_folder(tmp_path, plan)
    # the recorded plan is reused (no pruning)
    kept, _ = _prune_stage(recipe, lay, RunHooks(), StageRecord(lay))
    assert kept.widths == plan.widths
    other = slimkit.prune("resnet20", "30%", method="uniform", num_classes=10, round_to=1)
    save_plan(other, lay.plan)  # `slimkit prune --out run/plan.json` into a finished run
    with pytest.raises(SlimkitError, match="not the plan this run made"):
        _prune_stage(recipe, lay, RunHooks(), StageRecord(lay))
    # a training folder trained from another plan than the run's is refused, never skipped as "done"
    save_plan(plan, lay.train / "plan.json")
    _check_trained_plan(lay.train, plan)
    with pytest.raises(SlimkitError, match="trained from another plan"):
        _check_trained_plan(lay.train, other)
    # the checkpoint is what the export stage exports: one from another run, beside the right plan.json,
    # is refused too (it was exported and timed as the run's model, beside this plan's MACs)
    write_checkpoint(lay.train / "checkpoint.pt", model={}, plan=plan, config={}, epoch=1, metrics=[])
    _check_trained_plan(lay.train, plan)
    write_checkpoint(lay.train / "checkpoint.pt", model={}, plan=other, config={}, epoch=1, metrics=[])
    with pytest.raises(SlimkitError, match="trained from another plan"):
        _check_trained_plan(lay.train, plan)
    # a damaged checkpoint is called damaged (what is wrong with it), not "trained from another plan"
    (lay.train / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SlimkitError, match=r"checkpoint\.pt cannot be read \(.*\): move"):
        _check_trained_plan(lay.train, plan)


def test_a_training_folder_trained_again_with_other_settings_is_refused(tmp_path, plan):
    _, lay = _run_folder(tmp_path, plan)
    cfg = TrainConfig(data="synthetic", epochs=1, max_steps_per_epoch=2)
    write_checkpoint(lay.train / "checkpoint.pt", model={}, plan=plan, config={**asdict(cfg), "workers": 3},
                     epoch=1, metrics=[])
    _check_trained_config(lay.train, cfg)  # how it ran (workers, device) may differ
    # `slimkit train run/plan.json --out run/train --resume --epochs 3`: no longer the recipe's training
    write_checkpoint(lay.train / "checkpoint.pt", model={}, plan=plan, config={**asdict(cfg), "epochs": 3},
                     epoch=3, metrics=[])
    with pytest.raises(SlimkitError, match="trained with epochs=3, not the recipe's 1"):
        _check_trained_config(lay.train, cfg)


def test_stage_record_sees_changed_inputs_that_mtimes_miss(tmp_path, plan):
    _, lay = _run_folder(tmp_path, plan)
    (lay.train).mkdir()
    ckpt, onnx_file = lay.train / "checkpoint.pt", lay.onnx
    ckpt.write_bytes(b"weights 1")
    onnx_file.write_bytes(b"model 1")
    StageRecord(lay).record("export", [ckpt], [onnx_file])
    assert StageRecord(lay).current("export", [ckpt], [onnx_file])
    stamp = ckpt.stat().st_mtime_ns
    ckpt.write_bytes(b"weights 2")  # retrained, and its time set back (a copy with -p, a clock)
    os.utime(ckpt, ns=(stamp - 10**9, stamp - 10**9))
    assert not StageRecord(lay).current("export", [ckpt], [onnx_file])


def test_the_summary_reads_metrics_from_the_checkpoint_not_an_edited_metrics_json(tmp_path, plan):
    recipe, lay = _run_folder(tmp_path, plan)
    final = {"epoch": 1, "test_top1": 0.5, "test_top5": 0.9}
    write_checkpoint(lay.train / "checkpoint.pt", model={}, plan=plan, config={}, epoch=1, metrics=[final])
    (lay.train / "metrics.json").write_text(json.dumps({"epochs": 1, "final": {"epoch": [1], "test_top1": "abc"},
                                                         "history": [{}]}))
    summary = build_summary(recipe, lay, {"pruned": plan, "uniform": plan, "full": plan.unpruned()})
    assert (summary["models"][0]["test_top1"], summary["models"][0]["epochs"]) == (0.5, 1)
    assert "50.00%" in summary_markdown(summary)


# ---------------------------------------------------------------------------- class 3: counts are recomputed
def test_edited_counts_are_refused_and_derived_numbers_use_the_recount(tmp_path, plan, plan_file):
    data = json.loads(plan_file.read_text())
    for field, value in (("flops", 1), ("params", 10**12)):
        edited = tmp_path / f"{field}.json"
        edited.write_text(json.dumps({**data, field: value}))
        with pytest.raises(PlanError, match=f"'{field}' says"):
            verified_plan(edited)
        assert_refused(run("train", edited, "--out", tmp_path / "t", "--schedule", "scratch-b", "--data", "synthetic"),
                       f"'{field}' says", "regenerate")
        assert_refused(run("export", edited, "--out", tmp_path / "e.onnx"), f"'{field}' says")
    edited = tmp_path / "full.json"
    edited.write_text(json.dumps({**data, "search": {**data["search"], "full_flops": 10**15}}))
    assert_refused(run("train", edited, "--out", tmp_path / "t", "--data", "synthetic"), "search.full_flops")
    assert not (tmp_path / "t").exists()
    missing = verified_plan({**data, "flops": None, "params": None, "search": {}})  # absent counts are filled in
    assert (missing.flops, missing.params) == (plan.flops, plan.params)
    assert missing.search["full_flops"] == channel_graph("resnet20", {"num_classes": 10}, (3, 32, 32)).count_flops()


def test_scratch_b_has_an_upper_bound(tmp_path):
    tiny = slimkit.prune("resnet20", "3%", method="uniform", num_classes=10, round_to=1)
    with pytest.raises(SlimkitError, match="scratch-b would train .* beyond the 20x"):
        train(tiny, tmp_path / "t", TrainConfig(data="synthetic", epochs=2, schedule="scratch-b", workers=0))
    assert not (tmp_path / "t").exists()


# ---------------------------------------------------------------------------- class 6: encoding, memory
def test_an_ascii_console_never_loses_a_finished_plan(tmp_path):
    out = tmp_path / "p.json"
    r = subprocess.run([sys.executable, "-m", "slimkit", "prune", "resnet20", "--flops", "50%", "--method",
                        "uniform", "--out", str(out)], env={**ENV, "PYTHONIOENCODING": "ascii"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "slimkit:resnet20 ? uniform plan" in r.stdout
    assert json.loads(out.read_text())["arch"] == "slimkit:resnet20" and has_mark(out.with_suffix(".png"))


def test_a_closed_output_pipe_never_loses_a_finished_plan(tmp_path):
    """`slimkit prune ... | head -1`: click's EPIPE handling ended the command at its next line of output
    (exit 1, nothing on stderr) before the plan was written; the rest of the output is dropped instead."""
    out = tmp_path / "p.json"
    p = subprocess.Popen([sys.executable, "-m", "slimkit", "prune", "resnet20", "--flops", "50%", "--method",
                          "uniform", "--round-to", "8", "--num-classes", "10", "--out", str(out)], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.close()  # the reader is gone before the first line (head -1 after its line)
    err = p.stderr.read()
    assert p.wait(timeout=300) == 0, err
    assert "Traceback" not in err and json.loads(out.read_text())["arch"] == "slimkit:resnet20", err
    assert plot_of(CHANNELS)(out.with_suffix(".png"))


def test_an_input_size_that_cannot_fit_in_memory_is_one_line(monkeypatch, tmp_path):
    import slimkit.generator as generator

    graph = channel_graph("resnet20", {"num_classes": 10}, (3, 32, 32))
    monkeypatch.setattr(generator, "available_memory_bytes", lambda: 10_000)  # 32x32 needs ~200 KB
    with pytest.raises(PlanError, match="needs about .* GiB for one forward pass.*smaller --input-size"):
        check_memory("resnet20", graph)
    monkeypatch.setattr(generator, "available_memory_bytes", lambda: 2**40)
    check_memory("resnet20", graph)
    monkeypatch.setattr(generator, "available_memory_bytes", lambda: 16 * 2**30)  # never really try 8192 px here
    r = run("prune", "resnet20", "--flops", "50%", "--method", "uniform", "--input-size", "8192", "--out",
            tmp_path / "big.json")
    assert_refused(r, "8192x8192 needs about", "smaller --input-size")
    assert not (tmp_path / "big.json").exists()


# ---------------------------------------------------------------------------- class 8: signals
@pytest.mark.slow  # a real export in a subprocess, killed mid-report: 20 s quiet, minutes on a loaded machine
def test_sigterm_during_export_leaves_no_temporary_folder(tmp_path, plan_file):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "m.onnx"
    proc = subprocess.Popen([sys.executable, "-m", "slimkit", "export", str(plan_file), "--out", str(out),
                             "--runs", "10000000", "--threads", "1", "--exporter", "torchscript"],
                            env={**ENV, "TMPDIR": str(tmp)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(tmp.glob("slimkit-export-*")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert list(tmp.glob("slimkit-export-*")), "the export never reached its latency report"
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert list(tmp.glob("slimkit-*")) == [] and out.is_file()  # the ONNX file was finished before the report began
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no atomic-write leftovers


def test_a_plot_of_one_kind_is_never_replaced_by_a_plot_of_another(tmp_path):
    """slimkit's mark alone let `prune --out RUN/curves.json` and `bench --out RUN/curves` replace a
    training run's curves.png with a channel or latency plot (exit 0): each plot records its kind."""
    from slimkit.plots import plot_training

    folder = tmp_path / "run"
    history = [{"epoch": 1, "train_loss": 2.3, "train_accuracy": 0.1, "test_loss": 2.3, "test_top1": 0.1, "lr": 0.1}]
    plot_training(history, folder / "curves.png", "run")
    before = snapshot(tmp_path)
    assert_refused(run("prune", "resnet20", "--flops", "50%", "--method", "uniform", "--out", folder / "curves.json"),
                   "curves.png exists", "channels-per-group plot")
    assert_refused(run("bench", tmp_path / "absent.onnx", "--out", folder / "curves"), "curves.png exists",
                   "latency plot")
    assert snapshot(tmp_path) == before
    # a plot from before kinds were recorded (slimkit's mark alone) is still slimkit's to replace
    folder.joinpath("curves.png").unlink()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure()
    fig.savefig(folder / "old.png", format="png", metadata={"Software": "slimkit"})
    plt.close(fig)
    r = run("prune", "resnet20", "--flops", "50%", "--method", "uniform", "--out", folder / "old.json")
    assert r.exit_code == 0, r.output


def test_the_export_scratch_file_never_replaces_a_file_already_there(tmp_path, plan_file):
    """export wrote and then deleted `.NAME.export` beside --out: a user's file of that name was lost."""
    theirs = {tmp_path / ".m.onnx.export": b"mine", tmp_path / ".m.onnx.export.data": b"mine too"}
    for path, data in theirs.items():
        path.write_bytes(data)
    assert scratch_path(tmp_path / "m.onnx", "export") not in theirs
    r = run("export", plan_file, "--out", tmp_path / "m.onnx", "--no-bench", "--exporter", "torchscript")
    assert r.exit_code == 0, r.output
    assert all(path.read_bytes() == data for path, data in theirs.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.onnx.export", ".m.onnx.export.data", "in", "m.onnx"]
