"""Budgets and the width searches that meet them.

* Budget strings (DESIGN.md): ``150M`` / ``1.2G`` / ``150000000`` are MACs ("FLOPs" in the
  papers' tables), ``50%`` is a fraction of the full model's MACs, ``3.5Mp`` is parameters,
  ``20ms`` / ``500us`` is a measured latency. Anything else is an error.
* Channel rounding follows torchvision's ``_make_divisible``: round to the nearest multiple of the
  divisor, never below the divisor and never more than 10% below the unrounded width. Rounding
  to 8 matters on real runtimes: onnxruntime runs MobileNet-V1 at 150M MACs 1.6-2.2x slower with
  ragged counts than with multiples of 8 (DESIGN.md).
* ``search_uniform`` binary-searches one width factor shared by all groups (the papers' uniform
  baseline); ``search_threshold`` is Algorithm 1 of "Pruning from Scratch": a binary search of a
  global threshold over learned gate values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

from slimkit.errors import BudgetError
from slimkit.flops import format_count
from slimkit.graph import ChannelGraph

__all__ = ["Budget", "parse_budget", "check_budget", "make_divisible", "round_width", "uniform_widths",
           "min_widths", "max_widths", "search_uniform", "search_threshold", "SearchResult"]

_SCALES = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


@dataclass
class Budget:
    kind: str  # "flops" | "params" | "latency"
    text: str
    value: float | None  # MACs, parameters, or seconds; None until a fraction is resolved
    fraction: float | None = None  # for "50%": of the full model's MACs

    def resolve(self, full_flops: int) -> Budget:
        if self.fraction is not None:
            return Budget(self.kind, self.text, round(self.fraction * full_flops), self.fraction)
        return self

    def to_json(self) -> dict:
        d = asdict(self)
        if d["fraction"] is None:
            d.pop("fraction")
        if self.kind in ("flops", "params") and d["value"] is not None:
            d["value"] = int(round(d["value"]))
        return d


def parse_budget(text: str, kind: str | None = None) -> Budget:
    """Parse '150M', '1.2G', '50%', '3.5Mp', '20ms'. ``kind='params'`` reads a bare number
    (``--params 3.5M``) as parameters; ``kind='latency'`` reads '50%' as a share of the full
    model's measured latency."""
    raw = str(text).strip()
    t = raw.replace("_", "").replace(",", "")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", t)
    if m:
        frac = float(m.group(1)) / 100
        if not 0 < frac:
            raise BudgetError(f"budget '{raw}' must be a positive percentage, e.g. 50%")
        if kind == "params":
            raise BudgetError(f"a parameter budget cannot be a percentage ('{raw}'): give e.g. 2.1M")
        return Budget("latency" if kind == "latency" else "flops", raw, None, frac)
    m = re.fullmatch(r"(\d+(?:\.\d+)?(?:e\d+)?)\s*(ms|us|s)", t)
    if m:
        if kind == "params":
            raise BudgetError(f"'{raw}' is a latency, not a parameter count")
        return Budget("latency", raw, float(m.group(1)) * _TIME[m.group(2)])
    if kind == "latency":
        raise BudgetError(f"cannot read latency budget '{raw}': use a time like 8ms or 500us, or 50% of the "
                          "full model's latency")
    m = re.fullmatch(r"(\d+(?:\.\d+)?(?:e\d+)?)\s*([KkMGT]?)(p|P|params)?", t)
    if m:
        value = float(m.group(1)) * _SCALES[m.group(2).upper()]
        if value <= 0:
            raise BudgetError(f"budget '{raw}' must be positive")
        is_params = kind == "params" or bool(m.group(3))
        return Budget("params" if is_params else "flops", raw, value)
    if kind == "params":
        raise BudgetError(f"cannot read parameter budget '{raw}': use a count like 2.1M or 500K")
    if kind == "flops":
        raise BudgetError(f"cannot read FLOPs budget '{raw}': use MACs like 150M or 1.2G, or a fraction like 50% "
                          "(parameters: --params 2.1M; latency: --latency 8ms)")
    raise BudgetError(
        f"cannot read budget '{raw}': use MACs like 150M or 1.2G, a fraction like 50%, "
        "parameters like 3.5Mp, or a latency like 20ms"
    )


