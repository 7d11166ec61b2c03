"""Options and files that were accepted but wrong, and messages that misled.

* Accepted but wrong: a plan whose ``search`` is not an object, ``export PLAN --input-size`` /
  ``export CKPT --num-classes`` silently ignored, a one-class dataset, duplicate recipe keys.
* Misleading: a folder named like an architecture, a plan passed as a checkpoint called "truncated:
  delete it", torch's text for an input too small, relative data paths in a recipe, detection models
  called unknown.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch
import typer.main
from PIL import Image
from typer.testing import CliRunner

import slimkit
from slimkit.artifacts import classify, load_checkpoint, write_checkpoint
from slimkit.cli import app
from slimkit.data import DataError, load_data
from slimkit.errors import PlanError, RegistryError, SlimkitError
from slimkit.models.cifar import BUILTIN_MODELS
from slimkit.recipe import RecipeError, load_recipe

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    flat = " ".join(result.output.split())
    assert flat.count("error:") == 1, result.output  # notes printed before the error may stay
    flat = flat[flat.index("error:"):]
    for needle in needles:
        assert needle in flat, flat
    return flat


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("plans") / "plan.json"
    slimkit.save_plan(slimkit.prune("resnet20", "50%", method="uniform", num_classes=10, round_to=1), path)
    return path


@pytest.fixture(scope="module")
def checkpoint(plan_file, tmp_path_factory):
    plan = slimkit.load_plan(plan_file)
    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    write_checkpoint(path, model=slimkit.generate(plan).state_dict(), plan=plan, config={}, epoch=1, metrics=[])
    return path


# ---------------------------------------------------------------------------- accepted but wrong
def test_a_plan_whose_search_field_is_a_list_is_refused_on_load(plan_file, tmp_path):
    data = json.loads(plan_file.read_text())
    data["search"] = [1, 2]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(PlanError, match="'search' must be an object"):
        slimkit.load_plan(bad)
    one_line_error(run("export", bad, "--no-bench", "--out", tmp_path / "m.onnx"), "'search'")
    assert not (tmp_path / "m.onnx").exists()


def test_export_refuses_an_input_size_the_plan_was_not_made_for(plan_file, tmp_path):
    out = tmp_path / "m.onnx"
    one_line_error(run("export", plan_file, "--input-size", "64", "--no-bench", "--out", out),
                   "--input-size 64 does not apply", "[3, 32, 32]")
    assert not out.exists()


def test_export_refuses_num_classes_a_checkpoint_does_not_have(checkpoint, plan_file, tmp_path):
    out = tmp_path / "m.onnx"
    one_line_error(run("export", checkpoint, "--num-classes", "5", "--no-bench", "--out", out),
                   "--num-classes 5 does not apply", "10 classes")
    one_line_error(run("export", plan_file, "--num-classes", "5", "--no-bench", "--out", out), "10 classes")
    assert not out.exists()


def test_options_that_would_do_nothing_are_refused(plan_file, tmp_path):
    """--int8's options without --int8, and bench's --reference without --baseline (ratios stay to the first
    model), were accepted and ignored: the user believed they had calibrated on, or compared against, them."""
    out = tmp_path / "m.onnx"
    one_line_error(run("export", plan_file, "--data", "synthetic", "--no-bench", "--out", out),
                   "--data sets up the int8 file: add --int8, or drop it")
    one_line_error(run("export", plan_file, "--calib-images", "5", "--max-drop", "2", "--no-bench", "--out", out),
                   "--calib-images, --max-drop set up the int8 file")
    one_line_error(run("bench", plan_file, "--reference", "resnet20", "--runs", "5", "--out", tmp_path / "lat"),
                   "--reference chooses the gate's reference", "slimkit bench resnet20 MODEL")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_warm_up_typed_for_a_fine_tuning_is_refused(plan_file, tmp_path):
    """`train PLAN --init inherit --from W --schedule finetune --warmup-epochs 2` trained at a constant LR with
    no warm-up, exit 0: the option was accepted and ignored."""
    parent = tmp_path / "parent.pt"
    torch.save(slimkit.create_model("resnet20", num_classes=10).state_dict(), parent)
    one_line_error(run("train", plan_file, "--init", "inherit", "--from", parent, "--schedule", "finetune",
                       "--warmup-epochs", "2", "--data", "synthetic", "--epochs", "1", "--out", tmp_path / "ft"),
                   "--warmup-epochs 2 applies to training from scratch", "drop the option")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parent.pt"]


def test_bench_and_export_options_that_would_do_nothing_are_refused(plan_file, tmp_path):
    """`bench M.onnx --input-size 64` / `--num-classes 5` / `--arch-kwargs` (shaping architecture names only),
    `bench --device cuda` on onnxruntime (the torch backends' device), `bench --update-baseline --out R` /
    `--max-regression` (the check's), and `export --no-bench --threads 2 / --runs 7` (the report's settings)
    were accepted and ignored, exit 0."""
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"\x08\x07")
    lat = tmp_path / "lat"
    for args, needle in ((["--input-size", "64"], "--input-size sets up models built from an architecture name"),
                         (["--num-classes", "5", "--arch-kwargs", '{"num_classes": 5}'],
                          "--num-classes, --arch-kwargs set up models built from an architecture name"),
                         (["--arch", "resnet20", "--num-classes", "5"], "--num-classes sets up models built"),
                         (["--device", "cuda"], "--device sets up the torch backends")):
        one_line_error(run("bench", onnx_file, *args, "--runs", "5", "--out", lat), needle)
    # recording a baseline writes it alone: a report stem or an allowed regression would be ignored
    for args, name in ((["--out", lat], "--out"), (["--max-regression", "5%"], "--max-regression")):
        one_line_error(run("bench", onnx_file, "--baseline", tmp_path / "b.json", "--update-baseline", *args),
                       f"{name} sets up the gate's check, not the recording", "drop --update-baseline")
    out = tmp_path / "e.onnx"
    one_line_error(run("export", plan_file, "--no-bench", "--threads", "2", "--out", out),
                   "--threads sets up the latency report: drop --no-bench, or drop it")
    one_line_error(run("export", plan_file, "--no-bench", "--runs", "7", "--out", out), "--runs sets up the latency report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_train_options_a_segmentation_or_detection_model_does_not_use_are_refused(tmp_path):
    """--label-smoothing (only a classifier's loss is smoothed) and --augment (shapes images and boxes are never
    augmented) were accepted for a segmentation model, ignored, and recorded in config.json as if applied."""
    plan = tmp_path / "seg.json"
    slimkit.save_plan(slimkit.full_plan("lraspp_mobilenet_v3_large", num_classes=4, input_size=(3, 32, 32)), plan)
    fast = ("--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "2", "--workers", "0")
    one_line_error(run("train", plan, *fast, "--label-smoothing", "0.2", "--out", tmp_path / "a"),
                   "--label-smoothing 0.2 applies to classifiers: a segmentation model trains on its task's own loss")
    one_line_error(run("train", plan, *fast, "--augment", "--out", tmp_path / "b"),
                   "--augment: shapes is not augmented when a segmentation model trains on it")
    from slimkit.train import TrainConfig, train
    with pytest.raises(SlimkitError, match="--label-smoothing 0.3 applies to classifiers"):
        train(plan, tmp_path / "c", TrainConfig(label_smoothing=0.3, epochs=1, workers=0))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: seg\narch: lraspp_mobilenet_v3_large\ndata:\n  name: shapes\nprune:\n  flops: 50%\n"
                      "train:\n  label_smoothing: 0.2\n")
    with pytest.raises(RecipeError, match="train.label_smoothing 0.2 applies to classifiers"):
        load_recipe(recipe)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml", "seg.json"]


def _image_folder(root: Path, classes: list[str]) -> Path:
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / split / c / "a.png")
    return root


def test_a_one_class_dataset_is_refused(tmp_path):
    root = _image_folder(tmp_path / "one", ["cat"])
    with pytest.raises(DataError, match="1 class folder.*at least 2"):
        load_data(f"imagefolder:{root}", data_dir=None, input_size=(3, 8, 8), val_size=0)


def test_a_key_given_twice_in_a_recipe_is_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: tiny\narch: resnet20\nprune:\n  flops: 50%\ntrain:\n  epochs: 30\n  lr: 0.1\n"
                      "  epochs: 3\n")
    with pytest.raises(RecipeError, match="'epochs' appears twice \\(lines 6 and 8\\)"):
        load_recipe(recipe)
    recipe.write_text("name: tiny\narch: resnet20\nprune:\n  flops: 50%\nname: other\n")
    with pytest.raises(RecipeError, match="'name' appears twice"):
        load_recipe(recipe)


def test_a_key_given_twice_in_a_plan_or_arch_kwargs_is_refused(plan_file, tmp_path):
    """A group line added by hand instead of edited: JSON keeps the last value without a word."""
    text = plan_file.read_text()
    line = next(ln for ln in text.splitlines() if '"layer3.2.conv1"' in ln)
    twice = tmp_path / "twice.json"
    twice.write_text(text.replace(line, line.rstrip(",") + ",\n" + line, 1))
    with pytest.raises(PlanError, match="'layer3.2.conv1' appears twice"):
        slimkit.load_plan(twice)
    one_line_error(run("export", twice, "--no-bench", "--out", tmp_path / "never.onnx"), "appears twice")
    one_line_error(run("prune", "resnet20", "--flops", "50%", "--method", "uniform", "--out", tmp_path / "never.json",
                       "--arch-kwargs", '{"num_classes": 10, "num_classes": 5}'), "'num_classes' appears twice")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["twice.json"]


def test_a_recipe_whose_num_classes_contradicts_its_data_fails_the_dry_run(tmp_path):
    """Found only after the prune stage (minutes of gate learning), with advice to pass --num-classes,
    which `slimkit run` does not take."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: tiny\narch: resnet20\nnum_classes: 3\ndata:\n  name: synthetic\nprune:\n  flops: 50%\n")
    with pytest.raises(RecipeError, match="num_classes 3 but synthetic has 10 classes.*num_classes: 10"):
        load_recipe(recipe)
    assert load_recipe(recipe, ["num_classes=10"]).num_classes == 10
    one_line_error(run("run", recipe, "--dry-run", "--out", tmp_path / "never"), "num_classes 3 but synthetic")
    assert not (tmp_path / "never").exists()


