"""Bad input, tried as a hostile user would (issue 17): each class of input gets a one-line error
naming the problem and the fix, exit 2, no traceback, and nothing written or damaged.

Every class is checked wherever it occurs: the numeric-option test walks every numeric option of
every command, the recipe test every numeric key.
"""

import errno
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import typer
from onnx import TensorProto, helper
from typer.main import get_command
from typer.testing import CliRunner

import slimkit
from slimkit.cli import app
from slimkit.cli._common import SlimkitProgress, user_errors
from slimkit.errors import PlanError, SlimkitError
from slimkit.plan import ChannelPlan, load_plan
from slimkit.recipe import NUMBER_RANGES, SECTIONS, RecipeError, load_recipe, read_yaml
from slimkit.validate import Range, check_number, show

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
MINIMAL = "name: tiny\narch: resnet20\nprune:\n  flops: 50%\n  round_to: 1\n"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *needles):
    """Exit 2, no traceback, and the output ends in one error line (notes printed before it may stay)."""
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text and "error:" in text, text
    error = text[text.rindex("error:"):]
    assert len(error.splitlines()) <= 3, text  # rich may wrap one line
    flat = error.replace("\n", " ")
    for n in needles:
        assert n in flat, text


# ---------------------------------------------------------------------------- class 1
def test_prune_latency_with_the_default_method_runs_end_to_end(tmp_path):
    """The headline command `prune ARCH --latency 50%` (method scratch) used to die printing its summary."""
    out = tmp_path / "plan.json"
    r = run("prune", "resnet20", "--latency", "70%", "--data", "synthetic", "--steps", "4", "--batch-size", "16",
            "--round-to", "1", "--tolerance", "0.3", "--threads", "1", "--out", out)
    assert r.exit_code == 0, r.output
    plan = json.loads(out.read_text())
    assert plan["method"] == "scratch" and plan["latency"]["measured"] is True
    assert "widths from the measured-latency search" in r.output and "Traceback" not in r.output
    assert out.with_suffix(".png").stat().st_size > 1000


# ---------------------------------------------------------------------------- class 2
def _numeric_options():
    cases = []
    for name, cmd in get_command(app).commands.items():
        for p in cmd.params:
            kind = getattr(p.type_descriptor, "annotation", None)
            if kind in (int, float) and p.opts and p.opts[0].startswith("--"):
                cases.append((name, p.opts[0], kind))
    return cases


REQUIRED = {"prune": ["resnet20", "--flops", "50%"], "train": ["resnet20"], "export": ["resnet20"],
            "bench": ["model.onnx"], "info": ["resnet20"], "models": [], "run": ["r.yaml"]}
NUMERIC = _numeric_options()


def test_every_command_has_numeric_options_to_check():
    assert {c for c, _, _ in NUMERIC} >= {"prune", "train", "export", "bench", "info", "models"}
    assert len(NUMERIC) >= 35


@pytest.mark.parametrize("command,option,kind", NUMERIC, ids=[f"{c}{o}" for c, o, _ in NUMERIC])
def test_every_numeric_option_refuses_non_finite_and_absurd_values(tmp_path, command, option, kind):
    bad = ["nan", "inf", "-inf"] if kind is float else ["99999999999999999999999"]
    for value in bad:
        r = runner.invoke(app, [command, *REQUIRED[command], option, value, "--out", str(tmp_path / "o")]
                          if command not in ("info", "models") else [command, *REQUIRED[command], option, value])
        assert_one_line_error(r, option)
        assert not (tmp_path / "o").exists()


def test_gamma_nan_no_longer_plans_every_group_at_width_one(tmp_path):
    out = tmp_path / "plan.json"
    assert_one_line_error(run("prune", "resnet20", "--flops", "50%", "--gamma", "nan", "--out", out),
                          "--gamma must be a finite number")
    assert not out.exists()


def test_python_api_checks_the_same_numbers(tmp_path):
    """...by the names a Python caller wrote (the CLI says --gamma, the API gates.gamma)."""
    with pytest.raises(SlimkitError, match="prune: 'gates.gamma' must be a finite"):
        slimkit.prune("resnet20", "50%", gates=slimkit.GateOptions(gamma=float("nan"), data="synthetic"))
    with pytest.raises(SlimkitError, match="prune: 'expand' must be in"):
        slimkit.prune("resnet20", "50%", method="uniform", expand=-1.0)
    from slimkit.train import TrainConfig, train

    with pytest.raises(SlimkitError, match="train: 'cfg.lr' must be a finite"):
        train("resnet20", tmp_path / "run", TrainConfig(data="synthetic", lr=float("inf")))
    assert not (tmp_path / "run").exists()


