"""``run_recipe``: prune -> train -> export -> bench -> summary from one recipe, resumably.

Every stage writes into the run folder (default ``runs/<name>``) and is skipped when its outputs
already exist, so a killed run continues where it stopped when the same recipe runs again:

========  ====================================================================================
prune     ``plan.json`` (the recipe's method) and ``uniform.json`` (method uniform, same budget);
          from ``prune.weights: full`` the full model is trained first (``train-full/``) and pruned
train     ``train/`` (the plan: from scratch, or fine-tuned from inherited weights with
          ``train.init: inherit``), plus ``train-full/``, ``train-uniform/``, ``train-scratch-e/`` and
          ``train-scratch-b/`` (the plan from scratch) when listed in ``train.compare``; a folder
          with fewer epochs than planned is resumed
export    ``model.onnx`` from ``train/checkpoint.pt`` (the metadata ``slimkit export`` writes);
          with ``export.int8``, also ``model.int8.onnx`` (and its ``.check.json``), refused when it
          loses more than ``export.max_drop`` top-1 points on the test split
bench     ``latency.{json,md,png}``: full vs uniform vs pruned (and full-int8, pruned-int8 with
          ``export.int8``), interleaved in one run
summary   ``summary.{json,md}``: MACs, params, the test metric, latency for each model (and int8
          top-1 and latency)
========  ====================================================================================

The resolved recipe (every key, defaults filled in) is written to ``recipe.yaml`` first; a folder
that holds a different one is refused, so two settings never mix in one folder. That file (with
its header) marks the folder as a run's: a folder without it is someone else's, and a run refuses
to write over any file in it (``force`` replaces them). ``stages.json`` records, for each stage,
fingerprints (SHA-256) of the files it read and wrote; a stage is skipped only when they still
match, so a plan, checkpoint or ONNX file changed or replaced after a stage ran makes the stages
after it run again (a plan cut from a parent checkpoint is cut again when that checkpoint
changed), and a trained folder whose plan is not the run's plan is refused. What the run has
to say goes through :class:`RunHooks` (the CLI draws it with rich; the default is silent), as
``prune`` and ``train`` take ``log`` and ``progress``.

Models are compared by their task's headline metric (``slimkit.train.headline_metric``): test top-1
for a classifier, mIoU for a segmentation model, COCO mAP@[.5:.95] for a detector; the summary names
it (``metric``) and each row holds it under that key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from slimkit import registry
from slimkit.artifacts import load_checkpoint, load_model, onnx_candidate, onnx_metadata, plan_candidate
from slimkit.checkpoint import full_model_weights, missing_checkpoint, read_weights, weights_fingerprint
from slimkit.data import data_missing
from slimkit.errors import SlimkitError
from slimkit.data import load_data
from slimkit.exporters import get_exporter
from slimkit.exporters.int8 import (Int8CheckError, QuantizeSettings, export_int8, int8_path, quantize_for_timing,
                                    settings_of)
from slimkit.int8_speed import ordered_settings, rank_int8_configs
from slimkit.files import LOCK_NAME, RUN_RECIPE_NAME, Output, atomic_write_text, check_outputs, folder_lock
from slimkit.flops import format_count
from slimkit.budget import Budget
from slimkit.generator import full_plan, verified_plan, with_num_classes
from slimkit.latency import LatencyReport, backend_missing, measure
from slimkit.plan import ChannelPlan, load_plan, save_plan
from slimkit.plots import plot_channels
from slimkit.prune import GateOptions, LatencyOptions, prune
from slimkit.rounding import documented_multiple
from slimkit.recipe import RUN_FULL, Recipe, dump_recipe, num_classes_of, parse_recipe, read_yaml
from slimkit.train import FINETUNE, TrainConfig, headline_metric, run_outputs, train
from slimkit.validate import check_callable, check_type, show

__all__ = ["run_recipe", "RunHooks", "Layout", "StageRecord", "train_state", "RECIPE_HEADER", "stage_list", "budget_reach", "check_folder",
           "missing_data", "missing_training_data", "summary_markdown", "summary_columns", "SUMMARY_FORMAT", "SUMMARY_COLUMNS",
           "format_cell"]

SUMMARY_FORMAT = "slimkit.run-summary/1"
STAGES_FORMAT = "slimkit.run-stages/1"
RECIPE_HEADER = "# The resolved recipe of this run folder"  # marks a folder as a `slimkit run` folder


@dataclass
class RunHooks:
    """How a run talks. ``progress()`` makes a rich-Progress-like context manager (``add_task``,
    ``update``, ``remove_task``, ``console.print``) for the long stages, or None for no bars;
    ``status(text)`` a context manager shown during short waits; ``report`` shows a latency report and
    ``summary`` the run's summary."""

    stage: Callable[[str, str], None] = lambda name, text: None
    log: Callable[[str], None] = lambda text: None
    warn: Callable[[str], None] = lambda text: None
    progress: Callable[[], Any] | None = None
    status: Callable[[str], Any] = lambda text: contextlib.nullcontext()
    report: Callable[[LatencyReport], None] = lambda report: None
    summary: Callable[[dict[str, Any]], None] = lambda summary: None

    @contextlib.contextmanager
    def bars(self):
        """(progress, log) for a long call: log lines print above the bars while they are up."""
        if self.progress is None:
            yield None, self.log
            return
        with self.progress() as progress:
            yield progress, lambda msg: progress.console.print(msg, markup=False, highlight=False, soft_wrap=True)


