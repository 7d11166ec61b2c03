"""Recipes: one YAML file that names a published setting end to end (``slimkit run RECIPE``).

A recipe holds what the commands would otherwise take as options: the architecture, the data, the
pruning budget and method, the training recipe, the export and latency settings. The schema is
strict (dataclasses below): an unknown key or a value of the wrong type is an error naming it, so a
typo never silently falls back to a default. Defaults are the CLI's.

```yaml
name: resnet56_50                 # the run folder: runs/<name>
arch: resnet56
num_classes: 10                   # optional (default: the data's)
input_size: 32                    # optional: 32, [32, 32] or [3, 32, 32] (default: the model's)
data: {name: cifar10, data_dir: /path/to/cifar10}
prune: {method: scratch, flops: 50%, expand: 1.25, round_to: 1, preset: cifar}
train: {epochs: 160, lr: 0.1, weight_decay: 1.0e-4, compare: [full, uniform]}
export: {exporter: auto, int8: true}  # int8: also model.int8.onnx, accuracy-checked (optional)
bench: {threads: 2, runs: 100}
```

From a trained model ("Rethinking the Value of Network Pruning"): ``prune.weights`` names the parent
(``full``: the run's own ``train-full/``, trained first; or a checkpoint path) and ``prune.criterion``
how its channels are kept (``prune.structure`` names a published structure instead of a budget);
``train.init: inherit`` with ``train.init_from`` (``full`` or a path) and ``train.schedule: finetune``
fine-tune the plan (``train.finetune_epochs`` at ``train.finetune_lr``), while ``train.compare`` may
add the same plan trained from scratch (``scratch-e``, ``scratch-b``):

```yaml
prune: {structure: resnet56-a, weights: full, criterion: l1}
train: {epochs: 160, lr: 0.1, schedule: finetune, init: inherit, init_from: full, compare: [full, scratch-e, scratch-b]}
```

``load_recipe(path, overrides)`` applies ``--set section.key=value`` overrides (each value read
as YAML, so ``train.epochs=3`` is an int) before validation.
"""

from __future__ import annotations

import json
import os
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from slimkit import registry
from slimkit import validate as limits
from slimkit.budget import Budget, parse_budget
from slimkit.data import DATASETS, DEFAULT_DATASET, NUM_CLASSES, VOC_CLASSES, coco_files
from slimkit.errors import SlimkitError
from slimkit.exporters.int8 import DEFAULT_MAX_DROP, QuantizeSettings, int8_unsupported
from slimkit.exporters.onnx import EXPORTERS
from slimkit.files import same_path
from slimkit.latency import BACKENDS, TIMING_MODES
from slimkit.latency_search import PRECISIONS
from slimkit.plan import CRITERIA
from slimkit.prune import DEFAULT_ROUND_TO, METHODS, LatencyOptions, default_method
from slimkit.search import PRESETS
from slimkit.structures import get_structure
from slimkit.train import (FINETUNE, FINETUNE_EPOCHS, INITS, SCHEDULES, TrainConfig, check_task_data,
                           check_task_options)
from slimkit.validate import Range, check_number, check_type, did_you_mean, show

__all__ = ["Recipe", "DataSection", "PruneSection", "TrainSection", "ExportSection", "BenchSection",
           "RecipeError", "load_recipe", "parse_recipe", "apply_overrides", "dump_recipe", "read_yaml",
           "SECTIONS", "COMPARE", "BUDGET_KEYS", "num_classes_of"]

COMPARE = ("full", "uniform", "scratch-e", "scratch-b")  # extra trainings train.compare may list
BUDGET_KEYS = ("flops", "params", "latency", "structure")  # a structure fixes the widths instead of a budget
RUN_FULL = "full"  # prune.weights / train.init_from: the run's own trained full model (train-full/)
PATH_DATA = ("imagefolder:", "coco:", "voc:")  # data named by a folder: imagefolder:PATH, coco:PATH, voc:PATH
DATA_NAMES = tuple(d for d in DATASETS if not d.startswith(PATH_DATA))  # + the PATH_DATA ones
_T = TrainConfig()  # defaults are the library's: read from where they live, never restated


class RecipeError(SlimkitError):
    """A recipe (or a --set override) that does not fit the schema."""


