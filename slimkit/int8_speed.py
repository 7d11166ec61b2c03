"""Which int8 configuration onnxruntime runs fastest on this machine, measured on the model itself.

onnxruntime's CPU integer kernels differ from CPU to CPU. x86 with VNNI (AVX512-VNNI, AVX-VNNI)
multiplies uint8 activations by int8 weights in one instruction; AVX2 without VNNI emulates that with
a chain of 16-bit multiplies and gains little over fp32 FMAs; QOperator files with int8 activations
fall back to slow reference kernels on x64; uint8 weights take another path again. Without VNNI
the uint8 x int8 multiply-add also saturates at 16 bits, which costs accuracy (7-bit weights,
``reduce_range``, avoid it): the export's accuracy check then refuses that configuration and the next
fastest is tried. Which format
(QDQ or QOperator) and which activation/weight types are fastest is therefore not something to
hard-code from one CPU: :func:`rank_int8_configs` quantizes the fp32 file in each candidate
configuration (seeded random calibration: the graph, and so its speed, does not depend on the scales),
times them side by side with :func:`slimkit.latency.measure`, and orders them. The default
configuration stays first unless another is *confidently* faster (its whole confidence interval
at least 3% below the default's latency), so noise on a shared machine does not flip the choice.

The ranking is cached per machine and model structure (CPU model and flags, onnxruntime version,
threads, the graph's operator sequence and input shape) in ``~/.cache/slimkit/int8_speed.json`` (``SLIMKIT_CACHE_DIR`` moves it):
the second export of the same architecture on the same machine does not time again.
``slimkit export --int8`` then quantizes the fastest configuration with real calibration data and
checks its accuracy, falling back to the next one when the check fails
(:func:`slimkit.exporters.int8.export_int8`); ``slimkit prune --precision int8`` times its
candidates in the configuration ranked first on the full model.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import onnxruntime as ort

from slimkit.errors import SlimkitError
from slimkit.exporters import ExportError
from slimkit.exporters.int8 import QUANT_FORMATS, QuantizeSettings, quantize_for_timing
from slimkit.files import cache_dir, read_cache, write_cache
from slimkit.latency import Candidate, cpu_description, measure, model_fingerprint, physical_cores, timing_enabled

__all__ = ["CANDIDATES", "Int8Ranking", "rank_int8_configs", "candidates_matching", "ordered_settings",
           "machine_key", "CACHE_FILE", "RANKING_FORMAT"]

CACHE_FILE: Path | None = None  # None: slimkit.files.cache_dir() / "int8_speed.json" (SLIMKIT_CACHE_DIR moves it)
RANKING_FORMAT = "slimkit.int8_speed/1"
# A configuration displaces the default only when its whole confidence interval is this much faster:
# on a loaded machine bootstrap intervals of a few dozen rounds are optimistic.
MIN_GAIN = 0.03
TYPES = ("uint8", "int8")


def _candidates() -> tuple[QuantizeSettings, ...]:
    """The default first, then every other format x (activation, weight) pairing onnxruntime offers."""
    default = QuantizeSettings()
    out = [default]
    for fmt in QUANT_FORMATS:
        for act, weight in (("uint8", "int8"), ("int8", "int8"), ("uint8", "uint8")):
            s = replace(default, quant_format=fmt, activation_type=act, weight_type=weight)
            if s != default:
                out.append(s)
    out.append(replace(default, reduce_range=True))  # u8 x s8 without 16-bit saturation on CPUs without VNNI
    return tuple(out)


CANDIDATES = _candidates()


def candidates_matching(quant_format: str = "auto", activations: str = "auto", weights: str = "auto",
                        per_channel: bool = True) -> list[QuantizeSettings]:
    """The candidate configurations a user's choices leave open (``auto`` = any), default first."""
    for what, value, allowed in (("--int8-format", quant_format, QUANT_FORMATS),
                                 ("--int8-activations", activations, TYPES), ("--int8-weights", weights, TYPES)):
        if value != "auto" and value not in allowed:
            raise SlimkitError(f"unknown {what} '{value}': choose auto or one of {', '.join(allowed)}")
    out = []
    for s in CANDIDATES:
        s = replace(s, per_channel=per_channel)
        if quant_format not in ("auto", s.quant_format) or activations not in ("auto", s.activation_type) or \
                weights not in ("auto", s.weight_type):
            continue
        if s not in out:
            out.append(s)
    if not out:  # a pairing outside the candidate list (e.g. int8 activations with uint8 weights): as asked
        out.append(replace(QuantizeSettings(), per_channel=per_channel,
                           **{k: v for k, v in (("quant_format", quant_format), ("activation_type", activations),
                                                ("weight_type", weights)) if v != "auto"}))
    return out