def _numeric_recipe_keys():
    import typing
    from dataclasses import fields

    keys = []
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            args = set(typing.get_args(tp)) | {tp}
            if args & {int, float}:
                keys.append(f"{section}.{f.name}")
    return keys


def test_every_numeric_recipe_key_has_a_range():
    assert set(_numeric_recipe_keys()) <= set(NUMBER_RANGES)
    assert "num_classes" in NUMBER_RANGES


@pytest.mark.parametrize("key", sorted(NUMBER_RANGES))
def test_every_numeric_recipe_key_refuses_non_finite_and_huge_values(tmp_path, key):
    path = tmp_path / "r.yaml"
    path.write_text(MINIMAL)
    values = [".nan", ".inf", "-.inf", "1e400"] if not NUMBER_RANGES[key].integer else ["99999999999999999999999"]
    for value in values:
        with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
            load_recipe(path, [f"{key}={value}"])


@pytest.mark.parametrize("option,value", [("--flops", "1e999M"), ("--flops", "1e999"), ("--params", "1e999"),
                                          ("--latency", "1e999ms")])
def test_budgets_that_read_as_infinity_are_refused(tmp_path, option, value):
    assert_one_line_error(run("prune", "resnet20", option, value, "--method", "uniform", "--out", tmp_path / "p.json"),
                          "not a finite number")


def test_recipe_with_an_infinite_lr_fails_the_dry_run(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(MINIMAL + "train:\n  lr: .inf\n")
    assert_one_line_error(run("run", path, "--dry-run", "--out", tmp_path / "run"), "train.lr", "finite")


def test_check_number_ranges():
    assert check_number("x", 0.5, Range(0, 1)) == 0.5
    assert check_number("x", None, Range(0, 1)) is None
    for bad in (float("nan"), -1, 2, True, "1", 10**30):
        with pytest.raises(SlimkitError, match="^x "):
            check_number("x", bad, Range(0, 1))
    with pytest.raises(SlimkitError, match=r"in \(0, 1\)"):
        check_number("x", 1.0, Range(0, 1, low_open=True, high_open=True))
    with pytest.raises(SlimkitError, match="whole number"):
        check_number("x", 1.5, Range(0, 2, integer=True))


# ---------------------------------------------------------------------------- plans (classes 2 and 11)
def _plan(**changes):
    d = {"format": "slimkit.plan/1", "arch": "slimkit:resnet20", "arch_kwargs": {"num_classes": 10},
         "input_size": [3, 32, 32], "groups": {"conv1": {"full": 16, "width": 8}}}
    d.update(changes)
    return d


@pytest.mark.parametrize("changes,needle", [
    ({"expand": -1.0}, "'expand' must be in [1, 16]"),
    ({"expand": float("nan")}, "'expand' must be a finite number"),
    ({"flops": float("inf")}, "'flops'"),
    ({"params": -5}, "'params'"),
    ({"seed": 10**30}, "'seed'"),
    ({"round_to": 0}, "'round_to'"),
    ({"input_size": [3, 32, 10**9]}, "input side"),
    ({"arch_kwargs": {"num_classes": 0}}, "num_classes"),
    ({"budget": {"kind": "flops", "text": "x", "value": float("nan")}}, "budget.value"),
    ({"groups": {"conv1": {"full": 16, "width": 17}}}, "wider than its full model"),
    ({"groups": {"conv1": {"full": 10**9, "width": 8}}}, "'full'"),
])
def test_plans_with_bad_numbers_are_refused(changes, needle):
    with pytest.raises(PlanError) as info:
        ChannelPlan.from_dict(_plan(**changes))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_plan_widened_by_expand_is_still_accepted():
    plan = ChannelPlan.from_dict(_plan(expand=1.25, groups={"conv1": {"full": 16, "width": 20}}))
    assert plan.widths == {"conv1": 20}


def test_cli_refuses_a_plan_wider_than_its_model(tmp_path):
    path = tmp_path / "wide.json"
    path.write_text(json.dumps(_plan(groups={"conv1": {"full": 16, "width": 64}})))
    for cmd, out in (("export", tmp_path / "o.onnx"), ("train", tmp_path / "run"), ("bench", tmp_path / "lat")):
        assert_one_line_error(run(cmd, path, "--out", out), "wider than its full model")
        assert not out.exists()


# ---------------------------------------------------------------------------- class 3
def test_nan_outputs_fail_export_parity(tmp_path):
    from slimkit.exporters import ExportError
    from slimkit.exporters.onnx import export

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="NaN or inf"):
        export(model, (3, 8, 8), out, exporter="torchscript", simplify=False)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_parity_does_not_count_nan_as_agreement():
    from slimkit.exporters import ExportError
    from slimkit.exporters.onnx import parity

    class Nan(torch.nn.Module):
        def forward(self, x):
            return x * float("nan")

    proto = helper.make_model(helper.make_graph(
        [helper.make_node("Mul", ["input", "c"], ["logits"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 2, 2])],
        [helper.make_tensor("c", TensorProto.FLOAT, [1], [float("nan")])]), opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    with pytest.raises(ExportError, match="NaN or inf"):
        parity(Nan(), proto.SerializeToString(), (3, 2, 2), [1])


# ---------------------------------------------------------------------------- class 5
def test_prune_out_under_a_file_and_over_a_non_plan(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run("prune", "resnet20", "--flops", "50%", "--method", "uniform", "--round-to", "1",
                              "--out", blocker / "plan.json"), "is a file, not a folder")
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    assert_one_line_error(run("prune", "resnet20", "--flops", "50%", "--method", "uniform", "--round-to", "1",
                              "--out", notes), "not the plan written by slimkit", "will not replace")
    assert notes.read_text() == '{"mine": 1}'
    ok = tmp_path / "plan.json"  # an old plan may be replaced
    assert run("prune", "resnet20", "--flops", "50%", "--method", "uniform", "--round-to", "1", "--no-plot",
               "--out", ok).exit_code == 0
    assert run("prune", "resnet20", "--flops", "40%", "--method", "uniform", "--round-to", "1", "--no-plot",
               "--out", ok).exit_code == 0
    assert load_plan(ok).budget["text"] == "40%"


def test_folder_commands_refuse_a_file_as_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run("train", "resnet20", "--data", "synthetic", "--out", blocker), "is a file")
    assert_one_line_error(run("train", "resnet20", "--data", "synthetic", "--out", blocker / "run"),
                          "is a file, not a folder")
    assert_one_line_error(run("export", "resnet20", "--out", blocker / "m.onnx"), "is a file, not a folder")
    assert_one_line_error(run("bench", "m.onnx", "--out", blocker / "lat"), "is a file, not a folder")
    assert blocker.read_text() == "x"