# ---------------------------------------------------------------------------- YAML
class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-4`` as a number.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-4``) and ``1e-4`` is a *string*;
    people write ``weight_decay: 1e-4`` (and ``--set train.lr=1e-4``) and mean the number, as in
    YAML 1.2. Nothing else changes: no tags beyond the safe ones.
    """


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A mapping whose keys are all different: YAML takes the last of two equal keys silently, so a
    recipe with ``epochs: 30`` and, further down, ``epochs: 3`` would train 3 epochs unnoticed."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # an unhashable key: the constructor below reports it
            continue
        if first != key_node.start_mark.line + 1:
            raise RecipeError(f"the key {_show(key)} appears twice (lines {first} and {key_node.start_mark.line + 1}): "
                              "keep one")
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _Dumper(yaml.SafeDumper):
    """Block style, but short lists on one line: ``compare: [full, uniform]``."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


# A recipe holds a few dozen values. YAML aliases can make a few lines expand to billions ("billion
# laughs"): the data stays shared in memory, but anything that walks it (an error message's repr,
# a comparison, a dump) would not finish. Refuse documents that expand past this many values.
MAX_YAML_VALUES = 10_000


def _expanded_size(node: yaml.Node, memo: dict[int, int], active: set[int]) -> int:
    """How many values ``node`` stands for once every alias is expanded (shared nodes counted each time)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise RecipeError("the YAML refers to itself through an alias (a recursive anchor): a recipe is a plain tree; "
                          "write the values out")
    active.add(key)
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo, active) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo, active) + _expanded_size(v, memo, active) for k, v in node.value)
    else:
        size = 1
    active.discard(key)
    memo[key] = size
    return size


def read_yaml(text: str) -> Any:
    """Safe YAML (see :class:`_Loader`), refusing alias bombs (see :data:`MAX_YAML_VALUES`)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set())
        if size > MAX_YAML_VALUES:
            raise RecipeError(f"the YAML expands to {size:,} values through aliases (anchors * and &), more than "
                              f"the {MAX_YAML_VALUES:,} a recipe may hold: write the values out")
        return loader.construct_document(node)
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------- schema
@dataclass
class DataSection:
    name: str = DEFAULT_DATASET  # fashion-mnist, cifar10, cifar100, synthetic, imagefolder:PATH
    data_dir: str | None = None


@dataclass
class PruneSection:
    method: str | None = None  # scratch | uniform (default: slimkit.prune.default_method)
    flops: str | None = field(default=None, metadata={"budget": True})  # 150M, 1.2G, 50%
    params: str | None = field(default=None, metadata={"budget": True})  # 2.1M
    latency: str | None = field(default=None, metadata={"budget": True})  # 8ms, 50%
    expand: float = 1.0
    round_to: int | str = DEFAULT_ROUND_TO  # a multiple, or "auto" (measured for `backend`)
    tolerance: float | None = None
    preset: str | None = None  # cifar | imagenet (default: from the data)
    gamma: float | None = None
    lr: float | None = None
    epochs: float | None = None
    steps: int | None = None
    batch_size: int | None = None
    seed: int = 0
    backend: str = LatencyOptions.backend  # where latency is measured (latency budgets and the bench stage)
    threads: int | None = None
    precision: str = LatencyOptions.precision  # fp32 | int8: how a latency budget's candidates are timed
    timing: str = LatencyOptions.mode  # served | interleaved: how latency budgets and --round-to auto are timed
    structure: str | None = field(default=None, metadata={"budget": True})  # resnet56-a, ... (slimkit.structures)
    weights: str | None = None  # a trained parent: "full" (the run's train-full/) or a checkpoint path
    criterion: str | None = None  # l1 | gates: which of the parent's channels the plan keeps

    @property
    def budget_key(self) -> str:
        return next(k for k in BUDGET_KEYS if getattr(self, k) is not None)

    def budget(self) -> Budget | None:
        """The :class:`slimkit.budget.Budget` this section asks for (parsed as the CLI does); None for a
        structure, whose widths are fixed."""
        key = self.budget_key
        if key == "structure":
            return None
        text = getattr(self, key)
        if key == "flops":
            b = parse_budget(text, kind="flops")
            if b.kind != "flops":
                raise RecipeError(f"prune.flops: '{text}' is not a FLOPs budget: use 150M, 1.2G or 50% "
                                  "(or prune.latency / prune.params)")
            return b
        return parse_budget(text, kind="params" if key == "params" else "latency")