def machine_key(threads: int) -> dict[str, Any]:
    """What makes a timing valid on another day: this CPU (model and instruction-set flags), onnxruntime, threads."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu_description(), "flags_sha": hashlib.sha256(flags.encode()).hexdigest()[:12],
            "vnni": sorted({f for f in flags.split() if "vnni" in f or f.startswith("amx")}),
            "onnxruntime": ort.__version__, "threads": threads}


@dataclass
class Int8Ranking:
    """int8 configurations in the order to try them (fastest first), with what was measured."""

    configurations: list[dict[str, Any]]  # label, settings fields, median_ms, ratio (to the default), ratio_ci
    fp32_ratio: float | None  # the fp32 file's latency / the default int8 configuration's
    machine: dict[str, Any]
    model: str  # fingerprint of the fp32 graph's structure
    source: str = "measured"  # or "cached"
    runs: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # configurations onnxruntime could not quantize
    reference: str = ""  # the configuration every ratio is to (the first candidate: the default)
    format: str = RANKING_FORMAT

    @property
    def best(self) -> dict[str, Any]:
        return self.configurations[0]

    @property
    def int8_over_fp32(self) -> float | None:
        """Latency of the configuration ranked first, as a fraction of the fp32 file's."""
        if not self.fp32_ratio:
            return None
        return self.best["ratio"] / self.fp32_ratio

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        how = {"cached": "cached timing", "untimed": "default order, untimed: SLIMKIT_NO_TIMING is set"}.get(
            self.source, f"timed {len(self.configurations)} configurations")
        vs = f", {self.int8_over_fp32:.2f}x the fp32 file's latency" if self.int8_over_fp32 else ""
        return f"{self.best['label']} ({how} on {self.machine['cpu']}{vs})"


def ordered_settings(ranking: Int8Ranking, base: QuantizeSettings) -> list[QuantizeSettings]:
    """``base`` (calibration settings) in each ranked configuration, in ranking order."""
    return [replace(base, quant_format=c["quant_format"], activation_type=c["activation_type"],
                    weight_type=c["weight_type"], per_channel=c["per_channel"],
                    reduce_range=c.get("reduce_range", False)) for c in ranking.configurations]