def test_a_full_disk_is_one_line_and_keeps_the_old_plan(tmp_path, monkeypatch):
    import slimkit.files as files_module

    out = tmp_path / "plan.json"
    assert run("prune", "resnet20", "--flops", "50%", "--method", "uniform", "--round-to", "1", "--no-plot",
               "--out", out).exit_code == 0
    before = out.read_text()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path))

    monkeypatch.setattr(files_module.tempfile, "mkstemp", full)
    r = run("prune", "resnet20", "--flops", "40%", "--method", "uniform", "--round-to", "1", "--no-plot", "--out", out)
    assert_one_line_error(r, "No space left on device", "the disk is full")  # after the plan's table
    assert out.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


@pytest.mark.parametrize("exc,needle", [
    (OSError(errno.EROFS, "Read-only file system", "/x/plan.json"), "read-only: choose a writable --out"),
    (RuntimeError("write failed"), None),  # not a file-system error: stays a bug report (traceback)
    (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), "torch.save could not write"),
])
def test_write_failures_from_libraries_are_named(exc, needle):
    tiny = typer.Typer()

    @tiny.command()
    @user_errors
    def go() -> None:
        raise exc

    r = runner.invoke(tiny, [])
    if needle is None:
        assert r.exit_code != 0 and isinstance(r.exception, RuntimeError)
    else:
        assert_one_line_error(r, needle)


