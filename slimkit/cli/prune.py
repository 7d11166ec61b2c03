"""``slimkit prune``: architecture + budget -> ChannelPlan JSON (+ a channels-per-group PNG)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from slimkit import distributed
from slimkit.cli._common import console, make_progress, parse_input_size, user_errors
from slimkit.errors import SlimkitError
from slimkit.flops import format_count
from slimkit.plan import ChannelPlan, save_plan


def render_plan(plan: ChannelPlan, title: str) -> None:
    """Rich table of a plan: widths before/after per group, then totals."""
    table = Table(title=title, show_lines=False)
    for col, just in (("group", "left"), ("full", "right"), ("width", "right"), ("keep", "right")):
        table.add_column(col, justify=just)
    for name, g in plan.groups.items():
        ratio = g["width"] / g["full"]
        style = "green" if ratio > 1 else ("yellow" if ratio < 0.5 else "")
        table.add_row(name, str(g["full"]), str(g["width"]), f"[{style}]{ratio:.2f}[/]" if style else f"{ratio:.2f}")
    console.print(table)
    full_flops = plan.search.get("full_flops")
    full_params = plan.search.get("full_params")
    line = f"MACs {format_count(plan.flops)}"
    if full_flops:
        line += f" ({100 * plan.flops / full_flops:.1f}% of {format_count(full_flops)})"
    line += f"   params {format_count(plan.params)}"
    if full_params:
        line += f" ({100 * plan.params / full_params:.1f}% of {format_count(full_params)})"
    if plan.budget:
        target = plan.budget["value"]
        line += f"   budget {plan.budget['text']}"
        if plan.budget["kind"] == "flops" and target:
            line += f" = {format_count(target)} (off by {100 * (plan.flops - target) / target:+.2f}%)"
    console.print(line, highlight=False)
    if plan.latency:
        lat = plan.latency
        target_ms = lat["target_ratio"] * lat["full_median_ms"]
        console.print(f"latency {lat['ratio_to_full'] * lat['full_median_ms']:.3f} ms = {lat['ratio_to_full']:.3f}x the full "
                      f"model (95% CI {lat['ratio_ci'][0]:.3f}-{lat['ratio_ci'][1]:.3f}); budget {target_ms:.3f} ms, "
                      f"measured on {lat['backend']}, {lat['threads']} thread(s), batch {lat['batch']}", highlight=False)


@user_errors
def prune(
    arch: Annotated[str, typer.Argument(help="Architecture name, e.g. mobilenet_v1, resnet56, timm:efficientnet_b0.")],
    flops: Annotated[Optional[str], typer.Option("--flops", help="MACs budget: 150M, 1.2G, or 50% of the full model.")] = None,
    params: Annotated[Optional[str], typer.Option("--params", help="Parameter budget: 2.1M.")] = None,
    latency: Annotated[Optional[str], typer.Option("--latency", help="Measured-latency budget: 8ms, or 50% of the full model's latency on --backend.")] = None,
    backend: Annotated[str, typer.Option(help="Where --latency is measured: ort-cpu, ort-cuda, torch, torch-compile.")] = "ort-cpu",
    threads: Annotated[Optional[int], typer.Option(min=1, help="Threads for --latency (default: physical cores).")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Batch size for --latency.")] = 1,
    method: Annotated[str, typer.Option(help="scratch: learn gates on random frozen weights (Wang et al. 2020); uniform: one width factor for all groups.")] = "scratch",
    out: Annotated[Path, typer.Option("--out", "-o", help="Plan JSON to write (a .png of channels per group lands beside it).")] = Path("plan.json"),
    num_classes: Annotated[Optional[int], typer.Option(help="Classifier outputs (default: the model's).")] = None,
    in_chans: Annotated[Optional[int], typer.Option(help="Input channels (default: the model's).")] = None,
    input_size: Annotated[Optional[str], typer.Option(help="224, 224x224 or 3,224,224 (default: the model's).")] = None,
    expand: Annotated[float, typer.Option(help="Widen every group by this factor before pruning (paper: 1.25 on CIFAR).")] = 1.0,
    round_to: Annotated[int, typer.Option(help="Round channel counts to multiples of this (8: onnxruntime's CPU kernels block channels by 8; ragged counts run up to 2x slower).")] = 8,
    tolerance: Annotated[Optional[float], typer.Option(help="Relative budget tolerance of the search (default 1%; 5% for --latency).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (recorded in the plan).")] = 0,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write a channels-per-group PNG.")] = True,
    data: Annotated[str, typer.Option(help="Gate-learning data: fashion-mnist, cifar10, cifar100, imagefolder:PATH, synthetic.")] = "fashion-mnist",
    data_dir: Annotated[Optional[str], typer.Option(help="Where the dataset lives (default: Debian's /usr/share/datasets/fashion-mnist).")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Paper gate settings: cifar (γ 0.5, batch 128, 10 epochs) or imagenet (γ 0.05, batch 100, 1 epoch); default from --data.")] = None,
    gamma: Annotated[Optional[float], typer.Option(help="Weight of the sparsity term γ·(mean λ − r)².")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate of the gates (paper 0.01; 0.05 for the short CPU default).")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Gate-learning epochs (default: the preset's; on CPU a short run).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Gate-learning steps (overrides --epochs).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Gate-learning batch size (default: the preset's).")] = None,
    search_size: Annotated[Optional[int], typer.Option(help="Image side for gate learning (default: the model's on GPU, at most 64 on CPU).")] = None,
    val_size: Annotated[Optional[int], typer.Option(help="Training images held out to pick the gate snapshot (paper: 5,000 / 50 per class).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    weights: Annotated[Optional[str], typer.Option(help="Learn the gates on this trained full-model checkpoint instead of random weights (the paper's comparison).")] = None,
) -> None:
    """Plan a thinner network that meets a FLOPs or parameter budget."""
    from slimkit.budget import parse_budget
    from slimkit.prune import prune as run_prune

    if sum(x is not None for x in (flops, params, latency)) != 1:
        raise SlimkitError("give exactly one budget: --flops 150M (or 50%), --params 2.1M or --latency 8ms (or 50%)")
    if flops is not None:
        budget = parse_budget(flops, kind="flops")
        if budget.kind != "flops":
            raise SlimkitError(f"--flops {flops} is not a FLOPs budget: use 150M, 1.2G or 50% (or --latency / --params)")
    elif params is not None:
        budget = parse_budget(params, kind="params")
    else:
        budget = parse_budget(latency, kind="latency")
    size = parse_input_size(input_size)
    if size and in_chans:
        size = (in_chans, size[1], size[2])
    if out.exists() and out.is_dir():
        raise SlimkitError(f"--out {out} is a directory; give a file name like {out / 'plan.json'}")
    start = time.perf_counter()
    options = dict(method=method, num_classes=num_classes, in_chans=in_chans, input_size=size, expand=expand,
                   round_to=round_to, seed=seed, tolerance=tolerance, data=data, data_dir=data_dir, preset=preset,
                   gamma=gamma, lr=lr, epochs=epochs, steps=steps, batch_size=batch_size, search_size=search_size,
                   val_size=val_size, device=device, backend=backend, threads=threads, batch=batch, weights=weights)
    if os.environ.get("RANK", "0") != "0":  # under torchrun: gates are learned together, rank 0 writes
        try:
            run_prune(arch, budget, **options)
        finally:
            distributed.cleanup()
        return
    progress = make_progress()
    with progress:
        task = progress.add_task(f"tracing {arch}", total=None)
        def log(msg: str) -> None:
            progress.console.print(msg, highlight=False)
        try:
            plan = run_prune(arch, budget, **options, progress=progress, log=log)
        finally:
            distributed.cleanup()
        progress.remove_task(task)
    render_plan(plan, f"{plan.arch} — {method} plan")
    save_plan(plan, out)
    console.print(f"wrote {out}" + f"  ({time.perf_counter() - start:.1f}s)")
    if plan.method == "scratch":
        s = plan.search
        console.print(f"gates: chosen at step {s['chosen_step']}/{s['steps']} (held-out acc {s['val_accuracy']:.3f} "
                      f"on random frozen weights), mean λ {s['gates']['mean']:.3f}, "
                      + (f"threshold τ {s['threshold']:.4f}, " if s["threshold"] is not None else
                         "channels taken in gate order (no single τ within tolerance), ")
                      + f"{s['seconds']:.0f}s", highlight=False)
    if plan.method == "uniform" and plan.search.get("one_step_wider"):
        wider = plan.search["one_step_wider"]
        console.print(f"uniform up to one step: factor {plan.search['factor']:.4f}, then {len(wider)} group(s) one "
                      "rounding step wider (no single factor lands within tolerance)", highlight=False)
    if plot:
        from slimkit.plots import plot_channels, uniform_reference

        others = {}
        if plan.method != "uniform":
            ref = uniform_reference(plan)
            if ref is not None:
                others["uniform"] = ref
        png = plot_channels(plan, out.with_suffix(".png"), others)
        console.print(f"wrote {png}")
