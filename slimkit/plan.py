"""ChannelPlan: the hand-off between every stage (a small, versioned, human-readable JSON file).

A plan is "architecture name + the width of every channel group". ``slimkit.generate(plan)``
rebuilds the same thin network from it on any machine. Field names are a fixed contract (see
docs/method.md section 5); unknown top-level fields are rejected so typos do not pass silently.

A plan cut from trained weights also says *which* channels it keeps: each narrowed group carries
``keep`` (indices into its full width, ascending) and the plan a ``criterion`` ({"kind": "l1" or
"gates", "weights": the checkpoint ranked, "fingerprint": its weights' hash}); G copies those channels'
weights (``generate(plan, weights=...)``), from that parent only: other weights are refused. Such plans are format ``slimkit.plan/2``; widths-only plans are
still written, and read, as ``slimkit.plan/1``.

Plans of the user's own code (a ``python:`` factory or a model object) carry two more fields:
``graph_fingerprint``, the hash of the graph the factory traced to (G refuses to build a plan
whose factory now traces differently), and ``regenerable: false`` for a model object, which only
the process that holds it can rebuild. Library models' plans leave both out.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from slimkit import validate as limits
from slimkit.errors import PlanError
from slimkit.files import Output, atomic_write_text, is_json_with, json_kind
from slimkit.validate import DuplicateKeyError, Range, check_number, loads_json, show
from slimkit.version import __version__

__all__ = ["ChannelPlan", "checked", "load_plan", "save_plan", "plan_output", "PLAN_FORMAT", "PLAN_FORMAT_KEEP",
           "CRITERIA"]

PLAN_FORMAT = "slimkit.plan/1"  # widths only
PLAN_FORMAT_KEEP = "slimkit.plan/2"  # widths, and the channels kept from trained weights
FORMATS = (PLAN_FORMAT, PLAN_FORMAT_KEEP)
CRITERIA = ("l1", "gates")  # how kept channels were chosen: filter L1 norm (Li et al. 2017), gate value
CRITERION_FIELDS = ("kind", "weights", "fingerprint")
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{16}")  # a traced graph's, or the weights a plan's channels were ranked on


@dataclass
class ChannelPlan:
    arch: str
    input_size: list[int]
    groups: dict[str, dict[str, Any]]  # name -> {"full": int, "width": int[, "keep": [int, ...]]}
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    expand: float = 1.0
    round_to: int = 8
    method: str = "uniform"
    seed: int = 0
    budget: dict[str, Any] | None = None  # {"kind", "text", "value"}
    flops: int | None = None
    params: int | None = None
    latency: dict[str, Any] | None = None
    search: dict[str, Any] = field(default_factory=dict)
    # {"kind": "l1" | "gates", "weights": path, "fingerprint": of those weights}: how ``keep`` was chosen
    criterion: dict[str, Any] | None = None
    slimkit_version: str = __version__
    format: str = PLAN_FORMAT
    graph_fingerprint: str | None = None  # user code: what its factory traced to (slimkit.graph)
    regenerable: bool = True  # False: built from a model object in one Python process

    @property
    def widths(self) -> dict[str, int]:
        return {name: g["width"] for name, g in self.groups.items()}

    @property
    def num_classes(self) -> int | None:
        return self.arch_kwargs.get("num_classes")

    @classmethod
    def from_widths(cls, arch: str, input_size: list[int] | tuple[int, ...], full: dict[str, int],
                    widths: dict[str, int] | None = None, **fields: Any) -> ChannelPlan:
        """A plan from each group's full width and planned width (default: full); ``fields`` are the
        other plan fields (arch_kwargs, budget, flops, ...). Every plan slimkit makes is built here."""
        widths = full if widths is None else widths
        return cls(arch=arch, input_size=list(input_size),
                   groups={n: {"full": int(f), "width": int(widths[n])} for n, f in full.items()}, **fields)

    def with_widths(self, widths: dict[str, int], **changes: Any) -> ChannelPlan:
        """This plan with other widths (and any other fields changed); FLOPs and params must be given
        anew by the caller, which knows the graph, or they are cleared."""
        # kept indices belong to the old widths: the new plan records widths only
        groups = {n: {"full": g["full"], "width": int(widths[n])} for n, g in self.groups.items()}
        changes.setdefault("criterion", None)
        changes.setdefault("format", PLAN_FORMAT)
        changes.setdefault("flops", None)
        changes.setdefault("params", None)
        return replace(self, groups=groups, arch_kwargs=dict(self.arch_kwargs), input_size=list(self.input_size),
                       search=dict(changes.pop("search", {})), **changes)

    def unpruned(self) -> ChannelPlan:
        """The unpruned model this plan was cut from: every group at its source width, no expansion."""
        return self.with_widths({n: g["full"] for n, g in self.groups.items()}, expand=1.0, round_to=1,
                                method="uniform", budget=None, latency=None,
                                flops=self.search.get("full_flops"), params=self.search.get("full_params"),
                                search={})

    @property
    def keep(self) -> dict[str, list[int]]:
        """Kept channel indices of every group (into its full width); a group at full width with no
        ``keep`` keeps all its channels. Empty when the plan records widths only."""
        if not self.has_keep:
            return {}
        return {n: list(g["keep"]) if "keep" in g else list(range(g["full"])) for n, g in self.groups.items()}

    @property
    def has_keep(self) -> bool:
        """Whether the plan says which channels it keeps (a criterion chose them)."""
        return self.criterion is not None

    def with_keep(self, keep: dict[str, list[int]], criterion: dict[str, Any]) -> ChannelPlan:
        """This plan with the channels each narrowed group keeps (widths unchanged); groups at full
        width keep everything and store nothing."""
        groups = {}
        for n, g in self.groups.items():
            entry = {"full": g["full"], "width": g["width"]}
            if g["width"] < g["full"]:
                entry["keep"] = sorted(int(i) for i in keep[n])
            groups[n] = entry
        plan = replace(self, groups=groups, criterion=dict(criterion), format=PLAN_FORMAT_KEEP)
        _check_keep(plan.to_dict(), "plan")
        return plan

    def builds_same_network_as(self, other: ChannelPlan) -> bool:
        """Whether ``other`` (a plan found on disk: beside a checkpoint, in a run folder) describes the
        network this plan describes: architecture and its arguments, input size, widths and, where this
        plan records them, the parent channels it keeps (another parent's cut is another network)."""
        return (self.arch, self.arch_kwargs, list(self.input_size), self.widths) == (
            other.arch, other.arch_kwargs, list(other.input_size), other.widths) and (
            not self.has_keep or self.keep == other.keep)

    def sized_as(self, run: ChannelPlan) -> ChannelPlan:
        """This plan with its classifier sized as ``run`` (the plan of a training run of it) sized it for the
        run's data (``search.head_sized_for_data``: a default head, or a parent's classes fine-tuned onto
        the data's), so that run is recognised as this plan's, by --resume and by a recipe's stages."""
        if not run.search.get("head_sized_for_data") or self.num_classes == run.num_classes:
            return self
        # only the plan the run was sized from (runs before 'head_sized_from' was recorded: a default head)
        if self.num_classes != run.search.get("head_sized_from"):
            return self
        return replace(self, arch_kwargs={**self.arch_kwargs, "num_classes": run.num_classes})

    def keep_ratios(self) -> dict[str, float]:
        return {name: g["width"] / g["full"] for name, g in self.groups.items()}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        order = ["format", "arch", "arch_kwargs", "input_size", "expand", "round_to", "method",
                 "seed", "budget", "criterion", "groups", "flops", "params", "latency", "search",
                 "slimkit_version"]
        if d["format"] == PLAN_FORMAT:  # a widths-only plan reads exactly as before the format grew
            order.remove("criterion")
        out = {k: d[k] for k in order}
        if self.graph_fingerprint is not None:
            out["graph_fingerprint"] = self.graph_fingerprint
        if not self.regenerable:
            out["regenerable"] = False
        return out

    def to_json(self) -> str:
        # One group per line: readable by a person, diffable in review.
        d = self.to_dict()
        groups = d.pop("groups")
        body = re.sub(r"\[\s*([-\d.,\s]*?)\s*\]",
                      lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
                      json.dumps(d, indent=2))
        lines = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in groups.items())
        return body[:-2] + ',\n  "groups": {\n' + lines + "\n  }\n}\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "plan") -> ChannelPlan:
        if not isinstance(data, dict):
            raise PlanError(f"{source} is not a ChannelPlan (expected a JSON object)")
        fmt = data.get("format")
        if fmt not in FORMATS:
            if not (isinstance(fmt, str) and fmt.startswith("slimkit.plan")):
                # another file (a latency report, a run summary, a check record): say what it is; never advise
                # writing a plan over it
                what = (f"{json_kind(fmt)} (format {fmt})" if isinstance(fmt, str) and fmt.startswith("slimkit.")
                        else "a JSON object without a plan's format field")
                raise PlanError(f"{source} is {what}, not a plan: pass the plan JSON `slimkit prune` wrote")
            raise PlanError(
                f"{source} has format {show(fmt)}, expected one of {', '.join(map(repr, FORMATS))}: regenerate it "
                "with `slimkit prune` (or update slimkit, if a newer one wrote it)"
            )
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise PlanError(f"{source} has unknown fields {show(unknown)}: remove them (the fields are listed in docs/method.md)")
        for key in ("arch", "input_size", "groups"):
            if key not in data:
                raise PlanError(f"{source} lacks the required field '{key}'")
        if not isinstance(data["arch"], str) or not data["arch"]:
            raise PlanError(f"{source}: 'arch' must be a model name like 'timm:mobilenetv1_100'")
        size = data["input_size"]
        if not (isinstance(size, list) and len(size) == 3 and all(isinstance(s, int) and s > 0 for s in size)):
            raise PlanError(f"{source}: 'input_size' must be [C, H, W] positive integers, got {show(size)}")
        _check_plan_numbers(data, source)
        groups = data["groups"]
        if not isinstance(groups, dict) or not groups:
            raise PlanError(f"{source}: 'groups' must be a non-empty object of name -> {{full, width}}")
        expand = float(data.get("expand", 1.0))
        fields = {"full", "width"} if fmt == PLAN_FORMAT else {"full", "width", "keep"}
        for name, g in groups.items():
            if not (isinstance(g, dict) and {"full", "width"} <= set(g) <= fields
                    and all(isinstance(g[k], int) and not isinstance(g[k], bool) and g[k] >= 1
                            for k in ("full", "width"))):
                raise PlanError(
                    f"{source}: group {show(name, 40)} must be {{\"full\": int >= 1, \"width\": int >= 1}}"
                    + (", with an optional \"keep\": [indices]" if fmt != PLAN_FORMAT else "") + f", got {show(g)}"
                )
            check_number(f"{source}: group {show(name, 40)} 'full'", g["full"], MAX_CHANNELS, PlanError)
            # G widens a group by at most `expand` (plus rounding up to a divisor); a wider group is not
            # a plan slimkit made, and at expand 1.0 nothing may be wider than the source model.
            widest = g["full"] if expand == 1.0 else 2 * expand * g["full"]
            if g["width"] > widest:
                raise PlanError(f"{source}: group {show(name, 40)} is {g['width']} channels wide, wider than its full "
                                f"model ({g['full']}) at expand {expand:g}: regenerate the plan with `slimkit prune`")
        kwargs = data.get("arch_kwargs", {})
        if not isinstance(kwargs, dict):
            raise PlanError(f"{source}: 'arch_kwargs' must be an object")
        if fmt == PLAN_FORMAT and data.get("criterion") is not None:
            raise PlanError(f"{source}: 'criterion' needs format {PLAN_FORMAT_KEEP!r} (a plan with kept channels)")
        _check_keep(data, source)
        fingerprint = data.get("graph_fingerprint")
        if fingerprint is not None and not (isinstance(fingerprint, str) and FINGERPRINT.fullmatch(fingerprint)):
            raise PlanError(f"{source}: 'graph_fingerprint' must be 'sha256:' and 16 hex digits, got {show(fingerprint)}")
        if not isinstance(data.get("regenerable", True), bool):
            raise PlanError(f"{source}: 'regenerable' must be true or false, got {show(data['regenerable'])}")
        return cls(**data)


