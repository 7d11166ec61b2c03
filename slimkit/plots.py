"""PNG plots of results people would rather see than read (matplotlib, headless)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.files import atomic_write, png_mark
from slimkit.plan import ChannelPlan


def _pyplot():
    """matplotlib's pyplot, headless; imported on first use because it adds ~0.4 s to every command."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


CHANNELS, TRAINING, LATENCY = "channels per group", "training curves", "latency"  # png_mark kinds


def _save(fig: Any, path: str | os.PathLike, kind: str) -> Path:
    plt = _pyplot()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight",
                                                             metadata=png_mark(kind)))  # slimkit's, and which plot
    finally:
        plt.close(fig)


def plot_channels(plan: ChannelPlan, path: str | os.PathLike,
                  others: dict[str, ChannelPlan] | None = None) -> Path:
    """Channels per group: full vs this plan (vs other plans, e.g. uniform), like Figure 3 of
    "Pruning from Scratch"."""
    plt = _pyplot()
    names = list(plan.groups)
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(names) + 2), 3.6))
    ax.bar(x, [plan.groups[n]["full"] for n in names], color="#dddddd", label="full")
    for label, other in (others or {}).items():
        ax.plot(x, [other.groups[n]["width"] for n in names], "o-", ms=3, lw=1, label=label)
    ax.plot(x, [plan.groups[n]["width"] for n in names], "s-", ms=3, lw=1.4, color="#c0392b",
            label=f"{plan.method} ({plan.budget['text'] if plan.budget else ''})")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("channels")
    ax.set_title(f"{plan.arch}: channels per group", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path, CHANNELS)


def plot_training(metrics: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Loss and accuracy (mIoU, mAP) per epoch (train and test)."""
    plt = _pyplot()
    epochs = [m["epoch"] for m in metrics]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    classifier = "test_top1" in metrics[0]
    ax1.plot(epochs, [m["train_loss"] for m in metrics], "o-", ms=3, label="train (smoothed labels)" if classifier else "train")
    if "test_loss" in metrics[0]:  # a detector gives no loss in eval mode
        ax1.plot(epochs, [m["test_loss"] for m in metrics], "s-", ms=3, label="test")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend(fontsize=7)
    if "test_map" in metrics[0]:  # detection: COCO box mAP
        ax2.plot(epochs, [m["test_map"] for m in metrics], "s-", ms=3, label="test mAP@[.5:.95]")
        ax2.plot(epochs, [m["test_map50"] for m in metrics], "^-", ms=3, label="test mAP@.5")
    elif "test_miou" in metrics[0]:  # segmentation: pixels and mean IoU
        ax2.plot(epochs, [m["train_pixel_accuracy"] for m in metrics], "o-", ms=3, label="train pixel accuracy")
        ax2.plot(epochs, [m["test_pixel_accuracy"] for m in metrics], "s-", ms=3, label="test pixel accuracy")
        ax2.plot(epochs, [m["test_miou"] for m in metrics], "^-", ms=3, label="test mIoU")
    else:
        ax2.plot(epochs, [m["train_accuracy"] for m in metrics], "o-", ms=3, label="train")
        ax2.plot(epochs, [m["test_top1"] for m in metrics], "s-", ms=3, label="test top-1")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("mAP" if "test_map" in metrics[0] else "accuracy")
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path, TRAINING)


def plot_latency(report, path: str | os.PathLike) -> Path:
    """Latency distribution per model (box: p25-p75, whiskers p5-p95) with the ratio to the first.

    Whiskers stop at p5/p95 (p1/p99 let one stall squash every box flat); the labels sit just above
    each whisker, inside an axis made tall enough for them, so they never run into the title."""
    plt = _pyplot()
    names = [m["name"] for m in report.models]
    data = [report.times_ms[n] for n in names]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(names) + 2), 3.8))
    ax.boxplot(data, whis=(5, 95), showfliers=False)
    ax.set_xticks(range(1, len(names) + 1))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=7)
    tops = [float(np.percentile(d, 95)) if len(d) else 0.0 for d in data]
    for i, (m, top) in enumerate(zip(report.models, tops), start=1):
        ax.annotate(f"{m['stats']['median_ms']:.2f} ms\n×{m['ratio']:.2f}", (i, top), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("latency per batch (ms)")
    ax.set_ylim(0, max(tops, default=1.0) * 1.3 or 1.0)  # headroom for the two-line labels
    ax.set_title(f"{report.backend}, batch {report.batch}, {report.threads} thread(s), {report.runs} "
                 "interleaved rounds", fontsize=9, pad=8)
    return _save(fig, path, LATENCY)
