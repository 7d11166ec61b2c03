"""Measured-latency budgets: Algorithm 1 with latency, measured on the target backend, as the cost.

FLOPs are a poor proxy for speed (fixed per-layer overheads, memory-bound depthwise convs, ragged
channel counts), so every candidate here is *built and timed*: plan -> G -> ONNX -> onnxruntime,
timed in interleaved rounds against the full model, so the cost is a ratio to the full model
that machine drift cancels out of (the same measurement `slimkit bench` makes).

The search walks the same family of plans as the FLOPs search: for a FLOPs fraction f, Algorithm 1
(threshold over the learned gates, or one uniform factor) gives the plan P(f). Latency grows with
f, roughly linearly plus a constant, so a secant search (regula falsi, bracketing kept) on f
needs a handful of measurements instead of a full bisection of τ. The stop rule is noise-aware:
accept a candidate when its measured ratio is within the tolerance of the target *and* its
confidence interval is narrow enough to say so; otherwise measure it again with twice the rounds.
Every measurement is cached by plan widths. A per-layer lookup table (NetAdapt/HALP style) would
save little here: one candidate costs well under a second to export and time on the models
below, and the final plan's latency must be measured anyway.

``precision="int8"`` times every candidate, and the full model it is a ratio to, as it will ship
after ``slimkit export --int8``: onnxruntime's static quantization in the configuration
(format, activation/weight types) that runs fastest on this machine, ranked once on the full model
(:mod:`slimkit.int8_speed`), so the budget holds for the int8 file. int8 changes which layers are fast (quantize/dequantize pairs around residual adds, kernels
that only pay at some widths), so its latency curve is not the fp32 one scaled. Calibration here
uses seeded random images: the quantized graph, and so its speed, is the same whatever the
scales; the shipped file is calibrated on real data by ``slimkit export``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimkit.artifacts import calibrate_bn
from slimkit.budget import Budget, min_widths
from slimkit.errors import BudgetError
from slimkit.exporters.int8 import QuantizeSettings, quantize_for_timing
from slimkit.int8_speed import Int8Ranking, ordered_settings, rank_int8_configs
from slimkit.exporters.onnx import TIMING_EXPORTERS, export
from slimkit.generator import generate, thinned_failure
from slimkit.graph import ChannelGraph
from slimkit.latency import SERVED_BLOCKS, Candidate, LatencyError, check_mode, measure
from slimkit.registry import traced_part
from slimkit.plan import ChannelPlan

__all__ = ["LatencyMeter", "resolve_target", "search_latency", "LatencySearchResult", "PRECISIONS"]

PRECISIONS = ("fp32", "int8")


@dataclass
class Measurement:
    ratio: float
    ci: tuple[float, float]
    median_ms: float
    full_median_ms: float
    runs: int
    stats: dict[str, float]


@dataclass
class LatencySearchResult:
    widths: dict[str, int]
    measurement: Measurement
    target_ratio: float
    full_ms: float
    trace: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    measured_plans: int = 0
    selection: str = "within tolerance"  # or "largest under budget" when latency steps over the budget


class LatencyMeter:
    """Times plans (given as widths) as a ratio to the full model, on one backend; cached.

    ``template`` is the run's unpruned plan (arch, input size, expand, round_to, seed): every plan
    timed is that plan with other widths."""

    def __init__(self, template: ChannelPlan, graph: ChannelGraph, *, backend: str = "ort-cpu",
                 threads: int | None = None, batch: int = 1, runs: int = 40, warmup: int = 5,
                 device: str = "cpu", workdir: str | Path | None = None, precision: str = "fp32",
                 mode: str = "served"):
        if precision not in PRECISIONS:
            raise LatencyError(f"unknown --precision '{precision}': choose one of {', '.join(PRECISIONS)}")
        if precision == "int8" and backend != "ort-cpu":
            raise LatencyError(f"--precision int8 times onnxruntime's quantized files on the CPU, not {backend}: "
                               "use --backend ort-cpu")
        self.precision = precision
        self.mode = check_mode(mode)  # served: as a deployed model runs (a budget must hold there)
        self.template, self.graph = template, graph
        self.backend, self.threads, self.batch, self.runs, self.warmup = backend, threads, batch, runs, warmup
        self.device = device
        self._tmp = tempfile.TemporaryDirectory(prefix="slimkit-latency-") if workdir is None else None
        self.workdir = Path(workdir or self._tmp.name)
        self._cache: dict[tuple, Measurement] = {}
        self._files: dict[tuple, Candidate] = {}
        self.int8_ranking: Int8Ranking | None = None
        self.full = self._candidate({n: g.width for n, g in graph.groups.items()}, "full")
        self.device_text = ""

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def plan_for(self, widths: dict[str, int]) -> ChannelPlan:
        return self.template.with_widths(widths, flops=self.graph.count_flops(widths),
                                         params=self.graph.count_params(widths))

    def _candidate(self, widths: dict[str, int], name: str | None = None) -> Candidate:
        key = tuple(sorted(widths.items()))
        if key in self._files:
            return self._files[key]
        plan = self.plan_for(widths)
        # A detector is timed as `slimkit export` ships it by default and `slimkit bench` times it: its
        # dense core. Its NMS on random weights costs whatever boxes noise puts above the threshold.
        model = traced_part(generate(plan))
        # Realistic activations (no denormals, no overflow) at little cost: weights do not change
        # latency, but values that vanish into denormals would slow some CPUs down.
        try:
            calibrate_bn(model, tuple(plan.input_size), batches=2, batch_size=2)
        except Exception as exc:  # noqa: BLE001 - the model's own code fails at these widths: one line
            raise thinned_failure(plan.arch, exc, model) from exc
        label = name or f"cand{len(self._files)}"
        path = self.workdir / f"{label}.onnx"
        export(model.eval(), tuple(plan.input_size), path, batch=self.batch, exporter=TIMING_EXPORTERS,
               simplify=False, check_parity=False)
        if self.precision == "int8":
            if self.int8_ranking is None:  # the first file is the full model: rank int8 configurations on it
                self.int8_ranking = rank_int8_configs(path, (self.batch, *plan.input_size), threads=self.threads)
            settings = ordered_settings(self.int8_ranking, QuantizeSettings())[0]  # what `export --int8` tries first
            path = quantize_for_timing(path, tuple(plan.input_size), batch=self.batch, settings=settings)
        cand = Candidate(name=label, input_shape=(self.batch, *plan.input_size), onnx_path=path,
                         module=model, flops=plan.flops, params=plan.params)  # module: the torch backends time it
        self._files[key] = cand
        return cand

    @property
    def quantization(self) -> dict[str, Any] | None:
        """What the int8 candidates were quantized with (recorded in the plan), or None for fp32."""
        if self.precision != "int8":
            return None
        q = ordered_settings(self.int8_ranking, QuantizeSettings())[0] if self.int8_ranking else QuantizeSettings()
        return {"tool": "onnxruntime.quantization.quantize_static", "format": q.quant_format,
                "activation_type": q.activation_type, "weight_type": q.weight_type, "per_channel": q.per_channel,
                "reduce_range": q.reduce_range, **({"chosen": self.int8_ranking.summary()} if self.int8_ranking else {})}

    def measure(self, widths: dict[str, int], runs: int | None = None) -> Measurement:
        key = tuple(sorted(widths.items()))
        runs = runs or self.runs
        cached = self._cache.get(key)
        if cached is not None and cached.runs >= runs:
            return cached
        cand = self._candidate(widths)
        if cand is self.full:  # the full model against itself: exactly 1 by definition
            rep = measure([self.full], backend=self.backend, threads=self.threads, warmup=self.warmup, runs=runs,
                          device=self.device, mode=self.mode)
            m0 = rep.models[0]
            result = Measurement(1.0, (1.0, 1.0), m0["stats"]["median_ms"], m0["stats"]["median_ms"], runs,
                                 m0["stats"])
        else:
            rep = measure([self.full, cand], backend=self.backend, threads=self.threads, warmup=self.warmup,
                          runs=runs, device=self.device, mode=self.mode)
            m0, m1 = rep.models
            result = Measurement(m1["ratio"], tuple(m1["ratio_ci"]), m1["stats"]["median_ms"],
                                 m0["stats"]["median_ms"], runs, m1["stats"])
        self.device_text, self.threads = rep.device, rep.threads
        self._cache[key] = result
        return result

    def compare(self, widths: dict[str, int], reference: dict[str, int], runs: int | None = None,
                mode: str | None = None, blocks: int = SERVED_BLOCKS) -> Measurement:
        """Plan ``widths`` timed against plan ``reference`` directly (paired, one run; in ``mode``, default
        the meter's, served in ``blocks`` alternated blocks): finer than two ratios to the full model when the
        two differ by a few percent. Not cached."""
        a, b = self._candidate(widths), self._candidate(reference)
        rep = measure([b, a], backend=self.backend, threads=self.threads, warmup=self.warmup, runs=runs or self.runs,
                      device=self.device, mode=check_mode(mode or self.mode), blocks=blocks)
        m0, m1 = rep.models
        self.device_text, self.threads = rep.device, rep.threads
        return Measurement(m1["ratio"], tuple(m1["ratio_ci"]), m1["stats"]["median_ms"], m0["stats"]["median_ms"],
                           rep.runs, m1["stats"])

    @property
    def measured(self) -> int:
        return len(self._cache)


def resolve_target(meter: LatencyMeter, budget: Budget, tolerance: float,
                   say: Callable[[str], None] | None = None) -> tuple[float, float, Measurement]:
    """Measure the full and the smallest buildable model; the budget as a ratio to the full model.
    Fails fast (before any gate learning) when the budget is out of reach."""
    say = say or (lambda _m: None)
    smallest = meter.measure(min_widths(meter.graph, meter.template.round_to))
    full_ms = smallest.full_median_ms
    target = budget.fraction if budget.fraction is not None else budget.value * 1000.0 / full_ms
    lo_ms = smallest.ratio * full_ms
    say(f"latency on {meter.backend}{' (int8)' if meter.precision == 'int8' else ''} "
        f"({meter.device_text}, {meter.threads} thread(s), batch {meter.batch}, {meter.mode} timing): "
        f"full model {full_ms:.3f} ms, smallest buildable {lo_ms:.3f} ms ({smallest.ratio:.2f}x)")
    achievable = f"achievable here: {lo_ms:.3f}-{full_ms:.3f} ms ({smallest.ratio:.0%}-100% of the full model)"
    if target >= 1.0:
        raise BudgetError(f"latency budget {budget.text} is at or above the full model's {full_ms:.3f} ms: nothing to "
                          f"prune; {achievable}")
    if target < smallest.ratio * (1 - tolerance):
        raise BudgetError(f"latency budget {budget.text} ({target * full_ms:.3f} ms) is below the smallest model "
                          f"slimkit can build ({lo_ms:.3f} ms); {achievable}, or pass a smaller --round-to")
    return target, full_ms, smallest


def search_latency(meter: LatencyMeter, budget: Budget, plan_at: Callable[[float], dict[str, int]], *,
                   tolerance: float = 0.05, max_measurements: int = 10,
                   log: Callable[[str], None] | None = None) -> LatencySearchResult:
    """Find widths whose measured latency ratio to the full model meets ``budget`` within ``tolerance``.

    ``plan_at(f)`` maps a FLOPs fraction to widths (Algorithm 1 at that FLOPs budget).
    """
    say = log or (lambda _m: None)
    start = time.perf_counter()
    graph = meter.graph
    full_w = {n: g.width for n, g in graph.groups.items()}
    min_w = min_widths(graph, meter.template.round_to)
    target, full_ms, smallest = resolve_target(meter, budget, tolerance)  # cached: measured once
    full_flops = graph.count_flops()  # fractions are of the unexpanded full model, as FLOPs budgets are
    min_f = graph.count_flops(min_w) / full_flops
    # Bracket in FLOPs-fraction space: (f, measured ratio) at both ends.
    lo = (min_f, smallest.ratio, min_w)
    hi = (1.0, 1.0, full_w)
    trace: list[dict[str, Any]] = [{"flops_fraction": round(min_f, 4), "ratio": round(smallest.ratio, 4)}]
    best: tuple[float, dict[str, int], Measurement] | None = None
    under: tuple[int, dict[str, int], Measurement] | None = None  # the most MACs measured under the budget
    f = min(max(target, min_f), 1.0)  # first guess: latency shrinks like FLOPs
    side = 0
    for _ in range(max_measurements):
        widths = plan_at(f)
        m = meter.measure(widths)
        within = abs(m.ratio - target) <= tolerance * target
        if within and (m.ci[1] - m.ci[0]) > tolerance * target and m.runs < 4 * meter.runs:
            m = meter.measure(widths, runs=2 * m.runs)  # too noisy to decide: measure it longer
            within = abs(m.ratio - target) <= tolerance * target
        macs = graph.count_flops(widths)
        trace.append({"flops_fraction": round(f, 4), "flops": macs, "ratio": round(m.ratio, 4),
                      "ci": [round(m.ci[0], 4), round(m.ci[1], 4)], "runs": m.runs})
        say(f"  {macs / 1e6:8.1f}M MACs ({f:.3f} of full) -> {m.ratio:.3f}x full "
            f"({m.ratio * full_ms:.3f} ms; target {target:.3f}x)")
        score = abs(m.ratio - target)
        if m.ratio <= target and (under is None or macs > under[0]):
            under = (macs, widths, m)
        if best is None or (within and score < abs(best[2].ratio - target)) or (
                not abs(best[2].ratio - target) <= tolerance * target and score < abs(best[2].ratio - target)):
            best = (f, widths, m)
        if within and m.ci[0] >= target * (1 - tolerance) and m.ci[1] <= target * (1 + tolerance):
            break
        if m.ratio > target:
            hi = (f, m.ratio, widths)
            if side == 1:  # Illinois: keep regula falsi from stalling on one side
                lo = (lo[0], target + (lo[1] - target) / 2, lo[2])
            side = 1
        else:
            lo = (f, m.ratio, widths)
            if side == -1:
                hi = (hi[0], target + (hi[1] - target) / 2, hi[2])
            side = -1
        if hi[0] - lo[0] < 1e-4:
            break
        f_new = lo[0] + (target - lo[1]) * (hi[0] - lo[0]) / max(hi[1] - lo[1], 1e-9)
        f = min(max(f_new, lo[0] + 0.02 * (hi[0] - lo[0])), hi[0] - 0.02 * (hi[0] - lo[0]))
    assert best is not None
    _, widths, m = best
    selection = "within tolerance"
    if abs(m.ratio - target) > tolerance * target:
        if under is None:
            raise BudgetError(f"no plan within {tolerance:.0%} of latency budget {budget.text} "
                              f"({target * full_ms:.3f} ms) after {meter.measured} measurements: the closest is "
                              f"{m.ratio * full_ms:.3f} ms ({m.ratio:.3f}x); pass a larger --tolerance or a smaller "
                              "--round-to")
        # Latency is a staircase in channel counts (kernels switch at some widths): the budget can
        # fall in a step no plan lands in. A budget is a ceiling, so the largest plan measured under
        # it meets it; say so rather than fail.
        above = min((t for t in trace[1:] if t["ratio"] > target), key=lambda t: t["ratio"], default=None)
        step = f", the next plan up measured {above['ratio']:.3f}x" if above else ""
        say(f"warning: no plan within {tolerance:.0%} of {target:.3f}x: latency steps over the budget here{step}; "
            f"using the largest plan under it, {under[2].ratio:.3f}x ({under[0] / 1e6:.1f}M MACs). Another "
            "--round-to moves the steps.")
        _, widths, m = under
        selection = "largest under budget"
    return LatencySearchResult(widths=widths, measurement=m, target_ratio=target, full_ms=full_ms, trace=trace,
                               seconds=time.perf_counter() - start, measured_plans=meter.measured,
                               selection=selection)
