"""``slimkit bench``: side-by-side latency of several models, and the CI latency gate."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from slimkit import validate as limits
from slimkit.artifacts import baseline_candidates, load_candidate, reference_candidate
from slimkit.cli._common import (print_table, ARCH_KWARGS_HELP, FORCE_HELP, checked_numbers, console, file_paths, make_progress,
                                 parse_arch_kwargs, parse_input_size, refuse_idle, user_errors)
from slimkit.errors import SlimkitError
from slimkit.exporters.openvino import openvino_parity
from slimkit.flops import format_count
from slimkit.files import check_outputs
from slimkit.latency import (check_backend, postprocessing_text, DEFAULT_TIMING_MODE, LatencyError, baseline_output, check_mode, check_regression,
                             measure, read_baseline, report_mode, report_outputs, write_baseline)
from slimkit.runtime import resolve_device


def render_report(report) -> None:
    """The side-by-side table; min, p99 and throughput stay in the JSON/Markdown so it fits 80 columns
    (CI logs) with file names whole."""
    ref = report.models[0]["name"]
    rounds = f"{report.runs} interleaved rounds" if report.mode == "interleaved" else f"served, {report.runs} runs"
    table = Table(title=f"{report.backend} · batch {report.batch} · {report.threads} thread(s) · {rounds}",
                  caption=f"times in ms; ratios to {ref}; {report.device}", box=box.SIMPLE, pad_edge=False)
    # numbers never wrap or truncate; only a name longer than the room left folds onto a second line
    table.add_column("model", justify="left", overflow="fold")
    for col in ("MACs", "median", "p90", "ratio", "95% CI"):
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    for m in report.models:
        s = m["stats"]
        table.add_row(escape(m["name"]), format_count(m["flops"]) if m.get("flops") else "–",
                      f"{s['median_ms']:.3f}", f"{s['p90_ms']:.3f}", f"{m['ratio']:.3f}", f"{m['ratio_ci'][0]:.3f}–{m['ratio_ci'][1]:.3f}")
    print_table(table, console)
    if report.postprocessing is not None:
        console.print(postprocessing_text(report.postprocessing), markup=False, highlight=False)


def resolve_bench_device(backends: list[str], device: str) -> str:
    """--device for the torch backends, checked before exporting or timing anything; slimkit.runtime
    decides (an absent GPU is the same one-line error as in prune and train)."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise SlimkitError(f"unknown --device '{device}': use cpu, cuda or auto")
    if not any(b.startswith("torch") for b in backends):
        return device if device != "auto" else "cpu"  # onnxruntime backends choose by --backend
    return str(resolve_device(device))