class Layout:
    """Where each stage writes, inside the run folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.recipe = root / RUN_RECIPE_NAME
        self.plan, self.uniform, self.plan_png = root / "plan.json", root / "uniform.json", root / "plan.png"
        self.train, self.train_full, self.train_uniform = root / "train", root / "train-full", root / "train-uniform"
        self.train_scratch = {label: root / f"train-{label}" for label in ("scratch-e", "scratch-b")}
        self.onnx = root / "model.onnx"
        self.onnx_int8 = int8_path(self.onnx)
        self.int8_check = root / "model.int8.check.json"
        self.latency = root / "latency"  # report stem: .json, .md, .png
        self.latency_files = [root / f"latency.{ext}" for ext in ("json", "md", "png")]
        self.summary_json, self.summary_md = root / "summary.json", root / "summary.md"
        self.stages = root / "stages.json"

    def owned(self) -> bool:
        """The folder is a run folder: its recipe.yaml is the one a run wrote (with its header)."""
        try:
            with open(self.recipe, encoding="utf-8", errors="replace") as f:
                return f.read(len(RECIPE_HEADER)) == RECIPE_HEADER
        except OSError:
            return False

    def checkpoint(self, where: str | None) -> Path | None:
        """A parent checkpoint a recipe names (prune.weights, train.init_from): the run's own full model's
        for ``full``, else the path itself."""
        if where is None:
            return None
        return self.train_full / "checkpoint.pt" if where == RUN_FULL else Path(where).expanduser()

    def outputs(self, recipe: Recipe) -> list[Output]:
        """Every file a run may write here (for a folder that is not yet a run folder: none may exist)."""
        names = [(self.recipe, "the run's recipe"), (self.plan, "the plan"), (self.uniform, "the uniform plan"),
                 (self.plan_png, "the channel plot"), (self.onnx, "the ONNX file"), (self.onnx_int8, "the int8 file"),
                 (self.int8_check, "the int8 check record"), (self.summary_json, "the summary"),
                 (self.summary_md, "the summary (Markdown)"), (self.stages, "the stage record")]
        names += [(p, "the latency report") for p in self.latency_files]
        outs = [Output(p, what) for p, what in names]
        for _, folder in _train_jobs(recipe, self):
            outs += [Output(o.path, f"{o.what} of {folder.name}/") for o in run_outputs(folder, None)]
        return outs


def _digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class StageRecord:
    """``stages.json``: what each stage read and wrote when it last ran (SHA-256 of each file), so a
    stage is skipped only when its inputs and outputs are still those files: an mtime can lie (a copy,
    a clock, a re-prune within the same second), a fingerprint cannot."""

    def __init__(self, lay: Layout) -> None:
        self.lay = lay
        self.legacy = lay.owned() and not lay.stages.exists()  # a run folder from before this record existed
        try:
            data = json.loads(lay.stages.read_text())
            self.stages = dict(data["stages"]) if data.get("format") == STAGES_FORMAT else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.stages = {}

    def _entry(self, inputs: list[Path], outputs: list[Path]) -> dict[str, dict[str, str | None]]:
        return {"from": {self._name(p): _digest(p) for p in inputs},
                "wrote": {self._name(p): _digest(p) for p in outputs}}

    def _name(self, path: Path) -> str:
        """A file's key in the record: relative to the run folder, or absolute for a file outside it (a
        parent checkpoint given by path)."""
        try:
            return path.relative_to(self.lay.root).as_posix()
        except ValueError:
            return path.absolute().as_posix()

    def read(self, stage: str, path: Path) -> str | None:
        """The fingerprint ``path`` had when ``stage`` last read it (None: never recorded)."""
        return self.stages.get(stage, {}).get("from", {}).get(self._name(path))

    def current(self, stage: str, inputs: list[Path], outputs: list[Path]) -> bool:
        """The stage's outputs all exist and are what it wrote, from inputs as they are now."""
        if not all(p.is_file() for p in outputs):
            return False
        if stage not in self.stages:
            return False
        return self.stages[stage] == self._entry(inputs, outputs)

    def wrote(self, stage: str, path: Path) -> str | None:
        return self.stages.get(stage, {}).get("wrote", {}).get(self._name(path))

    def record(self, stage: str, inputs: list[Path], outputs: list[Path]) -> None:
        self.stages[stage] = self._entry(inputs, outputs)
        _write_if_changed(self.lay.stages, json.dumps({"format": STAGES_FORMAT, "stages": self.stages}, indent=1)
                          + "\n")



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


def _train_jobs(recipe: Recipe, lay: Layout) -> list[tuple[str, Path]]:
    jobs = [("pruned", lay.train)]
    for other in recipe.train.compare:
        if other == "uniform" and recipe.prune.method == "uniform" and recipe.prune.structure is None:
            continue  # the pruned model *is* the uniform one: same plan, same seed, same run
        folder = {"full": lay.train_full, "uniform": lay.train_uniform}.get(other) or lay.train_scratch[other]
        jobs.append((other, folder))
    if RUN_FULL in (recipe.prune.weights, recipe.train.init_from):  # the parent trains before anything is cut
        jobs.sort(key=lambda job: job[0] != "full")
    return jobs


def _train_config(recipe: Recipe, lay: Layout, label: str) -> TrainConfig:
    """How each of the run's trainings trains: the plan (train/) and the uniform plan as the recipe's
    train section says (inheriting, when it says so); the full model and the scratch-e / scratch-b
    comparisons from scratch for train.epochs (the full model: Scratch-E, i.e. its plain schedule)."""
    t = recipe.train
    common = dict(data=recipe.data.name, data_dir=recipe.data.data_dir, batch_size=t.batch_size,
                  weight_decay=t.weight_decay, label_smoothing=t.label_smoothing, warmup_epochs=t.warmup_epochs,
                  augment=t.augment, seed=t.seed, max_steps_per_epoch=t.max_steps_per_epoch)
    if label in ("pruned", "uniform"):
        finetune = t.schedule == FINETUNE
        init_from = lay.checkpoint(t.init_from)
        return TrainConfig(**common, epochs=t.main_epochs, schedule=t.schedule,
                           lr=t.finetune_lr if finetune else t.lr, init=t.init,
                           init_from=str(init_from) if init_from is not None else None)
    schedule = label if label in lay.train_scratch else (t.schedule if t.schedule != FINETUNE else "scratch-e")
    return TrainConfig(**common, epochs=t.epochs, schedule=schedule, lr=t.lr)


def stage_list(recipe: Recipe, lay: Layout) -> list[tuple[str, list[tuple[Path, str]]]]:
    """For --dry-run: each stage, what it writes and what a run would do with it now. Every answer comes from
    the function the stage itself decides with (:func:`_kept_plan`, :func:`checked_train_state`, the
    ``_*_done`` checks); a stage whose input a run would make again first (a plan cut again, a model
    trained further) would run, and a refusal stops the run there, as it would."""
    record = StageRecord(lay)
    stopped: list[str] = []  # the stage a run would stop at, once one refuses

    def refused(stage: str, exc: SlimkitError) -> str:
        stopped.append(stage)
        return f"refused: {exc}"

    def not_reached() -> str:
        return f"not reached (the run stops at {stopped[0]})"

    first = recipe.prune.weights == RUN_FULL  # the parent trains before the prune stage (as run_recipe runs it)
    jobs = _train_jobs(recipe, lay)
    trains_again: set[str] = set()  # training jobs a run would (re)start: their checkpoints change
    full_text = None
    if first:  # train-full/ goes first: the plan is cut from what it holds after
        full_text = _train_status(recipe, lay, "full", lay.train_full, _parent_plan(recipe), trains_again, refused,
                                  first=True)

    # prune: plan.json, uniform.json, plan.png
    parent_changed = _parent_changed(recipe, lay, record) or "full" in trains_again
    prune_runs = False

    def plan_status(p: Path) -> str:
        nonlocal prune_runs
        if stopped:
            return not_reached()
        if not p.exists():
            prune_runs = True
            return "would run"
        if not lay.owned():  # refused before any stage; with --force, replaced
            prune_runs = True
            return "exists but not a run's: refused (--force replaces it)"
        if p == lay.plan_png:  # redrawn whenever a plan is cut, or when it changed
            recorded = record.wrote("prune", p)
            return ("would run" if prune_runs or (recorded is not None and recorded != _digest(p))
                    or (recorded is None and not record.legacy) else "exists: skip")
        try:
            kept = _kept_plan(recipe, lay, record, p, parent_changed)
        except SlimkitError as exc:
            return refused("prune", exc)
        if kept is None:
            prune_runs = True
            return "would run" + (" (its parent checkpoint changed since it was cut)" if parent_changed else "")
        return "exists: skip"

    prune_rows = [(lay.plan, (f"structure {recipe.prune.structure}" if recipe.prune.structure else
                              f"{recipe.prune.method} plan")
                   + (f", channels kept by {recipe.prune.criterion} on {lay.checkpoint(recipe.prune.weights)}"
                      if recipe.prune.weights else "") + f": {plan_status(lay.plan)}"),
                  (lay.uniform, f"uniform plan, same budget: {plan_status(lay.uniform)}"),
                  (lay.plan_png, f"channels per group: {plan_status(lay.plan_png)}")]

    trains = []
    for label, folder in jobs:
        if first and label == "full":
            trains.append((folder, full_text))
            continue
        # the plan the train stage checks the folder against (as run_recipe builds them), once the prune stage kept it
        plan = None
        if not prune_runs and not stopped and lay.plan.is_file():
            plan = (verified_plan(lay.uniform) if label == "uniform" else
                    verified_plan(lay.plan).unpruned() if label == "full" else verified_plan(lay.plan))
        trains.append((folder, _train_status(recipe, lay, label, folder, plan, trains_again, refused, first=False,
                                             stopped=stopped, recut=prune_runs)))
    if "uniform" in recipe.train.compare and recipe.prune.method == "uniform" and recipe.prune.structure is None:
        trains.append((lay.train_uniform, "uniform: same as train/ (prune.method is uniform), not trained twice"))

    int8 = recipe.export.int8
    export_runs = "pruned" in trains_again or not _export_done(lay, record)
    int8_runs = export_runs or not _int8_done(recipe, lay, record)
    bench_runs = export_runs or int8_runs or prune_runs or not _bench_done(recipe, lay, record)

    def downstream(runs: bool) -> str:
        return not_reached() if stopped else "would run" if runs else "exists: skip"

    return [
        ("prune", prune_rows),
        ("train", trains),
        ("export", [(lay.onnx, f"ONNX of train/checkpoint.pt: {downstream(export_runs)}")]
         + ([(lay.onnx_int8, f"int8 ONNX, top-1 checked against fp32: {downstream(int8 and int8_runs)}")]
            if int8 else [])),
        ("bench", [(lay.root / "latency.{json,md,png}", "full vs uniform vs pruned" + (" (fp32 and int8)" if int8 else "")
                    + f", interleaved: {downstream(bench_runs)}")]),
        ("summary", [(lay.root / "summary.{json,md}",
                      f"MACs, params, {headline_metric(recipe.arch)[1]}, latency per model"
                      + (f": {not_reached()}" if stopped else ""))]),
    ]


