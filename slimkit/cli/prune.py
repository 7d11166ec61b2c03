"""``slimkit prune``: architecture + budget -> ChannelPlan JSON (+ a channels-per-group PNG)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from slimkit import validate as limits
from slimkit.budget import parse_budget
from slimkit.cli._common import (print_table, refuse_idle, ARCH_KWARGS_HELP, FORCE_HELP, checked_numbers, console, file_paths, make_progress,
                                 parse_arch_kwargs, parse_input_size, say_plain, user_errors)
from slimkit.errors import SlimkitError
from slimkit.files import Output, check_outputs, plot_of
from slimkit.flops import format_count
from slimkit.latency import BACKENDS
from slimkit.models.user import factory_file
from slimkit.plan import ChannelPlan, plan_output, save_plan
from slimkit.plots import CHANNELS, plot_channels
from slimkit.prune import DEFAULT_ROUND_TO, GateOptions, LatencyOptions, default_method, uniform_reference
from slimkit.rounding import parse_round_to
from slimkit.prune import prune as run_prune
from slimkit.runtime import cleanup_distributed, launch_env
from slimkit.structures import STRUCTURES


def render_plan(plan: ChannelPlan, title: str) -> None:
    """Rich table of a plan: widths before/after per group, then totals."""
    table = Table(title=escape(title), show_lines=False)
    for col, just in (("group", "left"), ("full", "right"), ("width", "right"), ("keep", "right")):
        table.add_column(col, justify=just)
    for name, g in plan.groups.items():
        ratio = g["width"] / g["full"]
        style = "green" if ratio > 1 else ("yellow" if ratio < 0.5 else "")
        table.add_row(escape(name), str(g["full"]), str(g["width"]), f"[{style}]{ratio:.2f}[/]" if style else f"{ratio:.2f}")
    print_table(table, console)
    full_flops = plan.search.get("full_flops")
    full_params = plan.search.get("full_params")
    line = f"MACs {format_count(plan.flops)}"
    if full_flops:
        line += f" ({100 * plan.flops / full_flops:.1f}% of {format_count(full_flops)}"
        if plan.num_classes is not None:  # `slimkit info` counts the model's own head (often 1000 classes)
            line += f" with a {plan.num_classes}-class head"
        line += ")"
    line += f"   params {format_count(plan.params)}"
    if full_params:
        line += f" ({100 * plan.params / full_params:.1f}% of {format_count(full_params)})"
    structure = plan.search.get("structure")
    if structure:
        line += (f"   structure {structure['name']}: MACs -{100 * structure['flops_reduction']:.1f}% "
                 f"(the paper reports -{100 * structure['reported_flops_reduction']:.1f}%)")
    elif plan.budget:
        target = plan.budget["value"]
        line += f"   budget {plan.budget['text']}"
        if plan.budget["kind"] == "flops" and target:
            line += f" = {format_count(target)} (off by {100 * (plan.flops - target) / target:+.2f}%)"
    console.print(line, highlight=False, markup=False)
    rounding = plan.search.get("rounding")
    if rounding and rounding.get("how") != "explicit":
        console.print(f"round-to {plan.round_to} ({rounding['how']}: {rounding['why']})", highlight=False,
                      markup=False)
    if plan.latency:
        lat = plan.latency
        target_ms = lat.get("budget_ms", lat["target_ratio"] * lat["full_median_ms"])  # plans before budget_ms
        console.print(f"latency {lat['median_ms']:.3f} ms = {lat['ratio_to_full']:.3f}x the full "
                      f"model (95% CI {lat['ratio_ci'][0]:.3f}-{lat['ratio_ci'][1]:.3f}); budget {target_ms:.3f} ms, "
                      f"measured on {lat['backend']}{' (int8)' if lat.get('precision') == 'int8' else ''}, "
                      f"{lat['threads']} thread(s), batch {lat['batch']}, {lat.get('mode', 'interleaved')} timing",
                      highlight=False,
                      markup=False)


def check_out(out: Path, *, plot: bool, weights: str | None = None, force: bool = False, arch: str = "") -> None:
    """Before minutes of work: the plan (and its PNG beside it) may be written, replacing nothing of the
    user's: absent, an old plan / a PNG slimkit drew, or --force; never an input (--weights, the .py
    file of a model factory), even with --force."""
    if out.is_dir():
        raise SlimkitError(f"--out {out} is a directory; give a file name like {out / 'plan.json'}")
    outputs = [plan_output(out)] + ([Output(plot_path(out), "the channels-per-group plot", plot_of(CHANNELS))] if plot else [])
    factory = factory_file(arch)
    check_outputs(outputs, inputs=([weights] if weights else []) + ([factory] if factory else []), force=force)


def plot_path(out: Path) -> Path:
    """Where the plan's PNG goes: beside it, ``plan.json`` -> ``plan.png``."""
    return out.with_suffix(".png")


