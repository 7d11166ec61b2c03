"""``--round-to auto``: the channel multiple the target runtime runs fastest, measured on the model itself.

Runtimes pad channel counts to their kernels' block size: onnxruntime's blocked (NCHWc) CPU
convolutions work in blocks of 8 channels on AVX2 and 16 on AVX-512, GPU tensor cores want
multiples of 8 (fp16/bf16) or 16 (int8). A plan whose widths fall between blocks pays for the
padding: on one AVX-512 Xeon a uniform 50% MobileNet-V1 ran at 1.16x the *full* model with
ragged widths, 0.62x at multiples of 8 and 0.55x at multiples of 16. The best multiple depends on
the CPU, the runtime, the precision and the model, so it is measured, never assumed:

* the uniform plan at the budget is built at each candidate multiple (4, 8, 16, 32, 64), exported
  and timed against the full model on the target backend (:class:`slimkit.latency_search.LatencyMeter`,
  the latency search's meter), giving each multiple's *latency per MAC*: its latency ratio to the
  full model divided by its MAC ratio;
* the smallest multiple within :data:`TOLERANCE` of the best wins (a smaller multiple gives the
  search finer widths to meet the budget with; within noise, it is no slower);
* the choice is cached per machine (CPU model and flags), runtime version, backend, precision,
  timing mode, threads, batch, model and budget, so the sweep runs once (``SLIMKIT_CACHE_DIR``).

Where nothing can be timed (a GPU backend on a machine without that GPU, or
``SLIMKIT_NO_TIMING=1``) the multiple comes from :data:`DOCUMENTED_MULTIPLES`, and the plan says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch

from slimkit.budget import Budget, search_uniform
from slimkit.errors import BudgetError, SlimkitError
from slimkit.files import atomic_write_text, cache_dir
from slimkit.graph import ChannelGraph
from slimkit.latency import cpu_description
from slimkit.latency_search import LatencyMeter
from slimkit.plan import ChannelPlan

__all__ = ["AUTO", "CANDIDATES", "TOLERANCE", "RoundingChoice", "choose_multiple", "sweep_multiples",
           "auto_round_to", "documented_multiple", "parse_round_to", "cpu_flags", "is_ragged", "timing_enabled"]

AUTO = "auto"
CANDIDATES = (4, 8, 16, 32, 64)
TOLERANCE = 0.03  # latency per MAC within 3% of the best counts as "as fast" (timing noise is ~1-2%)
CACHE_FILE = "round_to.json"
CACHE_FORMAT = "slimkit.round_to/1"


def timing_enabled() -> bool:
    """False under ``SLIMKIT_NO_TIMING=1``: for machines whose timings mean nothing (shared CI runners),
    where plans must not depend on a measurement."""
    return os.environ.get("SLIMKIT_NO_TIMING", "") in ("", "0")


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
    cost_per_mac: dict[int, float] = field(default_factory=dict)  # latency ratio / MAC ratio per multiple
    machine: str = ""

    def to_json(self) -> dict[str, Any]:
        out = {"round_to": self.multiple, "how": self.how, "why": self.why, "backend": self.backend,
               "precision": self.precision, "machine": self.machine}
        if self.mode:
            out.update({"mode": self.mode, "threads": self.threads})
        if self.cost_per_mac:
            out["latency_per_mac"] = {str(m): round(c, 4) for m, c in sorted(self.cost_per_mac.items())}
        return out


def choose_multiple(costs: dict[int, float], tolerance: float = TOLERANCE) -> int:
    """The smallest multiple whose latency per MAC is within ``tolerance`` of the best one."""
    if not costs:
        raise SlimkitError("no channel multiple could be measured")
    best = min(costs.values())
    return min(m for m, c in costs.items() if c <= best * (1 + tolerance))


def sweep_multiples(graph: ChannelGraph, budget: Budget, time_ratio: Callable[[dict[str, int]], float], *,
                    expand: float = 1.0, candidates: tuple[int, ...] = CANDIDATES,
                    say: Callable[[str], None] | None = None) -> dict[int, float]:
    """Latency per MAC of the uniform plan at ``budget`` for each multiple. ``time_ratio(widths)`` is the
    plan's measured latency as a ratio to the full model's. Multiples that cannot meet the budget
    (too coarse for the model's groups) are left out."""
    full_flops = graph.count_flops()
    costs: dict[int, float] = {}
    for m in candidates:
        try:
            widths = search_uniform(graph, budget, round_to=m, expand=expand, tolerance=0.05).widths
        except BudgetError:
            continue
        mac_ratio = graph.count_flops(widths) / full_flops
        ratio = time_ratio(widths)
        costs[m] = ratio / mac_ratio
        if say:
            say(f"  round-to {m:>2}: {mac_ratio:.3f} of the MACs -> {ratio:.3f}x the latency "
                f"({costs[m]:.3f} per MAC share)")
    return costs


def documented_multiple(backend: str, precision: str = "fp32", device: str = "cpu") -> tuple[int, str]:
    """The multiple to use when nothing can be timed: per backend, or this CPU's SIMD block."""
    key = (backend, "cuda" if backend.startswith("torch") and device.startswith("cuda") else precision)
    if key in DOCUMENTED_MULTIPLES:
        return DOCUMENTED_MULTIPLES[key]
    return _simd_block()


def _cache_key(template: ChannelPlan, fraction: float, backend: str, precision: str, mode: str,
               threads: int | None, batch: int) -> str:
    key = [cpu_description(), sorted(cpu_flags()), ort.__version__, backend, precision, mode, threads, batch,
           template.arch, template.arch_kwargs, list(template.input_size), template.expand, round(fraction, 2)]
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        if data.get("format") == CACHE_FORMAT and isinstance(data.get("entries"), dict):
            return data
    except (OSError, ValueError, AttributeError):
        pass  # absent or damaged: measure again and rewrite it
    return {"format": CACHE_FORMAT, "entries": {}}


def auto_round_to(graph: ChannelGraph, template: ChannelPlan, budget: Budget, *, backend: str = "ort-cpu",
                  precision: str = "fp32", mode: str = "served", threads: int | None = None, batch: int = 1,
                  device: str = "cpu", say: Callable[[str], None] | None = None) -> RoundingChoice:
    """Measure (or recall) the fastest channel multiple for ``template``'s model on ``backend``.

    The sweep uses the uniform plan at the budget's MAC share (for a latency budget given as a
    share, that share of the MACs; for one in milliseconds, half the MACs)."""
    say = say or (lambda _m: None)
    machine = cpu_description()
    timing_possible = timing_enabled()
    if backend == "ort-cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        timing_possible = False
    if backend.startswith("torch") and device.startswith("cuda") and not torch.cuda.is_available():
        timing_possible = False
    if not timing_possible:
        m, why = documented_multiple(backend, precision, device)
        say(f"round-to auto: {m} ({why}; not measured here)")
        return RoundingChoice(m, "table", why, backend, precision, machine=machine)
    full_flops = graph.count_flops()
    if budget.kind in ("flops", "params"):
        sweep_budget = budget.resolve(full_flops)
        fraction = sweep_budget.value / (full_flops if budget.kind == "flops" else graph.count_params())
    else:
        fraction = budget.fraction if budget.fraction is not None else 0.5
        sweep_budget = Budget("flops", f"{fraction:.0%}", round(fraction * full_flops))
    path = cache_dir() / CACHE_FILE
    key = _cache_key(template, fraction, backend, precision, mode, threads, batch)
    cache = _read_cache(path)
    hit = cache["entries"].get(key)
    if isinstance(hit, dict) and isinstance(hit.get("round_to"), int):
        costs = {int(k): float(v) for k, v in hit.get("latency_per_mac", {}).items()}
        choice = RoundingChoice(hit["round_to"], "cached", hit.get("why", ""), backend, precision, mode,
                                hit.get("threads"), costs, machine)
        say(f"round-to auto: {choice.multiple} (measured earlier on this machine; cache {path})")
        return choice
    say(f"round-to auto: timing the uniform plan at {fraction:.0%} at each channel multiple on {backend} "
        f"({machine}, {mode} timing); cached for next time")
    meter = LatencyMeter(template, graph, backend=backend, threads=threads, batch=batch, device=device,
                         precision=precision, mode=mode)
    try:
        costs = sweep_multiples(graph, sweep_budget, lambda w: meter.measure(w).ratio, expand=template.expand,
                                say=say)
        threads = meter.threads
    finally:
        meter.close()
    best = choose_multiple(costs)
    fastest = min(costs, key=costs.get)
    why = (f"fastest latency per MAC on {backend} here" if best == fastest else
           f"within {TOLERANCE:.0%} of the fastest multiple ({fastest}) and finer")
    choice = RoundingChoice(best, "measured", why, backend, precision, mode, threads, costs, machine)
    cache["entries"][key] = choice.to_json()
    try:
        atomic_write_text(path, json.dumps(cache, indent=1) + "\n")
    except OSError as exc:  # a read-only home must not fail a prune: the next run measures again
        say(f"note: could not cache the round-to choice in {path} ({exc.strerror})")
    say(f"round-to auto: {best} ({why})")
    return choice
