"""``slimkit export``: checkpoint / plan / architecture -> verified ONNX + a latency report beside it."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from rich.markup import escape

from slimkit import registry
from slimkit import validate as limits
from slimkit.artifacts import (LoadedModel, default_export_path, export_for_timing, load_model, onnx_metadata,
                               reference_candidate)
from slimkit.cli._common import (print_table, ARCH_KWARGS_HELP, FORCE_HELP, checked_numbers, console, file_paths, make_progress,
                                 parse_arch_kwargs, parse_input_size, refuse_idle, user_errors, warn)
from slimkit.cli.bench import measure_with_progress, render_report
from slimkit.data import load_data
from slimkit.errors import SlimkitError
from slimkit.exporters import get_exporter, onnx_output
from slimkit.exporters.onnx import fixed_image
from slimkit.exporters.int8 import QuantizeSettings, check_calib_images, export_int8, int8_outputs, int8_unsupported
from slimkit.files import check_outputs
from slimkit.int8_speed import MIN_GAIN, Int8Ranking, candidates_matching, ordered_settings, rank_int8_configs
from slimkit.latency import Candidate, report_outputs
from slimkit.models.tasks import WholeDetector, is_detector


@file_paths(out="model.onnx")
@user_errors
@checked_numbers(opset=limits.OPSET, batch=limits.SMALL_COUNT, num_classes=limits.SMALL_COUNT, atol=limits.ATOL,
                 threads=limits.THREADS, runs=limits.RUNS, calib_images=limits.COUNT,
                 max_drop=limits.Range(0.0, 100.0), max_output_error=limits.Range(0.0, 1e6), eval_images=limits.COUNT)
def export(
    source: Annotated[str, typer.Argument(help="A checkpoint from `slimkit train`, a plan JSON (fresh weights), or an architecture name or python: factory.")],
    onnx: Annotated[bool, typer.Option("--onnx", show_default=False, help="Export to ONNX: always on (the only backend so far); the flag may be given for clarity.")] = True,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="File to write (default: model.onnx beside a checkpoint, PLAN.onnx beside a plan, NAME.onnx here for an architecture name: resnet20.onnx).")] = None,
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
    int8: Annotated[bool, typer.Option("--int8", help="Also write OUT.int8.onnx: onnxruntime static quantization in the configuration that runs fastest on this CPU (timed on this model, cached per machine), checked against fp32; the next fastest if the check fails.")] = False,
    data: Annotated[Optional[str], typer.Option(help="--int8 calibration and check data: fashion-mnist, cifar10, cifar100, imagefolder:PATH, synthetic (default: a checkpoint's training data).")] = None,
    data_dir: Annotated[Optional[str], typer.Option(help="Where --data lives (default: a checkpoint's).")] = None,
    calib_images: Annotated[int, typer.Option(help="--int8: training images to calibrate on.")] = QuantizeSettings.calib_images,
    calib_method: Annotated[str, typer.Option(help="--int8: onnxruntime calibrator: minmax, percentile or entropy.")] = QuantizeSettings.calib_method,
    int8_format: Annotated[str, typer.Option(help="--int8: onnxruntime's format, QDQ or QOperator; auto (default): the fastest on this CPU, timed on this model (cached per machine; docs/int8.md).")] = "auto",
    int8_activations: Annotated[str, typer.Option(help="--int8: activation type, uint8 or int8; auto (default): the fastest on this CPU that passes the check. Which is fastest depends on the CPU (VNNI or not) and the model; see docs/int8.md.")] = "auto",
    int8_weights: Annotated[str, typer.Option(help="--int8: weight type, int8 or uint8; auto (default): the fastest on this CPU that passes the check.")] = "auto",
    max_drop: Annotated[float, typer.Option(help="--int8, trained weights: largest allowed top-1 drop in points on the test split.")] = 1.0,
    max_output_error: Annotated[float, typer.Option(help="--int8, untrained weights: largest allowed RMS int8 error, as a fraction of the fp32 outputs' spread over images.")] = 1.0,
    eval_images: Annotated[Optional[int], typer.Option(help="--int8: check on this many images (default: the whole test split; 512 for untrained weights).")] = None,
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP)] = False,
    arch_kwargs: Annotated[Optional[str], typer.Option(help=ARCH_KWARGS_HELP + " For an architecture name.")] = None,
    postprocess: Annotated[bool, typer.Option("--postprocess", help="Detectors: export the whole detector, its transform (resize, normalize), box decoding and NMS included: one image (1x3xHxW, 0-1) in, boxes/scores/labels out, checked by matching detections with PyTorch's on a fixed image; the latency report times the dense core beside it to name what postprocessing costs. Default: the dense core (raw head tensors).")] = False,
) -> None:
    """Export to ONNX: checker, simplifier, plan in the metadata, parity vs PyTorch, latency report.

    A detector exports as its dense core (backbone to head tensors) unless --postprocess asks for the
    whole detector, NMS included.

    With --int8, also quantize (onnxruntime, calibrated on --data's training split), check top-1 vs
    fp32 (or output agreement for untrained weights), and time full fp32, fp32 and int8 together."""
    del onnx  # always ONNX: the flag exists so a script may say so
    if not int8:  # the --int8 options do nothing alone
        refuse_idle([
            ("--data", data, None), ("--data-dir", data_dir, None),
            ("--calib-images", calib_images, QuantizeSettings.calib_images),
            ("--calib-method", calib_method, QuantizeSettings.calib_method), ("--int8-format", int8_format, "auto"),
            ("--int8-activations", int8_activations, "auto"), ("--int8-weights", int8_weights, "auto"),
            ("--max-drop", max_drop, 1.0), ("--max-output-error", max_output_error, 1.0),
            ("--eval-images", eval_images, None)], "the int8 file", "add --int8")
    if not bench:  # nor do the latency report's (--threads also times the int8 configurations)
        refuse_idle([("--runs", runs, 100), *([] if int8 else [("--threads", threads, None)])], "the latency report",
                    "drop --no-bench")
    if postprocess and int8:
        raise SlimkitError("--int8 is checked by top-1 agreement, which a detector does not give (neither its "
                           "detections nor its dense core's raw class and box tensors): drop --int8")
    out = out or default_export_path(source)
    if out.suffix != ".onnx":
        raise SlimkitError(f"--out {out} should end in .onnx")
    if out.is_dir():
        raise SlimkitError(f"--out {out} is a directory; give a file name like {out / 'model.onnx'}")
    check_outputs([onnx_output(out)] + (int8_outputs(out) if int8 else [])
                  + (report_outputs(latency_stem(out)) if bench else []),
                  inputs=[source] if Path(source).exists() else [], force=force)
    src = load_model(source, num_classes=num_classes, input_size=parse_input_size(input_size),
                     arch_kwargs=parse_arch_kwargs(arch_kwargs))
    task = "detection" if is_detector(src.model) else registry.model_task(src.plan.arch)  # a user's factory too
    no_int8 = int8_unsupported(task, src.plan.arch) if int8 else None
    if no_int8:  # as a recipe's export.int8: refused before anything is exported
        raise SlimkitError(f"--int8: {no_int8}: drop --int8")
    quant_data = _int8_data(src, data, data_dir) if int8 else None  # before exporting: fail fast
    int8_candidates = candidates_matching(int8_format, int8_activations, int8_weights) if int8 else []
    if int8:  # the quantization's own settings are refused before the fp32 export, not after it
        replace(int8_candidates[0], calib_images=calib_images, calib_method=calib_method).validate()
        check_calib_images(quant_data, calib_images)
    metadata = onnx_metadata(src)
    if postprocess:
        exported = _whole_detector(src)
        metadata["slimkit.detector"] = "whole: transform, box decoding, NMS; outputs " + ", ".join(exported.output_names)
    else:
        exported = registry.traced_part(src.model)
        if exported is not src.model:
            warn("a detector is exported as its dense core (backbone, FPN, heads -> raw class/box tensors): anchors, "
                 "box decoding and NMS run outside the ONNX file (--postprocess puts them inside)")
    with console.status(f"exporting {escape(src.description)}" + (", NMS included" if postprocess else "")):
        result = get_exporter("onnx")(exported, src.input_size, out, batch=batch, metadata=metadata, opset=opset,
                                      dynamic_batch=dynamic_batch, simplify=simplify, exporter=exporter, atol=atol,
                                      warn=warn, detections=postprocess)
    d = result.details
    table = Table(title=escape(f"ONNX export of {src.plan.arch}"), show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="left")  # values hold sentences too: right-aligned, short ones sat at the far edge
    for key, value in (("file", str(out)), ("size", f"{result.size_bytes / 1e6:.2f} MB"),
                       ("exporter", f"{d['exporter']} (opset {d['opset']})"),
                       ("nodes", f"{d['nodes_before']} → {d['nodes_after']}" + ("" if d["simplified"] else " (not simplified)")),
                       ("input", "x".join(map(str, d["input_shape"]))),
                       ("export time", f"{result.export_seconds:.1f} s"),
                       *(_detection_rows(d) if postprocess else [
                           ("parity", f"max |ORT − PyTorch| {d['parity_max_abs_diff']:.1e} (≤ {d['parity_limit']:.2g}; "
                                      f"outputs up to {d['parity_output_scale']:.3g})")])):
        table.add_row(key, escape(value))
    print_table(table, console)
    int8_file = _export_int8(out, src, quant_data, calib_images=calib_images, calib_method=calib_method,
                             candidates=int8_candidates, batch=batch,
                             max_drop=max_drop, max_output_error=max_output_error, eval_images=eval_images,
                             threads=threads) if int8 else None
    if bench:
        _latency_report(src, out, batch, threads, runs, extra=[int8_file] if int8_file else [],
                        postprocessing=exported.postprocessing if postprocess else None)


def _whole_detector(src: LoadedModel) -> WholeDetector:
    """The detector with its transform, decoding and NMS, or one line saying why --postprocess cannot apply."""
    if not is_detector(src.model):
        raise SlimkitError(f"--postprocess exports a detector's box decoding and NMS, and {src.plan.arch} is not a "
                           "torchvision detector (SSD, RetinaNet, FCOS, R-CNN): drop --postprocess")
    return WholeDetector(src.model)  # resizing to the plan's input size, as trained (load_model)


def _detection_rows(d: dict) -> list[tuple[str, str]]:
    """The export table's parity rows for a whole detector."""
    def text(p: dict) -> str:
        ties = f", {p['ties_at_cut_off']} near-ties at the lowest score {p['lowest_score']:.4f} swapped" \
            if p["ties_at_cut_off"] else ""
        diffs = "; ".join(f"{k} {p['max_diff'][k]:.1e} (≤ {p['tolerance'][k]:.2g})" for k in p["max_diff"])
        rounding = " (tolerances widened to twice PyTorch's own fp32 rounding against fp64)" \
            if p.get("fp32_rounding") else ""
        return f"{p['detections']} detections on both, {p['matched']} matched{ties}; max |ORT − PyTorch|: {diffs}{rounding}"
    p = d["detection_parity"]
    rows = [("outputs", ", ".join(d["outputs"])), ("parity (fixed image)", text(p))]
    if "check_copy" in p:
        rows.append(("parity, threshold 0", text(p["check_copy"]) + " (a copy that keeps every score: the file "
                                                                    "finds too few to compare)"))
    return rows


def latency_stem(out: Path) -> Path:
    """The latency report's stem beside the exported file: model.onnx -> model.latency.{json,md,png}."""
    return out.with_suffix(".latency")


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


def _export_int8(out: Path, src, data, *, calib_images: int, calib_method: str,
                 candidates: list[QuantizeSettings], batch: int, max_drop: float, max_output_error: float,
                 eval_images: int | None, threads: int | None) -> Path:
    base = QuantizeSettings(calib_images=calib_images, calib_method=calib_method, seed=src.plan.seed)
    candidates = [replace(c, calib_images=calib_images, calib_method=calib_method, seed=src.plan.seed)
                  for c in candidates]
    with console.status(f"int8: which of {len(candidates)} onnxruntime configurations runs fastest here"):
        ranking = rank_int8_configs(out, (batch, *src.input_size), candidates=candidates, threads=threads,
                                    say=lambda m: console.print(m, highlight=False, markup=False))
    progress = make_progress()
    with progress:
        # the long description is a line of its own: beside a bar it garbled an 80-column terminal
        progress.console.print(f"int8: calibrating on {calib_images} {data.name} training images, then checking",
                               markup=False, highlight=False)
        task = progress.add_task("int8 check", total=None)
        result = export_int8(out, data, trained=src.trained, settings=ordered_settings(ranking, base),
                             choice=ranking.to_dict(), max_drop=max_drop,
                             max_output_error=max_output_error, eval_images=eval_images, threads=threads,
                             warn=warn,
                             progress=lambda done, total: (progress.update(task, completed=done, total=total),
                                                           progress.refresh()))
    q, check = result.details["quantization"], result.details["check"]
    table = Table(title=f"int8 export of {src.plan.arch}", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="left")  # values hold sentences too: right-aligned, short ones sat at the far edge
    drop = check["drop_points"]
    for key, value in (("file", str(result.path)),
                       ("size", f"{result.size_bytes / 1e6:.2f} MB (fp32 {result.details['fp32_size_bytes'] / 1e6:.2f} MB)"),
                       ("quantization", f"onnxruntime {q['onnxruntime']} {q['quant_format']}, "
                                        f"{'per-channel' if q['per_channel'] else 'per-tensor'} {q['weight_type']} weights, "
                                        f"{q['activation_type']} activations, {q['calib_method']} calibration"),
                       ("configuration", _choice_text(ranking, result.details["attempts"])),
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
    print_table(table, console)
    return result.path


def _choice_text(ranking: Int8Ranking, attempts: list[dict]) -> str:
    """Which configuration ran, why, and what the others measured."""
    if ranking.source == "asked":
        return f"{attempts[-1]['configuration']}, as asked (--int8-format/--int8-activations/--int8-weights)"
    failed = [a["configuration"] for a in attempts[:-1]]
    if ranking.source == "untimed":
        return (f"{attempts[-1]['configuration']}: the first of slimkit's default order that passed the check "
                "(SLIMKIT_NO_TIMING is set, so this CPU was not timed)"
                + (f"; failed the check: {', '.join(failed)}" if failed else ""))
    timed = ", ".join(f"{c['label']} {c['ratio']:.2f}" for c in ranking.configurations)
    fp32 = f", fp32 {ranking.fp32_ratio:.2f}" if ranking.fp32_ratio else ""
    # not "the fastest": the default stays first unless another's whole 95% interval is MIN_GAIN faster
    return (f"{attempts[-1]['configuration']}: the first of {len(ranking.configurations)}, in the order ranked here, "
            f"that passed the check ({ranking.reference} stays first unless another's whole 95% interval is "
            f"{MIN_GAIN:.0%} faster; latency here, {ranking.source}, relative to {ranking.reference}: {timed}{fp32})"
            + (f"; failed the check: {', '.join(failed)}" if failed else ""))


def _latency_report(src: LoadedModel, out: Path, batch: int, threads: int | None, runs: int,
                    extra: list[Path] = (), postprocessing: str | None = None) -> None:
    """Full model vs the exported one (and ``extra`` files: the int8 one), interleaved, written as
    OUT.latency.{json,md,png}. A whole detector (``postprocessing``: what it runs beyond its dense
    core) is timed beside that core, both on the fixed image, and the report names the difference."""
    def label(p: Path) -> str:  # a checkpoint's export is always model.onnx: say whose
        return f"{p.parent.name}/{p.stem}" if p.stem.split(".")[0] == "model" and p.parent.name else p.stem

    this = Candidate(name=label(out), input_shape=(batch, *src.input_size), onnx_path=out, spec={"kind": "onnx"},
                     flops=src.plan.flops, params=src.plan.params, plan=src.plan.to_dict())
    cands = [this] + [Candidate(name=label(p), input_shape=(batch, *src.input_size), onnx_path=p,
                                spec={"kind": "onnx", "path": str(p)}, flops=src.plan.flops, params=src.plan.params)
                      for p in extra]
    full = src.plan.unpruned()
    with tempfile.TemporaryDirectory(prefix="slimkit-export-") as tmp:
        if postprocessing:  # its own dense core, timed first so the whole detector's ratio is to it
            image = fixed_image(src.input_size, seed=0).numpy()
            this.feed = image
            this.flops = None  # the core's MACs plus a data-dependent tail (an R-CNN's RoI heads): not one number
            core = export_for_timing(src, Path(tmp) / "core.onnx", batch, f"{this.name}.core",
                                     {"kind": "plan", "plan": src.plan.to_dict()}, check_parity=False)
            core.feed = image
            cands.insert(0, core)
        if full.widths != src.plan.widths or src.plan.expand != 1.0:
            cands.insert(0, reference_candidate(this, Path(tmp), batch))  # the full model of this plan
        report = measure_with_progress(cands, backend="ort-cpu", threads=threads, warmup=10, runs=runs, device="cpu")
    if postprocessing:
        report.split_postprocessing(this.name, core.name, postprocessing)
    written = report.write(latency_stem(out))  # the files first, then the table
    render_report(report)
    console.print("wrote " + ", ".join(str(p) for p in [out, *extra, *written]), highlight=False, markup=False)