# ---------------------------------------------------------------------------- misleading messages
def test_a_folder_named_like_an_architecture_says_how_to_name_the_architecture(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resnet20").mkdir()
    one_line_error(run("export", "resnet20", "--no-bench"), "resnet20 is a folder", "write slimkit:resnet20")
    assert classify("slimkit:resnet20") == "arch"


def test_a_file_given_as_the_architecture_to_prune_is_called_a_file(plan_file, checkpoint):
    """`slimkit prune plan.json` / `prune checkpoint.pt` said "unknown architecture 'plan.json'"."""
    for path in (plan_file, checkpoint, checkpoint.parent):
        one_line_error(run("prune", path, "--flops", "50%", "--method", "uniform"), f"'{path}' is a ",
                       "not an architecture name", "nets.py:build_net")


def test_a_plan_passed_as_a_checkpoint_is_named_and_never_to_be_deleted(plan_file, tmp_path):
    with pytest.raises(SlimkitError) as info:
        load_checkpoint(plan_file)
    assert "is a ChannelPlan" in str(info.value) and "delete" not in str(info.value)
    text = tmp_path / "notes.pt"
    text.write_text("my notes")
    with pytest.raises(SlimkitError) as info:
        load_checkpoint(text)
    assert "a text file" in str(info.value) and "delete" not in str(info.value)
    flat = one_line_error(run("prune", "resnet20", "--flops", "50%", "--weights", plan_file, "--data", "synthetic",
                              "--steps", "2", "--out", tmp_path / "p.json"), "is a ChannelPlan")
    assert "delete" not in flat and not (tmp_path / "p.json").exists()


def test_a_file_given_as_a_baseline_is_named_and_never_to_be_recorded_over(plan_file, tmp_path):
    """`bench --baseline PLAN` said "is not a slimkit latency baseline; record it again with
    --update-baseline": advice to write a baseline over the user's plan (or report, or model)."""
    report = tmp_path / "m.latency.json"
    report.write_text(json.dumps({"format": "slimkit.latency/1", "models": []}))
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"\x08\x07\x12\x07pytorch")
    for baseline, what in ((plan_file, "is a slimkit plan (from `slimkit prune`), not a slimkit latency baseline"),
                           (report, "is a latency report without a gate"), (onnx_file, "is an ONNX model"),
                           (tmp_path, "is a folder, not a baseline file")):
        before = baseline.read_bytes() if baseline.is_file() else None
        flat = one_line_error(run("bench", plan_file, "--baseline", baseline, "--runs", "5"), what)
        assert "record it again" not in flat
        assert before is None or baseline.read_bytes() == before