def parse_fraction(text: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise SlimkitError(f"cannot read --max-regression '{text}': use 10% or 0.1") from None
    if not 0 <= value < 10:
        raise SlimkitError(f"--max-regression {text} is out of range: use e.g. 10%")
    return value


DEFAULT_OUT = Path("runs/bench/latency")
DEFAULT_MAX_REGRESSION = "10%"


def measure_with_progress(candidates, *, backend, threads, warmup, runs, device, mode=DEFAULT_TIMING_MODE):
    """:func:`slimkit.latency.measure` with a progress bar."""
    progress = make_progress()
    with progress:
        task = progress.add_task(f"timing {len(candidates)} model(s) on {backend} ({mode})", total=runs)
        report = measure(candidates, backend=backend, threads=threads, warmup=warmup, runs=runs, device=device,
                         mode=mode,
                         progress=lambda done, total: (progress.update(task, completed=done), progress.refresh()))
    return report


def _openvino_parity(report, cands, threads: int | None) -> None:
    """A latency from another runtime only means something if it computes the same outputs: check
    each file against onnxruntime, print it, and record it in the report (``openvino_parity``)."""
    for c, m in zip(cands, report.models):
        parity = openvino_parity(c.onnx_path, threads=threads)
        m["openvino_parity"] = parity.to_dict()
        verdict = {True: "[green]ok[/]", False: "[bold red]MISMATCH[/]", None: "(int8: rounding differs, not judged)"}[
            parity.passed]
        limit = f" ≤ {parity.tolerance:g}" if parity.tolerance else ""
        console.print(f"parity {escape(c.name)}: OpenVINO {parity.precision} vs onnxruntime, max |diff| "
                      f"{parity.max_rel_diff:.1e}{limit} of the largest output ({parity.output_scale:.3g}) "
                      f"{verdict}", highlight=False)


@file_paths(out="latency", baseline="baseline.json")
@user_errors
@checked_numbers(threads=limits.THREADS, batch=limits.SMALL_COUNT, warmup=limits.NON_NEGATIVE_COUNT,
                 runs=limits.RUNS, num_classes=limits.SMALL_COUNT)
def bench(
    models: Annotated[list[str], typer.Argument(help="ONNX files (or plans, checkpoints, architecture names: exported first). Ratios are to the first.")],
    arch: Annotated[Optional[str], typer.Option(help="Also time this architecture's full model, first, as the reference.")] = None,
    reference: Annotated[Optional[str], typer.Option(help="With --baseline: the model the gate compares against (default: the full model of the checked model's plan).")] = None,
    backend: Annotated[Optional[list[str]], typer.Option(help="ort-cpu (default), ort-cuda, torch, torch-compile, openvino-cpu (f32; also checks each file against onnxruntime); repeat for several. The gate uses its baseline's.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Intra-op threads (default: physical cores; the gate: its baseline's).")] = None,
    batch: Annotated[Optional[int], typer.Option(help="Batch size (default 1; the gate: its baseline's).")] = None,
    warmup: Annotated[int, typer.Option(help="Warm-up rounds (not timed).")] = 10,
    runs: Annotated[int, typer.Option(help="Timed rounds; each round runs every model once.")] = 100,
    mode: Annotated[Optional[str], typer.Option("--timing", help="Timing mode: interleaved (default; every model once per round, pool threads not spinning: the soundest comparison) or served (onnxruntime's defaults, each model alone in alternated blocks: what a deployed model sees). The gate uses its baseline's mode.")] = None,
    device: Annotated[str, typer.Option(help="Device for the torch backends: cpu, cuda or auto (ort-cuda needs no --device).")] = "cpu",
    num_classes: Annotated[Optional[int], typer.Option(help="Classes for architecture names (default: the model's).")] = None,
    input_size: Annotated[Optional[str], typer.Option(help="Input size for architecture names, e.g. 224.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report stem: writes .json, .md and .png (lat and lat.json both write lat.json, lat.md, lat.png; with several --backend, one set each: lat-ort-cpu.json, lat-torch.json, ...).")] = DEFAULT_OUT,
    baseline: Annotated[Optional[Path], typer.Option(help="CI gate: compare MODEL against this baseline JSON; exit 1 on a regression.")] = None,
    max_regression: Annotated[str, typer.Option(help="Allowed slow-down of MODEL/reference vs the baseline.")] = DEFAULT_MAX_REGRESSION,
    update_baseline: Annotated[bool, typer.Option("--update-baseline", help="Measure and (re)write --baseline instead of checking it.")] = False,
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP)] = False,
    arch_kwargs: Annotated[Optional[str], typer.Option(help=ARCH_KWARGS_HELP + " For architecture names and --arch.")] = None,
) -> None:
    """Time models side by side (interleaved rounds), or gate one against a latency baseline."""
    given = {"--backend": backend or None, "--threads": threads, "--batch": batch}  # what a check must not change
    backend, batch = backend or ["ort-cpu"], batch or 1
    for b in backend:
        check_backend(b)  # every backend before the first is timed (its report written)
        if backend.count(b) > 1:  # its two reports would go to one file: say which option is at fault
            raise SlimkitError(f"--backend {b} is given twice: give each backend once")
    if reference is not None and baseline is None:  # ratios are to the first model: --reference would do nothing
        raise SlimkitError(f"--reference chooses the gate's reference when recording a --baseline; to time models "
                           f"against {reference}, list it first: slimkit bench {reference} MODEL ...")
    files_only = all(Path(m).suffix.lower() == ".onnx" for m in models)  # an ONNX file fixes its own shape
    if files_only:
        refuse_idle([("--num-classes", num_classes, None), ("--input-size", input_size, None)]
                    + ([] if arch else [("--arch-kwargs", arch_kwargs, None)]),
                    "models built from an architecture name (every model here is an ONNX file, whose shape is fixed)",
                    "name an architecture to time")
    if baseline is not None and update_baseline:  # recording writes the baseline alone and checks nothing
        refuse_idle([("--out", out, DEFAULT_OUT), ("--max-regression", max_regression, DEFAULT_MAX_REGRESSION)],
                    "the gate's check, not the recording (which writes --baseline alone)", "drop --update-baseline")
    asked_device, device = device, resolve_bench_device(backend, device)  # a device name checked first
    if given["--backend"] is not None or baseline is None:  # a gate without --backend times on its baseline's
        refuse_idle([("--device", asked_device if asked_device not in ("cpu", "auto") else "cpu", "cpu")]
                    if not any(b.startswith("torch") for b in backend) else [],
                    "the torch backends (onnxruntime's device is chosen by --backend: ort-cuda)", "add --backend torch")
    if mode is not None:
        check_mode(mode)
    size = parse_input_size(input_size)
    kwargs = parse_arch_kwargs(arch_kwargs)
    inputs = [m for m in models if Path(m).exists()]
    if out.suffix in {o.path.suffix for o in report_outputs(out.with_suffix(""))}:
        out = out.with_suffix("")  # --out lat.json names the report itself: its stem is lat, not lat.json
    if baseline is not None and update_baseline:
        outputs = [baseline_output(baseline)]  # recording writes the baseline only
    elif baseline is not None:  # the gate's check writes its report to --out itself
        inputs.append(baseline)
        outputs = report_outputs(out)
    else:
        outputs = [o for b in backend for o in report_outputs(_report_stem(out, b, backend))]
    check_outputs(outputs, inputs=inputs, force=force,
                  option="--baseline" if baseline is not None and update_baseline else "--out")
    with tempfile.TemporaryDirectory(prefix="slimkit-bench-") as tmp:
        workdir = Path(tmp)
        if baseline is not None:
            code = _gate(models, baseline, workdir, reference=reference, arch=arch, backend=backend[0],
                         threads=threads, batch=batch, warmup=warmup, runs=runs, device=device, mode=mode,
                         tolerance=parse_fraction(max_regression), update=update_baseline, out=out, given=given)
            raise typer.Exit(code)
        if update_baseline:
            raise SlimkitError("--update-baseline needs --baseline PATH (the JSON file to write)")
        cands = [load_candidate(m, workdir, batch=batch, num_classes=num_classes, input_size=size, arch_kwargs=kwargs)
                 for m in models]
        if arch:
            cands.insert(0, reference_candidate(cands[0], workdir, batch, arch=arch, arch_kwargs=kwargs))
        shapes = {tuple(c.input_shape[1:]) for c in cands}
        if len(shapes) > 1:
            raise LatencyError(f"models take different input shapes ({', '.join('x'.join(map(str, s)) for s in shapes)}); "
                               "compare models of one input size")
        for b in backend:
            report = measure_with_progress(cands, backend=b, threads=threads, warmup=warmup, runs=runs, device=device,
                                           mode=mode or DEFAULT_TIMING_MODE)
            if b == "openvino-cpu":
                _openvino_parity(report, cands, threads)  # recorded in the report, so before writing it
            written = report.write(_report_stem(out, b, backend))  # the files first, then the table
            render_report(report)
            console.print("wrote " + ", ".join(str(p) for p in written), highlight=False, markup=False)


