"""Budgets and the width searches that meet them.

* Budget strings (docs/method.md): ``150M`` / ``1.2G`` / ``150000000`` are MACs ("FLOPs" in the
  papers' tables), ``50%`` is a fraction of the full model's MACs, ``3.5Mp`` is parameters,
  ``20ms`` / ``500us`` is a measured latency. Anything else is an error.
* Channel rounding follows torchvision's ``_make_divisible``: round to the nearest multiple of the
  divisor, never below the divisor and never more than 10% below the unrounded width. Rounding
  to 8 matters on real runtimes: onnxruntime runs MobileNet-V1 at 150M MACs 1.6-2.2x slower with
  ragged counts than with multiples of 8 (docs/method.md).
* ``search_uniform`` binary-searches one width factor shared by all groups (the papers' uniform
  baseline); ``search_threshold`` is Algorithm 1 of "Pruning from Scratch": a binary search of a
  global threshold over learned gate values.
* ``search_cost_aware`` ranks channels by gate value per unit of marginal cost instead (greedy, as
  in MorphNet and HALP): a threshold counts every channel alike, but on ResNet-20 at 32 px a
  stage-1 channel costs 4x the MACs of a stage-3 channel, so thresholded gates spend the budget
  early and starve late stages.
* ``pinned`` groups (the paper's search space keeps residual streams at their expanded width)
  keep the width given and take no part in a search.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

from slimkit.errors import BudgetError
from slimkit.flops import format_count
from slimkit.graph import ChannelGraph

__all__ = ["Budget", "parse_budget", "check_budget", "make_divisible", "round_width", "uniform_widths",
           "min_widths", "max_widths", "search_uniform", "search_threshold", "search_cost_aware", "SearchResult",
           "SELECTIONS"]

SELECTIONS = ("threshold", "cost-aware", "latency-aware")  # how learned gates become widths

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
        frac = _finite(float(m.group(1)) / 100, raw)
        if not 0 < frac:
            raise BudgetError(f"budget '{raw}' must be a positive percentage, e.g. 50%")
        if kind == "params":
            raise BudgetError(f"a parameter budget cannot be a percentage ('{raw}'): give e.g. 2.1M")
        return Budget("latency" if kind == "latency" else "flops", raw, None, frac)
    m = re.fullmatch(r"(\d+(?:\.\d+)?(?:e\d+)?)\s*(ms|us|s)", t)
    if m:
        if kind == "params":
            raise BudgetError(f"'{raw}' is a latency, not a parameter count")
        return Budget("latency", raw, _finite(float(m.group(1)) * _TIME[m.group(2)], raw))
    if kind == "latency":
        raise BudgetError(f"cannot read latency budget '{raw}': use a time like 8ms or 500us, or 50% of the "
                          "full model's latency")
    m = re.fullmatch(r"(\d+(?:\.\d+)?(?:e\d+)?)\s*([KkMGT]?)(p|P|params)?", t)
    if m:
        value = _finite(float(m.group(1)) * _SCALES[m.group(2).upper()], raw)
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


def _finite(value: float, raw: str) -> float:
    if not math.isfinite(value):  # "1e999M" reads as infinity
        raise BudgetError(f"budget '{raw[:40]}' is not a finite number: give e.g. 150M, 50% or 8ms")
    return value


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
    value: float | None  # the factor (uniform) or threshold (gates) that produced the widths; None for a fill
    iterations: int
    selection: str = "threshold"  # how the widths were chosen: "uniform", "threshold", "gate-order fill", ...
    filled: list[str] = field(default_factory=list)  # groups a fill moved past the factor/threshold


def _measure(graph: ChannelGraph, widths: dict[str, int], kind: str) -> int:
    return graph.count_params(widths) if kind == "params" else graph.count_flops(widths)


def check_budget(graph: ChannelGraph, budget: Budget, round_to: int = 8, expand: float = 1.0,
                 pinned: Mapping[str, int] | None = None) -> Budget:
    """Resolve ``budget`` against the full model and fail fast if no width choice can meet it."""
    budget = budget.resolve(graph.count_flops())
    if budget.kind in ("flops", "params"):
        pinned = dict(pinned or {})
        _check_range(graph, budget, {**min_widths(graph, round_to), **pinned},
                     {**max_widths(graph, expand, round_to), **pinned})
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


def _coarse_hint(graph: ChannelGraph, round_to: int) -> str:
    """What to do when no plan lands within tolerance: finer rounding, unless every width already
    moves one channel at a time (then only a larger tolerance or another budget helps)."""
    if all(_divisor(graph, name, round_to) == 1 for name in graph.groups):
        return "one channel moves the cost by more than that here, pass a larger --tolerance or another budget"
    return "channel rounding is too coarse here, pass --round-to 1 or a larger --tolerance"


def _bisect(make: Callable[[float], dict[str, int]], graph: ChannelGraph, budget: Budget,
            lo: float, hi: float, increasing: bool, iterations: int, tolerance: float, hint: str) -> SearchResult:
    """Binary search of a scalar knob; keep the closest plan at or under budget, or just over it
    within tolerance when nothing under is within tolerance."""
    target = float(budget.value)
    top = hi if increasing else lo  # the largest model the knob can make
    widths = make(top)
    if _measure(graph, widths, budget.kind) <= target:  # e.g. a 100% budget: nothing larger fits
        return SearchResult(widths, graph.count_flops(widths), graph.count_params(widths), top, 1)
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
            f"{' and '.join(near)}; {hint}",
            best_under[:2] if best_under else None,
        )
    return SearchResult(widths, graph.count_flops(widths), graph.count_params(widths), value, n)


def search_uniform(graph: ChannelGraph, budget: Budget, round_to: int = 8, expand: float = 1.0,
                   iterations: int = 40, tolerance: float = 0.01, pinned: Mapping[str, int] | None = None
                   ) -> SearchResult:
    """One width factor for every group (but the ``pinned`` ones, which keep their given widths),
    found by binary search so the budget is met."""
    budget = budget.resolve(graph.count_flops())
    if budget.kind not in ("flops", "params"):
        raise BudgetError(f"uniform search takes a FLOPs or parameter budget, not {budget.kind}")
    pinned = dict(pinned or {})
    _check_range(graph, budget, {**min_widths(graph, round_to), **pinned}, {**max_widths(graph, expand, round_to), **pinned})
    try:
        result = _bisect(lambda f: {**uniform_widths(graph, f, round_to), **pinned}, graph, budget,
                         0.0, expand, True, iterations, tolerance, _coarse_hint(graph, round_to))
    except _RoundingTooCoarse as exc:
        # No single factor lands within tolerance: from the best plan under budget, widen groups
        # one rounding step at a time, in rounds (every group one step, widest first: a step is
        # the smallest relative change there; then every group a second step...), skipping any
        # step that would exceed the budget. Rounds keep the plan as even as the steps allow: no
        # group is more than k steps above the others' factor after k rounds. One round is
        # usually enough; models with a few very coarse groups (a transformer's embedding width,
        # tied to whole heads) need the fine groups (MLP widths) to take a few more.
        factor, start = exc.best_under or (0.0, {**min_widths(graph, round_to), **pinned})
        top = {**max_widths(graph, expand, round_to), **pinned}
        order = sorted((n for n in graph.groups if n not in pinned), key=lambda n: (-graph.groups[n].width, n))
        steps = {n: _divisor(graph, n, round_to) for n in order}
        rounds = max(1, max(-(-(top[n] - start[n]) // steps[n]) for n in order))
        moves = [(n, min(start[n] + k * steps[n], top[n])) for k in range(1, rounds + 1) for n in order]
        lows = min_widths(graph, round_to)
        ladders = {n: _ladder(lows[n], top[n], steps[n]) for n in order}
        result = _fill(graph, budget, start, moves, tolerance, factor, str(exc), selection="uniform up to one step",
                       ladders=ladders)
        most = max(((result.widths[n] - start[n]) // steps[n] for n in order), default=0)
        if most > 1:
            result.selection = result.selection.replace("uniform up to one step", f"uniform up to {most} steps")
        return result
    result.selection = "uniform"
    return result


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
                     round_to: int = 8, expand: float = 1.0,
                     pinned: Mapping[str, int] | None = None) -> dict[str, int]:
    """G(Λ > τ): each group keeps its gates above τ, as a share of its (expanded) width, rounded."""
    out = {}
    mins = min_widths(graph, round_to)
    for name, g in graph.groups.items():
        if pinned and name in pinned:
            out[name] = pinned[name]
            continue
        values = gates[name]
        kept = sum(1 for v in values if v > tau) / len(values)
        full_factor = expand if g.can_expand else 1.0
        out[name] = max(round_width(graph, name, max(kept * full_factor, 1e-9), round_to), mins[name])
    return out


def search_threshold(graph: ChannelGraph, gates: Mapping[str, list[float]], budget: Budget,
                     round_to: int = 8, expand: float = 1.0, iterations: int = 40,
                     tolerance: float = 0.01, pinned: Mapping[str, int] | None = None) -> SearchResult:
    """Algorithm 1 (Wang et al. 2020): binary-search τ in [0, 1] so G(Λ > τ) meets the budget.

    When one channel of a wide residual group moves the cost by more than the tolerance, no τ
    lands within it; then channels are added greedily in gate order (most important first),
    skipping any that would exceed the budget, starting from the best plan under budget.
    """
    budget = budget.resolve(graph.count_flops())
    pinned = dict(pinned or {})
    _check_range(graph, budget, {**min_widths(graph, round_to), **pinned},
                 {**max_widths(graph, expand, round_to), **pinned})
    distinct = _tie_broken(gates)
    try:
        return _bisect(lambda t: threshold_widths(graph, distinct, t, round_to, expand, pinned), graph, budget,
                       -1e-3, 1.0 + 1e-3, False, iterations, tolerance, _coarse_hint(graph, round_to))
    except BudgetError:
        return _fill_by_gate_order(graph, distinct, budget, round_to, expand, tolerance, pinned)


def _best_swap(graph: ChannelGraph, kind: str, target: float, cost: int, widths: dict[str, int],
               ladders: Mapping[str, list[int]]) -> tuple[int, dict[str, int]] | None:
    """One group a rung wider and another a rung thinner: the pair that lands highest under the
    target (and above ``cost``), or None. Where every single step is coarser than the tolerance,
    such a pair can land where adding alone cannot."""
    # pinned groups (kept whole: a paper search space's residual streams) have no ladder and never move
    rung = {n: ladders[n].index(widths[n]) if widths[n] in ladders[n] else None for n in ladders}
    best: tuple[int, dict[str, int]] | None = None
    for up, down in itertools.permutations(ladders, 2):
        i, j = rung[up], rung[down]
        if i is None or j is None or i == 0 or j == len(ladders[down]) - 1:
            continue
        trial = {**widths, up: ladders[up][i - 1], down: ladders[down][j + 1]}
        trial_cost = _measure(graph, trial, kind)
        if cost < trial_cost <= target and (best is None or trial_cost > best[0]):
            best = (trial_cost, trial)
    return best


def _fill(graph: ChannelGraph, budget: Budget, start: dict[str, int], moves: list[tuple[str, int]],
          tolerance: float, value: float | None, failure: str, selection: str,
          ladders: Mapping[str, list[int]]) -> SearchResult:
    """Greedy fill to a budget: take each move (group -> wider width) in order unless it would
    exceed the budget; once a group's move is refused its later moves are too (they cost more).
    Still short of the tolerance (every remaining step is coarser than it), swap: one group a rung
    wider, another a rung thinner (``ladders``: each group's widths, widest first), then add what
    fits again. Stops within a quarter of the tolerance under budget; never ends above the budget."""
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
    swaps = 0
    while (target - cost) / target > tolerance / 4 and swaps < 4 * len(ladders):
        swap = _best_swap(graph, budget.kind, target, cost, widths, ladders)
        if swap is None:
            break
        cost, widths = swap
        swaps += 1
        for name in sorted(ladders, key=lambda n: (-graph.groups[n].width, n)):  # what fits now, widest first
            i = ladders[name].index(widths[name]) if widths[name] in ladders[name] else 0
            if i > 0 and (c := _measure(graph, {**widths, name: ladders[name][i - 1]}, budget.kind)) <= target:
                widths, cost = {**widths, name: ladders[name][i - 1]}, c
    if abs(cost - target) / target > tolerance:
        raise BudgetError(
            f"{failure}; filling group by group reached only {format_count(cost)} "
            f"({100 * (cost - target) / target:+.1f}%)"
        )
    moved = [n for n in dict.fromkeys(moved + sorted(widths)) if widths[n] != start[n]]  # fill order, then swapped
    return SearchResult(widths, graph.count_flops(widths), graph.count_params(widths), value, len(moves),
                        selection=selection + (f", then {swaps} swap{'s' * (swaps > 1)}" if swaps else ""),
                        filled=moved)


def _fill_by_gate_order(graph: ChannelGraph, gates: Mapping[str, list[float]], budget: Budget,
                        round_to: int, expand: float, tolerance: float,
                        pinned: Mapping[str, int] | None = None) -> SearchResult:
    """Channels added in gate order (most important first), from every group at its minimum;
    pinned groups stay at their pinned width."""
    pinned = dict(pinned or {})
    mins = min_widths(graph, round_to)

    def width_for(name: str, kept: int) -> int:
        if name in pinned:
            return pinned[name]
        g = graph.groups[name]
        factor = kept / len(gates[name]) * (expand if g.can_expand else 1.0)
        return max(round_width(graph, name, max(factor, 1e-9), round_to), mins[name])

    kept = {name: 0 for name in graph.groups}
    moves = []
    ranked = sorted(((v, name) for name, vs in gates.items() if name not in pinned for v in vs), reverse=True)
    for _, name in ranked:
        kept[name] += 1
        moves.append((name, width_for(name, kept[name])))
    start = {name: width_for(name, 0) for name in graph.groups}
    failure = f"no plan within {100 * tolerance:g}% of budget {budget.text} ({format_count(float(budget.value))})"
    highs = max_widths(graph, expand, round_to)
    ladders = {n: [pinned[n]] if n in pinned else _ladder(mins[n], highs[n], _divisor(graph, n, round_to))
               for n in graph.groups}
    return _fill(graph, budget, start, moves, tolerance, None,
                 f"{failure}: {_coarse_hint(graph, round_to)}",
                 selection="gate-order fill", ladders=ladders)


def _ladder(low: int, high: int, divisor: int) -> list[int]:
    """The widths a group may take, widest first: its maximum, every multiple of its divisor in
    between, and its minimum (the same set ``round_width`` can produce)."""
    inner = range((low // divisor + 1) * divisor, high, divisor)
    return sorted({low, high, *inner}, reverse=True)


class _LocalCost:
    """MACs (or parameters) of only the tensors a group touches, so a greedy step re-counts a few
    layers instead of the whole network."""

    def __init__(self, graph: ChannelGraph, kind: str, weights: Mapping[str, float] | None = None):
        self.graph = graph
        if kind == "params":
            terms = [(fqn, 1) for fqn in graph.param_dims if fqn in graph.param_names]
        else:
            terms = [(fqn, positions) for fqn, positions in graph.mac_terms if fqn in graph.param_dims]
        if weights:  # a cost per unit other than MACs (measured latency per MAC): terms are scaled
            terms = [(fqn, w * float(weights.get(fqn, 1.0))) for fqn, w in terms]
        self.terms: dict[str, list[tuple[str, int]]] = {name: [] for name in graph.groups}
        for fqn, weight in terms:
            names = {k for segs in graph.param_dims[fqn].values() for k, _ in segs if isinstance(k, str)}
            for name in names:
                self.terms[name].append((fqn, weight))
        # groups that share a tensor: changing one changes the other's marginal cost
        self.neighbours: dict[str, set[str]] = {name: set() for name in graph.groups}
        for name, ts in self.terms.items():
            for fqn, _ in ts:
                for segs in graph.param_dims[fqn].values():
                    self.neighbours[name].update(k for k, _ in segs if isinstance(k, str) and k != name)

    def _size(self, fqn: str, widths: Mapping[str, int]) -> int:
        shape = list(self.graph.tensor_shapes[fqn])
        for dim, segs in self.graph.param_dims[fqn].items():
            shape[dim] = int(sum((widths[k] if isinstance(k, str) else k) * rep for k, rep in segs))
        return math.prod(shape)

    def of(self, name: str, widths: Mapping[str, int]) -> int:
        return sum(weight * self._size(fqn, widths) for fqn, weight in self.terms[name])


def search_cost_aware(graph: ChannelGraph, gates: Mapping[str, list[float]], budget: Budget,
                      round_to: int = 8, expand: float = 1.0, tolerance: float = 0.01,
                      pinned: Mapping[str, int] | None = None,
                      rank_weights: Mapping[str, float] | None = None) -> SearchResult:
    """Channels ranked by gate value per unit of marginal cost, greedily (MorphNet / HALP style).

    ``rank_weights`` (weight fqn -> relative cost per MAC, e.g. measured latency from
    :mod:`slimkit.layer_latency`) changes what a channel *costs* for the ranking only; the budget is
    still counted in MACs (or parameters), so the plan lands where a FLOPs budget asks.

    From the widest model, repeatedly take one rounding step (``round_to`` channels, or a group's
    structural divisor) off the group whose lowest gates buy the least per MAC saved (per
    parameter for a parameter budget), re-counting marginal costs as widths shrink (a channel's
    cost depends on its neighbours' widths), until the budget is met; then add back the steps
    that still fit, most value per cost first, so the plan lands within ``tolerance``. Ties (gates
    clamped to exactly 0 or 1) go to the step that saves more. Minimum widths and rounding are
    those of ``search_threshold``; ``value`` is None (no threshold).
    """
    budget = budget.resolve(graph.count_flops())
    if budget.kind not in ("flops", "params"):
        raise BudgetError(f"cost-aware selection takes a FLOPs or parameter budget, not {budget.kind}")
    pinned = dict(pinned or {})
    lows = {**min_widths(graph, round_to), **pinned}
    highs = {**max_widths(graph, expand, round_to), **pinned}
    _check_range(graph, budget, lows, highs)
    target = float(budget.value)
    cost_model = _LocalCost(graph, budget.kind)
    rank_model = _LocalCost(graph, budget.kind, rank_weights) if rank_weights else cost_model
    ladders = {n: _ladder(lows[n], highs[n], _divisor(graph, n, round_to)) for n in graph.groups}
    # value of keeping the w most important channels of a group: a prefix sum of its sorted gates
    prefix: dict[str, list[float]] = {}
    for name in graph.groups:
        values = sorted((float(v) for v in gates.get(name, [])), reverse=True)
        sums = [0.0]
        for v in values:
            sums.append(sums[-1] + v)
        prefix[name] = sums

    def value(name: str, width: int) -> float:
        sums = prefix[name]
        return sums[min(width, len(sums) - 1)]

    step = {n: 0 for n in graph.groups}  # index into each ladder
    widths = {n: ladders[n][0] for n in graph.groups}

    def move(name: str, direction: int) -> tuple[float, int, float] | None:
        """(value change, budget cost change, ranking cost change) of moving ``name`` one rung (+1
        thinner, -1 wider), all >= 0."""
        j = step[name] + direction
        if not 0 <= j < len(ladders[name]):
            return None
        new = ladders[name][j]
        trial = {**widths, name: new}
        dc = abs(cost_model.of(name, widths) - cost_model.of(name, trial))
        dr = dc if rank_model is cost_model else abs(rank_model.of(name, widths) - rank_model.of(name, trial))
        dv = abs(value(name, widths[name]) - value(name, new))
        return (dv, dc, dr) if dc > 0 and dr > 0 else None

    def shrink_key(name: str, m: tuple[float, int, float]) -> tuple[float, float, str]:
        return (m[0] / m[2], -m[1], name)

    cost = _measure(graph, widths, budget.kind)
    removals = {n: move(n, +1) for n in graph.groups}
    over: tuple[dict[str, int], int] | None = None
    iterations = 0
    while cost > target:
        live = [(shrink_key(n, m), n) for n, m in removals.items() if m is not None]
        if not live:
            break
        _, name = min(live)
        over = (dict(widths), cost)
        cost -= removals[name][1]
        step[name] += 1
        widths[name] = ladders[name][step[name]]
        iterations += 1
        for n in {name} | cost_model.neighbours[name]:
            removals[n] = move(n, +1)
    def set_rung(name: str, j: int) -> None:
        step[name] = j
        widths[name] = ladders[name][j]

    def add_back() -> int:
        """Add steps that still fit, most value per cost first; returns how many."""
        nonlocal cost
        added = 0
        while True:
            growth = [(m[0] / m[2], m[1], n) for n in graph.groups
                      if (m := move(n, -1)) is not None and cost + m[1] <= target]
            if not growth:
                return added
            _, dc, name = max(growth, key=lambda t: (t[0], -t[1], t[2]))
            cost += dc
            set_rung(name, step[name] - 1)
            added += 1

    iterations += add_back()  # the last step down may have overshot the budget
    # Still short of the tolerance: one group a rung wider and another a rung thinner can land
    # closer than adding alone (a few rounds; each keeps the plan under budget).
    for _ in range(4 * len(graph.groups)):
        if (target - cost) / target <= tolerance / 4:
            break
        swap = _best_swap(graph, budget.kind, target, cost, widths, ladders)
        if swap is None:
            break
        cost, swapped = swap
        for name in [n for n in swapped if swapped[n] != widths[n]]:
            set_rung(name, ladders[name].index(swapped[name]))
        iterations += 1 + add_back()
    assert cost == _measure(graph, widths, budget.kind), "incremental cost drifted from the full count"
    if (target - cost) / target > tolerance and over is not None and (over[1] - target) / target <= tolerance:
        widths, cost = over
    if abs(cost - target) / target > tolerance:
        near = [f"{format_count(c)} ({100 * (c - target) / target:+.1f}%)" for c in (cost, over[1] if over else None)
                if c is not None]
        raise BudgetError(
            f"no plan within {100 * tolerance:g}% of budget {budget.text} ({format_count(target)}): closest "
            f"{' and '.join(near)}; {_coarse_hint(graph, round_to)}"
        )
    return SearchResult(widths, graph.count_flops(widths), graph.count_params(widths), None, iterations,
                        selection="latency-aware" if rank_weights else "cost-aware")