def test_an_input_too_small_is_said_in_words_with_the_module():
    flat = one_line_error(run("info", "torchvision:squeezenet1_0", "--input-size", "16"),
                          "input 16x16 px does not fit this model", "module 'features.11' (MaxPool2d)",
                          "larger --input-size")
    assert "Output size is too small" not in flat


def test_relative_imagefolder_paths_in_a_recipe_are_relative_to_the_recipe(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    _image_folder(folder / "data", ["cat", "dog"])
    recipe = folder / "r.yaml"
    recipe.write_text("name: tiny\narch: resnet20\ndata: {name: 'imagefolder:data', data_dir: cache}\n"
                      "prune:\n  flops: 50%\n")
    monkeypatch.chdir(tmp_path)  # not the recipe's folder
    loaded = load_recipe(recipe)
    assert loaded.data.name == f"imagefolder:{folder / 'data'}"
    assert loaded.data.data_dir == str(folder / "cache")
    over = load_recipe(recipe, ["data.name=imagefolder:elsewhere"])  # --set stays relative to the shell
    assert over.data.name == "imagefolder:elsewhere"


@pytest.mark.parametrize("name, words", [("torchvision:r3d_18", "is a video model"),
                                         ("r3d_18", "does not take video models"),
                                         ("torchvision:raft_small", "is an optical-flow model")])
def test_models_of_other_tasks_are_named_as_such(name, words):
    with pytest.raises(RegistryError, match=words):
        slimkit.create_model(name)


def test_a_model_constructor_that_refuses_its_arguments_is_one_line(monkeypatch):
    def picky(num_classes: int = 10, img_size: int = 224):
        assert img_size % 32 == 0, f"img_size {img_size} must be divisible by 32"
        return torch.nn.Linear(3, num_classes)

    monkeypatch.setitem(BUILTIN_MODELS, "picky_probe", picky)
    with pytest.raises(RegistryError, match="slimkit:picky_probe cannot be built with img_size=50: AssertionError: "
                                            "img_size 50 must be divisible by 32"):
        slimkit.create_model("slimkit:picky_probe", img_size=50)



ROOT = Path(__file__).resolve().parents[1]
SUGGESTED = re.compile(r"slimkit (\w+)\b([^`\n|#;]*)")  # a command and what follows, to the end of its span


def _suggested_commands() -> list[tuple[str, str, str]]:
    """(where, command, the text after it) for every `slimkit CMD ...` in a string of the code, the docs or a
    recipe's comments."""
    found = []
    for path in sorted((ROOT / "slimkit").rglob("*.py")) + sorted((ROOT / "exporters").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            else:
                continue
            found += [(f"{path.name}:{node.lineno}", *m.groups()) for m in re.finditer(r"`slimkit (\w+)([^`]*)`", text)]
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "recipes").glob("*.yaml"))]:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            found += [(f"{path.name}:{i}", *m.groups()) for m in SUGGESTED.finditer(line)
                      if m.group(1) in COMMANDS]
    return found


