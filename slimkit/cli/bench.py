"""``slimkit bench``: side-by-side latency of several models, and the CI latency gate."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from rich.markup import escape

from slimkit import validate as limits
from slimkit.cli._common import check_out_parent, checked_numbers, console, make_progress, parse_input_size, user_errors
from slimkit.errors import SlimkitError
from slimkit.flops import format_count


def render_report(report) -> None:
    """The side-by-side table; min and p99 stay in the JSON/Markdown so it fits 80 columns (CI logs)."""
    from rich import box

    ref = report.models[0]["name"]
    table = Table(title=f"{report.backend} · batch {report.batch} · {report.threads} thread(s) · "
                        f"{report.runs} interleaved rounds",
                  caption=f"times in ms; ratios to {ref}; {report.device}", box=box.SIMPLE)
    for col in ("model", "MACs", "median", "p90", "per s", "ratio", "95% CI"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=col in ("model", "95% CI"))
    for m in report.models:
        s = m["stats"]
        table.add_row(escape(m["name"]), format_count(m["flops"]) if m.get("flops") else "–",
                      f"{s['median_ms']:.3f}", f"{s['p90_ms']:.3f}", f"{s['throughput_per_s']:.1f}",
                      f"{m['ratio']:.3f}", f"{m['ratio_ci'][0]:.3f}–{m['ratio_ci'][1]:.3f}")
    console.print(table)


def resolve_bench_device(backends: list[str], device: str) -> str:
    """--device for the torch backends, checked before exporting or timing anything; slimkit.device
    decides (an absent GPU is the same one-line error as in prune and train)."""
    from slimkit.device import resolve_device

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


def _measure(candidates, *, backend, threads, warmup, runs, device):
    from slimkit.latency import measure

    progress = make_progress()
    with progress:
        task = progress.add_task(f"timing {len(candidates)} model(s) on {backend}", total=runs)
        report = measure(candidates, backend=backend, threads=threads, warmup=warmup, runs=runs, device=device,
                         progress=lambda done, total: (progress.update(task, completed=done), progress.refresh()))
    return report


def _reference_for(model, reference: str | None, arch: str | None, workdir: Path, batch: int):
    """The model to compare against in the same run: --reference, --arch, or the plan's full model."""
    from slimkit.latency import LatencyError, candidate_from_spec, load_candidate
    from slimkit.plan import load_plan
    from slimkit.source import full_model_plan, full_plan_of

    if reference:
        return load_candidate(reference, workdir, batch=batch, name=None)
    plan = load_plan(model.plan) if model.plan else None
    if arch:
        full = full_model_plan(arch, num_classes=plan.num_classes if plan else None,
                               input_size=tuple(model.input_shape[1:]))
    elif plan is not None:
        full = full_plan_of(plan)
    else:
        raise LatencyError(f"{model.name} carries no slimkit plan, so its full model is unknown: pass "
                           "--reference REF.onnx or --arch NAME")
    name = "full-" + full.arch.split(":")[-1]
    return candidate_from_spec({"kind": "plan", "plan": full.to_dict()}, workdir, batch, name, Path("."))


@user_errors
@checked_numbers(threads=limits.SMALL_COUNT, batch=limits.SMALL_COUNT, warmup=limits.NON_NEGATIVE_COUNT,
                 runs=limits.RUNS, num_classes=limits.SMALL_COUNT)