@dataclass
class TrainSection:
    epochs: int = _T.epochs
    schedule: str = _T.schedule  # scratch-e | scratch-b | fixed | finetune
    batch_size: int = _T.batch_size
    lr: float | None = _T.lr  # default 0.05 x batch / 256
    weight_decay: float = _T.weight_decay
    label_smoothing: float = _T.label_smoothing
    warmup_epochs: float = _T.warmup_epochs
    augment: bool = _T.augment
    seed: int = _T.seed
    max_steps_per_epoch: int | None = _T.max_steps_per_epoch
    compare: list[str] = field(default_factory=list)  # also train: full, uniform, scratch-e, scratch-b
    init: str = _T.init  # scratch | inherit: the plan starts from init_from's kept channels
    init_from: str | None = _T.init_from  # "full" (the run's train-full/) or a checkpoint path
    finetune_epochs: int | None = None  # schedule finetune: its epochs (default 40, the paper's CIFAR)
    finetune_lr: float | None = None  # schedule finetune: its constant lr (default 0.001, the paper's)

    @property
    def main_epochs(self) -> int:
        """Epochs of the plan's own training (train/): the fine-tuning's, or the full model's."""
        if self.schedule == FINETUNE:
            return self.finetune_epochs if self.finetune_epochs is not None else FINETUNE_EPOCHS
        return self.epochs


@dataclass
class ExportSection:
    opset: int | None = None
    exporter: str = "auto"  # auto | dynamo | torchscript
    dynamic_batch: bool = False
    int8: bool = False  # also model.int8.onnx (onnxruntime static quantization), checked on the test split
    calib_images: int = QuantizeSettings.calib_images
    max_drop: float = DEFAULT_MAX_DROP  # top-1 points int8 may lose against fp32


@dataclass
class BenchSection:
    threads: int | None = None
    runs: int = 100
    batch: int = 1


@dataclass
class Recipe:
    name: str
    arch: str
    arch_kwargs: dict[str, Any] | None = None  # the model builder's keyword arguments (a python: factory's own)
    num_classes: int | None = None
    input_size: int | list[int] | None = None  # resolved to [C, H, W] (or None: the model's)
    data: DataSection = field(default_factory=DataSection)
    prune: PruneSection = field(default_factory=PruneSection)
    train: TrainSection = field(default_factory=TrainSection)
    export: ExportSection = field(default_factory=ExportSection)
    bench: BenchSection = field(default_factory=BenchSection)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def input_tuple(self) -> tuple[int, int, int] | None:
        return tuple(self.input_size) if self.input_size else None  # type: ignore[return-value,arg-type]


SECTIONS: dict[str, type] = {"data": DataSection, "prune": PruneSection, "train": TrainSection,
                             "export": ExportSection, "bench": BenchSection}
_TOP = [f.name for f in fields(Recipe) if f.name not in SECTIONS]