COMMANDS = {name: {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
            for name, cmd in typer.main.get_command(app).commands.items()}


def test_every_command_a_message_or_doc_suggests_exists():
    """A fix that names an option the command does not have ('slimkit train PLAN --num-classes N': train
    has no --num-classes) sends the user from one error to the next: every `slimkit CMD ... --opt` in the
    code's strings, the docs and the recipes names a real command and a real option of it."""
    found = _suggested_commands()
    assert len(found) > 50  # the scan sees them
    wrong = [f"{where}: slimkit {cmd} has no {opt}" for where, cmd, rest in found
             for opt in ([] if cmd not in COMMANDS else re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest))
             if opt not in COMMANDS[cmd]] + [f"{where}: no command slimkit {cmd}" for where, cmd, _ in found
                                              if cmd not in COMMANDS]
    assert not wrong, wrong


def test_prune_refuses_gate_learning_options_a_uniform_plan_would_ignore(tmp_path):
    """`prune --method uniform --data synthetic` wrote a plan with the model's default head (exit 0) and
    `train` then advised pruning "with --data synthetic", which is what the user had done."""
    for args in (["--flops", "50%", "--method", "uniform", "--data", "synthetic"],
                 ["--flops", "50%", "--method", "uniform", "--steps", "5"],
                 ["--structure", "resnet56-a", "--epochs", "1"],
                 ["--flops", "50%", "--method", "uniform", "--device", "cuda"],  # accepted, nothing ran on it
                 ["--flops", "50%", "--device", "cpu"]):  # uniform by default for a classifier
        r = run("prune", "resnet56", *args, "--out", tmp_path / "p.json")
        assert r.exit_code == 2 and "gate learning" in r.output and "Traceback" not in r.output, r.output
        assert not (tmp_path / "p.json").exists()
    assert not list(tmp_path.iterdir())
    # where --device places the timing (--backend torch), a uniform plan takes it
    r = run("prune", "resnet20", "--flops", "50%", "--device", "cpu", "--backend", "torch", "--no-latency-check",
            "--round-to", "8", "--no-plot", "--out", tmp_path / "q.json")
    assert r.exit_code == 0, r.output