def _parent_plan(recipe: Recipe) -> ChannelPlan:
    """The full model a run trains before its prune stage, when the plan is cut from it (prune.weights full)."""
    shape = _shape_kwargs(recipe)
    return full_plan(recipe.arch, num_classes=shape["num_classes"], in_chans=shape["in_chans"],
                     input_size=shape["input_size"], arch_kwargs=shape["arch_kwargs"])


def _train_status(recipe: Recipe, lay: Layout, label: str, folder: Path, plan: ChannelPlan | None,
                  trains_again: set[str], refused: Callable[[str, SlimkitError], str], *, first: bool,
                  stopped: list[str] | None = None, recut: bool = False) -> str:
    """The dry run's line for one training folder, decided by :func:`checked_train_state`."""
    cfg = _train_config(recipe, lay, label)
    how = _training_text(cfg) + (", before prune" if first else "")
    if stopped:
        return f"{label} ({how}): not reached (the run stops at {stopped[0]})"
    try:
        state, done, _ = checked_train_state(folder, plan, cfg)
    except SlimkitError as exc:
        return f"{label} ({how}): {refused('train', exc)}"
    if state != "done":
        trains_again.add(label)
    text = {"done": f"done ({done} epochs): skip", "resume": f"resume after epoch {done}", "new": "would run"}[state]
    if recut and state != "new":  # a run checks the folder against the plan it cuts first (the full model's
        # plan does not depend on the cut, but is checked only then too)
        text += "; refused if the plan cut again differs from the one it was trained from"
    return f"{label} ({how}): {text}"


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
    return f"{path or 'recipe'}: {show(old)} there, {show(new)} now"  # bounded: recipes may be huge


# Keys that only decide the int8 stage: changing them reruns that stage (and bench, summary) in the
# same folder instead of refusing it, since nothing trained depends on them.
INT8_ONLY_KEYS = {"export": ("int8", "calib_images", "max_drop")}


def _identity(resolved: dict[str, Any]) -> dict[str, Any]:
    return {k: ({kk: vv for kk, vv in v.items() if kk not in INT8_ONLY_KEYS[k]} if k in INT8_ONLY_KEYS else v)
            for k, v in resolved.items()}


def _holds_a_stage(lay: Layout) -> bool:
    """Whether the run folder holds anything besides the recipe.yaml a run wrote (and a run's lock)."""
    return any(p.name not in (lay.recipe.name, LOCK_NAME) for p in lay.root.iterdir())


def check_folder(recipe: Recipe, lay: Layout) -> bool:
    """True when ``lay.root`` already holds this recipe (up to :data:`INT8_ONLY_KEYS`); an error when
    it holds a run of another one (False when that run stopped before its first stage wrote anything:
    only its recipe.yaml is there, to be rewritten). A ``recipe.yaml`` written before a key existed reads with that key at
    its default, so folders of older versions resume."""
    if lay.root.exists() and not lay.root.is_dir():
        raise SlimkitError(f"--out {lay.root} is a file: give a folder for the run")
    if not lay.recipe.is_file():
        return False
    if not lay.owned():
        return False  # someone's own recipe.yaml: run_recipe refuses to replace it (check_outputs)
    try:
        old = parse_recipe(read_yaml(lay.recipe.read_text()), str(lay.recipe), check=False).to_dict()
    except Exception:  # noqa: BLE001 - any damage (or a key no longer known): refuse rather than guess
        old = None
    new = recipe.to_dict()
    if (old is None or _identity(old) != _identity(new)) and not _holds_a_stage(lay):
        return False  # a run that stopped before its first stage (bad weights, say): nothing of it to keep or mix
    if old is None or _identity(old) != _identity(new):
        what = _first_difference(_identity(old), _identity(new)) if old is not None else "unreadable recipe.yaml"
        raise SlimkitError(f"{lay.root} holds a run of a different recipe ({what}): pick another --out "
                           f"or delete {lay.root}")
    return True



# ---------------------------------------------------------------------------- stages
def _shape_kwargs(recipe: Recipe) -> dict[str, Any]:
    """The prune() arguments that fix the model and how widths are counted, as the recipe gives them."""
    size = recipe.input_tuple
    return dict(num_classes=num_classes_of(recipe), in_chans=size[0] if size and size[0] != 3 else None,
                input_size=size, arch_kwargs=recipe.arch_kwargs, expand=recipe.prune.expand, round_to=recipe.prune.round_to)


# ---------------------------------------------------------------------------- messages
# The library's messages name the CLI option that fixes a problem ("widen the supernet with --expand");
# `slimkit run` has no such option: the recipe key of that meaning does it, and that key depends on the
# stage (--epochs is prune.epochs while gates are learned, train.epochs while training).
_SHARED_TERMS = {"--data-dir": "data.data_dir", "--data": "data.name", "--input-size": "input_size",
                 "--num-classes": "num_classes", "--arch-kwargs": "arch_kwargs", "--backend": "prune.backend"}