def bench(
    models: Annotated[list[str], typer.Argument(help="ONNX files (or plans, checkpoints, architecture names: exported first). Ratios are to the first.")],
    arch: Annotated[Optional[str], typer.Option(help="Also time this architecture's full model, first, as the reference.")] = None,
    reference: Annotated[Optional[str], typer.Option(help="With --baseline: the model the gate compares against (default: the full model of the checked model's plan).")] = None,
    backend: Annotated[list[str], typer.Option(help="ort-cpu, ort-cuda, torch, torch-compile; repeat for several.")] = ["ort-cpu"],  # noqa: B006
    threads: Annotated[Optional[int], typer.Option(help="Intra-op threads (default: physical cores).")] = None,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
    warmup: Annotated[int, typer.Option(help="Warm-up rounds (not timed).")] = 10,
    runs: Annotated[int, typer.Option(help="Timed rounds; each round runs every model once.")] = 100,
    device: Annotated[str, typer.Option(help="Device for the torch backends: cpu, cuda or auto (ort-cuda needs no --device).")] = "cpu",
    num_classes: Annotated[Optional[int], typer.Option(help="Classes for architecture names (default: the model's).")] = None,
    input_size: Annotated[Optional[str], typer.Option(help="Input size for architecture names, e.g. 224.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report stem: writes .json, .md and .png.")] = Path("runs/bench/latency"),
    baseline: Annotated[Optional[Path], typer.Option(help="CI gate: compare MODEL against this baseline JSON; exit 1 on a regression.")] = None,
    max_regression: Annotated[str, typer.Option(help="Allowed slow-down of MODEL/reference vs the baseline.")] = "10%",
    update_baseline: Annotated[bool, typer.Option("--update-baseline", help="Measure and (re)write --baseline instead of checking it.")] = False,
) -> None:
    """Time models side by side (interleaved rounds), or gate one against a latency baseline."""
    from slimkit.latency import BACKENDS, LatencyError, load_candidate

    for b in backend:
        if b not in BACKENDS:
            raise LatencyError(f"unknown --backend '{b}': choose from {', '.join(BACKENDS)}")
    device = resolve_bench_device(backend, device)
    size = parse_input_size(input_size)
    check_out_parent(out)
    with tempfile.TemporaryDirectory(prefix="slimkit-bench-") as tmp:
        workdir = Path(tmp)
        if baseline is not None:
            code = _gate(models, baseline, workdir, reference=reference, arch=arch, backend=backend[0],
                         threads=threads, batch=batch, warmup=warmup, runs=runs, device=device,
                         tolerance=parse_fraction(max_regression), update=update_baseline, out=out)
            raise typer.Exit(code)
        if update_baseline:
            raise SlimkitError("--update-baseline needs --baseline PATH (the JSON file to write)")
        cands = [load_candidate(m, workdir, batch=batch, num_classes=num_classes, input_size=size) for m in models]
        if arch:
            cands.insert(0, _reference_for(cands[0], None, arch, workdir, batch))
        shapes = {tuple(c.input_shape[1:]) for c in cands}
        if len(shapes) > 1:
            raise LatencyError(f"models take different input shapes ({', '.join('x'.join(map(str, s)) for s in shapes)}); "
                               "compare models of one input size")
        for b in backend:
            report = _measure(cands, backend=b, threads=threads, warmup=warmup, runs=runs, device=device)
            render_report(report)
            stem = out if len(backend) == 1 else out.with_name(f"{out.name}-{b}")
            written = report.write(stem)
            console.print("wrote " + ", ".join(str(p) for p in written), highlight=False, markup=False)


def _gate(models, baseline: Path, workdir: Path, *, reference, arch, backend, threads, batch, warmup, runs, device,
          tolerance: float, update: bool, out: Path) -> int:
    from slimkit.latency import LatencyError, candidate_from_spec, check_regression, load_candidate
    from slimkit.plan import atomic_write_text

    if len(models) != 1:
        raise SlimkitError(f"the gate checks one model at a time, got {len(models)}: "
                           "slimkit bench MODEL.onnx --baseline latency.json")
    base_dir = baseline.resolve().parent
    if update:
        model = load_candidate(models[0], workdir, batch=batch)
        ref = _reference_for(model, reference, arch, workdir, batch)
        if ref.name == model.name:
            ref.name = f"ref-{ref.name}"
        report = _measure([ref, model], backend=backend, threads=threads, warmup=warmup, runs=runs, device=device)
        render_report(report)
        spec = dict(ref.spec)
        if spec.get("kind") in ("onnx", "checkpoint"):  # portable: relative to the baseline file
            spec["path"] = os.path.relpath(Path(spec["path"]).resolve(), base_dir)
        m = report.models[1]
        data = report.to_dict()
        data["gate"] = {"model": m["name"], "input_shape": m["input_shape"], "reference": ref.name,
                        "reference_spec": spec, "ratio": m["ratio"], "ratio_ci": m["ratio_ci"]}
        atomic_write_text(baseline, json.dumps(data, indent=1) + "\n")
        console.print(f"recorded baseline {escape(str(baseline))}: {m['name']} / {ref.name} = {m['ratio']:.3f} "
                      f"(95% CI {m['ratio_ci'][0]:.3f}–{m['ratio_ci'][1]:.3f})", highlight=False)
        return 0

    if not baseline.is_file():
        raise LatencyError(f"baseline not found: {baseline}; record one with --update-baseline")
    try:
        data = json.loads(baseline.read_text())
        gate = data["gate"]
        float(gate["ratio"]), list(gate["input_shape"]), dict(gate["reference_spec"])
        b_backend, b_threads, b_batch = data["backend"], int(data["threads"]), int(data["batch"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        raise LatencyError(f"{baseline} is not a slimkit latency baseline; record one with --update-baseline") from None
    model = load_candidate(models[0], workdir, batch=b_batch)
    if list(model.input_shape) != list(gate["input_shape"]):
        raise LatencyError(f"{models[0]} takes input {'x'.join(map(str, model.input_shape))} but the baseline was "
                           f"recorded at {'x'.join(map(str, gate['input_shape']))}: re-record it with --update-baseline")
    ref = candidate_from_spec(gate["reference_spec"], workdir, b_batch, gate["reference"], base_dir)
    report = _measure([ref, model], backend=b_backend, threads=threads or b_threads, warmup=warmup, runs=runs,
                      device=device)
    render_report(report)
    report.write(out)
    result = check_regression(report, gate, tolerance)
    console.print(result.message, style="green" if result.passed else "bold red", highlight=False, markup=False)
    return 0 if result.passed else 1
