"""2 processes x 1 thread (torchrun, gloo) vs 1 process x 2 threads, same global batch, same epochs.

Trains the Fashion-MNIST ResNet-20 50%-FLOPs plan (bench/results/fmnist_resnet20_50_plan.json, the
plan of recipes/fmnist_resnet20_50.yaml) both ways with the recipe's settings and reports training
throughput and test top-1 after the same number of epochs. Writes bench/results/ddp_throughput.json.

    python bench/ddp_throughput.py [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
PLAN = HERE / "results" / "fmnist_resnet20_50_plan.json"
TRAIN = ["--batch-size", "128", "--lr", "0.1", "--weight-decay", "1e-4", "--seed", "0"]


def run(label: str, cmd: list[str], threads: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    m = json.loads((out / "metrics.json").read_text())
    h = m["history"]
    row = {"setup": label, "wall_s": round(wall, 1), "train_s": round(sum(e["seconds"] for e in h), 1),
           "images_per_second": round(sum(e["images_per_second"] for e in h) / len(h), 1),
           "test_top1": m["final"]["test_top1"], "history": h, "world_size": m.get("world_size", 1)}
    print(json.dumps({k: v for k, v in row.items() if k != "history"}), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, help="cap steps per epoch (a quick look; not for the results file)")
    ap.add_argument("--out", default=str(HERE / "results" / "ddp_throughput.json"))
    args = ap.parse_args()
    epochs = ["--epochs", str(args.epochs)] + (["--max-steps-per-epoch", str(args.max_steps)] if args.max_steps else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        single, ddp = Path(tmp) / "single", Path(tmp) / "ddp"
        rows.append(run("1 process x 2 threads", [sys.executable, "-m", "slimkit", "train", str(PLAN), *TRAIN, *epochs,
                                                  "--out", str(single)], 2, single))
        rows.append(run("2 processes x 1 thread (torchrun, gloo)",
                        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                         "-m", "slimkit", "train", str(PLAN), *TRAIN, *epochs, "--out", str(ddp)], 1, ddp))
    result = {"plan": str(PLAN.relative_to(HERE.parent)), "epochs": args.epochs, "global_batch": 128,
              "malloc": "tuned" if os.environ.get("MALLOC_MMAP_MAX_") == "0" else "default", "runs": rows,
              "throughput_ratio_ddp_over_single": rows[1]["images_per_second"] / rows[0]["images_per_second"]}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"ddp / single throughput: {result['throughput_ratio_ddp_over_single']:.2f}x")


if __name__ == "__main__":
    main()
