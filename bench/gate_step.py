"""Cost of one gate-learning step vs one ordinary training step (same model, batch, input).

"Pruning from Scratch" only learns gates, so its search should cost well under training. Both
steps are timed round-robin in one process (machine noise hits both alike) and the ratio of
medians is printed. Training step: all weights trainable, SGD momentum 0.9, BN in train mode,
the way `slimkit train` runs. Gate step: slimkit's gated supernet (frozen weights, gates folded
into BatchNorm), Adam on the gates, loss CE + γ(mean λ − r)², clamp.

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

from slimkit.gates import attach_gates
from slimkit.generator import build_source, channel_graph


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mobilenet_v1")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gate_step.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = (3, args.size, args.size)
    x = torch.randn(args.batch, *size)
    y = torch.randint(0, 1000, (args.batch,))

    trained = build_source(args.arch).train()
    sgd = torch.optim.SGD(trained.parameters(), lr=0.01, momentum=0.9)

    graph = channel_graph(args.arch, {}, size)
    gated_model = build_source(args.arch)
    supernet = attach_gates(gated_model, graph, graph.full_widths())
    adam = torch.optim.Adam(supernet.parameters(), lr=0.01)

    def train_step() -> None:
        sgd.zero_grad(set_to_none=True)
        F.cross_entropy(trained(x), y).backward()
        sgd.step()

    def gate_step() -> None:
        adam.zero_grad(set_to_none=True)
        loss = F.cross_entropy(gated_model(x), y) + 0.05 * (supernet.penalty_mean() - 0.5) ** 2
        loss.backward()
        adam.step()
        supernet.clamp_()

    for f in (train_step, gate_step):  # warm-up (allocator, oneDNN primitive caches)
        f()
        f()
    times: dict[str, list[float]] = {"train": [], "gate": []}
    for _ in range(args.rounds):
        for name, f in (("train", train_step), ("gate", gate_step)):
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["gate"] / med["train"]
    per_round = sorted(g / t for g, t in zip(times["gate"], times["train"]))
    result = {"arch": args.arch, "batch": args.batch, "input": list(size), "threads": args.threads,
              "rounds": args.rounds, "train_step_s": round(med["train"], 4), "gate_step_s": round(med["gate"], 4),
              "ratio": round(ratio, 3), "ratio_range": [round(per_round[0], 3), round(per_round[-1], 3)],
              "malloc_tuned": os.environ.get("MALLOC_MMAP_MAX_") == "0", "torch": torch.__version__}
    print(f"{args.arch} batch {args.batch} {args.size}px, {args.threads} threads, {args.rounds} rounds: "
          f"train step {med['train']:.3f}s  gate step {med['gate']:.3f}s  ratio {ratio:.3f} "
          f"(per-round {per_round[0]:.3f}..{per_round[-1]:.3f})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