@file_paths(out="plan.json")
@user_errors
@checked_numbers(threads=limits.THREADS, batch=limits.SMALL_COUNT, num_classes=limits.SMALL_COUNT,
                 in_chans=limits.IN_CHANS, expand=limits.EXPAND,
                 tolerance=limits.TOLERANCE, seed=limits.SEED, gamma=limits.GAMMA, lr=limits.LR,
                 epochs=limits.EPOCHS_FRACTIONAL, steps=limits.COUNT, batch_size=limits.COUNT,
                 search_size=limits.SIDE, val_size=limits.NON_NEGATIVE_COUNT)
def prune(
    arch: Annotated[str, typer.Argument(help="Architecture name (mobilenet_v1, resnet56, timm:efficientnet_b0) or your own model's factory (python:pkg.models:build_net, nets.py:build_net).")],
    flops: Annotated[Optional[str], typer.Option("--flops", help="MACs budget: 150M, 1.2G, or 50% of the full model.")] = None,
    params: Annotated[Optional[str], typer.Option("--params", help="Parameter budget: 2.1M.")] = None,
    latency: Annotated[Optional[str], typer.Option("--latency", help="Measured-latency budget: 8ms, or 50% of the full model's latency on --backend.")] = None,
    structure: Annotated[Optional[str], typer.Option("--structure", help=f"A published pruned structure instead of a budget: {', '.join(STRUCTURES)} (Li et al. 2017's ResNet-56/110-A/B, the rows of 'Rethinking the Value of Network Pruning': per-stage shares of block-internal channels, sensitive layers kept whole). With --weights CKPT the channels with the largest filter L1 norm are kept.")] = None,
    backend: Annotated[str, typer.Option(help=f"Where --latency, the latency check and --round-to auto are timed: {', '.join(BACKENDS)}.")] = LatencyOptions.backend,
    threads: Annotated[Optional[int], typer.Option(help="Threads for --latency (default: physical cores).")] = None,
    batch: Annotated[int, typer.Option(help="Batch size for --latency.")] = LatencyOptions.batch,
    timing: Annotated[str, typer.Option(help="How --latency is timed: served (default: onnxruntime's defaults, each model alone, as a deployed model runs) or interleaved (every model once per round, pool threads not spinning). Recorded in the plan.")] = LatencyOptions.mode,
    precision: Annotated[str, typer.Option(help="How --latency candidates are timed: fp32, or int8 (quantized as `slimkit export --int8` ships them, against the int8 full model; ort-cpu).")] = LatencyOptions.precision,
    method: Annotated[Optional[str], typer.Option(help="uniform: one width factor for all groups; scratch: learn gates on random frozen weights (Wang et al. 2020). Default: uniform for classifiers; scratch for detection and segmentation models, with --criterion gates or --weights alone, and when a gate-learning option (--data, --steps, --epochs, --preset, --selection, --search-space, ...) is given.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Plan JSON to write (a .png of channels per group lands beside it).")] = Path("plan.json"),
    num_classes: Annotated[Optional[int], typer.Option(help="Classifier outputs (default: the model's).")] = None,
    in_chans: Annotated[Optional[int], typer.Option(help="Input channels (default: the model's).")] = None,
    input_size: Annotated[Optional[str], typer.Option(help="224, 224x224 or 3,224,224 (default: the model's).")] = None,
    arch_kwargs: Annotated[Optional[str], typer.Option(help=ARCH_KWARGS_HELP)] = None,
    expand: Annotated[float, typer.Option(help="Widen every group by this factor before pruning (paper: 1.25 on CIFAR).")] = 1.0,
    round_to: Annotated[str, typer.Option(help="Round channel counts to multiples of this, or 'auto' (default): the multiple --backend runs fastest, measured on this model here (runtimes pad channels to 8 or 16; ragged counts run up to 2x slower) and cached per machine.")] = str(DEFAULT_ROUND_TO),
    latency_check: Annotated[bool, typer.Option("--latency-check/--no-latency-check", help="Time the plan beside the uniform plan at the same budget on --backend (a few seconds) and say which is faster.")] = LatencyOptions.check,
    tolerance: Annotated[Optional[float], typer.Option(help="Relative budget tolerance of the search (default 1%; 5% for --latency).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (recorded in the plan).")] = 0,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write a channels-per-group PNG.")] = True,
    data: Annotated[Optional[str], typer.Option(help="Gate-learning data: fashion-mnist (default), cifar10, cifar100, imagefolder:PATH, synthetic; detection and segmentation models learn on shapes (drawn boxes and masks).")] = None,
    data_dir: Annotated[Optional[str], typer.Option(help="Where the dataset lives (default: Debian's /usr/share/datasets/fashion-mnist).")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Paper gate settings: cifar (γ 0.5, batch 128, 10 epochs) or imagenet (γ 0.05, batch 100, 1 epoch); default from --data.")] = None,
    gamma: Annotated[Optional[float], typer.Option(help="Weight of the sparsity term γ·(mean λ − r)².")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate of the gates (default 0.05 on CPU, 0.01 on GPU and with --search-space paper; --steps and --epochs never change it).")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Gate-learning epochs (default: the preset's; on CPU a short run).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Gate-learning steps (overrides --epochs).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Gate-learning batch size (default: the preset's).")] = None,
    search_size: Annotated[Optional[int], typer.Option(help="Image side for gate learning (default: the model's on GPU, at most 64 on CPU).")] = None,
    val_size: Annotated[Optional[int], typer.Option(help="Training images held out to pick the gate snapshot (paper: 5,000 / 50 per class).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = GateOptions.device,
    weights: Annotated[Optional[str], typer.Option(help="A trained full model: a slimkit checkpoint.pt, or a torch.save(model.state_dict()) file or timm/torchvision checkpoint of ARCH. Learn the gates on it instead of random weights (the paper's comparison), and with --criterion choose which of its channels the plan keeps.")] = None,
    criterion: Annotated[Optional[str], typer.Option(help="Which channels of --weights the plan keeps, so `slimkit train --init inherit` can fine-tune them: l1 (filters with the largest L1 norm, within uniform widths; Li et al. 2017, Rethinking's baseline; with --search-space paper only block-internal channels shrink) or gates (the highest gates learned on --weights; --method scratch).")] = None,
    selection: Annotated[str, typer.Option(help="How gates become widths: threshold (the paper's Algorithm 1: one global τ, every channel counts alike) cost-aware (gate value per MAC saved, or per parameter for --params; greedy, re-counted as widths shrink) or latency-aware (gate value per unit of latency saved, from every layer timed alone on --backend at the plan's input size; the budget is still counted as asked).")] = "threshold",
    search_space: Annotated[str, typer.Option(help="full: every channel group may shrink; paper: the paper's official code (residual streams kept at the --expand width, only block-internal channels gated, r against the unexpanded model, snapshot rule 'share of non-zero gates <= r', crop+flip, eval-mode BN, lr 0.01 for the preset's epochs).")] = "full",
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP)] = False,
) -> None:
    """Plan a thinner network that meets a FLOPs, parameter or measured-latency budget.

    Budgets: --flops 150M (or 50% of the full model's MACs), --params 2.1M, or --latency 8ms (or 50%
    of the full model's latency), timed on --backend with --threads and --batch while searching.

    Default method for classifiers: uniform. A paired-seed study at equal FLOPs (docs/search.md)
    found learned gates (--method scratch) level with a uniform width on ResNet-20 and better on
    MobileNet-V1 at 32 px (+0.8 points), but their plans no faster than uniform's at the resolution
    models ship at (MobileNet-V1 at 224 px: 1.07-1.11x uniform's latency), so uniform is the default
    by the study's pre-registered rule; for speed at a budget, --latency. Detection and segmentation
    models learn gates by default. Every scratch plan's PNG shows the uniform plan beside it.
    """
    if sum(x is not None for x in (flops, params, latency, structure)) != 1:
        raise SlimkitError("give exactly one budget: --flops 150M (or 50%), --params 2.1M or --latency 8ms (or 50%), "
                           "or a --structure")
    budget = None
    if structure is not None:
        if method is not None:
            raise SlimkitError(f"--structure {structure} fixes every width: drop --method {method}")
        if search_space != "full" or selection != "threshold":
            raise SlimkitError(f"--structure {structure} fixes every width: drop --search-space and --selection")
        if criterion is None and weights is not None:
            criterion = "l1"  # the paper's criterion, and the only one a fixed structure takes
    elif flops is not None:
        budget = parse_budget(flops, kind="flops")
        if budget.kind != "flops":
            raise SlimkitError(f"--flops {flops} is not a FLOPs budget: use 150M, 1.2G or 50% (or --latency / --params)")
    elif params is not None:
        budget = parse_budget(params, kind="params")
    else:
        budget = parse_budget(latency, kind="latency")
    size = parse_input_size(input_size, in_chans)
    round_to = parse_round_to(round_to)
    check_out(out, plot=plot, weights=weights, force=force, arch=arch)
    start = time.perf_counter()
    if method is None and structure is None:
        learns_gates = (data is not None or selection != "threshold" or search_space != "full"
                        or (weights is not None and criterion is None)
                        or any(v is not None for v in (data_dir, preset, gamma, lr, epochs, steps, batch_size,
                                                       search_size, val_size)))
        method = default_method(arch, criterion=criterion, learns_gates=learns_gates)
    if method == "uniform" or structure is not None:  # no gates are learned: these would be ignored
        refuse_idle([("--data", data, None), ("--data-dir", data_dir, None), ("--preset", preset, None),
                     ("--gamma", gamma, None), ("--lr", lr, None), ("--epochs", epochs, None),
                     ("--steps", steps, None), ("--batch-size", batch_size, None),
                     ("--search-size", search_size, None), ("--val-size", val_size, None),
                     # --device also places --backend torch timing; with onnxruntime it has nothing to run
                     *([] if backend.startswith("torch") else [("--device", device, GateOptions.device)])],
                    "gate learning, which " + (f"--structure {structure}" if structure else "--method uniform")
                    + " does not do (size the head for your data with --num-classes)",
                    "drop --structure for a budget with --method scratch" if structure else
                    "use --method scratch")
    gates = GateOptions(data=data, data_dir=data_dir, preset=preset, gamma=gamma, lr=lr, batch_size=batch_size,
                        epochs=epochs, steps=steps, search_size=search_size, val_size=val_size, device=device,
                        weights=weights, selection=selection, search_space=search_space)
    options = dict(method=method, structure=structure, num_classes=num_classes, in_chans=in_chans, input_size=size,
                   arch_kwargs=parse_arch_kwargs(arch_kwargs), expand=expand,
                   round_to=round_to, seed=seed, tolerance=tolerance, gates=gates, criterion=criterion,
                   latency=LatencyOptions(backend=backend, threads=threads, batch=batch, precision=precision,
                                          mode=timing, check=latency_check))
    if launch_env()[0] != 0:  # under torchrun: gates are learned together, rank 0 writes
        try:
            run_prune(arch, budget, **options)
        finally:
            cleanup_distributed()
        return
    progress = make_progress()
    with progress:
        task = progress.add_task(f"tracing {arch}", total=None)  # ends when gate learning starts
        try:
            plan = run_prune(arch, budget, **options, progress=progress, log=say_plain(progress))
        finally:
            cleanup_distributed()
        progress.remove_task(task)
    save_plan(plan, out)  # the files first: nothing printed below can lose them
    seconds = time.perf_counter() - start
    png = None
    if plot:
        others = {}
        if plan.method != "uniform":
            ref = uniform_reference(plan)
            if ref is not None:
                others["uniform"] = ref
        png = plot_channels(plan, plot_path(out), others)
    what = f"structure {structure}" if structure else f"{method} plan"
    render_plan(plan, f"{plan.arch} — {what}" + (f", channels kept by {criterion}" if criterion else ""))
    console.print(f"wrote {out}" + f"  ({seconds:.1f}s)", markup=False)
    if plan.method == "scratch":
        console.print(gate_summary(plan), highlight=False, markup=False)
    if plan.method == "uniform" and plan.search.get("one_step_wider"):
        wider = plan.search["one_step_wider"]
        console.print(f"{plan.search['selection']}: factor {plan.search['factor']:.4f}, {len(wider)} group(s) moved "
                      "off it by whole rounding steps (no single factor lands within tolerance under rounding)",
                      highlight=False)
    if png is not None:
        console.print(f"wrote {png}", markup=False)


def gate_summary(plan: ChannelPlan) -> str:
    """One line on the learned gates and how widths were picked from them: a threshold τ (FLOPs and
    parameter budgets), gate order, or the latency search (a latency budget has no single τ)."""
    s = plan.search
    if plan.latency is not None:
        how = f"widths from the measured-latency search ({s.get('latency_search', {}).get('selection', 'done')}), "
    elif s.get("threshold") is not None:
        how = f"threshold τ {s['threshold']:.4f}, "
    elif s.get("selection") == "cost-aware":
        how = "channels ranked by gate per unit of cost, "
    else:
        how = f"{s.get('selection', 'gate-order fill')} (no single τ within tolerance), "
    score = (f"held-out acc {s['val_accuracy']:.3f}" if "val_accuracy" in s else
             f"held-out {s['val_score_name']} {s['val_score']:.3f}")  # a task's own score (mIoU, -loss)
    weights = s.get("weights", "random")  # "random", or "trained (PATH)" with --weights
    on = "random frozen weights" if weights == "random" else f"the frozen {weights} weights"
    return (f"gates: chosen at step {s['chosen_step']}/{s['steps']} ({score} on {on}), mean λ "
            f"{s['gates']['mean']:.3f}, {how}{s['seconds']:.0f}s")