def make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """torchvision's rule: nearest multiple of ``divisor``, >= min_value, and not more than
    10% below ``v``."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _divisor(graph: ChannelGraph, name: str, round_to: int) -> int:
    return math.lcm(max(1, round_to), graph.groups[name].divisor)


def min_widths(graph: ChannelGraph, round_to: int = 8) -> dict[str, int]:
    """The thinnest model: every group at one divisor (or its full width, if narrower)."""
    out = {}
    for name, g in graph.groups.items():
        d = _divisor(graph, name, round_to)
        out[name] = min(g.width, d) if g.width % g.divisor == 0 else g.width
    return out


def max_widths(graph: ChannelGraph, expand: float = 1.0, round_to: int = 8) -> dict[str, int]:
    return {name: round_width(graph, name, expand, round_to) for name in graph.groups}


def round_width(graph: ChannelGraph, name: str, factor: float, round_to: int = 8) -> int:
    """Width of group ``name`` scaled by ``factor`` and rounded to its divisor."""
    g = graph.groups[name]
    d = _divisor(graph, name, round_to)
    if factor >= 1.0 and (not g.can_expand or factor == 1.0):
        return g.width
    target = g.width * factor
    if g.width <= d:  # too narrow to round: keep as is (or scale without rounding when expanding)
        return g.width if factor <= 1.0 else max(g.width, math.ceil(target / g.divisor) * g.divisor)
    w = make_divisible(target, d)
    if factor <= 1.0:
        w = min(w, g.width)
    return w


def uniform_widths(graph: ChannelGraph, factor: float, round_to: int = 8) -> dict[str, int]:
    return {name: round_width(graph, name, factor, round_to) for name in graph.groups}


@dataclass
class SearchResult:
    widths: dict[str, int]
    flops: int
    params: int
    value: float  # the factor (uniform) or threshold (gates) that produced the widths
    iterations: int
    filled: list[str] = field(default_factory=list)  # groups a fill moved past the factor/threshold


def _measure(graph: ChannelGraph, widths: dict[str, int], kind: str) -> int:
    return graph.count_params(widths) if kind == "params" else graph.count_macs(widths)


def check_budget(graph: ChannelGraph, budget: Budget, round_to: int = 8, expand: float = 1.0) -> Budget:
    """Resolve ``budget`` against the full model and fail fast if no width choice can meet it."""
    budget = budget.resolve(graph.count_macs())
    if budget.kind in ("flops", "params"):
        _check_range(graph, budget, min_widths(graph, round_to), max_widths(graph, expand, round_to))
    return budget


def _check_range(graph: ChannelGraph, budget: Budget, lo_w: dict[str, int], hi_w: dict[str, int]) -> None:
    lo, hi = _measure(graph, lo_w, budget.kind), _measure(graph, hi_w, budget.kind)
    unit = "p" if budget.kind == "params" else ""
    what = "parameters" if budget.kind == "params" else "MACs"
    if budget.value > hi:
        raise BudgetError(
            f"budget {budget.text} ({format_count(budget.value, unit)} {what}) is above the largest model "
            f"({format_count(hi, unit)}); lower it, or widen the supernet with --expand"
        )
    if budget.value < lo:
        raise BudgetError(
            f"budget {budget.text} ({format_count(budget.value, unit)} {what}) is below the smallest "
            f"model slimkit can build ({format_count(lo, unit)}, every group at its minimum width); "
            "raise it or pass a smaller --round-to"
        )


class _RoundingTooCoarse(BudgetError):
    """No knob value lands within tolerance; carries the closest plan under budget to fill from."""

    def __init__(self, message: str, best_under: tuple[float, dict[str, int]] | None):
        super().__init__(message)
        self.best_under = best_under


def _bisect(make: Callable[[float], dict[str, int]], graph: ChannelGraph, budget: Budget,
            lo: float, hi: float, increasing: bool, iterations: int, tolerance: float) -> SearchResult:
    """Binary search of a scalar knob; keep the closest plan at or under budget, or just over it
    within tolerance when nothing under is within tolerance."""
    target = float(budget.value)
    top = hi if increasing else lo  # the largest model the knob can make
    widths = make(top)
    if _measure(graph, widths, budget.kind) <= target:  # e.g. a 100% budget: nothing larger fits
        return SearchResult(widths, graph.count_macs(widths), graph.count_params(widths), top, 1)
    best_under: tuple[float, dict[str, int], int] | None = None
    best_over: tuple[float, dict[str, int], int] | None = None
    n = 0
    for n in range(1, iterations + 1):
        mid = (lo + hi) / 2
        widths = make(mid)
        cost = _measure(graph, widths, budget.kind)
        if cost <= target:
            if best_under is None or cost > best_under[2]:
                best_under = (mid, widths, cost)
        elif best_over is None or cost < best_over[2]:
            best_over = (mid, widths, cost)
        if abs(cost - target) / target <= tolerance / 4 and cost <= target:
            break
        # cost too high -> make the model smaller
        if (cost > target) == increasing:
            hi = mid
        else:
            lo = mid
    choice = best_under
    if best_under is None or (
        best_over is not None and abs(best_under[2] - target) / target > tolerance
        and abs(best_over[2] - target) / target <= tolerance
    ):
        choice = best_over
    assert choice is not None
    value, widths, cost = choice
    if abs(cost - target) / target > tolerance:
        near = [f"{format_count(c[2])} ({100 * (c[2] - target) / target:+.1f}%)" for c in (best_under, best_over) if c]
        raise _RoundingTooCoarse(
            f"no plan within {100 * tolerance:g}% of budget {budget.text} ({format_count(target)}): closest "
            f"{' and '.join(near)}; channel rounding is too coarse here, pass --round-to 1 or a larger --tolerance",
            best_under[:2] if best_under else None,
        )
    return SearchResult(widths, graph.count_macs(widths), graph.count_params(widths), value, n)


def search_uniform(graph: ChannelGraph, budget: Budget, round_to: int = 8, expand: float = 1.0,
                   iterations: int = 40, tolerance: float = 0.01) -> SearchResult:
    """One width factor for every group, found by binary search so the budget is met."""
    budget = budget.resolve(graph.count_macs())
    if budget.kind not in ("flops", "params"):
        raise BudgetError(f"uniform search takes a FLOPs or parameter budget, not {budget.kind}")
    _check_range(graph, budget, min_widths(graph, round_to), max_widths(graph, expand, round_to))
    try:
        return _bisect(lambda f: uniform_widths(graph, f, round_to), graph, budget,
                       0.0, expand, True, iterations, tolerance)
    except _RoundingTooCoarse as exc:
        # No single factor lands within tolerance: from the best plan under budget, widen
        # groups one rounding step each, widest first (a step is the smallest relative change
        # there), skipping any step that would exceed the budget. The plan stays uniform up to
        # one step per group.
        factor, start = exc.best_under or (0.0, min_widths(graph, round_to))
        top = max_widths(graph, expand, round_to)
        order = sorted(graph.groups, key=lambda n: (-graph.groups[n].width, n))
        moves = [(n, min(start[n] + _divisor(graph, n, round_to), top[n])) for n in order]
        return _fill(graph, budget, start, moves, tolerance, factor, str(exc))


def _tie_broken(gates: Mapping[str, list[float]]) -> dict[str, list[float]]:
    """Gate values made distinct, order otherwise unchanged. Clamping leaves many gates tied at
    exactly 0 or 1, and a threshold cannot split a tie; ties go to the group whose gates are
    higher on average, then to the lower channel index (G re-initialises, so only counts matter)."""
    out = {}
    for name, values in gates.items():
        mean = sum(values) / len(values)
        n = len(values)
        out[name] = [v + 1e-6 * mean - 1e-9 * i / n for i, v in enumerate(values)]
    return out


def threshold_widths(graph: ChannelGraph, gates: Mapping[str, list[float]], tau: float,
                     round_to: int = 8, expand: float = 1.0) -> dict[str, int]:
    """G(Λ > τ): each group keeps its gates above τ, as a share of its (expanded) width, rounded."""
    out = {}
    mins = min_widths(graph, round_to)
    for name, g in graph.groups.items():
        values = gates[name]
        kept = sum(1 for v in values if v > tau) / len(values)
        full_factor = expand if g.can_expand else 1.0
        out[name] = max(round_width(graph, name, max(kept * full_factor, 1e-9), round_to), mins[name])
    return out


def search_threshold(graph: ChannelGraph, gates: Mapping[str, list[float]], budget: Budget,
                     round_to: int = 8, expand: float = 1.0, iterations: int = 40,
                     tolerance: float = 0.01) -> SearchResult:
    """Algorithm 1 (Wang et al. 2020): binary-search τ in [0, 1] so G(Λ > τ) meets the budget.

    When one channel of a wide residual group moves the cost by more than the tolerance, no τ
    lands within it; then channels are added greedily in gate order (most important first),
    skipping any that would exceed the budget, starting from the best plan under budget.
    """
    budget = budget.resolve(graph.count_macs())
    _check_range(graph, budget, min_widths(graph, round_to), max_widths(graph, expand, round_to))
    distinct = _tie_broken(gates)
    try:
        return _bisect(lambda t: threshold_widths(graph, distinct, t, round_to, expand), graph, budget,
                       -1e-3, 1.0 + 1e-3, False, iterations, tolerance)
    except BudgetError:
        return _fill_by_gate_order(graph, distinct, budget, round_to, expand, tolerance)


def _fill(graph: ChannelGraph, budget: Budget, start: dict[str, int], moves: list[tuple[str, int]],
          tolerance: float, value: float, failure: str) -> SearchResult:
    """Greedy fill to a budget: take each move (group -> wider width) in order unless it would
    exceed the budget; once a group's move is refused its later moves are too (they cost more).
    Stops within a quarter of the tolerance under budget; never ends above the budget."""
    target = float(budget.value)
    widths = dict(start)
    cost = _measure(graph, widths, budget.kind)
    refused: set[str] = set()
    moved: list[str] = []
    for name, width in moves:
        if name in refused or width <= widths[name]:
            continue
        trial = {**widths, name: width}
        trial_cost = _measure(graph, trial, budget.kind)
        if trial_cost > target:
            refused.add(name)
            continue
        widths, cost = trial, trial_cost
        if name not in moved:
            moved.append(name)
        if (target - cost) / target <= tolerance / 4:
            break
    if abs(cost - target) / target > tolerance:
        raise BudgetError(
            f"{failure}; filling group by group reached only {format_count(cost)} "
            f"({100 * (cost - target) / target:+.1f}%)"
        )
    return SearchResult(widths, graph.count_macs(widths), graph.count_params(widths), value, len(moves), moved)


def _fill_by_gate_order(graph: ChannelGraph, gates: Mapping[str, list[float]], budget: Budget,
                        round_to: int, expand: float, tolerance: float) -> SearchResult:
    """Channels added in gate order (most important first), from every group at its minimum."""
    mins = min_widths(graph, round_to)

    def width_for(name: str, kept: int) -> int:
        g = graph.groups[name]
        factor = kept / len(gates[name]) * (expand if g.can_expand else 1.0)
        return max(round_width(graph, name, max(factor, 1e-9), round_to), mins[name])

    kept = {name: 0 for name in graph.groups}
    moves = []
    for _, name in sorted(((v, name) for name, vs in gates.items() for v in vs), reverse=True):
        kept[name] += 1
        moves.append((name, width_for(name, kept[name])))
    start = {name: width_for(name, 0) for name in graph.groups}
    failure = f"no plan within {100 * tolerance:g}% of budget {budget.text} ({format_count(float(budget.value))})"
    result = _fill(graph, budget, start, moves, tolerance, float("nan"),
                   failure + ": channel rounding is too coarse here, pass --round-to 1 or a larger --tolerance")
    return result
