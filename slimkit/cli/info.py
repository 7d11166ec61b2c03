"""``slimkit models`` and ``slimkit info``: what the registry can build, and what a model costs."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from rich.markup import escape

from slimkit import registry
from slimkit import validate as limits
from slimkit.attention import input_size_kwargs
from slimkit.checkpoint import head_classes
from slimkit.cli._common import print_table, ARCH_KWARGS_HELP, checked_numbers, console, parse_arch_kwargs, parse_input_size, user_errors
from slimkit.flops import count_flops_per_layer, count_params, format_count
from slimkit.generator import build_model, channel_graph


@user_errors
@checked_numbers(limit=limits.NON_NEGATIVE_COUNT)
def models(
    filter: Annotated[Optional[str], typer.Option("--filter", "-f", help="Substring or glob, e.g. 'mobilenet*'.")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many rows (0 = all).")] = 200,
) -> None:
    """List the architectures slimkit can build (aliases, built-ins, torchvision, timm)."""
    rows = registry.list_archs(filter)
    table = Table(title=escape(f"{len(rows)} architectures" + (f" matching '{filter}'" if filter else "")))
    table.add_column("name")
    table.add_column("source / note")
    for name, desc in rows[: limit or None]:
        table.add_row(escape(name), escape(desc))
    print_table(table, console)
    if limit and len(rows) > limit:
        console.print(f"... {len(rows) - limit} more; narrow with --filter or pass --limit 0")


@user_errors
@checked_numbers(num_classes=limits.SMALL_COUNT, in_chans=limits.IN_CHANS)
def info(
    arch: Annotated[str, typer.Argument(help="Architecture name (mobilenet_v1, resnet56, timm:resnet50) or your own model's factory (python:pkg.models:build_net, nets.py:build_net).")],
    num_classes: Annotated[Optional[int], typer.Option(help="Classifier outputs (default: the model's).")] = None,
    in_chans: Annotated[Optional[int], typer.Option(help="Input channels (default: the model's).")] = None,
    input_size: Annotated[Optional[str], typer.Option(help="224, 224x224 or 3,224,224 (default: the model's).")] = None,
    layers: Annotated[bool, typer.Option("--layers/--no-layers", help="Per-layer MACs breakdown.")] = False,
    groups: Annotated[bool, typer.Option("--groups/--no-groups", help="List every channel group.")] = False,
    arch_kwargs: Annotated[Optional[str], typer.Option(help=ARCH_KWARGS_HELP)] = None,
) -> None:
    """Show an architecture's input size, MACs, parameters and channel groups."""
    spec = registry.resolve(arch)
    kwargs = registry.arch_kwargs_for(num_classes, in_chans, parse_arch_kwargs(arch_kwargs))
    model = build_model(spec.canonical, kwargs)
    size = parse_input_size(input_size, in_chans) or registry.default_input_size(spec.canonical, model, in_chans)
    if in_chans:
        size = (in_chans, size[1], size[2])
    fixed_size = input_size_kwargs(model, size)  # transformers built for one image size
    if fixed_size:
        kwargs.update(fixed_size)
        del model  # before the rebuild: two at once is twice the weights (a 7-GB ViT-gigantic was refused)
        model = build_model(spec.canonical, kwargs)
    graph = channel_graph(spec.canonical, kwargs, size, model=model)
    macs, params = graph.count_flops(), count_params(model)
    classes = getattr(model, "num_classes", None) or num_classes
    if classes is None and registry.model_task(spec.canonical) == "classification":  # torchvision's keep no attribute
        classes = head_classes(model)
    console.print(f"[bold]{escape(spec.canonical)}[/]  input {list(size)}  "
                  f"MACs {format_count(macs)}  params {format_count(params)}"
                  + (f" ({classes}-class head)" if classes else "") + "  "
                  f"channel groups {len(graph.groups)} prunable, {len(graph.frozen)} frozen")
    if classes and classes != 10 and num_classes is None:  # why `prune --method scratch` says "of 567.7M" here
        console.print("  [dim]`prune --method scratch` sizes the head for its gate-learning data (10 classes for "
                      "Fashion-MNIST), so its totals differ by the head: `--num-classes 10` shows them; a uniform "
                      "plan (the default) keeps this head unless you pass --num-classes, and `slimkit train` "
                      "sizes it for its data when it trains from scratch[/]", highlight=False)
    for name, why in graph.frozen.items():
        console.print(f"  frozen [cyan]{escape(name)}[/]: {escape(why)}", highlight=False)
    if groups:
        table = Table(title="channel groups")
        for col in ("group", "width", "divisor", "modules"):
            table.add_column(col)
        for g in graph.groups.values():
            mods = g.producers + [c for c in g.consumers if c not in g.producers]
            table.add_row(escape(g.name), str(g.width), str(g.divisor),
                          escape(", ".join(mods[:4]) + (" ..." if len(mods) > 4 else "")))
        print_table(table, console)
        for stored in graph.stored_sizes:  # split sizes that G rewrites instead of freezing
            console.print(f"  G rewrites [cyan]{stored.module or 'model'}.{stored.attr}[/] = {stored.original!r} "
                          f"({stored.op})", highlight=False)
    if layers:
        per = count_flops_per_layer(registry.traced_part(model), size)
        table = Table(title="MACs per layer")
        table.add_column("layer")
        table.add_column("MACs", justify="right")
        table.add_column("share", justify="right")
        for name, n in per.items():
            table.add_row(escape(name), format_count(n), f"{100 * n / max(macs, 1):.1f}%")
        print_table(table, console)
