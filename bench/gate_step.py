"""Cost of one gate-learning step vs one ordinary training step (same model, batch, input).

"Pruning from Scratch" only learns gates, so its search should cost well under training. Both
steps are built the way slimkit runs them (``slimkit.runtime``: channels-last on every device,
activations that would clone their input run out of place) and timed round-robin in one process,
so machine noise hits all alike; the same two steps as slimkit ran them before (NCHW, in place)
run in the same rounds, as the reference for what those two changes buy. Training step: all weights trainable, SGD momentum 0.9, BN in train mode,
as in `slimkit train`. Gate step: slimkit's gated supernet (frozen weights, gates folded into
BatchNorm), Adam on the gates, loss CE + γ(mean λ − r)², clamp, as in `slimkit prune`.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824 \\
        python bench/gate_step.py [--arch mobilenet_v1 --batch 32 --size 224 --rounds 12]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from slimkit.runtime import out_of_place_activations, place_batch, place_model
from slimkit.gates import attach_gates
from slimkit.generator import build_model, channel_graph


def _steps(arch: str, graph, x: torch.Tensor, y: torch.Tensor, now: bool):
    """``now``: the steps as slimkit runs them; else as it ran them before (NCHW, activations in place)."""
    cpu = torch.device("cpu")
    xb = place_batch(x, cpu, now)
    trained = place_model(build_model(arch), cpu, now).train()
    if now:
        out_of_place_activations(trained)
    sgd = torch.optim.SGD(trained.parameters(), lr=0.01, momentum=0.9)
    gated = build_model(arch)
    was_inplace = [m for m in gated.modules() if getattr(m, "inplace", False)]
    supernet = attach_gates(gated, graph, graph.full_widths())
    place_model(gated, cpu, now)
    if not now:
        for m in was_inplace:
            m.inplace = True
    adam = torch.optim.Adam(supernet.parameters(), lr=0.01)

    def train_step() -> None:
        sgd.zero_grad(set_to_none=True)
        F.cross_entropy(trained(xb), y).backward()
        sgd.step()

    def gate_step() -> None:
        adam.zero_grad(set_to_none=True)
        loss = F.cross_entropy(gated(xb), y) + 0.05 * (supernet.penalty_mean() - 0.5) ** 2
        loss.backward()
        adam.step()
        supernet.clamp_()

    return train_step, gate_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mobilenet_v1")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gate_step.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = (3, args.size, args.size)
    x = torch.randn(args.batch, *size)
    y = torch.randint(0, args.classes, (args.batch,))

    graph = channel_graph(args.arch, {}, size)  # the same channel groups for both ways
    steps = {}
    for layout, now in (("now", True), ("before", False)):
        train_step, gate_step = _steps(args.arch, graph, x, y, now)
        steps[f"train/{layout}"], steps[f"gate/{layout}"] = train_step, gate_step
    for f in steps.values():  # warm-up (allocator, oneDNN primitive caches)
        f()
        f()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for name, f in steps.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}

    def ratio(num: str, den: str) -> tuple[float, list[float]]:
        per_round = sorted(a / b for a, b in zip(times[num], times[den]))
        return statistics.median(per_round), [round(per_round[0], 3), round(per_round[-1], 3)]

    gate_vs_train, gate_range = ratio("gate/now", "train/now")
    before_ratio, before_range = ratio("gate/before", "train/before")
    gate_now_vs_train_before, _ = ratio("gate/now", "train/before")
    result = {"arch": args.arch, "batch": args.batch, "input": list(size), "threads": args.threads,
              "rounds": args.rounds, "step_s": {k: round(v, 4) for k, v in med.items()},
              "ratio": round(gate_vs_train, 3), "ratio_range": gate_range,
              "ratio_before": round(before_ratio, 3), "ratio_before_range": before_range,
              "gate_now_vs_train_before": round(gate_now_vs_train_before, 3),
              "speedup_vs_before": {s: round(med[f"{s}/before"] / med[f"{s}/now"], 3) for s in ("train", "gate")},
              "malloc_tuned": os.environ.get("MALLOC_MMAP_MAX_") == "0", "torch": torch.__version__}
    print(f"{args.arch} batch {args.batch} {args.size}px, {args.threads} threads, {args.rounds} rounds (medians)")
    for layout, what in (("now", "channels-last, activations out of place"), ("before", "NCHW, in place")):
        print(f"  {layout:6s} ({what}): train step {med['train/' + layout]:.3f}s  gate step {med['gate/' + layout]:.3f}s")
    print(f"  gate/train as slimkit runs them now: {gate_vs_train:.3f} "
          f"(per-round {gate_range[0]:.3f}..{gate_range[1]:.3f}); before: {before_ratio:.3f}; "
          f"gate now vs training before: {gate_now_vs_train_before:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
