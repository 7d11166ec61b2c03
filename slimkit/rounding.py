"""``--round-to auto``: the channel multiple the target runtime runs fastest, measured on the model itself.

Runtimes pad channel counts to their kernels' block size: onnxruntime's blocked (NCHWc) CPU
convolutions work in blocks of 8 channels on AVX2 and 16 on AVX-512, GPU tensor cores want
multiples of 8 (fp16/bf16) or 16 (int8). A plan whose widths fall between blocks pays for the
padding: on one AVX-512 Xeon a uniform 50% MobileNet-V1 ran at 1.16x the *full* model with
ragged widths, 0.62x at multiples of 8 and 0.55x at multiples of 16. The best multiple depends on
the CPU, the runtime, the precision and the model, so it is measured, never assumed:

* for each candidate multiple m (4, 8, 16, 32), the uniform plan at the budget is built with every
  pruned width an *odd* multiple of m (plan A; a uniform MobileNet at 0.5x is all multiples of 16
  whatever m is, which would hide what m costs) and with those widths one step of m wider (plan B,
  multiples of 2m). Both are exported and timed against each other on the target backend
  (:meth:`slimkit.latency_search.LatencyMeter.compare`), interleaved: the block size is a property
  of the kernels, and interleaved timing is the one that still compares well on a busy machine
  (served timing, with pool threads spinning, measured scheduling noise there). If the runtime computes at m's
  granularity, A is faster than B in proportion to its fewer MACs; if it pads to 2m internally, A
  costs what B costs. m's *efficiency* is the time A saves over B divided by the MACs it saves
  (about 1: m is a real granularity here; about 0: m is padded away);
* the smallest multiple with efficiency >= :data:`MIN_EFFICIENCY` is the runtime's granularity
  (finer widths let the search land budgets more closely and keep more of the channels that matter);
* a coarser multiple (twice, four times that, up to :data:`COARSEST`) still wins when the uniform plan
  at the budget rounded to it runs faster *per MAC* than the one at the granularity, timed against it
  as served (onnxruntime's defaults, alternated blocks: how the plan will run), by at least
  :data:`MIN_GAIN` and with its whole 95% interval below 1 (in :data:`COARSER_BLOCKS` blocks). Padding
  is not the only cost: on a 2-core AVX-512 EPYC at 224 px (granularity 16) the uniform 50% plans of
  MobileNet-V1, V2 and ResNet-50 ran 6-7% faster per MAC at 64 than at 16, ConvNeXt-Atto 3% faster at
  32 and 2% slower at 64 (bench/results/multiples_at_budget_avx512.md), and which way it goes
  depends on the CPU (on a Xeon, MobileNet-V1 ran best at 16);
* the choice is cached per machine (CPU model and flags), runtime version, backend, precision,
  threads, batch, model and budget, so the sweep runs once (``SLIMKIT_CACHE_DIR``).

Where nothing can be timed (a GPU backend on a machine without that GPU, or
``SLIMKIT_NO_TIMING=1``) the multiple comes from :data:`DOCUMENTED_MULTIPLES`, and the plan says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch

from slimkit.budget import Budget, search_uniform
from slimkit.errors import BudgetError, SlimkitError
from slimkit.files import cache_dir, read_cache, write_cache
from slimkit.graph import ChannelGraph
from slimkit.latency import backend_missing, cpu_description, timing_enabled
from slimkit.latency_search import LatencyMeter
from slimkit.plan import ChannelPlan

__all__ = ["AUTO", "CANDIDATES", "COARSEST", "MULTIPLES", "MIN_EFFICIENCY", "MIN_GAIN", "RoundingChoice",
           "choose_multiple", "choose_coarser", "sweep_multiples", "time_coarser_multiples",
           "auto_round_to", "odd_multiples", "documented_multiple", "parse_round_to", "cpu_flags", "is_ragged"]

AUTO = "auto"
CANDIDATES = (4, 8, 16, 32)  # the granularities the sweep tests (plan A at odd multiples vs B one step wider)
COARSEST = 64  # the coarsest multiple auto may choose, when its plan at the budget runs faster per MAC
MULTIPLES = tuple(sorted({*CANDIDATES, COARSEST}))  # every multiple auto can choose
MIN_EFFICIENCY = 0.5  # at least half the MACs saved by m's finer step must show up as time saved
MIN_GAIN = 0.02  # a coarser multiple must run at least 2% faster per MAC (beyond noise) to be chosen
# Served timing of the coarser plans: every block opens fresh sessions, and one session can run 5-10% off
# another of the same file for its whole life on a shared VM, so many short blocks, not 3 long ones
COARSER_RUNS, COARSER_BLOCKS = 100, 10
CACHE_FILE = "round_to.json"
CACHE_FORMAT = "slimkit.round_to/2"  # /2: the choice also weighs coarser multiples at the budget


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _simd_block() -> tuple[int, str]:
    """onnxruntime's NCHWc block size on this CPU: 16 channels with AVX-512, 8 with AVX2, 4 below."""
    flags = cpu_flags()
    if "avx512f" in flags:
        return 16, "AVX-512: onnxruntime's blocked CPU convolutions use 16-channel blocks"
    if "avx2" in flags or platform.machine().lower() in ("arm64", "aarch64"):
        return 8, "AVX2/NEON: onnxruntime's blocked CPU convolutions use 8-channel blocks"
    return 4, "no AVX2: onnxruntime's CPU convolutions use 4-channel (SSE) blocks"


