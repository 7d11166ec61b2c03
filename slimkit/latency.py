"""Latency, measured side by side: every model in one run, interleaved, on the target backend.

Machines drift (turbo, thermal, neighbours); timing model A for a minute and then model B for a
minute mixes that drift into the comparison. Here each *round* runs every model once, in a
rotating order, so noise hits all of them equally, and comparisons use the per-round ratio
``t_model / t_reference``: drift common to both cancels. The ratio's median gets a bootstrap
confidence interval, which is what the CI gate (:func:`check_regression`) decides on, so
identical re-runs do not fail while a real slow-down does.

Backends: ``ort-cpu`` (default; onnxruntime is 3.7-4.9x faster than eager PyTorch at batch 1 on
these CPUs, so that is where latency matters), ``ort-cuda``, ``torch`` (eager) and
``torch-compile`` on ``--device``, and ``openvino-cpu`` (the optional OpenVINO extra, always at an
explicit f32 inference precision: its CPU plugin would otherwise pick bf16 on CPUs that have it).

Two timing modes (:data:`TIMING_MODES`), recorded in every report, plan and baseline:

* ``interleaved``: every model once per round, rotating, with onnxruntime's pool threads told not
  to spin, so an idle session cannot steal the cores of the one being timed. The soundest way to
  *compare* models on a noisy machine.
* ``served``: how a deployed model runs: onnxruntime's defaults (pool threads spin between runs),
  each model timed alone in blocks, the blocks alternated over several rounds so drift still
  cancels; every block opens a fresh onnxruntime session, as every deployment starts one (a session
  keeps the speed it started with: an unlucky one must not decide a whole run). Spinning makes a model measurably faster (the full MobileNet-V1 3.99 vs 4.50 ms on one
  2-core Xeon), so a latency *budget* must be measured this way to hold where the model ships.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from slimkit import validate as limits
from slimkit.errors import SlimkitError
from slimkit.exporters.openvino import compile_onnx, openvino_missing, openvino_version  # imports OpenVINO itself only when used
from slimkit.files import (MARKDOWN_MARK, Output, atomic_write_text, has_mark, is_json_with, json_kind, plot_of,
                           same_path)
from slimkit.generator import generate
from slimkit.registry import traced_part
from slimkit.plots import LATENCY, plot_latency
from slimkit.validate import check_callable, check_number, check_type, show

__all__ = ["timing_enabled", "BACKENDS", "backend_missing", "check_backend", "TIMING_MODES", "DEFAULT_TIMING_MODE", "LatencyError", "Candidate", "LatencyReport",
           "physical_cores", "measure", "paired_ratio", "paired_difference", "postprocessing_text", "check_regression", "GateResult", "REPORT_FORMAT",
           "model_fingerprint", "report_outputs", "baseline_output",
           "read_baseline", "write_baseline"]

BACKENDS = ("ort-cpu", "ort-cuda", "torch", "torch-compile", "openvino-cpu")
REPORT_FORMAT = "slimkit.latency/1"
TIMING_MODES = ("served", "interleaved")
DEFAULT_TIMING_MODE = "interleaved"  # for side-by-side comparisons; latency budgets default to "served"
SERVED_BLOCKS = 3  # rounds of alternated blocks in served mode
CONFIDENCE = 0.95


class LatencyError(SlimkitError):
    """A model or baseline that cannot be measured or compared."""


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads share a core's units; ORT's own advice
    is one intra-op thread per physical core)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in allowed:
        f = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        cores.add(f.read_text().strip() if f.exists() else str(cpu))
    return max(1, len(cores))


def cpu_description() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({physical_cores()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({physical_cores()} cores)"


@dataclass
class Candidate:
    """One model to time: an ONNX file (ORT backends) and/or an nn.Module (PyTorch backends)."""

    name: str
    input_shape: tuple[int, ...]  # with batch
    onnx_path: Path | None = None
    module: Any = None
    spec: dict[str, Any] = field(default_factory=dict)  # how to rebuild it (for baselines)
    flops: int | None = None
    params: int | None = None
    plan: dict[str, Any] | None = None  # the slimkit plan it was built from, when known
    # the input to time on (ONNX backends); default seeded noise. A whole detector gets a real image:
    # its NMS costs what the boxes above its score threshold cost, which noise does not give.
    feed: np.ndarray | None = None


_NO_TIMING_OFF, _NO_TIMING_ON = ("", "0", "false", "no", "off"), ("1", "true", "yes", "on")


def timing_enabled() -> bool:
    """False under ``SLIMKIT_NO_TIMING=1``: for machines whose timings mean nothing (shared CI runners),
    where no plan or export choice may depend on a measurement (rounding, int8 configuration). Any other
    value is refused: ``SLIMKIT_NO_TIMING=false`` turned timing off."""
    text = os.environ.get("SLIMKIT_NO_TIMING", "").strip().lower()
    if text not in _NO_TIMING_OFF + _NO_TIMING_ON:
        raise SlimkitError(f"SLIMKIT_NO_TIMING={show(os.environ['SLIMKIT_NO_TIMING'], 40)} is not 1 or 0: set it to 1 "
                           "to turn timing off, or unset it")
    return text in _NO_TIMING_OFF


def _ort_provider(backend: str) -> str:
    return "CUDAExecutionProvider" if backend == "ort-cuda" else "CPUExecutionProvider"


def backend_missing(backend: str) -> str | None:
    """Why this install cannot time on ``backend`` (what to install), or None when it can. Asked before any
    work that ends in timing (a search, an export, a training), so a missing runtime costs nothing."""
    if backend.startswith("ort"):
        provider = _ort_provider(backend)
        if provider not in ort.get_available_providers():
            return (f"this onnxruntime install lacks its {provider}: install onnxruntime-gpu, or use "
                    "--backend ort-cpu")
    if backend == "openvino-cpu":
        return openvino_missing()
    return None


def check_backend(backend: str, option: str = "--backend") -> str:
    """``backend`` when it is known and this install can time on it; a one-line LatencyError otherwise."""
    if backend not in BACKENDS:
        raise LatencyError(f"unknown {option} '{backend}': choose one of {', '.join(BACKENDS)}")
    problem = backend_missing(backend)
    if problem is not None:
        raise LatencyError(f"{option} {backend}: {problem}")
    return backend


def _ort_runner(c: Candidate, backend: str, threads: int, mode: str = DEFAULT_TIMING_MODE) -> Callable[[], None]:
    if c.onnx_path is None:
        raise LatencyError(f"{c.name}: backend {backend} needs an ONNX file")
    provider = _ort_provider(backend)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if mode == "interleaved":  # idle pool threads that spin would steal cores from the model timed next
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(c.onnx_path), opts, providers=[provider])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise LatencyError(f"{c.onnx_path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:160]})") from exc
    inp = session.get_inputs()[0]
    feed = {inp.name: _input_of(c)}
    return lambda: session.run(None, feed)


def _input_of(c: Candidate) -> np.ndarray:
    return c.feed if c.feed is not None else np.random.default_rng(0).standard_normal(c.input_shape).astype(np.float32)


def _openvino_runner(c: Candidate, threads: int) -> Callable[[], None]:
    """OpenVINO's CPU plugin at f32; the runner carries the precision OpenVINO reports (``.precision``)."""
    if c.onnx_path is None:
        raise LatencyError(f"{c.name}: backend openvino-cpu needs an ONNX file")
    compiled, precision = compile_onnx(c.onnx_path, threads=threads, precision="f32")
    request = compiled.create_infer_request()
    x = _input_of(c)

    def run() -> None:
        request.infer({0: x})

    run.precision = precision  # type: ignore[attr-defined]
    return run