def _keys(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def _allowed(cls: type) -> str:
    return ", ".join(_keys(cls))


# ---------------------------------------------------------------------------- type checks
def _describe(tp: Any) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is dict:
        return "a mapping of names to values"
    if origin is list:
        (arg,) = typing.get_args(tp)
        return f"a list of {_describe(arg).removeprefix('an ').removeprefix('a ')}s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    return str(tp)


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(matches, value converted to ``tp``): ints pass as floats, nothing else is converted."""
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    origin = typing.get_origin(tp)
    if origin is dict:  # model keyword arguments: names to any plain value
        return isinstance(value, dict) and all(isinstance(k, str) for k in value), value
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, list):
            return False, value
        out = []
        for item in value:
            ok, item = _coerce(item, arg)
            if not ok:
                return False, value
            out.append(item)
        return True, out
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _coerce(value, arg)
            if ok:
                return True, v
        return False, value
    raise TypeError(f"unsupported schema type {tp!r}")  # a bug in this module, not user input


def _show(value: Any) -> str:
    return show(value, 40)  # bounded: never walks a huge structure


def _build(cls: type, raw: Any, where: str, source: str) -> Any:
    """``cls`` from a mapping: unknown keys, missing required keys and wrong types are errors."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: section '{where}' must be a mapping of keys ({_allowed(cls)}), "
                          f"got {_show(raw)}")
    hints = typing.get_type_hints(cls)
    known = _keys(cls)
    for key in raw:
        if key == "budget" and cls is TrainSection:
            raise RecipeError(f"{source}: train.budget is now train.schedule (scratch-e, scratch-b or fixed): "
                              "rename the key")
        if key not in known:
            place = "at the top level" if where == "top level" else f"in section '{where}'"
            raise RecipeError(f"{source}: unknown key {_show(key)} {place}{did_you_mean(key, known)}: allowed keys "
                              f"are {', '.join(known)}")
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        path = f.name if where == "top level" else f"{where}.{f.name}"
        if f.name not in raw:
            if f.default is MISSING and f.default_factory is MISSING:  # type: ignore[misc]
                raise RecipeError(f"{source}: missing required key '{f.name}' ({where})")
            continue
        value = raw[f.name]
        if f.name in SECTIONS and cls is Recipe:
            kwargs[f.name] = _build(SECTIONS[f.name], value, f.name, source)
            continue
        if f.metadata.get("budget") and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # flops: 150000000 means the same as flops: "150000000"
        ok, value = _coerce(value, hints[f.name])
        if not ok:
            raise RecipeError(f"{source}: {path} must be {_describe(hints[f.name])}, got {_show(raw[f.name])}")
        kwargs[f.name] = value
    return cls(**kwargs)


# ---------------------------------------------------------------------------- values
# Every number a recipe holds, with the range the CLI option of the same meaning accepts.
NUMBER_RANGES: dict[str, Range] = {
    "num_classes": limits.SMALL_COUNT,
    "prune.expand": limits.EXPAND, "prune.round_to": limits.ROUND_TO, "prune.tolerance": limits.TOLERANCE,
    "prune.gamma": limits.GAMMA, "prune.lr": limits.LR, "prune.epochs": limits.EPOCHS_FRACTIONAL,
    "prune.steps": limits.COUNT, "prune.batch_size": limits.COUNT, "prune.seed": limits.SEED,
    "prune.threads": limits.THREADS,
    "train.epochs": limits.COUNT, "train.batch_size": limits.COUNT, "train.lr": limits.LR,
    "train.weight_decay": limits.WEIGHT_DECAY, "train.label_smoothing": limits.LABEL_SMOOTHING,
    "train.warmup_epochs": limits.WARMUP_EPOCHS, "train.seed": limits.SEED, "train.max_steps_per_epoch": limits.COUNT,
    "train.finetune_epochs": limits.COUNT, "train.finetune_lr": limits.LR,
    "export.opset": limits.OPSET, "export.calib_images": limits.COUNT, "export.max_drop": Range(0.0, 100.0),
    "bench.threads": limits.THREADS, "bench.runs": limits.RUNS, "bench.batch": limits.SMALL_COUNT,
}


def _check_numbers(r: Recipe, source: str) -> None:
    if isinstance(r.prune.round_to, str) and r.prune.round_to != "auto":
        raise RecipeError(f"{source}: prune.round_to must be a whole number or 'auto', got {_show(r.prune.round_to)}")
    if r.prune.timing not in TIMING_MODES:
        raise RecipeError(f"{source}: prune.timing must be one of {', '.join(TIMING_MODES)}, got {_show(r.prune.timing)}")
    for key, allowed in NUMBER_RANGES.items():
        section, _, name = key.rpartition(".")
        value = getattr(getattr(r, section) if section else r, name)
        if key == "prune.round_to" and value == "auto":
            continue
        try:
            check_number(key, value, allowed, RecipeError)
        except RecipeError as exc:
            raise RecipeError(f"{source}: {exc}") from None


def _check(cond: bool, source: str, message: str) -> None:
    if not cond:
        raise RecipeError(f"{source}: {message}")


