"""``slimkit export``: checkpoint / plan / architecture -> verified ONNX + a latency report beside it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from slimkit.artifacts import LoadedModel, default_export_path, load_model, onnx_metadata, plan_candidate
from slimkit.cli._common import console, err_console, parse_input_size, user_errors
from slimkit.cli.bench import measure_with_progress, render_report
from slimkit.errors import SlimkitError
from slimkit.exporters import get_exporter
from slimkit.latency import Candidate


@user_errors
def export(
    source: Annotated[str, typer.Argument(help="A checkpoint from `slimkit train`, a plan JSON (fresh weights), or an architecture name.")],
    onnx: Annotated[bool, typer.Option("--onnx", help="Export to ONNX (the default, and so far the only backend).")] = True,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="File to write (default: model.onnx beside a checkpoint, PLAN.onnx beside a plan).")] = None,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset (default: the exporter's).")] = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Make the batch dimension dynamic.")] = False,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Run onnx-simplifier (a failure only warns).")] = True,
    exporter: Annotated[str, typer.Option(help="auto (dynamo, falling back to torchscript), dynamo or torchscript.")] = "auto",
    batch: Annotated[int, typer.Option(help="Batch size of the exported input.")] = 1,
    num_classes: Annotated[Optional[int], typer.Option(help="Classes, for an architecture name (default: the model's).")] = None,
    input_size: Annotated[Optional[str], typer.Option(help="Input size, for an architecture name, e.g. 224.")] = None,
    atol: Annotated[float, typer.Option(help="Largest allowed |onnxruntime - PyTorch| on random inputs (fp32).")] = 1e-4,
    bench: Annotated[bool, typer.Option("--bench/--no-bench", help="Write a latency report (full model vs this one) beside the file.")] = True,
    threads: Annotated[Optional[int], typer.Option(min=1, help="onnxruntime threads for the report (default: physical cores).")] = None,
    runs: Annotated[int, typer.Option(min=1, help="Timed rounds for the report.")] = 100,
) -> None:
    """Export to ONNX: checker, simplifier, plan in the metadata, parity vs PyTorch, latency report."""
    if not onnx:
        raise SlimkitError("choose an export backend: --onnx")
    out = out or default_export_path(source)
    if out.suffix != ".onnx":
        raise SlimkitError(f"--out {out} should end in .onnx")
    if out.is_dir():
        raise SlimkitError(f"--out {out} is a directory; give a file name like {out / 'model.onnx'}")
    src = load_model(source, num_classes=num_classes, input_size=parse_input_size(input_size))
    metadata = onnx_metadata(src)
    with console.status(f"exporting {src.description}"):
        result = get_exporter("onnx")(src.model, src.input_size, out, batch=batch, metadata=metadata, opset=opset,
                                      dynamic_batch=dynamic_batch, simplify=simplify, exporter=exporter, atol=atol,
                                      warn=lambda m: err_console.print(f"[yellow]warning:[/] {m}", highlight=False))
    d = result.details
    table = Table(title=f"ONNX export of {src.plan.arch}", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    for key, value in (("file", str(out)), ("size", f"{result.size_bytes / 1e6:.2f} MB"),
                       ("exporter", f"{d['exporter']} (opset {d['opset']})"),
                       ("nodes", f"{d['nodes_before']} → {d['nodes_after']}" + ("" if d["simplified"] else " (not simplified)")),
                       ("input", "x".join(map(str, d["input_shape"]))),
                       ("export time", f"{result.export_seconds:.1f} s"),
                       ("parity", f"max |ORT − PyTorch| {d['parity_max_abs_diff']:.1e} (≤ {atol:g}; outputs up to "
                                  f"{d['parity_output_scale']:.3g})")):
        table.add_row(key, value)
    console.print(table)
    if bench:
        _latency_report(src, out, batch, threads, runs)


def _latency_report(src: LoadedModel, out: Path, batch: int, threads: int | None, runs: int) -> None:
    """Full model vs the exported one, interleaved, written as OUT.latency.{json,md,png}."""
    this = Candidate(name=out.stem, input_shape=(batch, *src.input_size), onnx_path=out, spec={"kind": "onnx"},
                     flops=src.plan.flops, params=src.plan.params)
    cands = [this]
    full = src.plan.unpruned()
    if full.widths != src.plan.widths or src.plan.expand != 1.0:
        with tempfile.TemporaryDirectory(prefix="slimkit-export-") as tmp:
            ref = plan_candidate(full, Path(tmp), batch, "full-" + full.arch.split(":")[-1])
            report = measure_with_progress([ref, this], backend="ort-cpu", threads=threads, warmup=10, runs=runs, device="cpu")
    else:
        report = measure_with_progress(cands, backend="ort-cpu", threads=threads, warmup=10, runs=runs, device="cpu")
    render_report(report)
    written = report.write(out.with_suffix(".latency"))
    console.print("wrote " + ", ".join(str(p) for p in [out, *written]), highlight=False)
