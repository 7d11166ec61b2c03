"""Recipes and `slimkit run`: strict schema, one-line errors, every shipped recipe valid, a tiny
end-to-end run that a second invocation skips entirely."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slimkit.cli import app
from slimkit.pipeline import train_state
from slimkit.errors import SlimkitError
from slimkit.recipe import dump_recipe, load_recipe, read_yaml
from slimkit.train import headline_metric

runner = CliRunner()
RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
MINIMAL = "name: tiny\narch: resnet20\nprune:\n  flops: 50%\n  round_to: 1\n"


def run(*args):
    return runner.invoke(app, ["run", *[str(a) for a in args]])


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text
    assert text.startswith("error:") and len(text.splitlines()) <= 3  # rich may wrap one line
    for n in needles:
        assert n in text.replace("\n", " "), text


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_recipes_folder_has_every_published_setting():
    names = {p.stem for p in RECIPES}
    for arch in ("resnet20", "resnet56", "resnet110", "vgg16", "vgg19"):
        assert f"cifar10_{arch}_50" in names
    for budget in ("150M", "286M", "569M"):
        assert f"imagenet_mobilenet_v1_{budget}" in names
    for name in ("imagenet_mobilenet_v2_210M", "imagenet_mobilenet_v2_300M", "imagenet_resnet50_1G",
                 "imagenet_resnet50_2G", "imagenet_resnet50_3G", "fmnist_resnet20_50",
                 "fmnist_resnet20_50_compare", "fmnist_mobilenet_v1_latency"):
        assert name in names
    for path in RECIPES:
        assert path.read_text().startswith("#"), f"{path.name} needs a header comment saying what it reproduces"
        assert load_recipe(path).name == path.stem  # default run folder runs/<file name>


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_dry_runs(path, tmp_path):
    r = run(path, "--dry-run", "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert "plan.json" in r.output and "model.onnx" in r.output
    assert "reachable: the full model has" in r.output or "latency" in path.read_text()
    assert ("data not available here" in r.output) is path.stem.startswith(("imagenet", "cifar", "coco", "voc"))  # placeholders
    stages = " ".join(r.output.replace("│", " ").split())  # the stage table's cells, unwrapped
    assert f"{headline_metric(load_recipe(path).arch)[1]}, latency per model" in stages  # what the summary compares
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_dry_run_checks_the_budget_against_the_model(tmp_path):
    recipe = tmp_path / "big.yaml"
    recipe.write_text(MINIMAL.replace("50%", "5G"))
    r = run(recipe, "--dry-run", "--out", tmp_path / "run")
    assert r.exit_code == 2 and "above the largest model (40.8M)" in r.output


def test_overrides_are_yaml_and_defaults_are_the_cli_defaults(tmp_path):
    path = write(tmp_path, MINIMAL)
    rec = load_recipe(path, ["train.epochs=3", "train.lr=1e-4", "input_size=64", "train.compare=[full]",
                             "prune.flops=null", "prune.params=100K"])
    assert rec.train.epochs == 3 and isinstance(rec.train.epochs, int)
    assert rec.train.lr == 1e-4
    assert rec.input_size == [3, 64, 64]
    assert rec.train.compare == ["full"]
    assert rec.prune.budget().kind == "params"
    assert (rec.data.name, rec.prune.method, rec.prune.round_to, rec.train.weight_decay, rec.bench.runs) == \
        ("fashion-mnist", "uniform", 1, 4e-5, 100)  # uniform: `slimkit prune`'s default for a classifier
    assert read_yaml(dump_recipe(rec)) == rec.to_dict()  # the resolved config round-trips


@pytest.mark.parametrize("text,sets,needles", [
    # a typo is named with the key it was meant to be, at every level and in --set
    (MINIMAL + "train:\n  epoch: 3\n", [], ["unknown key 'epoch'", "section 'train'", "(did you mean 'epochs'?)"]),
    (MINIMAL + "trian:\n  epochs: 3\n", [], ["unknown key 'trian' at the top level (did you mean 'train'?)"]),
    (MINIMAL + "bench:\n  run: 10\n", [], ["unknown key 'run' in section 'bench' (did you mean 'runs'?)"]),
    (MINIMAL.replace("round_to: 1", "round_to: 1\n  exapnd: 1.25"), [], ["(did you mean 'expand'?)"]),
    (MINIMAL, ["nmae=x"], ["unknown key 'nmae' (did you mean 'name'?)"]),
    (MINIMAL + "colour: red\n", [], ["unknown key 'colour' at the top level", "arch"]),
    (MINIMAL + "train:\n  epochs: ten\n", [], ["train.epochs must be an integer", "'ten'"]),
    (MINIMAL + "train:\n  augment: 1\n", [], ["train.augment must be true or false"]),
    (MINIMAL + "train:\n  compare: [full, big]\n", [], ["train.compare", "'big'"]),
    (MINIMAL.replace("flops: 50%", "flops: 50%\n  latency: 8ms"), [], ["exactly one budget", "flops and latency"]),
    (MINIMAL.replace("flops: 50%", "flops: 20ms"), [], ["prune.flops", "not a FLOPs budget"]),
    (MINIMAL.replace("resnet20", "resnet21"), [], ["arch", "unknown architecture 'resnet21'"]),
    (MINIMAL + "data:\n  name: mnist\n", [], ["unknown data.name 'mnist'"]),
    ("name: tiny\nprune: {flops: 50%}\n", [], ["missing required key 'arch'"]),
    ("name: [tiny\n", [], ["not valid YAML", "line"]),
    (MINIMAL, ["train.epoch=3"], ["--set 'train.epoch=3'", "unknown key 'epoch'", "section 'train'",
                                  "(did you mean 'epochs'?)"]),
    (MINIMAL, ["trian.epochs=3"], ["--set 'trian.epochs=3'", "unknown section 'trian' (did you mean 'train'?)"]),
    (MINIMAL, ["epochs=3"], ["--set 'epochs=3'", "unknown key 'epochs'"]),
    (MINIMAL, ["train.epochs"], ["--set 'train.epochs'", "section.key=value"]),
    (MINIMAL, ["prune.latency=8ms"], ["exactly one budget"]),
    (MINIMAL, ["bench.runs=2"], ["bench.runs must be in [5,"]),
    (MINIMAL, ["prune.precision=fp16"], ["prune.precision 'fp16' is unknown", "int8"]),
    (MINIMAL, ["prune.precision=int8"], ["prune.precision int8", "prune.latency", "not prune.flops"]),
    (MINIMAL.replace("flops: 50%", "latency: 50%"), ["prune.precision=int8"], ["export.int8 is off",
                                                                              "set export.int8: true"]),
    (MINIMAL, ["export.int8=true", "prune.backend=torch"], ["export.int8 times int8 files", "prune.backend: ort-cpu"]),
    (MINIMAL, ["export.int8=yes please"], ["export.int8 must be true or false"]),
    (MINIMAL, ["export.calib_images=0"], ["export.calib_images must be in"]),
])
def test_bad_recipe_is_one_line_error(tmp_path, text, sets, needles):
    path = write(tmp_path, text)
    args = [path, "--dry-run", "--out", tmp_path / "run"]
    for s in sets:
        args += ["--set", s]
    assert_one_line_error(run(*args), *needles)
    with pytest.raises(SlimkitError):
        load_recipe(path, sets)


def test_missing_recipe_file(tmp_path):
    assert_one_line_error(run(tmp_path / "nope.yaml", "--dry-run"), "recipe not found")


def test_train_state(tmp_path):
    folder = tmp_path / "train"
    assert train_state(folder)[0] == "new"
    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes(b"x")
    (folder / "metrics.json").write_text(json.dumps({"epochs": 3, "history": [{}, {}]}))
    assert train_state(folder) == ("resume", 2, 3)
    (folder / "metrics.json").write_text(json.dumps({"epochs": 3, "history": [{}, {}, {}]}))
    assert train_state(folder) == ("done", 3, 3)


TINY = ["--set", "prune.method=uniform", "--set", "data.name=synthetic", "--set", "train.epochs=1",
        "--set", "train.max_steps_per_epoch=2", "--set", "bench.runs=5", "--set", "bench.threads=1",
        "--set", "export.exporter=torchscript"]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_run_end_to_end_then_skips_everything(tmp_path):
    recipe = RECIPES[0].parent / "fmnist_resnet20_50_compare.yaml"
    out = tmp_path / "run"
    r = run(recipe, "--out", out, *TINY)
    assert r.exit_code == 0, r.output
    for name in ("recipe.yaml", "plan.json", "uniform.json", "plan.png", "model.onnx", "latency.json",
                 "latency.md", "latency.png", "summary.json", "summary.md"):
        assert (out / name).is_file(), name
    for folder in ("train", "train-full"):
        assert (out / folder / "checkpoint.pt").is_file() and (out / folder / "metrics.json").is_file()
    assert not (out / "train-uniform").exists()  # method uniform: the pruned model is the uniform one
    resolved = read_yaml((out / "recipe.yaml").read_text())
    assert resolved["train"]["epochs"] == 1 and resolved["data"]["name"] == "synthetic"

    summary = json.loads((out / "summary.json").read_text())
    rows = {m["name"]: m for m in summary["models"]}
    assert set(rows) == {"pruned", "uniform", "full"}
    assert rows["full"]["latency_ratio"] == 1.0 and rows["full"]["macs_ratio"] == 1.0
    assert abs(rows["pruned"]["macs_ratio"] - 0.5) <= 0.01
    for row in rows.values():
        assert row["test_top1"] is not None and row["latency_median_ms"] > 0
    latency = json.loads((out / "latency.json").read_text())
    assert [m["name"] for m in latency["models"]] == ["full", "uniform", "pruned"]
    meta = {p.key: p.value for p in __import__("onnx").load(str(out / "model.onnx")).metadata_props}
    assert meta["slimkit.weights"] == "trained" and json.loads(meta["slimkit.plan"])["method"] == "uniform"

    before = _snapshot(out)
    again = run(recipe, "--out", out, *TINY)
    assert again.exit_code == 0, again.output
    for stage in ("plan.json exists: skip", "uniform.json exists: skip", "train/ done", "train-full/ done",
                  "model.onnx exists: skip", "latency.json exists: skip"):
        assert stage in again.output, again.output
    assert _snapshot(out) == before  # nothing rewritten, not even the summary

    other = run(recipe, "--out", out, *TINY, "--set", "train.epochs=2")
    assert_one_line_error(other, "different recipe", "train.epochs", "--out")

    # a plan pruned anew into the finished run: refused, not trained-over-skipped and exported stale
    re_pruned = runner.invoke(app, ["prune", "resnet20", "--flops", "30%", "--method", "uniform", "--num-classes", "10",
                                    "--out", str(out / "plan.json")])
    assert re_pruned.exit_code == 0, re_pruned.output
    before = _snapshot(out)
    mixed = run(recipe, "--out", out, *TINY)
    assert_one_line_error(mixed, "not the plan this run made", "--out")
    assert _snapshot(out) == before


def test_run_folder_in_use_is_refused(tmp_path):
    from slimkit.files import folder_lock

    out = tmp_path / "run"
    with folder_lock(out, "train"):
        r = run(RECIPES[0].parent / "fmnist_resnet20_50_compare.yaml", "--out", out, *TINY)
    assert r.exit_code == 2 and "in use by another slimkit train (pid" in r.output
    assert not out.exists()


def test_run_with_an_int8_stage(tmp_path, monkeypatch):
    """export.int8: model.int8.onnx beside model.onnx (checked against it on the test split), the
    full and pruned int8 models in the latency report, int8 columns in the summary. A refused check
    fails the run (exit 2, one line) but keeps every fp32 result, and a rerun with other int8 keys
    redoes only the int8 stage in the same folder; a rerun skips; an older recipe.yaml resumes."""
    import slimkit.pipeline as pipeline
    from slimkit.exporters.int8 import Int8CheckError

    recipe = RECIPES[0].parent / "fmnist_resnet20_50.yaml"
    out = tmp_path / "run"
    int8 = [*TINY, "--set", "export.int8=true", "--set", "export.calib_images=16"]

    def refuse(*args, **kwargs):  # the check itself is tested in test_int8.py; here: what the run does
        error = Int8CheckError("int8 check failed, no int8 file written: top-1 40.00% -> 30.00% (drop 10.00 points "
                               "> 1.00); try --calib-images 1024")
        error.check_summary = "top-1 40.00% -> 30.00% (drop 10.00 points > 1.00)"
        raise error

    monkeypatch.setattr(pipeline, "export_int8", refuse)
    r = run(recipe, "--out", out, *int8)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    error = r.output[r.output.rindex("error:"):].replace("\n", " ")  # the last thing printed, after the stages
    for needle in ("int8 check failed", "drop 10.00 points", "fp32 results are in", "export.max_drop"):
        assert needle in error, error
    assert not (out / "model.int8.onnx").exists()
    latency = json.loads((out / "latency.json").read_text())
    assert [m["name"] for m in latency["models"]] == ["full", "uniform", "pruned"]  # fp32 timed all the same
    assert (out / "summary.json").is_file()
    monkeypatch.undo()

    # synthetic data and 2 training steps: accuracy is chance, so the drop allowance is wide here
    int8 += ["--set", "export.max_drop=100"]
    r = run(recipe, "--out", out, *int8)
    assert r.exit_code == 0, r.output
    assert "train/ done" in r.output and "model.onnx exists: skip" in r.output  # only int8 (and bench) redone
    assert (out / "model.int8.onnx").is_file() and (out / "model.int8.check.json").is_file()
    latency = json.loads((out / "latency.json").read_text())
    assert [m["name"] for m in latency["models"]] == ["full", "uniform", "pruned", "full-int8", "pruned-int8"]
    summary = json.loads((out / "summary.json").read_text())
    rows = {m["name"]: m for m in summary["models"]}
    assert summary["int8"]["written"] and summary["int8"]["file"] == "model.int8.onnx"
    assert rows["pruned"]["int8_top1"] is not None and rows["pruned"]["int8_latency_ratio"] > 0
    assert rows["full"]["int8_latency_median_ms"] > 0 and rows["uniform"]["int8_latency_ratio"] is None
    md = (out / "summary.md").read_text()
    assert "int8 top-1" in md and "int8 × full" in md
    again = run(recipe, "--out", out, *int8)
    assert again.exit_code == 0 and "model.int8.onnx exists: skip" in again.output, again.output
    assert "latency.json exists: skip" in again.output

    # a folder written before the int8 keys existed: its recipe.yaml lacks them, and it still resumes
    text = (out / "recipe.yaml").read_text()
    for key in ("precision", "int8", "calib_images", "max_drop"):
        text = "\n".join(line for line in text.splitlines() if not line.strip().startswith(f"{key}:")) + "\n"
    (out / "recipe.yaml").write_text(text)
    older = run(recipe, "--out", out, *TINY)
    assert older.exit_code == 0 and "train/ done" in older.output, older.output


class _StopAtExport(Exception):
    pass


def test_the_run_log_counts_one_epoch_in_the_singular(tmp_path):
    """`slimkit run` logged "test top-1 0.1006 after 1 epochs" under each training (`slimkit train` says
    "after 1 epoch")."""
    from slimkit.pipeline import RunHooks, run_recipe

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("name: tiny\narch: resnet20\ndata: {name: synthetic}\nprune: {method: uniform, flops: 50%, "
                      "round_to: 8}\ntrain: {epochs: 1, batch_size: 8, max_steps_per_epoch: 1, compare: []}\n")
    logs = []

    def stop(name, text):
        if name == "export":
            raise _StopAtExport

    with pytest.raises(_StopAtExport):
        run_recipe(load_recipe(recipe), tmp_path / "run", hooks=RunHooks(stage=stop, log=logs.append))
    done = [line for line in logs if "after 1 epoch" in line]
    assert done and all("after 1 epochs" not in line for line in done), logs


@pytest.mark.parametrize("dry", [True, False])
def test_a_run_names_the_recipe_key_that_fixes_it_not_a_cli_option(tmp_path, dry):
    # `slimkit run` said "widen the supernet with --expand" and "pass a smaller --round-to": options that
    # command does not have; the recipe key of that meaning is what the user can change
    path = write(tmp_path, "name: tiny\narch: resnet20\ndata: {name: synthetic}\n"
                           "prune: {flops: 150%, method: uniform, round_to: 1}\n")
    r = run(path, "--out", tmp_path / "run", *(["--dry-run"] if dry else []))
    _last_line_error(r, "above the largest model", "widen the supernet with prune.expand")
    assert "--expand" not in r.output
    path = write(tmp_path, "name: tiny\narch: resnet20\ndata: {name: cifar10, data_dir: nope}\n"
                           "prune: {flops: 50%, method: uniform, round_to: 1}\n", name="c.yaml")
    if not dry:  # the data is checked before the first stage
        r = run(path, "--out", tmp_path / "run2")
        _last_line_error(r, "CIFAR-10 not found", "or pass data.data_dir")
        assert "--data-dir" not in r.output
        assert not (tmp_path / "run2").exists()  # said before the first stage: nothing is written


def _last_line_error(r, *needles):
    """Exit 2, no traceback, the output ending in one error line (after the stages' own lines)."""
    text = r.output.strip()
    assert r.exit_code == 2 and "Traceback" not in text, text
    error = text[text.rindex("error:"):].replace("\n", " ")
    for needle in needles:
        assert needle in error, text


def test_recipe_terms_follow_the_stage():
    from slimkit.pipeline import in_recipe_terms

    assert in_recipe_terms("raise --epochs", "prune") == "raise prune.epochs"
    assert in_recipe_terms("raise --epochs", "train") == "raise train.epochs"
    assert in_recipe_terms("lower --threads or --batch", "bench") == "lower bench.threads or bench.batch"
    assert in_recipe_terms("--from: no such file", "train") == "train.init_from: no such file"  # train's --from
    # options `slimkit run` has, and words that only look like options, stay
    assert in_recipe_terms("choose another --out, or --force; --set train.epochs=3", "train") == \
        "choose another --out, or --force; --set train.epochs=3"
    assert in_recipe_terms("--batch-size 8", "train") == "train.batch_size 8"


def test_a_run_whose_data_is_missing_stops_before_its_first_stage(tmp_path):
    """A CIFAR-10 recipe without the data wrote its plans (a uniform prune needs no data) and stopped at training."""
    from slimkit.pipeline import run_recipe

    recipe = load_recipe(Path("recipes/cifar10_resnet20_50.yaml"),
                         [f"data.data_dir={tmp_path / 'nowhere'}", "prune.method=uniform", "prune.round_to=8"])
    with pytest.raises(SlimkitError, match=r"^CIFAR-10 not found in .*nowhere: extract .* or pass data.data_dir$"):
        run_recipe(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    r = CliRunner().invoke(app, ["run", "recipes/cifar10_resnet20_50.yaml", "--dry-run", "--out", str(tmp_path / "run"),
                                 "--set", f"data.data_dir={tmp_path / 'nowhere'}"])
    assert r.exit_code == 0 and "the run would stop before its first stage: CIFAR-10 not found" in " ".join(r.output.split())
