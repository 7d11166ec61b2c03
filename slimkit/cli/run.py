"""``slimkit run RECIPE``: prune -> train -> export -> bench from one YAML recipe, resumably.

Every stage writes into the run folder (default ``runs/<name>``) and is skipped when its outputs
already exist, so a killed run continues where it stopped when the same command runs again:

========  ====================================================================================
prune     ``plan.json`` (the recipe's method) and ``uniform.json`` (method uniform, same budget)
train     ``train/`` (the plan), plus ``train-full/`` and ``train-uniform/`` when listed in
          ``train.compare``; a folder with fewer epochs than planned is resumed
export    ``model.onnx`` from ``train/checkpoint.pt`` (the metadata ``slimkit export`` writes)
bench     ``latency.{json,md,png}``: full vs uniform vs pruned, interleaved in one run
summary   ``summary.{json,md}``: MACs, params, test top-1, latency for each model
========  ====================================================================================

The resolved recipe (every key, defaults filled in) is written to ``recipe.yaml`` first; a folder
that holds a different one is refused, so two settings never mix in one folder.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from rich.markup import escape

from slimkit.cli._common import console, make_progress, say_plain, user_errors, warn
from slimkit.errors import SlimkitError
from slimkit.flops import format_count
from slimkit.validate import show

SUMMARY_FORMAT = "slimkit.run-summary/1"


class Layout:
    """Where each stage writes, inside the run folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.recipe = root / "recipe.yaml"
        self.plan, self.uniform, self.plan_png = root / "plan.json", root / "uniform.json", root / "plan.png"
        self.train, self.train_full, self.train_uniform = root / "train", root / "train-full", root / "train-uniform"
        self.onnx = root / "model.onnx"
        self.latency = root / "latency"  # report stem: .json, .md, .png
        self.latency_files = [root / f"latency.{ext}" for ext in ("json", "md", "png")]
        self.summary_json, self.summary_md = root / "summary.json", root / "summary.md"


# ---------------------------------------------------------------------------- state
def train_state(folder: Path) -> tuple[str, int, int | None]:
    """('done' | 'resume' | 'new', epochs done, epochs planned) of a training folder."""
    ckpt, metrics = folder / "checkpoint.pt", folder / "metrics.json"
    done, total = 0, None
    if metrics.is_file():
        try:
            m = json.loads(metrics.read_text())
            done, total = len(m.get("history", [])), m.get("epochs")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            done, total = 0, None
    if ckpt.is_file() and total is not None and done >= total:
        return "done", done, total
    if ckpt.is_file():
        return "resume", done, total
    return "new", 0, None


def _fresh(outputs: list[Path], inputs: list[Path]) -> bool:
    """Every output exists and none is older than an input (make's rule)."""
    if not all(p.exists() for p in outputs):
        return False
    newest_input = max((p.stat().st_mtime for p in inputs if p.exists()), default=0.0)
    return min(p.stat().st_mtime for p in outputs) >= newest_input


def _train_jobs(recipe, lay: Layout) -> list[tuple[str, Path]]:
    jobs = [("pruned", lay.train)]
    for other in recipe.train.compare:
        if other == "uniform" and recipe.prune.method == "uniform":
            continue  # the pruned model *is* the uniform one: same plan, same seed, same run
        jobs.append((other, lay.train_full if other == "full" else lay.train_uniform))
    return jobs