def _resolve_input_size(value: int | list[int] | None, source: str) -> list[int] | None:
    if value is None:
        return None
    nums = [value] if isinstance(value, int) else list(value)
    _check(1 <= len(nums) <= 3 and all(n >= 1 for n in nums), source,
           f"input_size must be 32, [32, 32] or [3, 32, 32] (positive), got {_show(value)}")
    for i, n in enumerate(nums):
        allowed = limits.IN_CHANS if len(nums) == 3 and i == 0 else limits.SIDE
        _check(allowed.contains(n), source, f"input_size {_show(value)}: {n} is out of range ({allowed.text()})")
    if len(nums) == 1:
        nums = [3, nums[0], nums[0]]
    elif len(nums) == 2:
        nums = [3, *nums]
    return nums


def check_data_name(name: str, source: str = "recipe") -> None:
    ok = name in DATA_NAMES or any(name.startswith(p) and len(name) > len(p) for p in PATH_DATA)
    _check(ok, source, f"unknown data.name {_show(name)}: choose one of {', '.join(DATA_NAMES)}, imagefolder:PATH, "
                       "coco:PATH or voc:PATH")


def _validate(r: Recipe, source: str) -> Recipe:
    """Value checks beyond types; resolves nothing heavy (no data, no models)."""
    _check(bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", r.name)), source,
           f"name {_show(r.name)} must be a folder name: letters, digits, '.', '_' and '-'")
    try:
        registry.resolve(r.arch)
        if r.arch_kwargs is not None:
            registry.check_arch_kwargs(r.arch_kwargs)
    except SlimkitError as exc:
        raise RecipeError(f"{source}: arch: {exc}") from None
    _check_numbers(r, source)
    r.input_size = _resolve_input_size(r.input_size, source)
    check_data_name(r.data.name, source)
    task = registry.model_task(r.arch)
    try:  # a dense model names its data: the classes it is pruned for come from it
        check_task_data(task, r.data.name, option="data.name")
        check_task_options(task, TrainConfig(data=r.data.name, label_smoothing=r.train.label_smoothing), None,
                           option="train.label_smoothing")
    except SlimkitError as exc:
        raise RecipeError(f"{source}: {exc}") from None
    known = NUM_CLASSES.get(r.data.name) if task == "classification" else None
    _check(r.num_classes is None or known is None or r.num_classes == known, source,
           f"num_classes {r.num_classes} but {r.data.name} has {known} classes: the plan would be pruned for a head "
           f"training cannot use; set num_classes: {known} (or remove it: the data's is the default)")
    no_int8 = int8_unsupported(task, r.arch)  # before prune.precision's checks, which would ask for export.int8
    _check(no_int8 is None or not r.export.int8, source, f"export.int8: {no_int8}: set export.int8: false")
    _check(no_int8 is None or r.prune.precision != "int8", source,
           f"prune.precision int8 times candidates as int8 files: {no_int8}: remove prune.precision")

    p = r.prune
    _check(p.method is None or p.method in METHODS, source, f"prune.method '{p.method}' is unknown: choose one of {', '.join(METHODS)}")
    given = [k for k in BUDGET_KEYS if getattr(p, k) is not None]
    _check(len(given) == 1, source,
           "prune needs exactly one budget of flops, params or latency, or a structure, got "
           + (" and ".join(given) if given else "none") + " (set the others to null)")
    try:
        p.budget()
    except RecipeError:
        raise
    except SlimkitError as exc:
        raise RecipeError(f"{source}: prune.{p.budget_key}: {exc}") from None
    _check(p.preset is None or p.preset in PRESETS, source,
           f"prune.preset '{p.preset}' is unknown: choose one of {', '.join(PRESETS)} (or null: from the data)")
    _check(p.backend in BACKENDS, source, f"prune.backend '{p.backend}' is unknown: choose one of {', '.join(BACKENDS)}")
    _check_parent(r, source)
    if p.method is None and p.structure is None:  # as `slimkit prune` picks it: gate options mean gates
        learns_gates = any(v is not None for v in (p.preset, p.gamma, p.lr, p.epochs, p.steps, p.batch_size))
        p.method = default_method(r.arch, criterion=p.criterion, learns_gates=learns_gates)

    t = r.train
    schedules = (*SCHEDULES, FINETUNE)
    _check(t.schedule in schedules, source,
           f"train.schedule '{t.schedule}' is unknown: choose one of {', '.join(schedules)}")
    bad = [c for c in t.compare if c not in COMPARE]
    _check(not bad, source, f"train.compare: unknown model '{bad[0] if bad else ''}': list any of {', '.join(COMPARE)}")
    _check(len(set(t.compare)) == len(t.compare), source, f"train.compare lists a model twice: {t.compare}")
    _check_init(r, source)

    _check(p.precision in PRECISIONS, source,
           f"prune.precision '{p.precision}' is unknown: choose one of {', '.join(PRECISIONS)}")
    _check(p.precision == "fp32" or p.budget_key == "latency", source,
           f"prune.precision {p.precision} says how a latency budget is timed: use it with prune.latency "
           f"(not prune.{p.budget_key}), or drop it")

    e = r.export
    _check(e.exporter in EXPORTERS, source, f"export.exporter '{e.exporter}' is unknown: choose one of {', '.join(EXPORTERS)}")
    # int8 files are timed where onnxruntime runs them as int8: its CPU provider
    int8_timed = "prune.precision int8" if p.precision == "int8" else "export.int8" if e.int8 else None
    _check(int8_timed is None or p.backend == "ort-cpu", source,
           f"{int8_timed} times int8 files on onnxruntime's CPU provider, but prune.backend is '{p.backend}': "
           "set prune.backend: ort-cpu")
    _check(p.precision == "fp32" or e.int8, source,
           "prune.precision int8 plans for the int8 file, but export.int8 is off, so the run would neither ship "
           "nor time one: set export.int8: true")

    return r


