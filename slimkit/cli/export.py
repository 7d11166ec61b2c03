"""``slimkit export``: checkpoint / plan / architecture -> verified ONNX + a latency report beside it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from rich.markup import escape

from slimkit import registry
from slimkit import validate as limits
from slimkit.artifacts import (LoadedModel, default_export_path, load_model, onnx_metadata,
                               reference_candidate)
from slimkit.cli._common import (ARCH_KWARGS_HELP, check_out_parent, checked_numbers, console, make_progress,
                                 parse_arch_kwargs, parse_input_size, user_errors, warn)
from slimkit.cli.bench import measure_with_progress, render_report
from slimkit.data import load_data
from slimkit.errors import SlimkitError
from slimkit.exporters import get_exporter
from slimkit.exporters.int8 import QuantizeSettings, export_int8
from slimkit.latency import Candidate


@user_errors
@checked_numbers(opset=limits.OPSET, batch=limits.SMALL_COUNT, num_classes=limits.SMALL_COUNT, atol=limits.ATOL,
                 threads=limits.SMALL_COUNT, runs=limits.RUNS, calib_images=limits.COUNT,
                 max_drop=limits.Range(0.0, 100.0), max_output_error=limits.Range(0.0, 1e6), eval_images=limits.COUNT)
def export(
    source: Annotated[str, typer.Argument(help="A checkpoint from `slimkit train`, a plan JSON (fresh weights), or an architecture name or python: factory.")],
    onnx: Annotated[bool, typer.Option("--onnx", show_default=False, help="Export to ONNX: always on (the only backend so far); the flag may be given for clarity.")] = True,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="File to write (default: model.onnx beside a checkpoint, PLAN.onnx beside a plan).")] = None,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset (default: the exporter's).")] = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Make the batch dimension dynamic.")] = False,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Run onnx-simplifier (a failure only warns).")] = True,
    exporter: Annotated[str, typer.Option(help="auto (dynamo, falling back to torchscript), dynamo or torchscript.")] = "auto",
    batch: Annotated[int, typer.Option(help="Batch size of the exported input.")] = 1,
    num_classes: Annotated[Optional[int], typer.Option(help="Classes, for an architecture name (default: the model's).")] = None,
    input_size: Annotated[Optional[str], typer.Option(help="Input size, for an architecture name, e.g. 224.")] = None,
    atol: Annotated[float, typer.Option(help="Largest allowed |onnxruntime - PyTorch| on random inputs (fp32), times the largest |output| when that exceeds 1.")] = 1e-4,
    bench: Annotated[bool, typer.Option("--bench/--no-bench", help="Write a latency report (full model vs this one) beside the file.")] = True,
    threads: Annotated[Optional[int], typer.Option(help="onnxruntime threads for the report (default: physical cores).")] = None,
    runs: Annotated[int, typer.Option(help="Timed rounds for the report.")] = 100,
    int8: Annotated[bool, typer.Option("--int8", help="Also write OUT.int8.onnx: onnxruntime static quantization (QDQ, per-channel), checked against fp32.")] = False,
    data: Annotated[Optional[str], typer.Option(help="--int8 calibration and check data: fashion-mnist, cifar10, cifar100, imagefolder:PATH, synthetic (default: a checkpoint's training data).")] = None,
    data_dir: Annotated[Optional[str], typer.Option(help="Where --data lives (default: a checkpoint's).")] = None,
    calib_images: Annotated[int, typer.Option(help="--int8: training images to calibrate on.")] = QuantizeSettings.calib_images,
    calib_method: Annotated[str, typer.Option(help="--int8: onnxruntime calibrator: minmax, percentile or entropy.")] = QuantizeSettings.calib_method,
    int8_activations: Annotated[str, typer.Option(help="--int8: activation type, uint8 (U8S8: what x86 VNNI multiplies natively; 0.28-0.91x fp32 latency here) or int8 (S8S8: onnxruntime leaves residual nets partly in fp32 on this CPU, 0.60-1.46x; see docs/int8.md). The accuracy check runs either way.")] = QuantizeSettings.activation_type,
    max_drop: Annotated[float, typer.Option(help="--int8, trained weights: largest allowed top-1 drop in points on the test split.")] = 1.0,
    max_output_error: Annotated[float, typer.Option(help="--int8, untrained weights: largest allowed RMS int8 error, as a fraction of the fp32 outputs' spread over images.")] = 1.0,
    eval_images: Annotated[Optional[int], typer.Option(help="--int8: check on this many images (default: the whole test split; 512 for untrained weights).")] = None,
    arch_kwargs: Annotated[Optional[str], typer.Option(help=ARCH_KWARGS_HELP + " For an architecture name.")] = None,
) -> None:
    """Export to ONNX: checker, simplifier, plan in the metadata, parity vs PyTorch, latency report.

    With --int8, also quantize (onnxruntime, calibrated on --data's training split), check top-1 vs
    fp32 (or output agreement for untrained weights), and time full fp32, fp32 and int8 together."""
    del onnx  # always ONNX: the flag exists so a script may say so
    out = out or default_export_path(source)
    if out.suffix != ".onnx":
        raise SlimkitError(f"--out {out} should end in .onnx")
    if out.is_dir():
        raise SlimkitError(f"--out {out} is a directory; give a file name like {out / 'model.onnx'}")
    check_out_parent(out)
    src = load_model(source, num_classes=num_classes, input_size=parse_input_size(input_size),
                     arch_kwargs=parse_arch_kwargs(arch_kwargs))
    quant_data = _int8_data(src, data, data_dir) if int8 else None  # before exporting: fail fast
    metadata = onnx_metadata(src)
    exported = registry.traced_part(src.model)
    if exported is not src.model:
        warn("a detector is exported as its dense core (backbone, FPN, heads -> raw class/box tensors): anchors, box "
             "decoding and NMS run outside the ONNX file")
    with console.status(f"exporting {escape(src.description)}"):
        result = get_exporter("onnx")(exported, src.input_size, out, batch=batch, metadata=metadata, opset=opset,
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
                       ("parity", f"max |ORT − PyTorch| {d['parity_max_abs_diff']:.1e} (≤ {d['parity_limit']:.2g}; outputs up to "
                                  f"{d['parity_output_scale']:.3g})")):
        table.add_row(key, escape(value))
    console.print(table)
    int8_file = _export_int8(out, src, quant_data, calib_images=calib_images, calib_method=calib_method,
                             activations=int8_activations,
                             max_drop=max_drop, max_output_error=max_output_error, eval_images=eval_images,
                             threads=threads) if int8 else None
    if bench:
        _latency_report(src, out, batch, threads, runs, extra=[int8_file] if int8_file else [])


def _int8_data(src: LoadedModel, data: str | None, data_dir: str | None):
    """The data to calibrate and check on: --data, else the data the checkpoint was trained on."""
    if data is None and src.trained:
        config = src.train_config or {}
        data, data_dir = config.get("data"), data_dir or config.get("data_dir")
    if data is None:
        raise SlimkitError("--int8 needs calibration images: pass --data fashion-mnist (or cifar10, cifar100, "
                           "imagefolder:PATH, synthetic) with the data the model is meant for")
    bundle = load_data(data, data_dir=data_dir, input_size=src.input_size, val_size=0, seed=src.plan.seed)
    if src.plan.num_classes not in (None, bundle.num_classes):
        raise SlimkitError(f"--data {data} has {bundle.num_classes} classes but the model {src.plan.num_classes}: "
                           "pass the data the model was trained for")
    return bundle


def _export_int8(out: Path, src, data, *, calib_images: int, calib_method: str, activations: str, max_drop: float,
                 max_output_error: float, eval_images: int | None, threads: int | None) -> Path:
    settings = QuantizeSettings(calib_images=calib_images, calib_method=calib_method, activation_type=activations,
                                seed=src.plan.seed)
    progress = make_progress()
    with progress:
        task = progress.add_task(f"int8: calibrating on {calib_images} {data.name} training images, then checking",
                                 total=None)
        result = export_int8(out, data, trained=src.trained, settings=settings, max_drop=max_drop,
                             max_output_error=max_output_error, eval_images=eval_images, threads=threads,
                             warn=warn,
                             progress=lambda done, total: (progress.update(task, completed=done, total=total),
                                                           progress.refresh()))
    q, check = result.details["quantization"], result.details["check"]
    table = Table(title=f"int8 export of {src.plan.arch}", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    drop = check["drop_points"]
    for key, value in (("file", str(result.path)),
                       ("size", f"{result.size_bytes / 1e6:.2f} MB (fp32 {result.details['fp32_size_bytes'] / 1e6:.2f} MB)"),
                       ("quantization", f"onnxruntime {q['onnxruntime']} QDQ, per-channel {q['weight_type']} weights, "
                                        f"{q['activation_type']} activations, {q['calib_method']} calibration"),
                       ("calibration", f"{q['calib_images_used']} training images; pre-process: {q['preprocess']}"),
                       ("fp32 top-1", f"{100 * check['fp32_top1']:.2f}%" if drop is not None else "– (untrained)"),
                       ("int8 top-1", f"{100 * check['int8_top1']:.2f}%" if drop is not None else "– (untrained)"),
                       ("drop" if drop is not None else "output error",
                        f"{drop:+.2f} points (≤ {check['limit']:g}) on {check['images']:,} test images" if drop is not None
                        else f"{check['output_error']:.3f} of the fp32 spread (≤ {check['limit']:g}) on "
                             f"{check['images']:,} held-out training images"),
                       ("top-1 agreement", f"{100 * check['top1_agreement']:.2f}%"),
                       ("quantize time", f"{result.export_seconds:.1f} s")):
        table.add_row(key, value)
    console.print(table)
    return result.path


def _latency_report(src: LoadedModel, out: Path, batch: int, threads: int | None, runs: int,
                    extra: list[Path] = ()) -> None:
    """Full model vs the exported one (and ``extra`` files: the int8 one), interleaved, written as
    OUT.latency.{json,md,png}."""
    def label(p: Path) -> str:  # a checkpoint's export is always model.onnx: say whose
        return f"{p.parent.name}/{p.stem}" if p.stem.split(".")[0] == "model" and p.parent.name else p.stem

    this = Candidate(name=label(out), input_shape=(batch, *src.input_size), onnx_path=out, spec={"kind": "onnx"},
                     flops=src.plan.flops, params=src.plan.params, plan=src.plan.to_dict())
    cands = [this] + [Candidate(name=label(p), input_shape=(batch, *src.input_size), onnx_path=p,
                                spec={"kind": "onnx", "path": str(p)}, flops=src.plan.flops, params=src.plan.params)
                      for p in extra]
    full = src.plan.unpruned()
    if full.widths != src.plan.widths or src.plan.expand != 1.0:
        with tempfile.TemporaryDirectory(prefix="slimkit-export-") as tmp:
            ref = reference_candidate(this, Path(tmp), batch)  # the full model of this plan
            report = measure_with_progress([ref, *cands], backend="ort-cpu", threads=threads, warmup=10, runs=runs,
                                           device="cpu")
    else:
        report = measure_with_progress(cands, backend="ort-cpu", threads=threads, warmup=10, runs=runs, device="cpu")
    render_report(report)
    written = report.write(out.with_suffix(".latency"))
    console.print("wrote " + ", ".join(str(p) for p in [out, *written]), highlight=False, markup=False)