# When a backend cannot be timed here. Sources: onnxruntime's MLAS NCHWc block sizes (by SIMD width);
# NVIDIA's guidance for tensor cores (channels multiples of 8 for fp16/bf16, 16 for int8).
DOCUMENTED_MULTIPLES: dict[tuple[str, str], tuple[int, str]] = {
    ("ort-cuda", "fp32"): (8, "NVIDIA tensor cores (TF32/fp16/bf16) need channel counts in multiples of 8"),
    ("torch", "cuda"): (8, "NVIDIA tensor cores (TF32/fp16/bf16) need channel counts in multiples of 8"),
    ("torch-compile", "cuda"): (8, "NVIDIA tensor cores (TF32/fp16/bf16) need channel counts in multiples of 8"),
    ("ort-cuda", "int8"): (16, "NVIDIA int8 tensor cores need channel counts in multiples of 16"),
}


def parse_round_to(value: int | str) -> int | str:
    """``--round-to``: a positive integer, or ``auto``."""
    if isinstance(value, bool):
        raise SlimkitError(f"--round-to must be a positive integer or 'auto', got {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip().lower()
    if text == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise SlimkitError(f"--round-to must be a positive integer or 'auto', got {str(value)[:40]!r}") from None


def is_ragged(widths: dict[str, int], full: dict[str, int], multiple: int = 8) -> bool:
    """True when a pruned group's width is off the runtime's channel block (kept-full groups do not count)."""
    return any(w % multiple and w != full.get(n) for n, w in widths.items())


@dataclass
class RoundingChoice:
    """The multiple chosen and why; recorded in the plan's ``search["rounding"]``."""

    multiple: int
    how: str  # measured | cached | table | explicit
    why: str
    backend: str
    precision: str = "fp32"
    mode: str | None = None
    threads: int | None = None
    sweep: dict[int, dict[str, float]] = field(default_factory=dict)  # per multiple: MAC and time ratios A/B
    machine: str = ""
    # per coarser multiple: its uniform plan at the budget against the granularity's (time, MACs, per MAC)
    coarser: dict[int, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {"round_to": self.multiple, "how": self.how, "why": self.why, "backend": self.backend,
               "precision": self.precision, "machine": self.machine}
        if self.mode:
            out.update({"mode": self.mode, "threads": self.threads})
        if self.sweep:
            out["sweep"] = {str(m): {k: round(v, 4) for k, v in r.items()} for m, r in sorted(self.sweep.items())}
        if self.coarser:
            out["coarser"] = {str(m): {k: round(v, 4) for k, v in r.items()} for m, r in sorted(self.coarser.items())}
        return out


def choose_multiple(sweep: dict[int, dict[str, float]], min_efficiency: float = MIN_EFFICIENCY) -> int:
    """The smallest multiple whose efficiency (time saved / MACs saved, A vs B) is at least
    ``min_efficiency``; if none is, the largest one measured (every finer step was padded away)."""
    if not sweep:
        raise SlimkitError("no channel multiple could be measured")
    good = [m for m, r in sweep.items() if r["efficiency"] >= min_efficiency]
    return min(good) if good else max(sweep)


def choose_coarser(finest: int, coarser: dict[int, dict[str, float]], min_gain: float = MIN_GAIN) -> int:
    """``finest`` unless a coarser multiple's plan ran faster per MAC by at least ``min_gain`` with its whole
    95% interval below 1 (``per_mac``, ``per_mac_high``: time ratio / MAC ratio against ``finest``'s plan);
    then the fastest such."""
    good = {m: r for m, r in coarser.items() if r["per_mac"] <= 1 - min_gain and r["per_mac_high"] < 1}
    return min(good, key=lambda m: (good[m]["per_mac"], m)) if good else finest


def time_coarser_multiples(graph: ChannelGraph, budget: Budget, finest: int,
                           compare: Callable[[dict[str, int], dict[str, int]], tuple[float, tuple[float, float]]],
                           *, expand: float = 1.0, coarsest: int = COARSEST,
                           say: Callable[[str], None] | None = None) -> dict[int, dict[str, float]]:
    """The uniform plan at ``budget`` rounded to each multiple 2·finest, 4·finest, ... up to ``coarsest``,
    timed against the one rounded to ``finest`` (``compare(widths, reference)`` gives the time ratio and
    its 95% interval). Returns {m: {"mac_ratio", "time_ratio", "per_mac", "per_mac_high"}}; multiples whose
    plan is the same, or cannot meet the budget, are left out."""
    out: dict[int, dict[str, float]] = {}
    try:
        base = search_uniform(graph, budget, round_to=finest, expand=expand).widths
    except BudgetError:
        return out
    m = 2 * finest
    while m <= coarsest:
        try:
            widths = search_uniform(graph, budget, round_to=m, expand=expand).widths
        except BudgetError:
            widths = base
        if widths != base:
            mac_ratio = graph.count_flops(widths) / graph.count_flops(base)
            t, (low, high) = compare(widths, base)
            out[m] = {"mac_ratio": mac_ratio, "time_ratio": t, "per_mac": t / mac_ratio,
                      "per_mac_low": low / mac_ratio, "per_mac_high": high / mac_ratio}
            if say:
                say(f"  round-to {m:>2} at the budget: {t:.3f}x the time of round-to {finest}'s plan at "
                    f"{mac_ratio:.3f}x its MACs ({t / mac_ratio:.3f}x per MAC, 95% interval "
                    f"{low / mac_ratio:.3f}-{high / mac_ratio:.3f})")
        m *= 2
    return out


def odd_multiples(graph: ChannelGraph, widths: dict[str, int], m: int) -> dict[str, int]:
    """``widths`` moved to odd multiples of ``m`` (one step down, or up where down is below ``m``),
    for pruned groups whose structure allows it; full-width and structurally fixed groups stay."""
    out = dict(widths)
    for name, w in widths.items():
        g = graph.groups[name]
        if math.lcm(m, g.divisor) != m or w >= g.width or w % (2 * m):
            continue  # kept whole, constrained by its own divisor, or already an odd multiple
        if w - m >= m:
            out[name] = w - m
        elif w + m < g.width:
            out[name] = w + m
    return out


def sweep_multiples(graph: ChannelGraph, budget: Budget,
                    time_ratio: Callable[[dict[str, int], dict[str, int]], float], *,
                    expand: float = 1.0, candidates: tuple[int, ...] = CANDIDATES,
                    say: Callable[[str], None] | None = None) -> dict[int, dict[str, float]]:
    """For each multiple m: plan A (uniform at ``budget``, pruned widths at odd multiples of m) and plan
    B (A's odd widths one step of m wider); ``time_ratio(A, B)`` is A's measured latency over B's.
    Returns {m: {"mac_ratio", "time_ratio", "efficiency"}}; multiples with nothing to move, or that
    cannot meet the budget, are left out."""
    out: dict[int, dict[str, float]] = {}
    for m in candidates:
        try:
            a = odd_multiples(graph, search_uniform(graph, budget, round_to=m, expand=expand, tolerance=0.05).widths, m)
        except BudgetError:
            continue
        b = {n: w + m if (w // m) % 2 == 1 and w % m == 0 and w + m <= graph.groups[n].width
             and math.lcm(m, graph.groups[n].divisor) == m else w for n, w in a.items()}
        mac_a, mac_b = graph.count_flops(a), graph.count_flops(b)
        if mac_b <= mac_a:
            continue
        mac_ratio = mac_a / mac_b
        t = time_ratio(a, b)
        eff = (1 - t) / (1 - mac_ratio)
        out[m] = {"mac_ratio": mac_ratio, "time_ratio": t, "efficiency": eff}
        if say:
            say(f"  round-to {m:>2}: {100 * (1 - mac_ratio):.1f}% fewer MACs than one step wider -> "
                f"{100 * (1 - t):+.1f}% time (efficiency {eff:.2f})")
    return out


def documented_multiple(backend: str, precision: str = "fp32", device: str = "cpu") -> tuple[int, str]:
    """The multiple to use when nothing can be timed: per backend, or this CPU's SIMD block."""
    key = (backend, "cuda" if backend.startswith("torch") and device.startswith("cuda") else precision)
    if key in DOCUMENTED_MULTIPLES:
        return DOCUMENTED_MULTIPLES[key]
    return _simd_block()


def _cache_key(template: ChannelPlan, fraction: float, backend: str, precision: str,
               threads: int | None, batch: int) -> str:
    key = [cpu_description(), sorted(cpu_flags()), ort.__version__, backend, precision, threads, batch,
           template.arch, template.arch_kwargs, list(template.input_size), template.expand, round(fraction, 2)]
    if template.graph_fingerprint is not None:  # a user's factory: its name stays when its code changes
        key.append(template.graph_fingerprint)
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _read_cache(path: Path) -> dict[str, Any]:
    data = read_cache(path, CACHE_FORMAT)
    if data is not None and isinstance(data.get("entries"), dict):
        return data
    return {"format": CACHE_FORMAT, "entries": {}}  # absent, damaged or not ours: measure again


def _cached_choice(hit: Any) -> dict[str, Any] | None:
    """A cache entry as :func:`auto_round_to` wrote it, or None (measure again): the multiple is one the
    sweep measures and its sweep reads back, so a damaged or hand-edited cache (round_to 0, -8, true,
    a billion) never becomes a plan's channel multiple."""
    if not isinstance(hit, dict) or type(hit.get("round_to")) is not int or hit["round_to"] not in MULTIPLES:
        return None
    if hit.get("threads") is not None and (type(hit["threads"]) is not int or hit["threads"] < 1):
        return None
    try:
        for table in (hit.get("sweep", {}), hit.get("coarser", {})):
            if not isinstance(table, dict) or not all(int(k) in MULTIPLES and isinstance(v, dict)
                                                      for k, v in table.items()):
                return None
    except ValueError:
        return None
    return hit


def auto_round_to(graph: ChannelGraph, template: ChannelPlan, budget: Budget, *, backend: str = "ort-cpu",
                  precision: str = "fp32", threads: int | None = None, batch: int = 1,
                  device: str = "cpu", say: Callable[[str], None] | None = None) -> RoundingChoice:
    """Measure (or recall) the fastest channel multiple for ``template``'s model on ``backend``.

    The sweep uses the uniform plan at the budget's MAC share (for a latency budget given as a
    share, that share of the MACs; for one in milliseconds, half the MACs)."""
    say = say or (lambda _m: None)
    machine = cpu_description()
    timing_possible = timing_enabled()
    if backend_missing(backend):  # a plan for another machine's runtime: the documented multiple
        timing_possible = False
    if backend.startswith("torch") and device.startswith("cuda") and not torch.cuda.is_available():
        timing_possible = False
    if not timing_possible:
        m, why = documented_multiple(backend, precision, device)  # recorded in the plan; nothing timed to report
        return RoundingChoice(m, "table", why, backend, precision, machine=machine)
    full_flops = graph.count_flops()
    if budget.kind in ("flops", "params"):
        sweep_budget = budget.resolve(full_flops)
        fraction = sweep_budget.value / (full_flops if budget.kind == "flops" else graph.count_params())
    else:
        fraction = budget.fraction if budget.fraction is not None else 0.5
        sweep_budget = Budget("flops", f"{fraction:.0%}", round(fraction * full_flops))
    path = cache_dir() / CACHE_FILE
    mode = "interleaved"  # a comparison of two plans: see the module docstring
    key = _cache_key(template, fraction, backend, precision, threads, batch)
    cache = _read_cache(path)
    hit = _cached_choice(cache["entries"].get(key))
    if hit is not None:
        sweep = {int(k): dict(v) for k, v in hit.get("sweep", {}).items()}
        coarser = {int(k): dict(v) for k, v in hit.get("coarser", {}).items()}
        choice = RoundingChoice(hit["round_to"], "cached", str(hit.get("why", "")), backend, precision, mode,
                                hit.get("threads"), sweep, machine, coarser)
        say(f"round-to auto: {choice.multiple} (measured earlier on this machine; cache {path})")
        return choice
    say(f"round-to auto: timing the uniform plan at {fraction:.0%} at each channel multiple on {backend} "
        f"({machine}, {mode} timing); cached for next time")
    meter = LatencyMeter(template, graph, backend=backend, threads=threads, batch=batch, device=device,
                         precision=precision, mode=mode)
    coarser: dict[int, dict[str, float]] = {}
    try:
        sweep = sweep_multiples(graph, sweep_budget, lambda a, b: meter.compare(a, b, runs=3 * meter.runs // 2).ratio,
                                expand=template.expand, say=say)
        granularity = choose_multiple(sweep) if sweep else 0
        if sweep and sweep[granularity]["efficiency"] >= MIN_EFFICIENCY:
            def served(a: dict[str, int], b: dict[str, int]) -> tuple[float, tuple[float, float]]:
                got = meter.compare(a, b, runs=COARSER_RUNS, mode="served", blocks=COARSER_BLOCKS)
                return got.ratio, got.ci
            coarser = time_coarser_multiples(graph, sweep_budget, granularity, served, expand=template.expand, say=say)
        threads = meter.threads
    finally:
        meter.close()
    if not sweep:  # nothing pruned at this budget (100%), or no multiple reaches it (1%): nothing to time
        m, why = documented_multiple(backend, precision, device)
        why = (f"{why}; no multiple could be timed at {fraction:.0%} of the MACs (nothing is pruned there, or "
               "no multiple's uniform plan lands within 5% of it)")
        say(f"round-to auto: {m} ({why})")
        return RoundingChoice(m, "table", why, backend, precision, machine=machine)
    finer = [m for m in sweep if m < granularity]
    why = (f"the finest multiple {backend} computes at here (efficiency {sweep[granularity]['efficiency']:.2f}"
           + (f"; {', '.join(map(str, finer))} padded away" if finer else "") + ")"
           if sweep[granularity]["efficiency"] >= MIN_EFFICIENCY else
           f"no multiple up to {granularity} showed its MACs saved as time saved on {backend} here")
    best = choose_coarser(granularity, coarser)
    if best != granularity:
        why = (f"its uniform plan at {fraction:.0%} ran {coarser[best]['per_mac']:.2f}x per MAC of the one at "
               f"{granularity} as served (95% interval to {coarser[best]['per_mac_high']:.2f}); {granularity} is {why}")
    elif coarser:
        why += (f"; no coarser multiple ran {MIN_GAIN:.0%} faster per MAC beyond noise at {fraction:.0%} as served ("
                + ", ".join(f"{m}: {r['per_mac']:.2f}x, interval {r['per_mac_low']:.2f}-"
                            f"{r['per_mac_high']:.2f}" for m, r in sorted(coarser.items())) + ")")
    choice = RoundingChoice(best, "measured", why, backend, precision, mode, threads, sweep, machine, coarser)
    cache["entries"][key] = choice.to_json()
    write_cache(path, cache, say)
    say(f"round-to auto: {best} ({why})")
    return choice