def test_another_slimkit_file_given_as_a_plan_is_named_and_never_to_be_regenerated(tmp_path):
    """`train latency.json` said "has format 'slimkit.latency/1' ...: regenerate it with `slimkit prune`":
    advice to write a plan over the user's report."""
    for name, data, what in (("lat.json", {"format": "slimkit.latency/1", "models": []}, "is a latency report"),
                             ("summary.json", {"format": "slimkit.run-summary/1"}, "is a run summary"),
                             ("check.json", {"fp32": {}, "int8": {}}, "without a plan's format field")):
        path = tmp_path / name
        path.write_text(json.dumps(data))
        before = path.read_bytes()
        for args in (["train", path, "--data", "synthetic", "--out", tmp_path / "t"], ["export", path, "--no-bench"]):
            r = run(*args)
            flat = " ".join(r.output.split())
            assert r.exit_code == 2 and what in flat and "not a plan" in flat and "regenerate" not in flat, r.output
        assert path.read_bytes() == before


def test_num_classes_in_arch_kwargs_against_the_datas_classes_names_the_data(tmp_path):
    """`train resnet20 --arch-kwargs '{"num_classes": 7}' --data synthetic` (and a scratch prune on that data) said
    '--arch-kwargs sets num_classes=7 but --num-classes is 10: give it once': train has no --num-classes, and
    prune was given none; the 10 are the data's classes."""
    runner = CliRunner()
    for args in (["train", "resnet20", "--epochs", "1", "--max-steps-per-epoch", "1", "--out", str(tmp_path / "run")],
                 ["prune", "resnet20", "--flops", "50%", "--method", "scratch", "--steps", "1",
                  "--out", str(tmp_path / "plan.json")]):
        result = runner.invoke(app, [*args, "--data", "synthetic", "--arch-kwargs", '{"num_classes": 7}'])
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert "num_classes=7 but synthetic has 10 classes: drop num_classes from --arch-kwargs" in text, text
        assert "--num-classes is" not in text and "Traceback" not in text, text
    assert not (tmp_path / "run").exists() and not (tmp_path / "plan.json").exists()
