"""The CLI as a user meets it: exit codes, one-line errors, artifacts written atomically."""

import json

import pytest
from typer.testing import CliRunner

from slimkit.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *needles):
    assert result.exit_code != 0
    text = result.output.strip()
    assert "Traceback" not in text
    assert text.startswith("error:") and len(text.splitlines()) <= 3  # rich may wrap one line
    for n in needles:
        assert n in text.replace("\n", " ")


def test_models_filter():
    r = run("models", "--filter", "resnet5")
    assert r.exit_code == 0
    assert "torchvision:resnet50" in r.output and "slimkit:resnet56" in r.output


def test_info_shows_counts_and_groups():
    r = run("info", "resnet20", "--groups", "--layers")
    assert r.exit_code == 0, r.output
    assert "40.8M" in r.output and "272.5K" in r.output
    assert "layer1.0.conv1" in r.output


def test_info_s_note_on_the_head_says_which_prune_resizes_it(tmp_path):
    """info said "prune sizes the head for the data (10 classes for Fashion-MNIST)" for every 1000-class
    model, but the default (uniform) prune keeps the model's head: README's `prune mobilenet_v1 --flops
    150M` planned a 1000-class network. Only gate learning takes the classes from its data."""
    r = run("info", "timm:resnet18", "--input-size", "32")
    assert r.exit_code == 0, r.output
    note = " ".join(r.output.split())
    assert "1000-class head" in note and "--method scratch" in note and "uniform" in note, r.output
    out = tmp_path / "plan.json"
    r = run("prune", "timm:resnet18", "--flops", "50%", "--input-size", "32", "--round-to", "8",
            "--no-latency-check", "--no-plot", "--out", out)
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["search"]["full_flops"] == 37_523_456  # the 1000-class head, as info counts
    r = run("info", "torchvision:resnet18", "--input-size", "32")  # no num_classes attribute: its fc's rows
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "1000-class head" in text and "--method scratch" in text, r.output


def test_prune_help_lists_every_backend_it_takes():
    """prune --backend's help listed ort-cpu, ort-cuda, torch, torch-compile, but prune also takes
    openvino-cpu (the latency check and --round-to auto's documented multiple, docs/guide.md)."""
    from slimkit.latency import BACKENDS

    r = runner.invoke(app, ["prune", "--help"], env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.lstrip("│ ").startswith("--backend"))
    assert all(b in line for b in BACKENDS), line


def test_prune_uniform_writes_plan_and_plot(tmp_path):
    out = tmp_path / "plan.json"
    r = run("prune", "mobilenet_v1", "--flops", "150M", "--method", "uniform", "--out", out)
    assert r.exit_code == 0, r.output
    plan = json.loads(out.read_text())
    assert abs(plan["flops"] - 150e6) / 150e6 <= 0.01
    assert plan["budget"] == {"kind": "flops", "text": "150M", "value": 150_000_000}
    assert out.with_suffix(".png").stat().st_size > 1000


@pytest.mark.parametrize("budget", ["50%", "25%"])
def test_prune_with_the_default_method(tmp_path, budget):
    """README's `slimkit prune ARCH --flops X`: the default method (scratch gates, threshold,
    round-to 8), here on synthetic data and a few steps; at 25% ResNet-20's 8-channel steps are
    too coarse for one τ, so the fill (and a swap) path runs and is reported."""
    out = tmp_path / "plan.json"
    r = run("prune", "resnet20", "--flops", budget, "--data", "synthetic", "--steps", "6", "--batch-size", "16",
            "--val-size", "32", "--out", out)
    assert r.exit_code == 0, r.output
    plan = json.loads(out.read_text())
    assert plan["method"] == "scratch" and plan["round_to"] == 8
    assert abs(plan["flops"] - plan["budget"]["value"]) / plan["budget"]["value"] <= 0.01
    assert "gates: chosen at step" in r.output and plan["search"]["selection"] in r.output.replace("\n", " ")
    assert out.with_suffix(".png").stat().st_size > 1000


@pytest.mark.parametrize("args,needles", [
    (["prune", "mobilenet_v11", "--flops", "150M"], ["unknown architecture", "mobilenet_v1"]),
    (["prune", "mobilenet_v1", "--flops", "150X"], ["cannot read FLOPs budget"]),
    (["prune", "mobilenet_v1", "--flops", "2G"], ["above the largest"]),
    (["prune", "mobilenet_v1", "--flops", "1M"], ["below the smallest"]),
    (["prune", "mobilenet_v1"], ["exactly one budget"]),
    (["prune", "mobilenet_v1", "--flops", "50%", "--method", "magic"], ["unknown method"]),
    (["prune", "resnet20", "--flops", "50%", "--method", "uniform", "--tolerance", "0.000001"], ["--round-to 1"]),
    (["info", "torchvision:resnet18", "--in-chans", "1"], ["3-channel"]),
    (["info", "resnet20", "--input-size", "big"], ["--input-size"]),
])
def test_bad_input_is_one_line_error_and_no_plan(tmp_path, args, needles):
    out = tmp_path / "plan.json"
    extra = ["--out", str(out)] if args[0] == "prune" else []
    r = run(*args, *extra)
    assert_one_line_error(r, *needles)
    assert not out.exists()


def test_failed_prune_keeps_existing_plan(tmp_path):
    out = tmp_path / "plan.json"
    out.write_text("precious")
    r = run("prune", "mobilenet_v1", "--flops", "1M", "--out", out)
    assert r.exit_code != 0
    assert out.read_text() == "precious"


@pytest.mark.parametrize("args,needle", [
    (["info", "resnet20", "--input-size", "1,32,32"], "--in-chans"),
    (["info", "resnet20", "--input-size", "3x"], "cannot read --input-size '3x'"),
    (["train", "resnet20", "--epochs", "0"], "--epochs"),
    (["train", "resnet20", "--batch-size", "0"], "--batch-size"),
    (["bench", "x.onnx", "--warmup", "-1"], "--warmup"),
    (["bench", "x.onnx", "--threads", "0"], "--threads"),
])
def test_out_of_range_options_are_usage_errors(tmp_path, args, needle):
    r = runner.invoke(app, args + (["--out", str(tmp_path / "o")] if args[0] != "info" else []))
    assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_a_file_that_is_no_model_is_named_as_such(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    for cmd in ("export", "bench"):
        r = runner.invoke(app, [cmd, str(notes)])
        assert r.exit_code == 2 and "is neither a checkpoint" in r.output, r.output
    r = runner.invoke(app, ["export", str(tmp_path / "missing.txt")])
    assert r.exit_code == 2 and "file not found" in r.output
    assert notes.read_text() == "hello"
