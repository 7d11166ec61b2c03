"""``slimkit export``: checkpoint / plan / architecture -> verified ONNX + a latency report beside it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from rich.markup import escape

from slimkit import validate as limits
from slimkit.cli._common import check_out_parent, checked_numbers, console, parse_input_size, user_errors, warn
from slimkit.errors import SlimkitError


def default_out(source: str) -> Path:
    p = Path(source)
    if p.suffix in (".pt", ".pth"):
        return p.with_name("model.onnx")
    if p.suffix == ".json":
        return p.with_suffix(".onnx")
    return Path(source.split(":")[-1] + ".onnx")


def onnx_metadata(src) -> dict[str, str]:
    """What every exported file carries: slimkit version, plan, source, weights, input size."""
    from slimkit import __version__

    return {"slimkit.version": __version__, "slimkit.plan": src.plan.to_json(), "slimkit.source": src.description,
            "slimkit.weights": "trained" if src.trained else "random init, BN statistics calibrated on noise",
            "slimkit.input_size": "x".join(map(str, src.input_size))}


@user_errors
@checked_numbers(opset=limits.OPSET, batch=limits.SMALL_COUNT, num_classes=limits.SMALL_COUNT, atol=limits.ATOL,
                 threads=limits.SMALL_COUNT, runs=limits.RUNS)
def export(
    source: Annotated[str, typer.Argument(help="A checkpoint from `slimkit train`, a plan JSON (fresh weights), or an architecture name.")],
    onnx: Annotated[bool, typer.Option("--onnx", show_default=False, help="Export to ONNX: always on (the only backend so far); the flag may be given for clarity.")] = True,
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
    threads: Annotated[Optional[int], typer.Option(help="onnxruntime threads for the report (default: physical cores).")] = None,
    runs: Annotated[int, typer.Option(help="Timed rounds for the report.")] = 100,
) -> None:
    """Export to ONNX: checker, simplifier, plan in the metadata, parity vs PyTorch, latency report."""
    from slimkit.exporters import get_exporter
    from slimkit.source import load_source

    del onnx  # always ONNX: the flag exists so a script may say so
    out = out or default_out(source)
    if out.suffix != ".onnx":
        raise SlimkitError(f"--out {out} should end in .onnx")
    if out.is_dir():
        raise SlimkitError(f"--out {out} is a directory; give a file name like {out / 'model.onnx'}")
    check_out_parent(out)
    src = load_source(source, num_classes=num_classes, input_size=parse_input_size(input_size))
    metadata = onnx_metadata(src)
    with console.status(f"exporting {escape(src.description)}"):
        result = get_exporter("onnx")(src.model, src.input_size, out, batch=batch, metadata=metadata, opset=opset,
                                      dynamic_batch=dynamic_batch, simplify=simplify, exporter=exporter, atol=atol,
                                      warn=warn)
    d = result.details
    table = Table(title=escape(f"ONNX export of {src.plan.arch}"), show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    for key, value in (("file", str(out)), ("size", f"{result.size_bytes / 1e6:.2f} MB"),
                       ("exporter", f"{d['exporter']} (opset {d['opset']})"),
                       ("nodes", f"{d['nodes_before']} → {d['nodes_after']}" + ("" if d["simplified"] else " (not simplified)")),
                       ("input", "x".join(map(str, d["input_shape"]))),
                       ("export time", f"{result.export_seconds:.1f} s"),
                       ("parity", f"max |ORT − PyTorch| {d['parity_max_abs_diff']:.1e} (≤ {atol:g}; outputs up to "
                                  f"{d['parity_output_scale']:.3g})")):
        table.add_row(key, escape(value))
    console.print(table)
    if bench:
        _latency_report(src, out, batch, threads, runs)


def _latency_report(src, out: Path, batch: int, threads: int | None, runs: int) -> None:
    """Full model vs the exported one, interleaved, written as OUT.latency.{json,md,png}."""
    from slimkit.cli.bench import _measure, render_report
    from slimkit.latency import Candidate, candidate_from_spec
    from slimkit.source import full_plan_of

    this = Candidate(name=out.stem, input_shape=(batch, *src.input_size), onnx_path=out, spec={"kind": "onnx"},
                     flops=src.plan.flops, params=src.plan.params)
    cands = [this]
    full = full_plan_of(src.plan)
    if full.widths != src.plan.widths or src.plan.expand != 1.0:
        with tempfile.TemporaryDirectory(prefix="slimkit-export-") as tmp:
            ref = candidate_from_spec({"kind": "plan", "plan": full.to_dict()}, Path(tmp), batch,
                                      "full-" + full.arch.split(":")[-1], Path("."))
            report = _measure([ref, this], backend="ort-cpu", threads=threads, warmup=10, runs=runs, device="cpu")
    else:
        report = _measure(cands, backend="ort-cpu", threads=threads, warmup=10, runs=runs, device="cpu")
    render_report(report)
    written = report.write(out.with_suffix(".latency"))
    console.print("wrote " + ", ".join(str(p) for p in [out, *written]), highlight=False, markup=False)