def _torch_runner(c: Candidate, backend: str, device: str) -> Callable[[], None]:
    if c.module is None and c.plan:  # built only for PyTorch backends; weights do not change latency
        c.module = traced_part(generate(c.plan))  # a detector: its dense core, as the ONNX backends time it
    if c.module is None:
        raise LatencyError(f"{c.name}: backend {backend} needs the PyTorch model (give a plan, checkpoint or "
                           "architecture, or an ONNX file exported by slimkit)")
    dev = torch.device(device)
    model = c.module.to(dev).eval()
    if backend == "torch-compile":
        model = torch.compile(model)
    x = torch.randn(*c.input_shape, generator=torch.Generator().manual_seed(0)).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def run() -> None:
        with torch.inference_mode():
            model(x)
        sync()

    return run


def make_runner(c: Candidate, backend: str, threads: int, device: str = "cpu",
                mode: str = DEFAULT_TIMING_MODE) -> Callable[[], None]:
    check_backend(backend, "backend")
    if backend.startswith("ort"):
        return _ort_runner(c, backend, threads, mode)
    if backend == "openvino-cpu":
        return _openvino_runner(c, threads)
    torch.set_num_threads(threads)
    return _torch_runner(c, backend, device)


def summarize(times_ms: np.ndarray, batch: int) -> dict[str, float]:
    med = float(np.median(times_ms))
    return {"min_ms": float(times_ms.min()), "median_ms": med,
            "p90_ms": float(np.percentile(times_ms, 90)), "p99_ms": float(np.percentile(times_ms, 99)),
            "mean_ms": float(times_ms.mean()), "std_ms": float(times_ms.std()),
            "throughput_per_s": batch * 1000.0 / med if med > 0 else math.inf}