def _check_parent(r: Recipe, source: str) -> None:
    """prune.structure, prune.weights and prune.criterion fit together (as `slimkit prune` checks its
    options), named by their recipe keys, before anything runs."""
    p = r.prune
    if p.structure is not None:
        try:
            get_structure(p.structure, registry.resolve(r.arch).canonical)
        except SlimkitError as exc:
            raise RecipeError(f"{source}: prune.structure: {exc}") from None
        _check(p.method is None and p.expand == 1.0, source,
               f"prune.structure {p.structure} fixes every width: remove prune.method and prune.expand")
    _check(p.criterion is None or p.criterion in CRITERIA, source,
           f"prune.criterion '{p.criterion}' is unknown: choose one of {', '.join(CRITERIA)}")
    _check(p.weights is None or bool(p.weights.strip()), source,
           f"prune.weights is empty: give '{RUN_FULL}' (the run's own full model) or a checkpoint path")
    if p.criterion is not None and p.weights is None:
        raise RecipeError(f"{source}: prune.criterion {p.criterion} ranks a trained model's channels: set "
                          f"prune.weights ('{RUN_FULL}', the run's own full model, or a checkpoint path)")
    if p.weights is not None and p.criterion is None:
        raise RecipeError(f"{source}: prune.weights: set prune.criterion (l1: the largest filters; gates: gates "
                          "learned on the trained weights, prune.method scratch) to say which channels the plan keeps")
    if p.criterion is not None:
        wanted = "l1" if p.structure is not None else {"l1": "uniform", "gates": "scratch"}[p.criterion]
        if p.structure is not None:
            _check(p.criterion == "l1", source, "prune.structure keeps the largest filters, as its paper does: set "
                                                "prune.criterion l1")
        else:
            _check(p.method in (None, wanted), source, f"prune.criterion {p.criterion} goes with prune.method {wanted}")
        _check(p.expand == 1.0, source, "prune.criterion keeps channels of a trained model: remove prune.expand")
    _check(p.weights != RUN_FULL or RUN_FULL in r.train.compare, source,
           f"prune.weights: {RUN_FULL} prunes the run's own trained full model: add {RUN_FULL} to train.compare")


