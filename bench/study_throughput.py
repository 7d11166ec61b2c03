"""How should the structure study use 2 CPU cores: one training with 2 threads, or two with 1 each?

Trains the study's uniform 50% ResNet-20 plan at 24 px (batch 128, SGD, channels_last, random
images: data loading is not the question) for a fixed time per setup, the setups interleaved over
``--rounds`` rounds so machine noise hits both, and reports images per second summed over the
concurrent trainings, and the ratio. Writes bench/results/study_throughput.json.

    python bench/study_throughput.py [--seconds 20] [--rounds 3]

Run it on a quiet machine: anything else running takes cores from one setup more than the other.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from slimkit.generator import generate
from slimkit.plan import load_plan
from slimkit.runtime import place_batch, place_model

HERE = Path(__file__).parent
PLAN = HERE / "results" / "compare_structures" / "scratch-e-e12-r20at24px" / "plans" / "r20-50-uniform-r1-s0.json"


def train_for(seconds: float, threads: int, barrier, out) -> None:
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    model = place_model(generate(load_plan(PLAN)), device, True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    x = place_batch(torch.randn(128, 3, 24, 24), device, True)
    y = torch.randint(0, 10, (128,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y, label_smoothing=0.1).backward()
        opt.step()

    for _ in range(3):  # warm-up: allocator and oneDNN primitive caches
        step()
    barrier.wait()  # concurrent trainings start together
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    out.put(steps * 128 / (time.perf_counter() - start))


def measure(runs: int, threads: int, seconds: float) -> float:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(runs), ctx.Queue()
    procs = [ctx.Process(target=train_for, args=(seconds, threads, barrier, out)) for _ in range(runs)]
    for p in procs:
        p.start()
    try:
        rates = [out.get(timeout=seconds + 300) for _ in procs]  # a crashed child never reports
    except queue.Empty:
        raise SystemExit(f"a training process died (exit codes {[p.exitcode for p in procs]})") from None
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    return sum(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2, help="N: compare 1 run x N threads with N runs x 1 thread")
    ap.add_argument("--out", default=str(HERE / "results" / "study_throughput.json"))
    args = ap.parse_args()
    cores = args.cores
    setups = {f"1 run x {cores} threads": (1, cores), f"{cores} runs x 1 thread": (cores, 1)}
    rates: dict[str, list[float]] = {name: [] for name in setups}
    for r in range(args.rounds):
        for name in (list(setups) if r % 2 == 0 else list(setups)[::-1]):  # alternate which goes first
            runs, threads = setups[name]
            rates[name].append(measure(runs, threads, args.seconds))
            print(f"round {r + 1}: {name}: {rates[name][-1]:.0f} images/s in all", flush=True)
    ratios = [b / a for a, b in zip(*rates.values())]
    result = {"plan": str(PLAN.relative_to(HERE.parent)), "batch": 128, "seconds_per_setup": args.seconds,
              "cores": cores, "machine_cores": os.cpu_count(), "torch": torch.__version__, "load_average_after": os.getloadavg()[0],
              "images_per_second": rates, "median_images_per_second": {k: round(statistics.median(v), 1)
                                                                      for k, v in rates.items()},
              "ratio_per_round": [round(x, 3) for x in ratios], "ratio_median": round(statistics.median(ratios), 3)}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{cores} single-thread trainings side by side train {statistics.median(ratios):.2f}x the images per "
          f"second of one {cores}-thread training (per round: {', '.join(f'{x:.2f}' for x in ratios)})")


if __name__ == "__main__":
    main()