def paired_difference(t_model: np.ndarray, t_ref: np.ndarray, *, confidence: float = CONFIDENCE,
                      n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Median of the per-round differences t_model - t_ref (ms) and its bootstrap confidence interval:
    what the part one model runs on top of the other costs, drift common to both cancelled."""
    d = np.asarray(t_model, dtype=float) - np.asarray(t_ref, dtype=float)
    rng = np.random.default_rng(seed)
    boots = np.median(d[rng.integers(0, len(d), size=(n_boot, len(d)))], axis=1)
    alpha = (1 - confidence) / 2
    return float(np.median(d)), float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))


def paired_ratio(t_model: np.ndarray, t_ref: np.ndarray, *, confidence: float = CONFIDENCE,
                 n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Median of the per-round ratios t_model/t_ref and its bootstrap confidence interval."""
    r = np.asarray(t_model, dtype=float) / np.asarray(t_ref, dtype=float)
    rng = np.random.default_rng(seed)
    boots = np.median(r[rng.integers(0, len(r), size=(n_boot, len(r)))], axis=1)
    alpha = (1 - confidence) / 2
    return float(np.median(r)), float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))


@dataclass
class LatencyReport:
    backend: str
    device: str
    threads: int
    batch: int
    warmup: int
    runs: int
    models: list[dict[str, Any]]  # name, input_shape, stats, ratio to the first, spec
    times_ms: dict[str, list[float]] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    format: str = REPORT_FORMAT
    mode: str = DEFAULT_TIMING_MODE
    # a whole detector timed beside its dense core: what its postprocessing costs (see split_postprocessing)
    postprocessing: dict[str, Any] | None = None

    def model(self, name: str) -> dict[str, Any]:
        for m in self.models:
            if m["name"] == name:
                return m
        raise KeyError(name)

    def to_dict(self, with_times: bool = True) -> dict[str, Any]:
        d = {"format": self.format, "backend": self.backend, "device": self.device, "threads": self.threads,
             "batch": self.batch, "warmup": self.warmup, "runs": self.runs, "mode": self.mode,
             "interleaved": self.mode == "interleaved",
             "environment": self.environment, "models": self.models}
        if self.postprocessing is not None:
            d["postprocessing"] = self.postprocessing
        if with_times:
            d["times_ms"] = {k: [round(t, 4) for t in v] for k, v in self.times_ms.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyReport:
        return cls(backend=d["backend"], device=d["device"], threads=d["threads"], batch=d["batch"],
                   warmup=d["warmup"], runs=d["runs"], models=d["models"], times_ms=d.get("times_ms", {}),
                   environment=d.get("environment", {}), mode=report_mode(d), postprocessing=d.get("postprocessing"))

    def markdown(self) -> str:
        ref = self.models[0]["name"]
        lines = [f"# Latency: {self.backend}, batch {self.batch}, {self.threads} thread(s)", "",
                 f"{self.device}; {describe_mode(self.mode, self.runs, self.warmup, backend=self.backend)}. "
                 f"Ratio = median of per-round ratios to **{ref}** ({int(CONFIDENCE * 100)}% CI)."
                 + (f" OpenVINO {self.environment.get('openvino', '')}, inference precision "
                    f"{', '.join(sorted({m.get('precision', '?') for m in self.models}))}."
                    if self.backend == "openvino-cpu" else ""), "",
                 "| model | input | MMACs | min ms | median ms | p90 ms | p99 ms | per s | ratio | CI |",
                 "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for m in self.models:
            s = m["stats"]
            fl = f"{m['flops'] / 1e6:.1f}" if m.get("flops") else "–"
            lines.append(f"| {m['name']} | {'x'.join(map(str, m['input_shape']))} | {fl} | {s['min_ms']:.3f} | "
                         f"{s['median_ms']:.3f} | {s['p90_ms']:.3f} | {s['p99_ms']:.3f} | "
                         f"{s['throughput_per_s']:.1f} | {m['ratio']:.3f} | {m['ratio_ci'][0]:.3f}–{m['ratio_ci'][1]:.3f} |")
        if self.postprocessing is not None:
            lines += ["", postprocessing_text(self.postprocessing)]
        return "\n".join(lines + ["", MARKDOWN_MARK]) + "\n"

    def split_postprocessing(self, whole: str, core: str, what: str) -> dict[str, Any]:
        """Record what ``whole`` runs on top of ``core`` (``what``: e.g. 'transform, box decoding and NMS')
        as the median per-round difference of their times, with its confidence interval."""
        diff, lo, hi = paired_difference(np.asarray(self.times_ms[whole]), np.asarray(self.times_ms[core]))
        whole_ms = float(np.median(self.times_ms[whole]))
        self.postprocessing = {"whole": whole, "core": core, "what": what, "median_ms": diff, "ci_ms": [lo, hi],
                               "share_of_whole": diff / whole_ms if whole_ms > 0 else None}
        return self.postprocessing

    def write(self, stem: str | os.PathLike) -> list[Path]:
        """``stem``.json / .md / .png (the paths of :func:`report_outputs`), each written atomically."""
        json_path, md_path, png_path = (o.path for o in report_outputs(stem))
        paths = [atomic_write_text(json_path, json.dumps(self.to_dict(), indent=1) + "\n"),
                 atomic_write_text(md_path, self.markdown())]
        paths.append(plot_latency(self, png_path))
        return paths


def postprocessing_text(p: dict[str, Any]) -> str:
    """One line naming the postprocessing and what it costs, for the Markdown report and the terminal."""
    share = f", {100 * p['share_of_whole']:.0f}% of {p['whole']}" if p.get("share_of_whole") is not None else ""
    return (f"Postprocessing ({p['what']}): {p['median_ms']:.3f} ms per image{share} "
            f"(median of per-round {p['whole']} − {p['core']}, {int(CONFIDENCE * 100)}% CI "
            f"{p['ci_ms'][0]:.3f}–{p['ci_ms'][1]:.3f} ms).")


def report_mode(d: dict[str, Any]) -> str:
    """The timing mode of a report or baseline dict; files written before modes existed were interleaved."""
    mode = d.get("mode", "interleaved")
    if mode not in TIMING_MODES:
        raise LatencyError(f"unknown timing mode {mode!r}: expected one of {', '.join(TIMING_MODES)}")
    return mode


def describe_mode(mode: str, runs: int, warmup: int, blocks: int = SERVED_BLOCKS, backend: str = "ort-cpu") -> str:
    if mode == "served":
        fresh = " (a fresh session each)" if backend.startswith("ort") else ""
        return (f"served: onnxruntime defaults (pool threads spin), each model alone in {blocks} alternated "
                f"blocks{fresh}, {runs} timed runs each after warm-up")
    return f"{runs} interleaved rounds (pool threads not spinning) after {warmup} warm-up rounds"


def check_mode(mode: str) -> str:
    if mode not in TIMING_MODES:
        raise LatencyError(f"unknown timing mode '{mode}': choose one of {', '.join(TIMING_MODES)}")
    return mode


def report_outputs(stem: str | os.PathLike) -> list[Output]:
    """The files :meth:`LatencyReport.write` writes for ``stem``, for :func:`slimkit.files.check_outputs`."""
    stem = str(stem)  # "model.latency" -> model.latency.json: append, never replace a suffix
    return [Output(Path(f"{stem}.json"), "the latency report", is_json_with(format=REPORT_FORMAT)),
            Output(Path(f"{stem}.md"), "the latency report (Markdown)", has_mark),
            Output(Path(f"{stem}.png"), "the latency plot", plot_of(LATENCY))]


def baseline_output(path: str | os.PathLike) -> Output:
    """The CI gate's baseline file, as :func:`write_baseline` writes it (a latency report with a gate)."""
    return Output(Path(path), "the latency baseline", is_json_with("gate", format=REPORT_FORMAT))


def _check_measure_arguments(candidates: Any, backend: Any, threads: Any, warmup: Any, runs: Any, device: Any,
                             progress: Any, blocks: Any) -> None:
    """:func:`measure`'s arguments, each named in one line before anything is timed (a Python caller's
    ``runs="10"`` or ``threads=10**6`` otherwise fails deep inside, or hangs starting a million threads)."""
    check_type("measure", "candidates", candidates, (list, tuple),
               "a list of slimkit.latency.Candidate (slimkit.artifacts.load_candidate makes one from a file)")
    if not candidates:
        raise LatencyError("nothing to measure: give at least one model")
    for i, c in enumerate(candidates):
        check_type("measure", f"candidates[{i}]", c, Candidate,
                   "a slimkit.latency.Candidate (slimkit.artifacts.load_candidate makes one from a file)")
        shape = c.input_shape
        if not isinstance(shape, (tuple, list)) or len(shape) < 2 or \
                any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
            raise TypeError(f"measure: candidates[{i}].input_shape must be the input's shape with its batch, like "
                            f"(1, 3, 224, 224), got {show(shape)}")
    check_type("measure", "backend", backend, str, f"one of {', '.join(BACKENDS)}")
    check_type("measure", "device", device, str, "a torch device like 'cpu' or 'cuda'")
    for name, value, allowed in (("runs", runs, limits.RUNS), ("warmup", warmup, limits.NON_NEGATIVE_COUNT),
                                 ("threads", threads, limits.THREADS), ("blocks", blocks, limits.COUNT)):
        if value is None and name != "threads":  # threads None: the physical cores
            raise TypeError(f"measure: '{name}' must be a whole number {allowed.text()}, got None")
        check_number(f"measure: '{name}'", value, allowed, LatencyError)
    check_callable("measure", "progress", progress, 2, "a function of (done, total) or None")


def measure(candidates: Sequence[Candidate], *, backend: str = "ort-cpu", threads: int | None = None,
            warmup: int = 10, runs: int = 100, device: str = "cpu", mode: str = DEFAULT_TIMING_MODE,
            progress: Callable[[int, int], None] | None = None, blocks: int = SERVED_BLOCKS) -> LatencyReport:
    """Time every candidate ``runs`` times; ratios are to ``candidates[0]``, paired run by run.

    ``mode="interleaved"``: each round runs every model once, in a rotating order, pool threads not
    spinning. ``mode="served"``: onnxruntime's default session settings, each model run alone in
    blocks of consecutive runs (as a served model runs), the blocks alternated over
    ``blocks`` rounds (:data:`SERVED_BLOCKS`; more rounds average out drift that outlasts a block),
    every block in a fresh session on onnxruntime backends; the i-th run of a block is paired with the i-th run of the other models' blocks of the same round."""
    _check_measure_arguments(candidates, backend, threads, warmup, runs, device, progress, blocks)
    check_mode(mode)
    if mode == "served" and not 1 <= blocks <= runs:
        raise LatencyError(f"served timing needs 1 to {runs} blocks (one run each at least), got {blocks}")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        a, b = [c.spec for c in candidates if names.count(c.name) > 1][:2]
        paths = [a.get("path"), b.get("path")]
        if (all(paths) and same_path(*paths)) or (a.get("plan") is not None and a == b):
            # `slimkit bench m.onnx ./m.onnx`: renaming a file would not help
            what = paths[0] or f"model '{next(n for n in names if names.count(n) > 1)}' (the same plan)"
            raise LatencyError(f"{what} is given twice: give each model once")
        raise LatencyError(f"two models share a name ({', '.join(names)}); rename one file")
    threads = threads or physical_cores()
    batch = candidates[0].input_shape[0]
    runners = [make_runner(c, backend, threads, device, mode) for c in candidates]
    n = len(runners)
    times = np.zeros((n, runs))
    clock = time.perf_counter_ns
    last = time.monotonic()
    if mode == "interleaved":
        for _ in range(warmup):
            for run in runners:
                run()
        for i in range(runs):
            for k in range(n):
                j = (i + k) % n  # rotate the order so no model always runs first (cache, turbo)
                t0 = clock()
                runners[j]()
                times[j, i] = (clock() - t0) / 1e6
            if progress is not None and (time.monotonic() - last > 0.25 or i == runs - 1):
                progress(i + 1, runs)  # outside the timed region
                last = time.monotonic()
    else:
        bounds = np.linspace(0, runs, blocks + 1).astype(int)
        block_warmup = max(3, warmup // blocks)
        for b in range(blocks):
            for k in range(n):
                j = (b + k) % n  # rotate which model opens the round
                if b and backend.startswith("ort"):
                    # every block in a fresh session, as every deployment starts one: a session keeps the
                    # speed it started with (one ViT-Tiny session ran 60% slower than five others of the
                    # same file), so one session per model let that luck decide a whole run's ratio
                    runners[j] = None
                    runners[j] = make_runner(candidates[j], backend, threads, device, mode)
                time.sleep(0.02)  # let the previous model's pool threads stop spinning
                for _ in range(block_warmup):
                    runners[j]()
                for i in range(bounds[b], bounds[b + 1]):
                    t0 = clock()
                    runners[j]()
                    times[j, i] = (clock() - t0) / 1e6
            if progress is not None:
                progress(int(bounds[b + 1]), runs)

    models = []
    for j, c in enumerate(candidates):
        ratio, lo, hi = paired_ratio(times[j], times[0])
        models.append({"name": c.name, "input_shape": list(c.input_shape),
                       # the user's file only: models exported for timing live in a temp folder that is gone
                       "onnx": c.spec.get("path") if c.spec.get("kind") == "onnx" else None,
                       "flops": c.flops, "params": c.params,
                       "stats": summarize(times[j], batch), "ratio": ratio, "ratio_ci": [lo, hi], "spec": c.spec})
        if hasattr(runners[j], "precision"):  # the inference precision the runtime reports it ran at
            models[-1]["precision"] = runners[j].precision
    device_text = cpu_description()
    if backend in ("ort-cuda",) or (backend.startswith("torch") and device.startswith("cuda")):
        device_text = torch.cuda.get_device_name(0)
    env = {"onnxruntime": ort.__version__, "torch": torch.__version__, "python": platform.python_version(),
           "machine": platform.node(), "malloc": "tuned" if os.environ.get("MALLOC_MMAP_MAX_") == "0" else "default"}
    if backend == "openvino-cpu":
        env["openvino"] = openvino_version()
    return LatencyReport(backend=backend, device=device_text, threads=threads, batch=batch, warmup=warmup,
                         runs=runs, models=models, times_ms={c.name: times[j].tolist() for j, c in enumerate(candidates)},
                         environment=env, mode=mode)


# ---------------------------------------------------------------------------- the CI gate
@dataclass
class GateResult:
    passed: bool
    ratio: float
    ratio_ci: tuple[float, float]
    baseline_ratio: float
    limit: float
    message: str


def check_regression(report: LatencyReport, baseline: dict[str, Any], max_regression: float) -> GateResult:
    """Fail only when the model is *confidently* slower than allowed.

    ``baseline`` holds model/reference = b from an earlier run; ``report`` re-measured both, in the
    same timing mode (ratios from different modes are different quantities: refused). The model
    fails when the lower end of its ratio's confidence interval exceeds b × (1 + max_regression):
    noise alone almost never pushes the whole interval past the limit, a real slow-down beyond the
    tolerance does every time.
    """
    base_mode = report_mode(baseline)
    if report.mode != base_mode:
        raise LatencyError(f"the baseline was timed in {base_mode} mode, this run in {report.mode} mode: ratios from "
                           f"different timing modes are not comparable; re-measure with --timing {base_mode} or record "
                           "a new baseline with --update-baseline")
    ref, model = report.models[0], report.models[1]
    base = float(baseline["ratio"])
    limit = base * (1 + max_regression)
    ratio, (lo, hi) = model["ratio"], model["ratio_ci"]
    change = ratio / base - 1
    passed = not lo > limit
    measured = (f"{model['name']} / {ref['name']} = {ratio:.3f} ({int(CONFIDENCE * 100)}% CI {lo:.3f}–{hi:.3f}) "
                f"vs baseline {base:.3f}: {change:+.1%}")
    if not passed:
        message = f"FAIL: {measured}, beyond the allowed +{max_regression:.0%}: the whole interval is above the limit {limit:.3f}"
    elif ratio <= limit:
        message = f"PASS: {measured}, within the allowed +{max_regression:.0%} (limit {limit:.3f})"
    else:  # the estimate is over the limit but noise could explain it: not a confident regression
        message = (f"PASS (inconclusive): {measured}, over the allowed +{max_regression:.0%}, but the interval "
                   f"reaches {lo:.3f}, under the limit {limit:.3f}, so noise could explain it; more --runs or a "
                   "quieter machine decide")
    return GateResult(passed, ratio, (lo, hi), base, limit, message)


def model_fingerprint(c: Candidate) -> str:
    """Which model a CI-gate baseline belongs to: its architecture (name, keyword arguments, input)
    when slimkit made it, else the sequence of ops in its ONNX graph. Widths are left out on purpose:
    the same model re-pruned or retrained slower is what the gate must catch, not refuse."""
    if c.plan and "arch" in c.plan:
        key: Any = ["plan", c.plan.get("arch"), c.plan.get("arch_kwargs"), c.plan.get("input_size")]
    elif c.onnx_path is not None:
        proto = onnx.load(str(c.onnx_path), load_external_data=False)
        key = ["onnx", [n.op_type for n in proto.graph.node], list(c.input_shape[1:])]
    else:
        key = ["name", c.name]
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_baseline(path: str | os.PathLike, report: LatencyReport, reference: Candidate, model: Candidate,
                   base_dir: Path) -> dict[str, Any]:
    """Record ``model``/``reference`` from ``report`` as the CI gate's baseline file (with its timing mode).
    File references are stored relative to the baseline's folder, so the file travels with the repo."""
    spec = dict(reference.spec)
    if spec.get("kind") in ("onnx", "checkpoint"):
        spec["path"] = os.path.relpath(Path(spec["path"]).resolve(), base_dir)
    m = report.models[1]
    data = report.to_dict()
    data["gate"] = {"model": m["name"], "model_fingerprint": model_fingerprint(model),
                    "input_shape": m["input_shape"], "reference": reference.name, "reference_spec": spec,
                    "ratio": m["ratio"], "ratio_ci": m["ratio_ci"], "mode": report.mode}
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return data["gate"]


# A recorded ratio beyond this is no measurement (a model a million times slower than its reference):
# a baseline edited to 1e308 would pass every check.
MAX_RATIO = 1e6


def _what_json(path: Path, data: Any) -> str:
    """What a file given as a baseline is instead, as a noun phrase."""
    if data is None:
        return {".onnx": "an ONNX model", ".pt": "a PyTorch checkpoint", ".pth": "a PyTorch checkpoint",
                ".png": "an image"}.get(path.suffix.lower(), "not a JSON file")
    if isinstance(data, dict) and data.get("format") == REPORT_FORMAT:
        return "a latency report without a gate (from `slimkit bench --out` or an export)"
    if isinstance(data, dict) and isinstance(data.get("format"), str):
        return json_kind(data["format"])
    return "a JSON file"


# How far a baseline's stored gate ratio (and its CI) may differ from the one its own per-round times give:
# the times are stored rounded to 0.1 µs, so a recount is close, never exact.
RECOUNT_TOLERANCE = 0.01


def _check_recorded_ratio(path: Path, data: dict[str, Any], ratio: float, ci: list[float], redo: str) -> None:
    """The gate's ratio is what the baseline's own recorded times give (a median of per-round ratios,
    recomputed here): a ratio edited by hand (say to 5.0, CI 4.9-5.1, so that a model five times slower
    passes) is refused, never trusted."""
    gate, times = data["gate"], data.get("times_ms")
    rounds = ([times.get(gate["model"]), times.get(gate["reference"])] if isinstance(times, dict)
              and isinstance(gate["model"], str) else [None, None])
    if not all(isinstance(t, list) and len(t) == len(rounds[0]) >= 1 and
               all(type(x) in (int, float) and math.isfinite(x) and x > 0 for x in t) for t in rounds):
        raise LatencyError(f"{path} does not hold the per-round times of {show(gate['model'])} and "
                           f"{show(gate['reference'])} that its ratio was measured from; {redo}")
    got = paired_ratio(np.array(rounds[0]), np.array(rounds[1]))
    if any(abs(a - b) > RECOUNT_TOLERANCE * b for a, b in zip((ratio, *ci), got)):
        raise LatencyError(f"{path}: its gate ratio {ratio:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f}) is not what its "
                           f"recorded times give ({got[0]:.3f}, 95% CI {got[1]:.3f}-{got[2]:.3f}): the baseline was "
                           f"edited or damaged; {redo}")


def read_baseline(path: Path) -> dict[str, Any]:
    """A baseline file, validated: any doubt about it is an error, never a silent pass."""
    redo = "record it again with --update-baseline"
    if path.is_dir():
        raise LatencyError(f"--baseline {path} is a folder, not a baseline file: pass the JSON file "
                           "`slimkit bench --update-baseline` wrote (or name a new file to record one)")
    if not path.is_file():
        raise LatencyError(f"baseline not found: {path}; record one with --update-baseline")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if not (isinstance(data, dict) and "gate" in data and str(data.get("format", "")).startswith("slimkit.latency")):
        # Not a baseline at all (a damaged one is said below): say what it is, and never advise recording
        # over it, which would replace the user's plan, report or model (--update-baseline refuses without --force).
        raise LatencyError(f"{path} is {_what_json(path, data)}, not a slimkit latency baseline: pass the file "
                           "`slimkit bench --baseline FILE --update-baseline` wrote, or record one under a new name")
    try:
        gate = data["gate"]
        ratio, ci = float(gate["ratio"]), [float(x) for x in gate["ratio_ci"]]
        shape = [int(d) for d in gate["input_shape"]]
        str(gate["reference"]), dict(gate["reference_spec"])
        backend, threads, batch = str(data["backend"]), int(data["threads"]), int(data["batch"])
        if report_mode(data) != report_mode(gate):
            raise ValueError("the report's and the gate's timing modes differ")
    except LatencyError as exc:
        raise LatencyError(f"{path}: {exc}; {redo}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise LatencyError(f"{path} is not a slimkit latency baseline; {redo}") from None
    if data.get("format") != REPORT_FORMAT:
        raise LatencyError(f"{path} has format {data.get('format')!r}, not {REPORT_FORMAT!r}; {redo}")
    for key, allowed in (("threads", limits.THREADS), ("batch", limits.SMALL_COUNT)):  # the CLI's own ranges, no bool
        check_number(f"{path}: '{key}'", data[key], allowed, LatencyError, fix=redo)
    numbers = [gate["ratio"], *gate["ratio_ci"]]
    if not (all(type(x) in (int, float) for x in numbers) and len(ci) == 2  # as written: numbers, not text
            and all(math.isfinite(x) and 0 < x <= MAX_RATIO for x in numbers) and 0.99 * ci[0] <= ratio <= 1.01 * ci[1]):
        raise LatencyError(f"{path} holds an impossible latency ratio ({show(gate['ratio'])}, 95% CI "
                           f"{show(gate['ratio_ci'])}); {redo}")
    if len(shape) < 2 or min(shape) < 1 or threads < 1 or batch < 1 or backend not in BACKENDS:
        raise LatencyError(f"{path} holds an impossible setting (input {shape}, {threads} threads, batch {batch}, "
                           f"backend {backend!r}); {redo}")
    if not isinstance(gate.get("model_fingerprint"), str):
        raise LatencyError(f"{path} does not say which model it was recorded for; {redo}")
    spec = gate["reference_spec"]  # what the check rebuilds and times: a path, or the plan itself
    if not (isinstance(gate["reference"], str) and isinstance(spec, dict) and (
            (spec.get("kind") in ("onnx", "checkpoint") and isinstance(spec.get("path"), str) and spec["path"])
            or (spec.get("kind") == "plan" and isinstance(spec.get("plan"), dict)))):
        raise LatencyError(f"{path} holds a damaged reference ({show(gate['reference'])}: {show(spec)}); {redo}")
    _check_recorded_ratio(path, data, ratio, ci, redo)
    return data