_STAGE_TERMS: dict[str, dict[str, str]] = {
    "prune": {f"--{k.replace('_', '-')}": f"prune.{k}" for k in (
        "flops", "params", "latency", "expand", "round_to", "tolerance", "preset", "gamma", "lr", "epochs", "steps",
        "batch_size", "seed", "threads", "precision", "timing", "structure", "weights", "criterion", "method")},
    "train": {f"--{k.replace('_', '-')}": f"train.{k}" for k in (
        "epochs", "schedule", "batch_size", "lr", "weight_decay", "label_smoothing", "warmup_epochs", "seed",
        "max_steps_per_epoch", "init", "init_from")} | {"--from": "train.init_from"},  # train's option is --from
    "export": {"--opset": "export.opset", "--exporter": "export.exporter", "--dynamic-batch": "export.dynamic_batch",
               "--int8": "export.int8", "--calib-images": "export.calib_images", "--max-drop": "export.max_drop"},
    "bench": {"--threads": "bench.threads", "--runs": "bench.runs", "--batch": "bench.batch"},
}
_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def in_recipe_terms(message: str, stage: str) -> str:
    """``message`` with each CLI option that has a recipe key in ``stage`` written as that key."""
    terms = {**_SHARED_TERMS, **_STAGE_TERMS[stage]}
    return _OPTION.sub(lambda m: terms.get(m.group(0), m.group(0)), message)


@contextlib.contextmanager
def recipe_terms(stage: str) -> Iterator[None]:
    """Re-raise a SlimkitError from ``stage`` in the recipe's terms (see :func:`in_recipe_terms`)."""
    try:
        yield
    except SlimkitError as exc:
        text = in_recipe_terms(str(exc), stage)
        if text == str(exc):
            raise
        try:
            new = type(exc)(text)
        except TypeError:  # an error class that takes more than its message
            new = SlimkitError(text)
        raise new from exc


def budget_reach(recipe: Recipe) -> str | None:
    """Dry run: is a FLOPs/params budget reachable for this model at all? (The uniform plan at that
    budget, seconds to find; a latency budget needs the machine it is measured on.)"""
    with recipe_terms("prune"):
        return _budget_reach(recipe)


def _budget_reach(recipe: Recipe) -> str | None:
    b = recipe.prune.budget()
    if b is None:  # a structure: its widths are fixed, so it fits by construction
        plan = prune(recipe.arch, structure=recipe.prune.structure, verify=False,
                     **{k: v for k, v in _shape_kwargs(recipe).items() if k != "round_to"})
        return (f"reachable: the full model has {format_count(plan.search['full_flops'])} MACs; structure "
                f"{recipe.prune.structure} keeps {format_count(plan.flops)}")
    if b.kind == "latency":
        return None
    shape = _shape_kwargs(recipe)
    if shape["round_to"] == "auto":  # a dry run times nothing: the runtime's documented multiple
        shape["round_to"] = documented_multiple(recipe.prune.backend, recipe.prune.precision)[0]
    plan = prune(recipe.arch, b, method="uniform", **{**shape, "tolerance": 0.05}, verify=False,
                 latency=LatencyOptions(check=False))  # a BudgetError when out of reach; 5%: reach, not exactness
    full = plan.search.get("full_flops") if b.kind == "flops" else plan.search.get("full_params")
    unit = "MACs" if b.kind == "flops" else "params"
    return f"reachable: the full model has {format_count(full)} {unit}"


def _prune_stage(recipe: Recipe, lay: Layout, hooks: RunHooks, record: StageRecord) -> tuple[ChannelPlan, ChannelPlan]:
    p = recipe.prune
    gates = GateOptions(data=recipe.data.name, data_dir=recipe.data.data_dir, preset=p.preset, gamma=p.gamma,
                        lr=p.lr, epochs=p.epochs, steps=p.steps, batch_size=p.batch_size, device="auto")
    latency = LatencyOptions(backend=p.backend, threads=p.threads, batch=recipe.bench.batch, precision=p.precision,
                             mode=p.timing)
    plans: dict[str, ChannelPlan] = {}
    parent = lay.checkpoint(p.weights)
    if parent is not None and (problem := missing_checkpoint(parent)):
        raise SlimkitError(f"prune.weights: {problem}")
    parent_changed = _parent_changed(recipe, lay, record)
    for key, path, method in (("plan", lay.plan, p.method), ("uniform", lay.uniform, "uniform")):
        kept = _kept_plan(recipe, lay, record, path, parent_changed)
        if kept is not None:
            plans[key] = kept
            hooks.stage("prune", f"{path.name} exists: skip")
            continue
        if key == "uniform" and p.method == "uniform" and p.structure is None:
            plans[key] = plans["plan"]  # the same plan: method uniform at the same budget
        else:
            what = (f"structure {p.structure}" if key == "plan" and p.structure is not None else
                    f"{method} plan of {recipe.arch} at {p.budget_key} {getattr(p, p.budget_key)}")
            hooks.stage("prune", what + (f", channels kept by {p.criterion} on {parent}" if key == "plan" and parent
                                         else ""))
            start = time.perf_counter()
            with hooks.bars() as (progress, log):
                task = progress.add_task(f"tracing {recipe.arch}", total=None) if progress else None
                shape = _shape_kwargs(recipe)
                if key == "uniform":  # the comparison plan uses the main plan's channel multiple
                    shape["round_to"] = plans["plan"].round_to
                budget = p.budget()
                if budget is None and key == "uniform":  # uniform widths at the structure's MACs
                    budget = Budget("flops", f"{p.structure} MACs", plans["plan"].flops)
                from_parent = key == "plan" and parent is not None
                if from_parent and recipe.num_classes is None:  # the parent's classes, as `slimkit prune --weights`
                    shape["num_classes"] = None  # takes them; fine-tuning gives the classifier the data's rows
                plans[key] = prune(recipe.arch, budget, method=method, seed=p.seed, tolerance=p.tolerance,
                                   gates=replace(gates, weights=str(parent)) if from_parent else gates,
                                   criterion=p.criterion if key == "plan" else None,
                                   structure=p.structure if key == "plan" else None,
                                   latency=latency, progress=progress, log=log, **shape)
                if progress:
                    progress.remove_task(task)
            hooks.log(f"  MACs {format_count(plans[key].flops)}, params {format_count(plans[key].params)} "
                      f"({time.perf_counter() - start:.1f}s)")
        save_plan(plans[key], path)
        hooks.log(f"  wrote {path}")
    if not record.current("prune", _prune_inputs(recipe, lay), [lay.plan, lay.uniform, lay.plan_png]) and not (
            record.legacy and lay.plan_png.exists()):
        plot_channels(plans["plan"], lay.plan_png, {"uniform": plans["uniform"]}
                      if plans["uniform"] is not plans["plan"] else {})
    record.record("prune", _prune_inputs(recipe, lay), [lay.plan, lay.uniform, lay.plan_png])
    return plans["plan"], plans["uniform"]


def _parent_changed(recipe: Recipe, lay: Layout, record: StageRecord) -> bool:
    """The parent checkpoint a plan is cut from changed since the prune stage read it (e.g. train-full/
    trained anew): the plan is cut again."""
    parent = lay.checkpoint(recipe.prune.weights)
    return parent is not None and record.read("prune", parent) not in (None, _digest(parent))