def _check_init(r: Recipe, source: str) -> None:
    """train.init, init_from, schedule finetune and its keys, and the scratch comparisons fit together."""
    t = r.train
    _check(t.init in INITS, source, f"train.init '{t.init}' is unknown: choose one of {', '.join(INITS)}")
    _check(t.init != "inherit" or bool(t.init_from and t.init_from.strip()), source,
           f"train.init inherit needs the trained full model: set train.init_from ('{RUN_FULL}', the run's own, or a "
           "checkpoint path)")
    _check(t.init == "inherit" or t.init_from is None, source,
           "train.init_from names weights to inherit: set train.init: inherit (or remove train.init_from)")
    _check(t.schedule != FINETUNE or t.init == "inherit", source,
           "train.schedule finetune continues trained weights: set train.init: inherit and train.init_from")
    for key in ("finetune_epochs", "finetune_lr"):
        _check(getattr(t, key) is None or t.schedule == FINETUNE, source,
               f"train.{key} applies to train.schedule finetune: remove it, or set the schedule")
    _check(t.init_from != RUN_FULL or RUN_FULL in t.compare, source,
           f"train.init_from: {RUN_FULL} inherits the run's own trained full model: add {RUN_FULL} to train.compare")
    # The plan keeps the channels ranked on prune.weights: they mean nothing in another model (found out
    # only after the parent's training and the prune, as the fine-tuning starts, without this).
    parent = r.prune.weights
    _check(parent is None or t.init != "inherit" or _same_checkpoint(parent, t.init_from), source,
           f"train.init_from {show(t.init_from)} is not prune.weights {show(parent)}: the plan keeps the channels "
           f"ranked on prune.weights, so fine-tuning inherits from that model: set train.init_from: {parent}")
    for label in ("scratch-e", "scratch-b"):
        _check(label not in t.compare or t.init != "scratch" or t.schedule != label, source,
               f"train.compare lists {label}, which is how train/ already trains the plan (train.schedule {label}): "
               "remove it from train.compare")


def _same_checkpoint(a: str, b: str | None) -> bool:
    """Two recipe values that name one checkpoint: the same word (``full``), path or file."""
    if b is None:
        return False
    if a == b or os.path.normpath(os.path.expanduser(a)) == os.path.normpath(os.path.expanduser(b)):
        return True
    return a != RUN_FULL and b != RUN_FULL and os.path.isfile(a) and os.path.isfile(b) and same_path(a, b)