def _stage_list(recipe, lay: Layout) -> list[tuple[str, list[tuple[Path, str]]]]:
    """For --dry-run: each stage, what it writes and whether it would run now."""
    def status(p: Path) -> str:
        return "exists: skip" if p.exists() else "would run"

    trains = []
    for label, folder in _train_jobs(recipe, lay):
        state, done, total = train_state(folder)
        text = {"done": f"done ({done} epochs): skip", "resume": f"resume after epoch {done}",
                "new": "would run"}[state]
        trains.append((folder, f"{label}: {text}"))
    if "uniform" in recipe.train.compare and recipe.prune.method == "uniform":
        trains.append((lay.train_uniform, "uniform: same as train/ (prune.method is uniform), not trained twice"))
    onnx_state = "exists: skip" if _fresh([lay.onnx], [lay.train / "checkpoint.pt"]) else "would run"
    bench_state = ("exists: skip" if _fresh(lay.latency_files, [lay.onnx, lay.plan, lay.uniform])
                   else "would run")
    return [
        ("prune", [(lay.plan, f"{recipe.prune.method} plan: {status(lay.plan)}"),
                   (lay.uniform, f"uniform plan, same budget: {status(lay.uniform)}"),
                   (lay.plan_png, f"channels per group: {status(lay.plan_png)}")]),
        ("train", trains),
        ("export", [(lay.onnx, f"ONNX of train/checkpoint.pt: {onnx_state}")]),
        ("bench", [(lay.root / "latency.{json,md,png}", f"full vs uniform vs pruned, interleaved: {bench_state}")]),
        ("summary", [(lay.root / "summary.{json,md}", "MACs, params, test top-1, latency per model")]),
    ]


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
    return f"{path or 'recipe'}: {show(old)} there, {show(new)} now"  # bounded: recipes may be huge


def check_folder(recipe, lay: Layout) -> bool:
    """True when ``lay.root`` already holds this recipe; an error when it holds another one."""
    from slimkit.recipe import read_yaml

    if lay.root.exists() and not lay.root.is_dir():
        raise SlimkitError(f"--out {lay.root} is a file: give a folder for the run")
    if not lay.recipe.is_file():
        return False
    try:
        old = read_yaml(lay.recipe.read_text())
    except Exception:  # noqa: BLE001 - any damage: refuse rather than guess
        old = None
    if old != recipe.to_dict():
        what = _first_difference(old, recipe.to_dict()) if isinstance(old, dict) else "unreadable recipe.yaml"
        raise SlimkitError(f"{lay.root} holds a run of a different recipe ({what}): pick another --out "
                           f"or delete {lay.root}")
    return True


# ---------------------------------------------------------------------------- stages
def _log(progress):
    return say_plain(progress)


def _stage(name: str, text: str) -> None:
    console.print(f"[bold cyan]{name}[/] {escape(text)}", highlight=False)


def _shape_kwargs(recipe) -> dict[str, Any]:
    """The prune() arguments that fix the model and how widths are counted, as the recipe gives them."""
    from slimkit.recipe import num_classes_of

    size = recipe.input_tuple
    return dict(num_classes=num_classes_of(recipe), in_chans=size[0] if size and size[0] != 3 else None,
                input_size=size, expand=recipe.prune.expand, round_to=recipe.prune.round_to)


def _budget_reach(recipe) -> str | None:
    """Dry run: is a FLOPs/params budget reachable for this model at all? (The uniform plan at that
    budget, seconds to find; a latency budget needs the machine it is measured on.)"""
    from slimkit.prune import prune as run_prune

    b = recipe.prune.budget()
    if b.kind == "latency":
        return None
    plan = run_prune(recipe.arch, b, method="uniform", **{**_shape_kwargs(recipe), "tolerance": 0.05},
                     verify=False)  # a BudgetError when out of reach; 5%: reach, not exactness
    full = plan.search.get("full_flops") if b.kind == "flops" else plan.search.get("full_params")
    unit = "MACs" if b.kind == "flops" else "params"
    return f"reachable: the full model has {format_count(full)} {unit}"


