"""The last step of `make demo`: what was made, where, how fast and how accurate, and what to try next.

Reads only what the demo's commands wrote into the run folder (plans, the training metrics, the
int8 check record, the latency report) and prints a short summary; a file that is missing is said
to be missing, never filled in.

    python bench/demo_summary.py runs/demo [--started UNIX_SECONDS]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from slimkit.flops import format_count


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.2f} MB" if path.is_file() else "missing"


def _cost(plan: dict | None) -> str:
    if plan is None:
        return "plan missing"
    full = (plan.get("search") or {}).get("full_flops")
    of = f" of {format_count(full)}" if full else ""
    return f"{format_count(plan['flops'])} MACs{of}, {format_count(plan['params'])} params"


def summary(root: Path, seconds: float | None) -> str:
    r20 = root / "resnet20_50pct"
    lines = [f"slimkit demo: done{f' in {seconds / 60:.0f} min' if seconds else ''}; everything is in {root}/", ""]
    mnv1 = _read(root / "mobilenet_v1_150M.json")
    lines += ["MobileNet-V1 pruned to 150M MACs (random weights, not trained):",
              f"  {root}/mobilenet_v1_150M.json   the default (uniform) plan: {_cost(mnv1)}",
              f"  {root}/mobilenet_v1_150M.onnx   it as ONNX ({_size(root / 'mobilenet_v1_150M.onnx')})",
              f"  {root}/mobilenet_v1_150M_scratch.json   gates learned from scratch, for comparison",
              f"  {root}/mobilenet_v1_150M_scratch.png    its channels per group beside uniform's",
              ""]
    metrics = _read(r20 / "metrics.json") or {}
    final = metrics.get("final") or {}
    check = (_read(r20 / "model.int8.check.json") or {}).get("check") or {}
    plan = _read(root / "resnet20_50pct.json")
    epochs = metrics.get("epochs", "?")
    lines += [f"ResNet-20 pruned to 50% ({_cost(plan)}),",
              f"trained {epochs} epoch{'' if epochs == 1 else 's'} on Fashion-MNIST:"]
    if final:
        lines.append(f"  test top-1 {100 * final['test_top1']:.2f}% after training (PyTorch)")
    if check.get("fp32_top1") is not None:
        lines.append(f"  ONNX top-1 {100 * check['fp32_top1']:.2f}% fp32, {100 * check['int8_top1']:.2f}% int8 "
                     f"(on {check['images']:,} test images)")
    report = _read(r20 / "model.latency.json")
    if report:
        ratios = ", ".join(f"{'int8' if m['name'].endswith('int8') else 'fp32'} {m['ratio']:.2f}x"
                           for m in report["models"][1:])
        lines.append(f"  latency: {ratios} the full ResNet-20's ({report['backend']}, batch {report['batch']})")
    lines += [f"  {r20}/checkpoint.pt   weights + plan",
              f"  {r20}/model.onnx   fp32 ONNX ({_size(r20 / 'model.onnx')})",
              f"  {r20}/model.int8.onnx   int8 ONNX ({_size(r20 / 'model.int8.onnx')})",
              f"  {r20}/model.latency.md   latency report (+ .json, .png)",
              "",
              "Try next:",
              f"  slimkit train {root}/resnet20_50pct.json --epochs 30 --out runs/r20",
              "  slimkit run recipes/fmnist_resnet20_50_compare.yaml   # vs uniform and full",
              "  slimkit prune timm:efficientnet_b0 --latency 50% --out fast.json",
              "  docs/guide.md: every command; docs/method.md: how it works"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--started", type=float, help="when the demo started (seconds since the epoch)")
    args = parser.parse_args()
    seconds = time.time() - args.started if args.started else None
    print(summary(args.root, seconds))


if __name__ == "__main__":
    main()