def test_a_full_disk_met_by_torch_save_names_the_checkpoint(tmp_path, monkeypatch):
    # torch.save on a full disk (a 400 KB tmpfs) raised "basic_ios::clear: iostream error" and, closing the
    # archive, "[enforce fail at inline_container.cc:672] . unexpected pos 343872 vs 343760": no errno, no
    # file name, and the run ended in a traceback
    def full_disk(obj, f, *args, **kwargs):
        try:
            raise RuntimeError("basic_ios::clear: iostream error")
        except RuntimeError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 343872 vs 343760")

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "run"
    r = run("train", "resnet20", "--data", "synthetic", "--epochs", "1", "--max-steps-per-epoch", "1",
            "--batch-size", "4", "--out", out)
    assert_one_line_error(r, f"torch.save could not write the file: {out / 'checkpoint.pt'}", "is the disk full")
    assert not list(out.glob(".checkpoint.pt*"))  # no temporary file left behind


def test_a_writer_s_own_error_is_not_taken_for_a_failed_write(tmp_path):
    """atomic_write reported any error whose context held an OSError as a write error on the output file:
    an error raised `from None` inside `except OSError`, or any text with 'unexpected pos' in it."""
    from slimkit.errors import SlimkitError
    from slimkit.files import atomic_write

    def damaged(_tmp):
        try:
            open(tmp_path / "missing.bin")
        except OSError:
            raise SlimkitError("the plan is damaged") from None

    with pytest.raises(SlimkitError, match="the plan is damaged"):
        atomic_write(tmp_path / "out.bin", damaged)

    def odd(_tmp):
        raise RuntimeError("unexpected position of the gates")

    with pytest.raises(RuntimeError, match="unexpected position"):
        atomic_write(tmp_path / "out.bin", odd)


def test_a_full_disk_wrapped_by_a_library_is_found_through_the_cause():
    from slimkit.errors import os_error_in

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("export failed at aten::conv2d") from inner
    except RuntimeError as outer:
        assert os_error_in(outer).errno == errno.ENOSPC


def test_a_full_disk_during_export_is_not_blamed_on_an_op(tmp_path, monkeypatch):
    import slimkit.exporters.onnx as onnx_export

    def full(*args, **kwargs):
        raise RuntimeError("failed to export aten::conv2d") from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx_export, "_torch_export", full)
    r = run("export", "resnet20", "--out", tmp_path / "m.onnx", "--no-bench")
    assert_one_line_error(r, "No space left on device")
    assert "aten" not in r.output and not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------------------- class 6
@pytest.mark.parametrize("name", ["res[/]net", "resnet[red]20", "[bold]x[/bold]"])
def test_user_text_is_never_read_as_markup(name):
    r = run("info", name)
    assert_one_line_error(r, f"unknown architecture '{name}'")


def test_paths_with_brackets_print_as_given(tmp_path):
    out = tmp_path / "a[/]b" / "plan[red].json"
    r = run("prune", "resnet20", "--flops", "50%", "--method", "uniform", "--round-to", "1", "--no-plot", "--out", out)
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.output.replace("\n", "") and out.is_file()


def test_did_you_mean_lists_each_name_once():
    r = run("info", "resnet5")
    text = r.output.split("did you mean", 1)[1].split("?")[0]
    names = [n.strip() for n in text.split(",")]
    assert len(names) == len(set(names)) >= 2


# ---------------------------------------------------------------------------- class 9
def _onnx_model(path, inputs, shape=(1, 3, 8, 8), meta=None):
    nodes, graph_inputs = [], []
    for i, elem in enumerate(inputs):
        graph_inputs.append(helper.make_tensor_value_info(f"in{i}", elem, list(shape)))
    nodes.append(helper.make_node("Identity", ["in0"], ["logits"]))
    graph = helper.make_graph(nodes, "g", graph_inputs,
                              [helper.make_tensor_value_info("logits", inputs[0], list(shape))])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    if meta is not None:
        helper.set_model_props(proto, {"slimkit.plan": meta})
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("kind,needle", [
    ("two-inputs", "takes 2 inputs"),
    ("int-input", "takes int64 input"),
    ("absurd-shape", "too large to time"),
    ("bad-json", "slimkit.plan metadata is damaged"),
    ("not-a-plan", "slimkit.plan metadata is damaged"),
    ("nan-plan", "slimkit.plan metadata is damaged"),
])
def test_bench_refuses_onnx_files_slimkit_did_not_write(tmp_path, kind, needle):
    f = tmp_path / "m.onnx"
    if kind == "two-inputs":
        _onnx_model(f, [TensorProto.FLOAT, TensorProto.FLOAT])
    elif kind == "int-input":
        _onnx_model(f, [TensorProto.INT64])
    elif kind == "absurd-shape":
        _onnx_model(f, [TensorProto.FLOAT], shape=(1, 3, 100000, 100000))
    elif kind == "bad-json":
        _onnx_model(f, [TensorProto.FLOAT], meta="{not json")
    elif kind == "not-a-plan":
        _onnx_model(f, [TensorProto.FLOAT], meta="[1, 2]")
    else:
        _onnx_model(f, [TensorProto.FLOAT], meta=json.dumps(_plan(expand=float("nan"))))
    r = run("bench", f, "--runs", "5", "--warmup", "0", "--out", tmp_path / "lat")
    assert_one_line_error(r, needle)
    assert not list(tmp_path.glob("lat*"))


