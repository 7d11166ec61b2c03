"""What a new user sees first: the demo's closing summary, and tables and progress that fit an
80-column terminal."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

from rich.console import Console

from slimkit.cli import bench as bench_cli
from slimkit.latency import LatencyReport

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("demo_summary", ROOT / "bench" / "demo_summary.py")
demo_summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo_summary)


def _model(name: str, ratio: float) -> dict:
    stats = {"min_ms": 1.0, "median_ms": 1.0 * ratio, "p90_ms": 1.1, "p99_ms": 1.2, "mean_ms": 1.0, "std_ms": 0.1,
             "throughput_per_s": 1000.0}
    return {"name": name, "input_shape": [1, 3, 32, 32], "onnx": None, "flops": 20_361_616, "params": 120_186,
            "stats": stats, "ratio": ratio, "ratio_ci": [ratio - 0.01, ratio + 0.01]}


def _report() -> LatencyReport:
    return LatencyReport(backend="ort-cpu", device="AMD EPYC (2 cores)", threads=2, batch=1, warmup=10, runs=100,
                         models=[_model("full-resnet20", 1.0), _model("resnet20_50pct/model", 0.62),
                                 _model("resnet20_50pct/model.int8", 0.75)], times_ms={})


def test_the_latency_table_keeps_file_names_whole_at_80_columns(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(bench_cli, "console", Console(file=out, width=80))
    bench_cli.render_report(_report())
    text = out.getvalue()
    assert "resnet20_50pct/model.int8" in text, text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_the_demo_ends_with_what_was_made_where_how_fast_and_how_accurate(tmp_path):
    root = tmp_path / "demo"
    r20 = root / "resnet20_50pct"
    r20.mkdir(parents=True)
    (root / "resnet20_50pct.json").write_text(json.dumps(
        {"flops": 20_361_616, "params": 120_186, "search": {"full_flops": 40_813_184}}))
    (r20 / "metrics.json").write_text(json.dumps({"epochs": 3, "final": {"test_top1": 0.8912}}))
    (r20 / "model.int8.check.json").write_text(json.dumps(
        {"check": {"fp32_top1": 0.8915, "int8_top1": 0.8901, "images": 10000}}))
    (r20 / "model.latency.json").write_text(json.dumps(_report().to_dict(with_times=False)))
    (r20 / "model.onnx").write_bytes(b"x" * 490_000)
    (r20 / "model.int8.onnx").write_bytes(b"x" * 170_000)
    text = demo_summary.summary(root, seconds=600)
    for needle in ("done in 10 min", "89.12%", "89.15% fp32, 89.01% int8", "fp32 0.62x, int8 0.75x",
                   f"{r20}/model.int8.onnx   int8 ONNX (0.17 MB)", "20.4M MACs of 40.8M", "Try next:",
                   f"{root}/mobilenet_v1_150M.onnx   it as ONNX (missing)"):
        assert needle in text, text


def _summary() -> dict:
    row = {"macs": 20_361_616, "params": 120_186, "test_top1": 0.10938, "epochs": 1, "latency_median_ms": 0.311,
           "latency_ratio": 0.805, "int8_top1": 0.10938, "int8_latency_median_ms": 0.205, "int8_latency_ratio": 0.464}
    return {"recipe": "tiny", "arch": "slimkit:resnet20",
            "models": [{"name": "pruned", **row}, {"name": "uniform", **row}, {"name": "full", **row}]}


def test_the_run_summary_keeps_every_number_whole_at_80_and_at_40_columns(monkeypatch):
    """Rich squeezed the ten columns of an int8 run's summary by cutting every cell ("120.…", "10.9…",
    "prun…") at 80 columns, and to nothing but "…" at 40."""
    from slimkit.cli import run as run_cli

    for width in (80, 40):
        out = io.StringIO()
        monkeypatch.setattr(run_cli, "console", Console(file=out, width=width))
        run_cli.render_summary(_summary())
        text = out.getvalue()
        assert "…" not in text, text
        for cell in ("pruned", "uniform", "20.4M", "120.2K", "10.94%", "0.311", "0.805×", "0.464×"):
            assert cell in text, text
        if width == 80:
            assert max(len(line) for line in text.splitlines()) <= 80, text


def test_the_latency_table_keeps_numbers_whole_at_40_columns(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(bench_cli, "console", Console(file=out, width=40))
    bench_cli.render_report(_report())
    text = out.getvalue()
    for cell in ("20.4M", "0.620", "0.610–0.630"):
        assert cell in text, text
    assert "resnet20_" in text, text


def test_a_table_too_wide_for_the_terminal_uses_the_terminal_s_width(monkeypatch):
    """print_table gave a table wider than the terminal each column at its longest word, and no more: the
    export table's parity text ('300 detections on both, 300 matched; max |ORT − PyTorch|: ...') wrapped a
    word or two a line in a 13-cell column of a 120-column terminal."""
    from rich.table import Table

    from slimkit.cli._common import print_table

    parity = ("300 detections on both, 300 matched; max |ORT − PyTorch|: boxes 4.6e-04 (≤ 0.013); "
              "scores 4.3e-06 (≤ 0.0001); and a few more words so that the row is wider than the terminal")
    for width in (120, 80):
        table = Table(title="ONNX export of torchvision:ssdlite320_mobilenet_v3_large", show_header=False)
        table.add_column("key")
        table.add_column("value", justify="right")
        table.add_row("file", "ssd50.onnx")
        table.add_row("parity (fixed image)", parity)
        out = io.StringIO()
        print_table(table, Console(file=out, width=width))
        lines = out.getvalue().splitlines()
        assert max(len(line) for line in lines) <= width, out.getvalue()
        assert max(len(line) for line in lines) >= width - 4, out.getvalue()  # the spare width is used
        assert sum("│" in line for line in lines) <= 4, out.getvalue()  # parity in 3 lines at most, not 20


def test_the_headline_commands_run_one_after_another_with_their_defaults(tmp_path, monkeypatch):
    """`make demo` (prune resnet20 --flops 50%, then train, then export) and the mission's `prune ARCH
    --flops ...` then `train` were refused for sessions once uniform plans kept the model's own head, and
    nothing ran them: here they run through the CLI, defaults untouched except for tiny sizes and data."""
    from typer.testing import CliRunner

    from slimkit.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLIMKIT_NO_TIMING", "1")
    runner = CliRunner()
    for arch, extra in (("resnet20", []), ("timm:test_resnet", ["--input-size", "32"])):  # 10 and 1000 classes
        name = arch.replace(":", "_")
        steps = [["prune", arch, "--flops", "50%", *extra, "--out", f"{name}.json"],
                 ["train", f"{name}.json", "--data", "synthetic", "--epochs", "1", "--max-steps-per-epoch", "1",
                  "--batch-size", "8", "--out", name],
                 ["export", f"{name}/checkpoint.pt", "--onnx", "--no-bench"]]
        for args in steps:
            r = runner.invoke(app, args)
            assert r.exit_code == 0, (args, r.output)
        assert (tmp_path / name / "model.onnx").is_file()