def _kept_plan(recipe: Recipe, lay: Layout, record: StageRecord, path: Path,
               parent_changed: bool) -> ChannelPlan | None:
    """What the prune stage does with ``path`` (plan.json or uniform.json): the plan it keeps (skip), None
    when it cuts the plan (again), or a SlimkitError when the file is not this run's plan. The dry run asks
    this same question, so it says what a run would do."""
    recorded = record.wrote("prune", path)
    if path.exists() and recorded is not None and recorded != _digest(path):
        raise SlimkitError(f"{path} is not the plan this run made (it changed after the prune stage wrote it, "
                           f"e.g. a new `slimkit prune` into it): a run's stages must come from one plan; put "
                           f"the run's plan back, or run the recipe into a new --out")
    if not (path.exists() and (recorded is not None or record.legacy) and not parent_changed):
        return None
    plan = verified_plan(path)
    if plan.arch != registry.resolve(recipe.arch).canonical:
        raise SlimkitError(f"{path} is a plan of {plan.arch}, not of the recipe's {recipe.arch}: "
                           "run the recipe into a new --out")
    return plan


def _prune_inputs(recipe: Recipe, lay: Layout) -> list[Path]:
    """What the prune stage read: its own plans, and the parent checkpoint a plan was cut from."""
    parent = lay.checkpoint(recipe.prune.weights)
    return [lay.plan, lay.uniform] + ([parent] if parent is not None else [])


def _check_trained_plan(folder: Path, plan: ChannelPlan) -> None:
    """A training folder holds a run of ``plan``: its plan.json and its checkpoint's plan, each that is
    there (the checkpoint is what the export stage exports, so a checkpoint put there from another run
    is refused even beside the right plan.json)."""
    held = []
    for name, read in (("plan.json", load_plan), ("checkpoint.pt", lambda p: load_checkpoint(p)["plan"])):
        if (folder / name).is_file():
            try:
                held.append(read(folder / name))
            except SlimkitError as exc:  # damaged, not foreign: say what is wrong with it
                raise SlimkitError(f"{folder / name} cannot be read ({exc}): move {folder} away to train "
                                   "again, or run the recipe into a new --out") from exc
    # a widths-only plan may gain kept channels in training: only this plan's own keep is compared
    if not held or not all(plan.sized_as(h).builds_same_network_as(h) for h in held):
        raise SlimkitError(f"{folder} was trained from another plan than this run's (the plan changed after it "
                           f"was trained): its model does not belong with this run's plan; move {folder} away to "
                           "train again, or run the recipe into a new --out")


# TrainConfig fields that say how a training runs, not what it trains (they may change on resume), and
# paths whose spelling follows --out (the parent checkpoint itself is fingerprinted by the prune stage).
NOT_COMPARED = ("device", "workers", "accum_steps", "sync_bn", "init_from", "data_dir")


def _check_trained_config(folder: Path, cfg: TrainConfig) -> None:
    """A training folder's checkpoint was trained as this recipe trains it: a folder trained on (or resumed
    to) other epochs, schedule, learning rate or data does not belong in this run's summary."""
    try:
        saved = load_checkpoint(folder / "checkpoint.pt")["config"]
    except SlimkitError:
        return  # no checkpoint or a damaged one: _check_trained_plan and the train stage say so
    for key, value in asdict(cfg).items():
        if key in NOT_COMPARED or value is None or key not in saved or saved[key] == value:
            continue
        raise SlimkitError(f"{folder} was trained with {key}={show(saved[key])}, not the recipe's {show(value)} "
                           f"(trained again outside this run?): its model does not belong with this run; move "
                           f"{folder} away to train again, or run the recipe into a new --out")


def _check_trained_parent(folder: Path, cfg: TrainConfig) -> None:
    """A folder fine-tuned from inherited weights was inherited from the weights train.init_from holds now
    (the fingerprint its plan's criterion recorded): a parent replaced or trained again since makes
    the fine-tuned model one of another parent's."""
    if cfg.init != "inherit" or missing_checkpoint(cfg.init_from):
        return  # a parent removed after the fine-tuning: what was trained still stands
    try:
        held = load_checkpoint(folder / "checkpoint.pt")["plan"]
    except SlimkitError:
        return  # _check_trained_plan says what is wrong with it
    recorded = (held.criterion or {}).get("fingerprint")
    if recorded is None:  # written before slimkit recorded the parent
        return
    # a slimkit checkpoint is read with its own arguments: a parent trained on other classes than this run's
    own = read_weights(cfg.init_from)[1]
    now = weights_fingerprint(full_model_weights(cfg.init_from, held.arch, own.arch_kwargs if own else held.arch_kwargs))
    if now != recorded:
        raise SlimkitError(f"{folder} was fine-tuned from weights {recorded}, but train.init_from {cfg.init_from} now "
                           f"holds {now} (replaced or trained again since): its model does not belong with this "
                           f"run; move {folder} away to train again, restore that parent, or run the recipe into a "
                           "new --out")


def checked_train_state(folder: Path, plan: ChannelPlan | None, cfg: TrainConfig) -> tuple[str, int, int | None]:
    """:func:`train_state` of a training folder, after checking that a started one belongs to this run (its
    plan, its settings, the parent it inherited from): a SlimkitError when it does not. What the train stage
    decides, and the dry run asks the same. ``plan`` None: the prune stage will cut the plan again, so
    whether the folder's plan matches is known only then."""
    state, done, total = train_state(folder)
    if state != "new":
        if plan is not None:
            _check_trained_plan(folder, plan)
        _check_trained_config(folder, cfg)
        _check_trained_parent(folder, cfg)
    return state, done, total


def _train_stage(recipe: Recipe, lay: Layout, plans: dict[str, ChannelPlan], hooks: RunHooks,
                 force: bool = False, only: tuple[str, ...] | None = None) -> None:
    t = recipe.train
    for label, folder in _train_jobs(recipe, lay):
        if only is not None and label not in only:
            continue
        plan = plans["pruned" if label in lay.train_scratch else label]  # scratch-e/-b: the plan, from scratch
        cfg = _train_config(recipe, lay, label)
        state, done, total = checked_train_state(folder, plan, cfg)
        if state == "done":
            hooks.stage("train", f"{folder.name}/ done ({done}/{total} epochs): skip")
            continue
        how = (f"fine-tuned from {cfg.init_from}" if cfg.schedule == FINETUNE else
                f"from {cfg.init_from}, {cfg.schedule}" if cfg.init == "inherit" else cfg.schedule)
        hooks.stage("train", f"{label} model ({how}) -> {folder.name}/"
                    + (f" (resuming after epoch {done})" if state == "resume" else ""))
        if cfg.init == "inherit" and state == "new" and (problem := missing_checkpoint(cfg.init_from)):
            raise SlimkitError(f"train.init_from: {problem}")
        with hooks.bars() as (progress, log):
            result = train(plan, folder, cfg, resume=state == "resume", progress=progress, log=log,
                           force=force)
        if result.metrics:
            final = result.metrics[-1]
            key, name = headline_metric(plan.arch)
            hooks.log(f"  {name} {final[key]:.4f} after {final['epoch']} epoch{'' if final['epoch'] == 1 else 's'}")
    if "uniform" in t.compare and recipe.prune.method == "uniform" and recipe.prune.structure is None and only is None:
        hooks.stage("train", "uniform: the pruned model is the uniform one (prune.method uniform); see train/")