MAX_CHANNELS = Range(1, 1 << 20, integer=True)
_COUNT_OR_NONE = Range(0, limits.INT64_MAX, integer=True)


def _check_plan_numbers(data: dict[str, Any], source: str) -> None:
    """The plan's numbers, finite and in the ranges slimkit writes (a hand-edited or damaged plan fails
    here in one line, not as NaN widths or an overflow later)."""
    for key, allowed in (("expand", limits.EXPAND), ("round_to", limits.ROUND_TO), ("seed", Range(0, limits.INT64_MAX, integer=True)),
                         ("flops", _COUNT_OR_NONE), ("params", _COUNT_OR_NONE)):
        if key in data:
            check_number(f"{source}: '{key}'", data[key], allowed, PlanError, "regenerate the plan with `slimkit prune`")
    c, h, w = data["input_size"]
    check_number(f"{source}: input channels", c, limits.IN_CHANS, PlanError)
    for side in (h, w):
        check_number(f"{source}: input side", side, limits.SIDE, PlanError)
    kwargs = data.get("arch_kwargs") or {}
    if isinstance(kwargs, dict):
        for key, allowed in (("num_classes", limits.SMALL_COUNT), ("in_chans", limits.IN_CHANS)):
            if key in kwargs:
                check_number(f"{source}: arch_kwargs.{key}", kwargs[key], allowed, PlanError)
    budget = data.get("budget")
    if budget is not None:
        if not isinstance(budget, dict):
            raise PlanError(f"{source}: 'budget' must be an object {{kind, text, value}}, got {show(budget)}")
        for key in ("value", "fraction"):
            if budget.get(key) is not None:
                check_number(f"{source}: budget.{key}", budget[key], Range(0.0, 1e30, low_open=True), PlanError)
    for key, kind, words in (("search", dict, "an object"), ("method", str, "a string"),
                             ("slimkit_version", str, "a string")):
        if key in data and not isinstance(data[key], kind):
            raise PlanError(f"{source}: '{key}' must be {words}, got {show(data[key])}: "
                            "regenerate the plan with `slimkit prune`")
    for key in ("full_flops", "full_params"):
        if isinstance(data.get("search"), dict) and data["search"].get(key) is not None:
            check_number(f"{source}: search.{key}", data["search"][key], _COUNT_OR_NONE, PlanError)
    latency = data.get("latency")
    if latency is not None and not isinstance(latency, dict):
        raise PlanError(f"{source}: 'latency' must be an object or null, got {show(latency)}")
    for key, value in (latency or {}).items():
        if isinstance(value, float):
            check_number(f"{source}: latency.{key}", value, Range(), PlanError)