@pytest.mark.parametrize("field,value", [("flops", 12345), ("params", 0), ("flops", 10**15)])
def test_bench_recounts_the_plan_in_onnx_metadata_instead_of_showing_an_edited_count(tmp_path, field, value):
    plan = json.loads(slimkit.prune("resnet20", "50%", method="uniform", num_classes=10, round_to=1).to_json())
    f = _onnx_model(tmp_path / "m.onnx", [TensorProto.FLOAT], shape=(1, 3, 32, 32),
                    meta=json.dumps({**plan, field: value}))
    r = run("bench", f, "--runs", "5", "--warmup", "0", "--out", tmp_path / "lat")
    assert_one_line_error(r, f"'{field}' says {value}", "re-export")
    assert not list(tmp_path.glob("lat*"))
    _onnx_model(f, [TensorProto.FLOAT], shape=(1, 3, 32, 32), meta=json.dumps(plan))  # as exported: timed
    r = run("bench", f, "--runs", "5", "--warmup", "0", "--out", tmp_path / "lat")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "lat.json").read_text())["models"][0]["flops"] == plan["flops"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_bench_torch_on_an_absent_gpu_is_one_line(tmp_path):
    f = _onnx_model(tmp_path / "m.onnx", [TensorProto.FLOAT])
    assert_one_line_error(run("bench", f, "--backend", "torch", "--device", "cuda", "--out", tmp_path / "lat"),
                          "no CUDA GPU")
    assert_one_line_error(run("bench", f, "--device", "tpu", "--out", tmp_path / "lat"), "unknown --device 'tpu'")


# ---------------------------------------------------------------------------- class 10
def _image_folder(root: Path, bad: bool = True) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(d / f"{i}.png")
    if bad:
        (root / "train" / "b" / "notes.jpg").write_text("not an image")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_a_non_image_in_an_image_folder_names_the_file_and_writes_nothing(tmp_path, workers):
    data = _image_folder(tmp_path / "data")
    out = tmp_path / "run"
    r = run("train", "resnet20", "--data", f"imagefolder:{data}", "--epochs", "1", "--batch-size", "3",
            "--workers", workers, "--no-augment", "--out", out)
    assert_one_line_error(r, "cannot read image", "notes.jpg", "remove or replace")
    assert not out.exists()


# ---------------------------------------------------------------------------- class 11
def test_opset_the_exporter_would_replace_is_refused(tmp_path):
    from slimkit.exporters import ExportError
    from slimkit.exporters.onnx import export

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    with pytest.raises(ExportError, match="wrote opset 18, not the --opset 9"):
        export(model, (3, 8, 8), tmp_path / "m.onnx", opset=9, exporter="dynamo", simplify=False)
    result = export(model, (3, 8, 8), tmp_path / "m.onnx", opset=9, exporter="auto", simplify=False)
    assert result.details["opset"] == 9 and result.details["exporter"] == "torchscript"


def test_export_options_out_of_range_name_the_option(tmp_path):
    assert_one_line_error(run("export", "resnet20", "--atol", "-1", "--out", tmp_path / "m.onnx"), "--atol")
    assert_one_line_error(run("export", "resnet20", "--opset", "3", "--out", tmp_path / "m.onnx"), "--opset")
    assert not (tmp_path / "m.onnx").exists()


def test_a_batch_larger_than_the_data_trains_nothing_and_says_so(tmp_path):
    out = tmp_path / "run"
    r = run("train", "resnet20", "--data", "synthetic", "--batch-size", "4096", "--epochs", "1", "--out", out)
    assert_one_line_error(r, "--batch-size 4096 is larger than the 512 training images")
    assert not out.exists()


def test_a_gate_batch_larger_than_the_data_is_refused_not_looped_forever(tmp_path):
    out = tmp_path / "plan.json"
    r = run("prune", "resnet20", "--flops", "50%", "--data", "synthetic", "--batch-size", "4096", "--steps", "3",
            "--out", out)
    assert_one_line_error(r, "gate batch size 4096 is larger than the 448 training images")
    assert not out.exists()


def test_negative_expand_is_refused_everywhere(tmp_path):
    assert_one_line_error(run("prune", "resnet20", "--flops", "50%", "--expand", "-1", "--out", tmp_path / "p.json"),
                          "--expand")
    path = tmp_path / "r.yaml"
    path.write_text(MINIMAL + "  expand: -1\n")
    with pytest.raises(RecipeError, match="prune.expand"):
        load_recipe(path)


# ---------------------------------------------------------------------------- class 12
BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    start = time.perf_counter()
    with pytest.raises(RecipeError, match="expands to"):
        read_yaml(BILLION_LAUGHS)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS + "name: *i\narch: resnet20\n")
    assert_one_line_error(run("run", bomb, "--dry-run", "--out", tmp_path / "run"), "expands to", "aliases")
    assert_one_line_error(run("run", bomb, "--set", "name=tiny"), "expands to")
    assert time.perf_counter() - start < 20
    assert read_yaml("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}  # a few aliases are fine


def test_error_messages_print_bounded_reprs():
    huge = [[list(range(1000))] * 1000] * 1000  # shared rows: a full repr would be gigabytes
    start = time.perf_counter()
    text = show(huge)
    assert len(text) <= 60 and time.perf_counter() - start < 1
    with pytest.raises(RecipeError) as info:
        from slimkit.recipe import parse_recipe

        parse_recipe({"name": "t", "arch": "resnet20", "prune": {"flops": "50%"}, "train": huge})
    assert len(str(info.value)) < 300


# ---------------------------------------------------------------------------- the first hour
def test_progress_prints_plain_lines_when_not_a_terminal():
    import io

    from rich.console import Console

    buf = io.StringIO()
    progress = SlimkitProgress(console=Console(file=buf, force_terminal=False, width=200), plain_every=0,
                               transient=True)
    with progress:
        phase = progress.add_task("tracing resnet20", total=None)
        task = progress.add_task("learning gates  loss 2.3", total=10)
        assert [t.id for t in progress.tasks] == [task]  # the spinner phase ended with it
        progress.remove_task(phase)  # already gone: no error
        for _ in range(10):
            progress.update(task, advance=1)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    assert all("learning gates  loss 2.3: " in ln for ln in lines) and len(lines) == 10
    assert lines and "1/10" in lines[0] and "ETA" in lines[0] and "10/10 (100%)" in lines[-1]


def test_progress_lines_are_rate_limited():
    import io

    from rich.console import Console

    buf = io.StringIO()
    progress = SlimkitProgress(console=Console(file=buf, force_terminal=False), plain_every=3600, transient=True)
    with progress:
        task = progress.add_task("epoch 1", total=100)
        for _ in range(99):
            progress.advance(task)
    assert "epoch 1" not in buf.getvalue()  # nothing before the hour is up or the task ends


@pytest.mark.parametrize("value", ["abc", "nan", "-1", "inf"])
def test_a_bad_progress_interval_in_the_environment_is_one_line(tmp_path, monkeypatch, value):
    monkeypatch.setenv("SLIMKIT_PROGRESS_SECONDS", value)
    r = subprocess.run([sys.executable, "-m", "slimkit", "prune", "resnet20", "--flops", "50%", "--method", "uniform",
                        "--out", str(tmp_path / "p.json")], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout, r.stderr
    assert "SLIMKIT_PROGRESS_SECONDS" in r.stdout + r.stderr and not (tmp_path / "p.json").exists()


def test_input_channels_given_twice_must_agree(tmp_path):
    for args in (["info", "resnet20"], ["prune", "resnet20", "--flops", "50%", "--method", "uniform", "--out",
                                        tmp_path / "p.json"]):
        assert_one_line_error(run(*args, "--in-chans", 2, "--input-size", "5,32,32"), "5 input channels",
                              "--in-chans 2")
    assert not (tmp_path / "p.json").exists()
    r = run("info", "resnet20", "--in-chans", 2, "--input-size", "2,32,32")
    assert r.exit_code == 0 and "input [2, 32, 32]" in r.output, r.output
    r = run("info", "resnet20", "--in-chans", 2, "--input-size", "32")
    assert r.exit_code == 0 and "input [2, 32, 32]" in r.output, r.output


def test_help_reads_cleanly():
    for cmd in ("prune", "train", "export", "bench", "info", "run", "models"):
        r = run(cmd, "--help")
        usage = next(line for line in r.output.splitlines() if "Usage:" in line)
        assert r.exit_code == 0 and "<bool>" not in r.output and "{" not in usage, r.output
    r = run("prune", "--help")
    assert "[OPTIONS] ARCH" in r.output
    assert "latency" in r.output.split("Arguments")[0]  # the summary names latency budgets
    assert "[default: True]" not in run("export", "--help").output
    assert "<bool>" not in run("--help").output


def test_help_paragraphs_wrap_to_the_terminal():
    import typer

    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        paragraphs = (cmd.help or "").split("\n\n")
        assert all("\n" not in p for p in paragraphs), f"{name}: a source line break would wrap mid-sentence"


def test_info_explains_the_head_behind_568_vs_567():
    r = run("info", "mobilenet_v1")
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "1000-class head" in text and "--num-classes 10" in text


def test_one_epoch_is_singular(tmp_path):
    r = run("train", "resnet20", "--data", "synthetic", "--epochs", "1", "--max-steps-per-epoch", "2",
            "--batch-size", "32", "--budget", "fixed", "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    # The progress log line starts with a wall-clock time ("21:58:51 epochs: 1/1"), so look for a
    # whole-word "1 epochs", not the substring.
    assert "after 1 epoch;" in r.output and "/ 0 val /" not in r.output
    assert not re.search(r"(?<![\d:])1 epochs", r.output), r.output


def test_license_is_an_spdx_string():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"


def test_latency_plot_survives_an_outlier(tmp_path):
    from slimkit.latency import LatencyReport
    from slimkit.plots import plot_latency

    times = {"full": [1.0] * 99 + [500.0], "thin": [0.5] * 100}
    models = [{"name": n, "stats": {"median_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99))},
               "ratio": r} for (n, t), r in zip(times.items(), (1.0, 0.5))]
    report = LatencyReport("ort-cpu", "cpu", 1, 1, 0, 100, models, times)
    png = plot_latency(report, tmp_path / "lat.png")
    assert png.stat().st_size > 1000


def test_bench_out_with_a_report_suffix_names_the_report_not_a_stem(tmp_path):
    """`--out lat.json` wrote lat.json.json, lat.json.md and lat.json.png."""
    f = _onnx_model(tmp_path / "m.onnx", [TensorProto.FLOAT])
    r = run("bench", f, "--runs", "5", "--warmup", "0", "--out", tmp_path / "lat.json")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.glob("lat*")) == ["lat.json", "lat.md", "lat.png"]


@pytest.mark.parametrize("args,needle", [
    (["export", "{d}"], "is a folder, not a plan file"),
    (["bench", "{d}"], "is a folder, not a plan file"),
    (["run", "{d}", "--dry-run"], "is a folder, not a recipe file"),
])
def test_a_folder_given_as_a_plan_or_recipe_says_so(tmp_path, args, needle):
    """A folder where a plan or recipe file is expected was reported as 'not found'."""
    d = tmp_path / "plan.json"
    d.mkdir()
    assert_one_line_error(run(*[a.format(d=d) for a in args]), needle)


@pytest.mark.parametrize("command", [["bench", "m.onnx"], ["export", "resnet20", "--out", "m.onnx"],
                                     ["prune", "resnet20", "--latency", "50%", "--out", "p.json"]])
def test_threads_beyond_what_a_runtime_can_start_are_refused_up_front(command, tmp_path):
    # --threads 65536 was accepted: onnxruntime started 32,000 threads and hung for minutes on 9 GB,
    # deaf to SIGTERM, before timing anything
    r = run(*command, "--threads", "65536")
    assert_one_line_error(r, "--threads must be in [1, 1024], got 65536")
    (tmp_path / "r.yaml").write_text(MINIMAL + "bench:\n  threads: 65536\n")
    with pytest.raises(RecipeError, match=r"bench.threads must be in \[1, 1024\]"):
        load_recipe(tmp_path / "r.yaml")