# ---------------------------------------------------------------------------- loading
def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """``section.key=value`` (or ``key=value`` at the top level); the value is read as YAML."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"--set '{item}': use section.key=value, e.g. --set train.epochs=3")
        try:
            value = read_yaml(text) if text.strip() else None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise RecipeError(f"--set '{item}': cannot read the value as YAML ({problem}); quote it") from None
        parts = key.split(".")
        if len(parts) == 1:
            if parts[0] in SECTIONS:
                raise RecipeError(f"--set '{item}': '{parts[0]}' is a section: set one key, e.g. "
                                  f"--set {parts[0]}.{_keys(SECTIONS[parts[0]])[0]}=...")
            if parts[0] not in _TOP:
                raise RecipeError(f"--set '{item}': unknown key '{parts[0]}'{did_you_mean(parts[0], _TOP)}: top-level "
                                  f"keys are {', '.join(_TOP)}; sections are {', '.join(SECTIONS)} (section.key=value)")
            out[parts[0]] = value
        elif len(parts) == 2:
            section, name = parts
            if section not in SECTIONS:
                raise RecipeError(f"--set '{item}': unknown section '{section}'{did_you_mean(section, SECTIONS)}: "
                                  f"sections are {', '.join(SECTIONS)}")
            if name not in _keys(SECTIONS[section]):
                raise RecipeError(f"--set '{item}': unknown key '{name}' in section '{section}'"
                                  f"{did_you_mean(name, _keys(SECTIONS[section]))}: allowed keys are "
                                  f"{_allowed(SECTIONS[section])}")
            current = out.get(section)
            if current is None:
                current = {}
            elif not isinstance(current, dict):
                raise RecipeError(f"--set '{item}': section '{section}' in the recipe is not a mapping")
            out[section] = {**current, name: value}
        else:
            raise RecipeError(f"--set '{item}': use section.key=value with one dot, e.g. --set train.epochs=3")
    return out


def parse_recipe(raw: Any, source: str = "recipe", overrides: list[str] | None = None,
                 check: bool = True) -> Recipe:
    """A validated :class:`Recipe` from already-parsed YAML (a dict) plus ``--set`` overrides."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping with keys {', '.join(_keys(Recipe))}")
    try:
        recipe = _build(Recipe, apply_overrides(raw, overrides), "top level", source)
        return _validate(recipe, source) if check else recipe
    except RecipeError as exc:
        if not overrides or not str(exc).startswith(f"{source}: "):
            raise
        try:  # blame the file only when the file alone is at fault
            parse_recipe(raw, source, None, check)
        except RecipeError:
            raise exc from None
        raise RecipeError(f"--set (on {source}): " + str(exc)[len(source) + 2:]) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override (``--set section.key=value``) and validate a recipe file. Relative data paths in
    the file are taken relative to its folder."""
    check_type("load_recipe", "path", path, (str, os.PathLike), "a recipe file path")
    if overrides is not None and (not isinstance(overrides, (list, tuple))
                                  or not all(isinstance(o, str) for o in overrides)):
        raise TypeError(f"load_recipe: 'overrides' must be a list of 'section.key=value' strings, got {show(overrides)}")
    p = Path(path)
    if p.is_dir():
        raise RecipeError(f"{p} is a folder, not a recipe file: give the recipe's YAML file (see recipes/ for examples)")
    if not p.is_file():
        raise RecipeError(f"recipe not found: {p} (see recipes/ for examples)")
    try:
        raw = read_yaml(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise RecipeError(f"{p} is not valid YAML: {problem}{where}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{p} is not a text file: a recipe is YAML") from None
    except RecipeError as exc:
        raise RecipeError(f"{p}: {exc}") from None
    return parse_recipe(_paths_from_recipe_folder(raw, p.parent), str(p), overrides)


def _paths_from_recipe_folder(raw: Any, folder: Path) -> Any:
    """Relative paths in a recipe file (``data.name: imagefolder:PATH``, ``data.data_dir``, the checkpoints
    ``prune.weights`` and ``train.init_from``) are relative to the file's folder, as includes are in most
    config formats: a recipe means the same wherever ``slimkit run`` starts. ``--set`` values stay relative
    to the current directory."""
    if not isinstance(raw, dict):
        return raw
    out = dict(raw)
    data = dict(raw["data"]) if isinstance(raw.get("data"), dict) else {}
    name, data_dir = data.get("name"), data.get("data_dir")
    prefix = next((p for p in PATH_DATA if isinstance(name, str) and name.startswith(p)), None)
    if prefix is not None:
        path = Path(name.removeprefix(prefix))
        if str(path) and not path.expanduser().is_absolute():
            data["name"] = f"{prefix}{(folder / path).absolute()}"
    if isinstance(data_dir, str) and data_dir and not Path(data_dir).expanduser().is_absolute():
        data["data_dir"] = str((folder / data_dir).absolute())
    if isinstance(raw.get("data"), dict):
        out["data"] = data
    for section, key in (("prune", "weights"), ("train", "init_from")):  # checkpoints: the same rule
        part = out.get(section)
        value = part.get(key) if isinstance(part, dict) else None
        if isinstance(value, str) and value.strip() and value != RUN_FULL and \
                not Path(value).expanduser().is_absolute():
            out[section] = {**part, key: str((folder / value).absolute())}
    return out


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (every key, defaults filled in); ``read_yaml`` reads it back."""
    return yaml.dump(recipe.to_dict(), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def num_classes_of(recipe: Recipe) -> int:
    """The classifier size: the recipe's, or the data's (ImageFolder: the class folders in PATH/train)."""
    if recipe.num_classes is not None:
        return recipe.num_classes
    name = recipe.data.name
    if name in NUM_CLASSES:
        return NUM_CLASSES[name]
    if name.startswith("voc:"):  # VOC's 20 classes and the background, for masks and boxes alike
        return len(VOC_CLASSES)
    if name.startswith("coco:"):  # torchvision's count: the largest category id + 1 (0 is the background)
        try:
            annotations = coco_files(name.removeprefix("coco:"))["val"][1]
            return max((int(c["id"]) for c in json.loads(annotations.read_text())["categories"]), default=0) + 1
        except SlimkitError as exc:
            raise RecipeError(f"{exc} (or set num_classes)") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RecipeError(f"coco: cannot read the categories of {annotations} ({type(exc).__name__}): it must "
                              "be a COCO instances file; fix it (or set num_classes)") from None
    root = Path(name.removeprefix("imagefolder:")).expanduser() / "train"
    if not root.is_dir():
        raise RecipeError(f"imagefolder: {root} does not exist: expected PATH/train/<class>/<image>; "
                          "fix data.name (or set num_classes)")
    return sum(1 for d in root.iterdir() if d.is_dir())