def _order(timed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The default (first) stays first unless others are confidently faster (the whole interval at
    least :data:`MIN_GAIN` below it); then by median ratio."""
    default, others = timed[0], timed[1:]
    faster = sorted((c for c in others if c["ratio_ci"][1] < 1.0 - MIN_GAIN), key=lambda c: c["ratio"])
    rest = sorted((c for c in others if c["ratio_ci"][1] >= 1.0 - MIN_GAIN), key=lambda c: c["ratio"])
    return faster + [default] + rest


def _read_cache(path: Path | None) -> dict[str, Any]:
    return read_cache(path, RANKING_FORMAT) or {}  # absent, damaged or not ours: a re-measurement


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value > 0


def _cached_ranking(entry: Any, candidates: Sequence[QuantizeSettings]) -> Int8Ranking | None:
    """A cache entry as :func:`rank_int8_configs` wrote it for ``candidates``, or None (measure again):
    every candidate ranked once, with positive finite ratios. A damaged or hand-edited entry (no
    configurations, an unknown format, a ratio of 0 or a string) is never the order int8 files are made in."""
    if not isinstance(entry, dict):
        return None
    try:
        ranking = Int8Ranking(**entry)
    except TypeError:  # written by another slimkit version
        return None
    confs = ranking.configurations
    if not isinstance(confs, list) or not all(isinstance(c, dict) for c in confs):
        return None
    asked = sorted(json.dumps({"label": s.label, **_fields(s)}, sort_keys=True) for s in candidates)
    ranked = sorted(json.dumps({k: c.get(k) for k in ("label", *_fields(candidates[0]))}, sort_keys=True)
                    for c in confs)
    if ranked != asked or not isinstance(ranking.machine, dict) or not isinstance(ranking.machine.get("cpu"), str):
        return None
    if not all(_number(c.get("ratio")) and isinstance(c.get("ratio_ci"), list) and len(c["ratio_ci"]) == 2
               and all(_number(x) for x in c["ratio_ci"]) for c in confs):
        return None
    if ranking.fp32_ratio is not None and not _number(ranking.fp32_ratio):
        return None
    ranking.source = "cached"
    return ranking


def _cache_key(machine: dict[str, Any], model: str, candidates: Sequence[QuantizeSettings]) -> str:
    text = json.dumps([machine, model, [s.label for s in candidates]], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def rank_int8_configs(fp32_path: str | Path, input_shape: tuple[int, ...], *,
                      candidates: Sequence[QuantizeSettings] | None = None, threads: int | None = None,
                      runs: int = 30, warmup: int = 3, cache: Path | None | str = "default", refresh: bool = False,
                      say: Callable[[str], None] | None = None) -> Int8Ranking:
    """Time ``candidates`` (default :data:`CANDIDATES`) quantized from ``fp32_path`` on onnxruntime CPU,
    interleaved, and order them for trying (see the module docstring). ``input_shape`` includes the
    batch. Cached in ``cache`` (default :data:`CACHE_FILE`; None: never read or written); ``refresh``
    re-measures."""
    cache = (CACHE_FILE or cache_dir() / "int8_speed.json") if cache == "default" else cache
    candidates = list(candidates or CANDIDATES)
    threads = threads or physical_cores()
    fp32_path = Path(fp32_path)
    if not fp32_path.is_file():
        raise ExportError(f"fp32 model not found: {fp32_path}; export it first with `slimkit export SOURCE --onnx`")
    machine = machine_key(threads)
    model = model_fingerprint(Candidate(name="fp32", input_shape=tuple(input_shape), onnx_path=fp32_path))
    key = _cache_key(machine, model, candidates)
    store = _read_cache(cache)
    rankings = store.get("rankings")
    cached = _cached_ranking(rankings.get(key), candidates) if isinstance(rankings, dict) and not refresh else None
    if cached is not None:
        return cached
    if len(candidates) == 1 or not timing_enabled():  # nothing to choose, or timings here mean nothing
        untimed = [{"label": c.label, **_fields(c), "median_ms": None, "ratio": 1.0, "ratio_ci": [1.0, 1.0]}
                   for c in candidates]
        return Int8Ranking(untimed, None, machine, model, source="asked" if len(candidates) == 1 else "untimed",
                           runs=0, reference=candidates[0].label)
    say = say or (lambda _m: None)
    say(f"int8: timing {len(candidates)} onnxruntime configurations on this CPU (once per machine and model "
        f"structure; cached in {cache})" if cache else f"int8: timing {len(candidates)} onnxruntime configurations")
    t0 = time.perf_counter()
    batch = int(input_shape[0])
    timed, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="slimkit-int8-speed-") as tmp:
        cands, kept = [], []
        for i, s in enumerate(candidates):
            try:
                path = quantize_for_timing(fp32_path, tuple(input_shape[1:]), Path(tmp) / f"c{i}.int8.onnx",
                                           batch=batch, settings=s)
            except ExportError as exc:
                skipped.append(f"{s.label}: {str(exc).splitlines()[0][:160]}")
                continue
            cands.append(Candidate(name=s.label, input_shape=tuple(input_shape), onnx_path=path, spec={"kind": "onnx"}))
            kept.append(s)
        if not cands:
            raise ExportError(f"onnxruntime could quantize {fp32_path.name} in none of the int8 configurations "
                              f"({'; '.join(skipped)}); ship the fp32 file")
        cands.append(Candidate(name="fp32", input_shape=tuple(input_shape), onnx_path=fp32_path, spec={"kind": "onnx"}))
        report = measure(cands, backend="ort-cpu", threads=threads, warmup=warmup, runs=runs)
    for s, m in zip(kept, report.models):
        timed.append({"label": s.label, **_fields(s), "median_ms": round(m["stats"]["median_ms"], 4),
                      "ratio": round(m["ratio"], 4), "ratio_ci": [round(x, 4) for x in m["ratio_ci"]]})
    fp32 = report.models[-1]
    ranking = Int8Ranking(_order(timed), round(fp32["ratio"], 4), machine, model, source="measured", runs=runs,
                          seconds=round(time.perf_counter() - t0, 1), skipped=skipped, reference=timed[0]["label"])
    if cache is not None:
        store = _read_cache(cache) or {"format": RANKING_FORMAT, "rankings": {}}
        store.setdefault("rankings", {})[key] = ranking.to_dict()
        write_cache(cache, store, say)
    return ranking


def _fields(s: QuantizeSettings) -> dict[str, Any]:
    return {"quant_format": s.quant_format, "activation_type": s.activation_type, "weight_type": s.weight_type,
            "per_channel": s.per_channel, "reduce_range": s.reduce_range}