def _export_done(lay: Layout, record: StageRecord) -> bool:
    return record.current("export", [lay.train / "checkpoint.pt"], [lay.onnx])


def _export_stage(recipe: Recipe, lay: Layout, hooks: RunHooks, record: StageRecord) -> None:
    ckpt = lay.train / "checkpoint.pt"
    if _export_done(lay, record):
        hooks.stage("export", f"{lay.onnx.name} exists: skip")
        return
    e = recipe.export
    loaded = load_model(str(ckpt))
    with hooks.status(f"exporting {loaded.description}"):  # a detector: its dense core, as `slimkit export` does
        result = get_exporter("onnx")(registry.traced_part(loaded.model), loaded.input_size, lay.onnx,
                                      batch=recipe.bench.batch,
                                      metadata=onnx_metadata(loaded), opset=e.opset, dynamic_batch=e.dynamic_batch,
                                      exporter=e.exporter, warn=hooks.warn)
    record.record("export", [ckpt], [lay.onnx])
    d = result.details
    hooks.stage("export", f"wrote {lay.onnx} ({result.size_bytes / 1e6:.2f} MB, {d['exporter']} opset {d['opset']}, "
                          f"max |ORT − PyTorch| {d['parity_max_abs_diff']:.1e}, {result.export_seconds:.1f}s)")


def _int8_done(recipe: Recipe, lay: Layout, record: StageRecord) -> bool:
    """model.int8.onnx was quantized from model.onnx as it is now, and checked with this recipe's settings."""
    if not record.current("int8", [lay.onnx], [lay.onnx_int8, lay.int8_check]):
        return False
    try:
        record = json.loads(lay.int8_check.read_text())
        return (record["written"] and record["quantization"]["calib_images"] == recipe.export.calib_images
                and record["check"]["limit"] == recipe.export.max_drop)
    except (ValueError, KeyError, TypeError):
        return False


def _int8_stage(recipe: Recipe, lay: Layout, hooks: RunHooks, record: StageRecord) -> Int8CheckError | None:
    """model.int8.onnx from model.onnx: onnxruntime's static quantization, calibrated on the recipe's
    training images and checked on its test split (what ``slimkit export --int8`` does). A refused
    check is returned, not raised, so the run still times and summarises the fp32 models."""
    e = recipe.export
    if not e.int8:
        return
    if _int8_done(recipe, lay, record):
        hooks.stage("int8", f"{lay.onnx_int8.name} exists: skip")
        return
    loaded = load_model(str(lay.train / "checkpoint.pt"))
    data = load_data(recipe.data.name, data_dir=recipe.data.data_dir, input_size=loaded.input_size, val_size=0,
                     seed=loaded.plan.seed)
    hooks.stage("int8", f"quantizing {lay.onnx.name}: calibrating on {e.calib_images} {data.name} training images, "
                        f"then top-1 vs fp32 on the test split (at most {e.max_drop:g} points lost)")
    with hooks.bars() as (progress, _):
        task = progress.add_task("int8 check", total=None) if progress else None
        try:
            base = QuantizeSettings(calib_images=e.calib_images, seed=loaded.plan.seed)
            ranking = rank_int8_configs(lay.onnx, (recipe.bench.batch, *loaded.input_size), threads=recipe.bench.threads,
                                        say=hooks.log)
            result = export_int8(lay.onnx, data, trained=True, max_drop=e.max_drop, warn=hooks.warn,
                                 settings=ordered_settings(ranking, base), choice=ranking.to_dict(),
                                 progress=(lambda done, total: progress.update(task, completed=done, total=total))
                                 if progress else None)
        except Int8CheckError as exc:  # the fp32 results still get timed and summarised; run_recipe re-raises
            hooks.warn(f"int8 check failed, no int8 file written: {exc.check_summary}")
            return exc
    record.record("int8", [lay.onnx], [lay.onnx_int8, lay.int8_check])
    check = result.details["check"]
    hooks.stage("int8", f"wrote {lay.onnx_int8} ({result.size_bytes / 1e6:.2f} MB, "
                        f"{result.details['quantization']['configuration']}): top-1 {100 * check['int8_top1']:.2f}% "
                        f"vs fp32 {100 * check['fp32_top1']:.2f}%")


def _measure(candidates, hooks: RunHooks, **options: Any) -> LatencyReport:
    with hooks.bars() as (progress, _):
        if progress is None:
            return measure(candidates, **options)
        task = progress.add_task(f"timing {len(candidates)} model(s) on {options['backend']}", total=options["runs"])
        return measure(candidates, **options, progress=lambda done, total: progress.update(task, completed=done))


def _bench_stage(recipe: Recipe, lay: Layout, plans: dict[str, ChannelPlan], hooks: RunHooks,
                 record: StageRecord) -> None:
    e, b = recipe.export, recipe.bench
    int8 = _times_int8(recipe, lay)
    if _bench_done(recipe, lay, record):
        hooks.stage("bench", "latency.json exists: skip")
        return
    names = "full vs uniform vs pruned" + (" (fp32 and int8)" if int8 else "")
    hooks.stage("bench", f"{names} on {recipe.prune.backend}, {b.runs} interleaved rounds")
    with tempfile.TemporaryDirectory(prefix="slimkit-run-") as tmp:
        cands = []
        for name in ("full", "uniform"):
            with hooks.status(f"exporting the {name} model for timing"):
                # the pruned model's settings, so all three graphs come from the same exporter
                cands.append(plan_candidate(plans[name], Path(tmp), b.batch, name, opset=e.opset,
                                            dynamic_batch=e.dynamic_batch, exporter=e.exporter, check_parity=False))
        cands.append(onnx_candidate(lay.onnx, b.batch, name="pruned"))
        if int8:
            with hooks.status("quantizing the full model for timing"):
                full_int8 = quantize_for_timing(cands[0].onnx_path, tuple(plans["full"].input_size), batch=b.batch,
                                                settings=settings_of(lay.onnx_int8))  # as the pruned file ran
            cands += [onnx_candidate(full_int8, b.batch, name="full-int8"),
                      onnx_candidate(lay.onnx_int8, b.batch, name="pruned-int8")]
        report = _measure(cands, hooks, backend=recipe.prune.backend, threads=b.threads, warmup=10, runs=b.runs,
                          device="cpu")
    written = report.write(lay.latency)
    record.record("bench", _bench_inputs(recipe, lay), lay.latency_files)
    hooks.report(report)
    hooks.log("  wrote " + ", ".join(str(p) for p in written))


def _times_int8(recipe: Recipe, lay: Layout) -> bool:
    """The bench stage times the int8 models: asked for, and a file to time (a refused check leaves none)."""
    return recipe.export.int8 and lay.onnx_int8.is_file()


def _bench_inputs(recipe: Recipe, lay: Layout) -> list[Path]:
    return [lay.onnx, lay.plan, lay.uniform] + ([lay.onnx_int8] if _times_int8(recipe, lay) else [])