def _report_stem(out: Path, backend: str, backends: list[str]) -> Path:
    """Where one backend's report goes: --out itself, or --out-BACKEND when several are timed."""
    return out if len(backends) == 1 else out.with_name(f"{out.name}-{backend}")


def _gate(models, baseline: Path, workdir: Path, *, reference, arch, backend, threads, batch, warmup, runs, device,
          mode: str | None, tolerance: float, update: bool, out: Path, given: dict[str, Any]) -> int:
    if len(models) != 1:
        raise SlimkitError(f"the gate checks one model at a time, got {len(models)}: "
                           "slimkit bench MODEL.onnx --baseline latency.json")
    base_dir = baseline.resolve().parent
    if update:
        model = load_candidate(models[0], workdir, batch=batch)
        ref = reference_candidate(model, workdir, batch, reference=reference, arch=arch)
        if ref.name == model.name:
            ref.name = f"ref-{ref.name}"
        report = measure_with_progress([ref, model], backend=backend, threads=threads, warmup=warmup, runs=runs,
                                       device=device, mode=mode or DEFAULT_TIMING_MODE)
        gate = write_baseline(baseline, report, ref, model, base_dir)
        render_report(report)
        console.print(f"recorded baseline {escape(str(baseline))}: {escape(gate['model'])} / {escape(ref.name)} = "
                      f"{gate['ratio']:.3f} (95% CI {gate['ratio_ci'][0]:.3f}–{gate['ratio_ci'][1]:.3f})",
                      highlight=False)
        return 0
    if reference or arch:
        raise SlimkitError("--reference and --arch choose the reference when recording (--update-baseline); a check "
                           "re-measures the reference the baseline recorded: drop them")
    data = read_baseline(baseline)
    base_mode = report_mode(data)
    if mode is not None and mode != base_mode:  # before any export or timing
        raise LatencyError(f"{baseline} was recorded in {base_mode} timing mode, not {mode}: ratios from different "
                           f"modes are not comparable; drop --timing (the gate uses the baseline's) or record a new "
                           "baseline with --update-baseline")
    recorded = {"--backend": [data["backend"]], "--threads": int(data["threads"]), "--batch": int(data["batch"])}
    for option, value in given.items():  # the check re-measures as recorded: another setting would be ignored or
        if value is not None and value != recorded[option]:  # give a ratio of another quantity
            shown = " ".join(map(str, value)) if isinstance(value, list) else value
            was = " ".join(map(str, recorded[option])) if isinstance(recorded[option], list) else recorded[option]
            raise LatencyError(f"{baseline} was recorded with {option} {was}, not {shown}: ratios measured otherwise "
                               f"are not comparable; drop {option} (the gate uses the baseline's) or record a new "
                               "baseline with --update-baseline")
    ref, model = baseline_candidates(data, models[0], workdir, base_dir)
    report = measure_with_progress([ref, model], backend=data["backend"], threads=int(data["threads"]),
                                   warmup=warmup, runs=runs, device=device, mode=base_mode)
    report.write(out)
    render_report(report)
    result = check_regression(report, data["gate"], tolerance)
    console.print(result.message, style="green" if result.passed else "bold red", highlight=False, markup=False)
    return 0 if result.passed else 1