def plan_output(path: str | os.PathLike, what: str = "the plan") -> Output:
    """A plan file about to be written: a file already there may be replaced when it is a plan (of
    either format: widths only, or with kept channels)."""
    recognisers = [is_json_with("arch", "groups", format=f) for f in (PLAN_FORMAT, PLAN_FORMAT_KEEP)]
    return Output(Path(path), what, lambda p: any(ours(p) for ours in recognisers))


def _check_keep(data: dict[str, Any], source: str) -> None:
    """Kept indices: per group, ascending distinct indices into its full width, as many as its width;
    a plan with any of them names its criterion (and a criterion comes with kept indices)."""
    has_keep = False
    for name, g in data["groups"].items():
        if "keep" not in g:
            continue
        has_keep = True
        keep = g["keep"]
        if not (isinstance(keep, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in keep)
                and len(keep) == g["width"] and keep == sorted(set(keep)) and (not keep or 0 <= keep[0])
                and (not keep or keep[-1] < g["full"])):
            raise PlanError(f"{source}: group {show(name, 40)} 'keep' must be {g['width']} ascending distinct indices "
                            f"in [0, {g['full']}), got {show(keep)}: regenerate the plan with `slimkit prune --weights`")
    criterion = data.get("criterion")
    if has_keep or criterion is not None:
        if not (isinstance(criterion, dict) and criterion.get("kind") in CRITERIA
                and isinstance(criterion.get("weights"), str)):
            raise PlanError(f"{source}: a plan with kept channels needs 'criterion': {{\"kind\": one of "
                            f"{', '.join(CRITERIA)}, \"weights\": the checkpoint}}, got {show(criterion)}")
        # a misspelt "fingerprint" would otherwise pass as a plan that records no parent (and skip its check)
        unknown = sorted(set(criterion) - set(CRITERION_FIELDS))
        if unknown:
            raise PlanError(f"{source}: 'criterion' has unknown fields {show(unknown)}: it takes only "
                            f"{', '.join(CRITERION_FIELDS)}")
        fingerprint = criterion.get("fingerprint")
        if fingerprint is not None and not (isinstance(fingerprint, str) and FINGERPRINT.fullmatch(fingerprint)):
            raise PlanError(f"{source}: criterion.fingerprint must be 'sha256:' and 16 hex digits (the weights the "
                            f"channels were ranked on), got {show(fingerprint)}")
        bare = next((n for n, g in data["groups"].items() if g["width"] < g["full"] and "keep" not in g), None)
        if bare is not None:
            g = data["groups"][bare]
            raise PlanError(f"{source}: group {show(bare, 40)} is narrowed ({g['width']} of {g['full']} channels) but "
                            "does not say which channels it keeps ('keep'): a plan with a 'criterion' lists them for "
                            "every narrowed group; regenerate the plan with `slimkit prune --weights`")