def _prune_stage(recipe, lay: Layout):
    from slimkit.plan import load_plan, save_plan
    from slimkit.prune import prune as run_prune

    p = recipe.prune
    common = dict(_shape_kwargs(recipe), seed=p.seed, tolerance=p.tolerance, backend=p.backend, threads=p.threads,
                  batch=recipe.bench.batch)
    plans = {}
    for key, path, method in (("plan", lay.plan, p.method), ("uniform", lay.uniform, "uniform")):
        if path.exists():
            plans[key] = load_plan(path)
            _stage("prune", f"{path.name} exists: skip")
            continue
        if key == "uniform" and p.method == "uniform":
            plans[key] = plans["plan"]  # the same plan: method uniform at the same budget
        else:
            _stage("prune", f"{method} plan of {recipe.arch} at {p.budget_key} {getattr(p, p.budget_key)}")
            start = time.perf_counter()
            progress = make_progress()
            with progress:
                task = progress.add_task(f"tracing {recipe.arch}", total=None)
                plans[key] = run_prune(recipe.arch, p.budget(), method=method, data=recipe.data.name,
                                       data_dir=recipe.data.data_dir, preset=p.preset, gamma=p.gamma, lr=p.lr,
                                       epochs=p.epochs, steps=p.steps, batch_size=p.batch_size, device="auto",
                                       progress=progress, log=_log(progress), **common)
                progress.remove_task(task)
            console.print(f"  MACs {format_count(plans[key].flops)}, params {format_count(plans[key].params)} "
                          f"({time.perf_counter() - start:.1f}s)", highlight=False)
        save_plan(plans[key], path)
        console.print(f"  wrote {path}", highlight=False, markup=False)
    if not lay.plan_png.exists():
        from slimkit.plots import plot_channels

        plot_channels(plans["plan"], lay.plan_png, {"uniform": plans["uniform"]} if p.method != "uniform" else {})
    return plans["plan"], plans["uniform"]


def _train_stage(recipe, lay: Layout, plans: dict[str, Any]) -> None:
    from slimkit.train import TrainConfig
    from slimkit.train import train as run_train

    t = recipe.train
    cfg = TrainConfig(data=recipe.data.name, data_dir=recipe.data.data_dir, epochs=t.epochs, budget=t.budget,
                      batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay,
                      label_smoothing=t.label_smoothing, warmup_epochs=t.warmup_epochs, augment=t.augment,
                      seed=t.seed, max_steps_per_epoch=t.max_steps_per_epoch)
    for label, folder in _train_jobs(recipe, lay):
        state, done, total = train_state(folder)
        if state == "done":
            _stage("train", f"{folder.name}/ done ({done}/{total} epochs): skip")
            continue
        _stage("train", f"{label} model -> {folder.name}/" + (f" (resuming after epoch {done})" if state == "resume" else ""))
        progress = make_progress()
        with progress:
            result = run_train(plans[label], folder, cfg, resume=state == "resume", progress=progress,
                               log=_log(progress))
        if result.metrics:
            final = result.metrics[-1]
            console.print(f"  test top-1 {final['test_top1']:.4f} after {final['epoch']} epochs", highlight=False)
    if "uniform" in t.compare and recipe.prune.method == "uniform":
        _stage("train", "uniform: the pruned model is the uniform one (prune.method uniform); see train/")


def _export_stage(recipe, lay: Layout) -> None:
    from slimkit.cli.export import onnx_metadata
    from slimkit.exporters import get_exporter
    from slimkit.source import load_source

    ckpt = lay.train / "checkpoint.pt"
    if _fresh([lay.onnx], [ckpt]):
        _stage("export", f"{lay.onnx.name} exists: skip")
        return
    e = recipe.export
    src = load_source(str(ckpt))
    with console.status(f"exporting {src.description}"):
        result = get_exporter("onnx")(src.model, src.input_size, lay.onnx, batch=recipe.bench.batch,
                                      metadata=onnx_metadata(src), opset=e.opset, dynamic_batch=e.dynamic_batch,
                                      exporter=e.exporter,
                                      warn=warn)
    d = result.details
    _stage("export", f"wrote {lay.onnx} ({result.size_bytes / 1e6:.2f} MB, {d['exporter']} opset {d['opset']}, "
                     f"max |ORT − PyTorch| {d['parity_max_abs_diff']:.1e}, {result.export_seconds:.1f}s)")