def _bench_done(recipe: Recipe, lay: Layout, record: StageRecord) -> bool:
    """latency.* timed the files as they are now and holds the int8 models exactly when they are timed
    (export.int8 may change between runs of a folder)."""
    int8 = _times_int8(recipe, lay)
    if not record.current("bench", _bench_inputs(recipe, lay), lay.latency_files):
        return False
    try:
        timed = {m["name"] for m in json.loads((lay.root / "latency.json").read_text())["models"]}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return ("pruned-int8" in timed) == int8


# ---------------------------------------------------------------------------- summary
def _final_metrics(folder: Path) -> dict[str, Any] | None:
    """The last epoch's metrics as training computed them: from the checkpoint (the model they belong to,
    checked against the run's plan by the train stage), not from metrics.json, a copy anyone can edit."""
    path = folder / "checkpoint.pt"
    if not path.is_file():
        return None
    metrics = load_checkpoint(path)["metrics"]
    return metrics[-1] if metrics else None


def _for_data(recipe: Recipe, plan: ChannelPlan) -> ChannelPlan:
    """``plan`` with the recipe's classes, where it holds those of the parent it was cut from (prune.weights
    trained on other classes): what a model trained from scratch on the recipe's data has."""
    classes = num_classes_of(recipe)
    return plan if plan.num_classes in (None, classes) else with_num_classes(plan, classes)


def _as_trained(plan: ChannelPlan, folder: Path) -> ChannelPlan:
    """``plan`` as its training in ``folder`` built it: with the classifier sized for the data (a parent's
    other classes fine-tuned onto the data's), whose MACs and parameters the exported model has."""
    try:
        trained = load_plan(folder / "plan.json")
    except (OSError, SlimkitError):
        return plan
    return trained if plan.sized_as(trained).builds_same_network_as(trained) else plan


def build_summary(recipe: Recipe, lay: Layout, plans: dict[str, ChannelPlan]) -> dict[str, Any]:
    report = json.loads((lay.root / "latency.json").read_text()) if (lay.root / "latency.json").is_file() else None
    by_name = {m["name"]: m for m in report["models"]} if report else {}
    folders = {"pruned": lay.train, "full": lay.train_full, **lay.train_scratch,
               "uniform": lay.train if recipe.prune.method == "uniform" and recipe.prune.structure is None
               else lay.train_uniform}
    plans = {**plans, **{label: plans["pruned"] for label in lay.train_scratch}}  # the plan, from scratch
    full_flops = plans["full"].flops
    metric, metric_name = headline_metric(plans["pruned"].arch)
    int8_check = None
    if recipe.export.int8 and lay.int8_check.is_file():
        try:
            int8_check = json.loads(lay.int8_check.read_text())
        except ValueError:
            int8_check = None  # damaged: the int8 columns stay empty rather than the summary failing
    rows = []
    names = ["pruned"] + [label for label in lay.train_scratch if label in recipe.train.compare] + ["uniform", "full"]
    for name in names:
        final = _final_metrics(folders[name])
        plan = _as_trained(plans[name], folders[name]) if final else plans[name]
        lat, lat8 = by_name.get(name), by_name.get(f"{name}-int8")
        check = int8_check["check"] if name == "pruned" and int8_check and int8_check.get("written") else None
        rows.append({
            "name": name, "plan": {"uniform": "uniform.json", "full": None}.get(name, "plan.json"),
            "macs": plan.flops, "params": plan.params,
            "macs_ratio": round(plan.flops / full_flops, 4) if plan.flops and full_flops else None,
            metric: final[metric] if final else None,
            "epochs": final["epoch"] if final else None,
            "train_folder": folders[name].name + "/" if final else None,
            "training": _training_text(_train_config(recipe, lay, name)) if final else None,
            "latency_median_ms": round(lat["stats"]["median_ms"], 4) if lat else None,
            "latency_ratio": round(lat["ratio"], 4) if lat else None,
            "latency_ratio_ci": [round(x, 4) for x in lat["ratio_ci"]] if lat else None,
            "int8_top1": check["int8_top1"] if check else None,
            "int8_latency_median_ms": round(lat8["stats"]["median_ms"], 4) if lat8 else None,
            "int8_latency_ratio": round(lat8["ratio"], 4) if lat8 else None,  # to the full fp32 model
        })
    int8 = None
    if recipe.export.int8 and int8_check is not None:
        int8 = {"written": bool(int8_check.get("written")), "check": int8_check.get("check"),
                "file": lay.onnx_int8.name if int8_check.get("written") else None}
    return {"format": SUMMARY_FORMAT, "recipe": recipe.name, "arch": plans["pruned"].arch, "int8": int8,
            "metric": {"key": metric, "name": metric_name},
            "data": recipe.data.name, "budget": plans["pruned"].budget,
            "method": "structure" if recipe.prune.structure else recipe.prune.method,
            "latency": ({k: report[k] for k in ("backend", "device", "threads", "batch", "runs")} if report else None),
            "models": rows}


def _training_text(cfg: TrainConfig) -> str:
    """How a summary row's model was trained, in a few words."""
    if cfg.init == "inherit":
        return f"{cfg.schedule} from {cfg.init_from}"
    return cfg.schedule


def format_cell(value: Any, kind: str) -> str:
    if value is None:
        return "–"
    return {"count": lambda v: format_count(v), "acc": lambda v: f"{100 * v:.2f}%", "ms": lambda v: f"{v:.3f}",
            "x": lambda v: f"{v:.3f}×", "int": str}[kind](value)


SUMMARY_COLUMNS = (("model", "name", None), ("MACs", "macs", "count"), ("params", "params", "count"),
            ("test top-1", "test_top1", "acc"), ("epochs", "epochs", "int"),
            ("latency ms (median)", "latency_median_ms", "ms"), ("× full", "latency_ratio", "x"))
INT8_COLUMNS = (("int8 top-1", "int8_top1", "acc"), ("int8 ms", "int8_latency_median_ms", "ms"),
                ("int8 × full", "int8_latency_ratio", "x"))


def summary_columns(summary: dict[str, Any]) -> tuple[tuple[str, str, str | None], ...]:
    """The summary's columns: its task's metric in place of top-1 (mIoU, mAP), and the int8 ones only
    when the run has int8 results."""
    has_int8 = any(row.get(key) is not None for row in summary["models"] for _, key, _ in INT8_COLUMNS)
    metric = summary.get("metric") or {"key": "test_top1", "name": "test top-1"}  # summaries written before it
    columns = tuple((metric["name"], metric["key"], kind) if key == "test_top1" else (title, key, kind)
                    for title, key, kind in SUMMARY_COLUMNS)
    return columns + (INT8_COLUMNS if has_int8 else ())