def save_plan(plan: ChannelPlan, path: str | os.PathLike) -> Path:
    """Write ``plan`` to ``path`` as JSON (atomically: an existing file is replaced only when the new one
    is complete); the plan is validated first, so a file written here always loads."""
    if not isinstance(plan, ChannelPlan):
        raise TypeError(f"save_plan: 'plan' must be a ChannelPlan (from slimkit.prune or slimkit.load_plan), "
                        f"got {type(plan).__name__}")
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError(f"save_plan: 'path' must be a file path (str or os.PathLike), got {show(path)}")
    checked(plan)
    return atomic_write_text(path, plan.to_json())


def checked(plan: ChannelPlan) -> ChannelPlan:
    """``plan`` if its fields pass the checks a plan file gets (a plan built or edited in Python may
    hold widths of 0, 7.5 or 10^7); PlanError naming the field otherwise."""
    ChannelPlan.from_dict(asdict(plan), source="the plan")
    return plan


def load_plan(path: str | os.PathLike | dict | ChannelPlan) -> ChannelPlan:
    """Read and validate a plan from a path (a dict or a ChannelPlan is validated and passed through)."""
    if isinstance(path, ChannelPlan):
        return checked(path)
    if isinstance(path, dict):
        return ChannelPlan.from_dict(path)
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError(f"load_plan: expected a plan file path, a dict or a ChannelPlan, got {show(path)}")
    p = Path(path)
    if p.is_dir():
        raise PlanError(f"{p} is a folder, not a plan file: give the plan's JSON file (e.g. {p / 'plan.json'})")
    if not p.is_file():
        raise PlanError(f"plan file not found: {p} (create one with `slimkit prune ARCH --out {p}`)")
    try:
        data = loads_json(p.read_text())
    except DuplicateKeyError as exc:
        raise PlanError(f"{p}: {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"{p} is not valid JSON ({exc}); regenerate it with `slimkit prune`") from exc
    return ChannelPlan.from_dict(data, source=str(p))