def _bench_stage(recipe, lay: Layout, plans: dict[str, Any]) -> None:
    from slimkit.cli.bench import _measure, render_report
    from slimkit.exporters import get_exporter
    from slimkit.generator import generate
    from slimkit.latency import load_candidate
    from slimkit.source import calibrate_bn

    if _fresh(lay.latency_files, [lay.onnx, lay.plan, lay.uniform]):
        _stage("bench", "latency.json exists: skip")
        return
    e, b = recipe.export, recipe.bench
    _stage("bench", f"full vs uniform vs pruned on {recipe.prune.backend}, {b.runs} interleaved rounds")
    with tempfile.TemporaryDirectory(prefix="slimkit-run-") as tmp:
        cands = []
        for name in ("full", "uniform"):
            plan = plans[name]
            model = calibrate_bn(generate(plan), tuple(plan.input_size), seed=plan.seed).eval()
            path = Path(tmp) / f"{name}.onnx"
            with console.status(f"exporting the {name} model for timing"):
                # the pruned model's settings, so all three graphs come from the same exporter
                get_exporter("onnx")(model, tuple(plan.input_size), path, batch=b.batch,
                                     metadata={"slimkit.plan": plan.to_json()}, opset=e.opset,
                                     dynamic_batch=e.dynamic_batch, exporter=e.exporter, check_parity=False)
            cands.append(load_candidate(str(path), Path(tmp), batch=b.batch, name=name))
        cands.append(load_candidate(str(lay.onnx), Path(tmp), batch=b.batch, name="pruned"))
        report = _measure(cands, backend=recipe.prune.backend, threads=b.threads, warmup=10, runs=b.runs,
                          device="cpu")
    render_report(report)
    written = report.write(lay.latency)
    console.print("  wrote " + ", ".join(str(p) for p in written), highlight=False, markup=False)


# ---------------------------------------------------------------------------- summary
def _final_metrics(folder: Path) -> dict[str, Any] | None:
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    return m.get("final")


def build_summary(recipe, lay: Layout, plans: dict[str, Any]) -> dict[str, Any]:
    report = json.loads((lay.root / "latency.json").read_text()) if (lay.root / "latency.json").is_file() else None
    by_name = {m["name"]: m for m in report["models"]} if report else {}
    folders = {"pruned": lay.train, "full": lay.train_full,
               "uniform": lay.train if recipe.prune.method == "uniform" else lay.train_uniform}
    full_flops = plans["full"].flops
    rows = []
    for name in ("pruned", "uniform", "full"):
        plan = plans[name]
        final = _final_metrics(folders[name])
        lat = by_name.get(name)
        rows.append({
            "name": name, "plan": {"pruned": "plan.json", "uniform": "uniform.json", "full": None}[name],
            "macs": plan.flops, "params": plan.params,
            "macs_ratio": round(plan.flops / full_flops, 4) if plan.flops and full_flops else None,
            "test_top1": final["test_top1"] if final else None,
            "epochs": final["epoch"] if final else None,
            "train_folder": folders[name].name + "/" if final else None,
            "latency_median_ms": round(lat["stats"]["median_ms"], 4) if lat else None,
            "latency_ratio": round(lat["ratio"], 4) if lat else None,
            "latency_ratio_ci": [round(x, 4) for x in lat["ratio_ci"]] if lat else None,
        })
    return {"format": SUMMARY_FORMAT, "recipe": recipe.name, "arch": plans["pruned"].arch,
            "data": recipe.data.name, "budget": plans["pruned"].budget, "method": recipe.prune.method,
            "latency": ({k: report[k] for k in ("backend", "device", "threads", "batch", "runs")} if report else None),
            "models": rows}


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "–"
    return {"count": lambda v: format_count(v), "acc": lambda v: f"{100 * v:.2f}%", "ms": lambda v: f"{v:.3f}",
            "x": lambda v: f"{v:.3f}×", "int": str}[kind](value)


_COLUMNS = (("model", "name", None), ("MACs", "macs", "count"), ("params", "params", "count"),
            ("test top-1", "test_top1", "acc"), ("epochs", "epochs", "int"),
            ("latency ms (median)", "latency_median_ms", "ms"), ("× full", "latency_ratio", "x"))