def summary_markdown(summary: dict[str, Any]) -> str:
    b = summary["budget"] or {}
    lines = [f"# {summary['recipe']}: {summary['arch']}, {summary['method']} at {b.get('kind', '')} "
             f"{b.get('text', '')}", ""]
    if summary["latency"]:
        lat = summary["latency"]
        lines += [f"Data: {summary['data']}. Latency: {lat['backend']}, batch {lat['batch']}, {lat['threads']} "
                  f"thread(s), {lat['runs']} interleaved rounds, {lat['device']}; × full = median of per-round "
                  "ratios to the full model" + (" (fp32, for int8 too)" if len(summary_columns(summary)) >
                                                   len(SUMMARY_COLUMNS) else "") + ".", ""]
    columns = summary_columns(summary)
    lines.append("| " + " | ".join(c[0] for c in columns) + " |")
    lines.append("|---" + "|---:" * (len(columns) - 1) + "|")
    for row in summary["models"]:
        cells = [row["name"]] + [format_cell(row.get(key), kind) for _, key, kind in columns[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"



def _write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text() == text:
        return False
    atomic_write_text(path, text)
    return True


# ---------------------------------------------------------------------------- the run
def run_recipe(recipe: Recipe, out: str | Path | None = None, *, source: str = "recipe",
               hooks: RunHooks | None = None, force: bool = False) -> dict[str, Any]:
    """Run ``recipe`` in ``out`` (default ``runs/<name>``): every stage whose outputs are missing or
    stale, then the summary, which is returned (and written as summary.{json,md}). ``source`` names
    where the recipe came from, for the header of ``recipe.yaml``. A folder that is not a run folder
    may not hold any file the run writes, unless ``force`` (then they are replaced)."""
    check_type("run_recipe", "recipe", recipe, Recipe, "a Recipe: read a file with slimkit.load_recipe(path)")
    check_type("run_recipe", "out", out, (str, os.PathLike, type(None)), "a folder path or None")
    check_type("run_recipe", "hooks", hooks, (RunHooks, type(None)), "a slimkit.pipeline.RunHooks or None")
    check_type("run_recipe", "source", source, str, "a string naming where the recipe came from (its file)")
    check_type("run_recipe", "force", force, bool, "True or False")
    hooks = hooks or RunHooks()
    for name, args in (("stage", 2), ("log", 1), ("warn", 1), ("progress", 0), ("status", 1), ("report", 1),
                       ("summary", 1)):
        check_callable("run_recipe", f"hooks.{name}", getattr(hooks, name), args,
                       f"a function of {args} argument{'s' if args != 1 else ''} (see RunHooks)")
    lay = Layout(Path(out) if out is not None else Path("runs") / recipe.name)
    if lay.root.exists() and not lay.root.is_dir():
        raise SlimkitError(f"--out {lay.root} is a file: give a folder for the run")
    if not str(out if out is not None else lay.root).strip():
        raise SlimkitError("--out is empty: give a folder for the run")
    same = check_folder(recipe, lay)
    problem = missing_parent(recipe, lay) or missing_backend(recipe) or missing_training_data(recipe, lay)
    if problem is not None:  # before the run writes anything (it wrote the plans, then stopped at training)
        raise SlimkitError(problem)
    if not lay.owned():  # not a run folder (yet): nothing in it is the run's, so nothing may be replaced
        check_outputs(lay.outputs(recipe), inputs=[source] if Path(source).exists() else [], force=force,
                      not_ours=f"{lay.root} is not a `slimkit run` folder (no recipe.yaml a run wrote), so this is "
                               "not {what} of a run and will not be reused")
    start = time.perf_counter()
    with folder_lock(lay.root, "run"):
        record = StageRecord(lay)  # before recipe.yaml is written: a new folder is no legacy run folder
        resolved = dump_recipe(recipe)
        if not same or not lay.recipe.read_text().endswith(resolved):  # new, or int8-only keys changed
            atomic_write_text(lay.recipe, f"{RECIPE_HEADER} (from {source}, every key, "
                                          "defaults filled in).\n# `slimkit run` refuses to mix another recipe into "
                                          "this folder.\n" + resolved)
        if recipe.prune.weights == RUN_FULL:  # the plan is cut from the run's own trained full model
            with recipe_terms("train"):
                _train_stage(recipe, lay, {"full": _parent_plan(recipe)}, hooks, force=force, only=("full",))
        with recipe_terms("prune"):
            plan, uniform = _prune_stage(recipe, lay, hooks, record)
        # the models trained from scratch have the data's classes, where the plan holds a parent's others
        plans = {"pruned": plan, "uniform": _for_data(recipe, uniform), "full": _for_data(recipe, plan.unpruned())}
        with recipe_terms("train"):
            _train_stage(recipe, lay, plans, hooks, force=force)
        with recipe_terms("export"):
            _export_stage(recipe, lay, hooks, record)
            refused = _int8_stage(recipe, lay, hooks, record)
        with recipe_terms("bench"):
            _bench_stage(recipe, lay, plans, hooks, record)
        summary = build_summary(recipe, lay, plans)
        _write_if_changed(lay.summary_json, json.dumps(summary, indent=1) + "\n")
        _write_if_changed(lay.summary_md, summary_markdown(summary))
    hooks.summary(summary)
    hooks.log(f"wrote {lay.summary_json}, {lay.summary_md}  ({time.perf_counter() - start:.1f}s)")
    if refused is not None:  # asked for and not delivered: the run fails, with every fp32 result kept
        raise Int8CheckError(f"int8 check failed, no int8 file written: {refused.check_summary}; the fp32 results "
                             f"are in {lay.root}; rerun with --set export.calib_images=1024 or a larger --set "
                             "export.max_drop (same folder; only the int8 stage reruns)")
    return summary


def missing_parent(recipe: Recipe, lay: Layout) -> str | None:
    """Why a trained parent the recipe names by path cannot be read before any stage runs (None when
    each is a file): prune.weights, and train.init_from for a fine-tuning not yet started (a finished one
    stands without it). ``full``, the run's own parent, is trained by the run itself."""
    if recipe.prune.weights not in (None, RUN_FULL) and (problem := missing_checkpoint(recipe.prune.weights)):
        return f"prune.weights: {problem}"
    if recipe.train.init == "inherit" and recipe.train.init_from != RUN_FULL:
        for label, folder in _train_jobs(recipe, lay):
            cfg = _train_config(recipe, lay, label)
            if (cfg.init == "inherit" and train_state(folder)[0] == "new"
                    and (problem := missing_checkpoint(cfg.init_from))):
                return f"train.init_from: {problem}"
    return None


def missing_backend(recipe: Recipe) -> str | None:
    """Why this install cannot time on prune.backend, which the bench stage (and a latency budget) times
    on (None when it can): said before the first stage, not after the trainings."""
    problem = backend_missing(recipe.prune.backend)
    return f"prune.backend {recipe.prune.backend}: {problem}" if problem else None


def missing_training_data(recipe: Recipe, lay: Layout) -> str | None:
    """Why a training the run has still to do cannot read its data (None when it can, or when every training has
    finished): said before the first stage, not after the prune stage. Fashion-MNIST without a data_dir is
    downloaded at run time when it is not installed, so only a run can tell."""
    if all(train_state(folder)[0] == "done" for _, folder in _train_jobs(recipe, lay)):
        return None
    if recipe.data.name == "fashion-mnist" and not recipe.data.data_dir:
        return None
    return missing_data(recipe)


def missing_data(recipe: Recipe) -> str | None:
    """Dry run: why the recipe's data is not on this machine (None when it is), in the recipe's terms."""
    return in_recipe_terms(data_missing(recipe.data.name, recipe.data.data_dir, detection=registry.model_task(
        recipe.arch) == "detection") or "", "train") or None