def summary_markdown(summary: dict[str, Any]) -> str:
    b = summary["budget"] or {}
    lines = [f"# {summary['recipe']}: {summary['arch']}, {summary['method']} at {b.get('kind', '')} "
             f"{b.get('text', '')}", ""]
    if summary["latency"]:
        lat = summary["latency"]
        lines += [f"Data: {summary['data']}. Latency: {lat['backend']}, batch {lat['batch']}, {lat['threads']} "
                  f"thread(s), {lat['runs']} interleaved rounds, {lat['device']}; × full = median of per-round "
                  "ratios to the full model.", ""]
    lines.append("| " + " | ".join(c[0] for c in _COLUMNS) + " |")
    lines.append("|---" + "|---:" * (len(_COLUMNS) - 1) + "|")
    for row in summary["models"]:
        cells = [row["name"]] + [_fmt(row[key], kind) for _, key, kind in _COLUMNS[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"{summary['recipe']} — {summary['arch']}")
    for title, _, kind in _COLUMNS:
        table.add_column(title, justify="left" if kind is None else "right")
    for row in summary["models"]:
        table.add_row(row["name"], *[_fmt(row[key], kind) for _, key, kind in _COLUMNS[1:]])
    console.print(table)


def _write_if_changed(path: Path, text: str) -> bool:
    from slimkit.plan import atomic_write_text

    if path.is_file() and path.read_text() == text:
        return False
    atomic_write_text(path, text)
    return True


# ---------------------------------------------------------------------------- command
@user_errors
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see recipes/).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe value, e.g. --set train.epochs=3 (value read as YAML; repeatable).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder (default: runs/<name>).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate the recipe, print the resolved config and the stages; run nothing.")] = False,
) -> None:
    """Run a recipe: prune -> train -> export -> bench, each stage skipped when its outputs exist."""
    from slimkit.recipe import dump_recipe, load_recipe

    r = load_recipe(recipe, set_)
    lay = Layout(out or Path("runs") / r.name)
    same = check_folder(r, lay)
    resolved = dump_recipe(r)
    if dry_run:
        from slimkit import registry

        console.print(f"# resolved recipe ({recipe}{', with --set overrides' if set_ else ''})", highlight=False,
                      markup=False)
        console.print(resolved, highlight=False, markup=False, soft_wrap=True)
        b = r.prune.budget()
        what = (f"{b.fraction:.0%} of the full model's {'latency' if b.kind == 'latency' else 'MACs'}"
                if b.fraction is not None else f"{b.kind} {b.text}")
        reach = _budget_reach(r)
        if reach:
            what += f" ({reach})"
        console.print(f"arch {r.arch} -> {registry.resolve(r.arch).canonical}; budget {what}; "
                      f"run folder {lay.root}" + (" (holds this recipe: finished stages are skipped)" if same else ""),
                      highlight=False, soft_wrap=True, markup=False)
        table = Table(title=f"stages, in {lay.root}/")
        for col in ("stage", "writes", "what, and whether it would run now"):
            table.add_column(col)
        for stage, outputs in _stage_list(r, lay):
            for i, (path, text) in enumerate(outputs):
                name = path.relative_to(lay.root).as_posix() + ("/" if path.name.startswith("train") else "")
                table.add_row(stage if i == 0 else "", escape(name), escape(text))
        console.print(table)
        from slimkit.data import data_missing

        missing = data_missing(r.data.name, r.data.data_dir)
        if missing:
            warn(f"data not available here: {missing}")
        return
    start = time.perf_counter()
    from slimkit.plan import folder_lock

    with folder_lock(lay.root, "run"):
        _run_stages(r, recipe, lay, same, resolved, start)


def _run_stages(r, recipe: Path, lay: Layout, same: bool, resolved: str, start: float) -> None:
    if not same:
        from slimkit.plan import atomic_write_text

        atomic_write_text(lay.recipe, f"# The resolved recipe of this run folder (from {recipe}, every key, defaults "
                                      "filled in).\n# `slimkit run` refuses to mix another recipe into this folder.\n"
                                      + resolved)
    plan, uniform = _prune_stage(r, lay)
    from slimkit.source import full_plan_of

    plans = {"pruned": plan, "uniform": uniform, "full": full_plan_of(plan)}
    _train_stage(r, lay, plans)
    _export_stage(r, lay)
    _bench_stage(r, lay, plans)
    summary = build_summary(r, lay, plans)
    _write_if_changed(lay.summary_json, json.dumps(summary, indent=1) + "\n")
    _write_if_changed(lay.summary_md, summary_markdown(summary))
    render_summary(summary)
    console.print(f"wrote {lay.summary_json}, {lay.summary_md}  ({time.perf_counter() - start:.1f}s)", highlight=False,
                  markup=False)
