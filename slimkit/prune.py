"""``slimkit.prune``: architecture name + budget -> ChannelPlan.

Methods: ``uniform`` scales every channel group by one factor (the papers' baseline);
``scratch`` learns channel gates on random frozen weights and thresholds them (Wang et al. 2020).
"""

from __future__ import annotations

from typing import Any

from slimkit import registry
from slimkit.budget import Budget, parse_budget, search_uniform
from slimkit.errors import PlanError, SlimkitError
from slimkit.flops import count_flops, count_params
from slimkit.generator import channel_graph, generate
from slimkit.plan import ChannelPlan

__all__ = ["prune", "arch_kwargs_for", "METHODS"]

METHODS = ("uniform",)


def arch_kwargs_for(num_classes: int | None, in_chans: int | None) -> dict[str, Any]:
    """Only what the user set goes into the plan: defaults stay the library's."""
    out: dict[str, Any] = {}
    if num_classes is not None:
        out["num_classes"] = num_classes
    if in_chans is not None:
        out["in_chans"] = in_chans
    return out


def prune(arch: str, budget: str | Budget, *, method: str = "uniform", num_classes: int | None = None,
          in_chans: int | None = None, input_size: tuple[int, int, int] | None = None,
          expand: float = 1.0, round_to: int = 8, seed: int = 0, tolerance: float = 0.01,
          verify: bool = True) -> ChannelPlan:
    """Plan the widths of ``arch`` so it meets ``budget`` (e.g. '150M', '50%', '3.5Mp')."""
    if method not in METHODS:
        raise SlimkitError(f"unknown method '{method}': choose one of {', '.join(METHODS)}")
    if expand < 1.0:
        raise SlimkitError(f"--expand must be >= 1.0 (channel expansion widens the supernet), got {expand}")
    if round_to < 1:
        raise SlimkitError(f"--round-to must be >= 1, got {round_to}")
    spec = registry.resolve(arch)
    kwargs = arch_kwargs_for(num_classes, in_chans)
    model = registry.create_model(spec.canonical, **kwargs)
    size = tuple(input_size) if input_size else registry.default_input_size(spec.canonical, model, in_chans)
    graph = channel_graph(spec.canonical, kwargs, size, model=model)
    if not graph.groups:
        raise SlimkitError(f"{spec.canonical} has no prunable channel groups (all are frozen)")
    b = parse_budget(budget) if isinstance(budget, str) else budget
    full_flops = graph.count_macs()
    b = b.resolve(full_flops)
    result = search_uniform(graph, b, round_to=round_to, expand=expand, tolerance=tolerance)
    search = {"factor": round(result.value, 6), "iterations": result.iterations, "tolerance": tolerance,
              "full_flops": full_flops, "full_params": graph.count_params()}
    plan = ChannelPlan(
        arch=spec.canonical, arch_kwargs=kwargs, input_size=list(size), expand=expand,
        round_to=round_to, method=method, seed=seed, budget=b.to_json(),
        groups={n: {"full": g.width, "width": result.widths[n]} for n, g in graph.groups.items()},
        flops=result.flops, params=result.params, search=search,
    )
    if verify:  # the contract: G(plan) counts exactly the plan's FLOPs and parameters
        thin = generate(plan)
        flops, params = count_flops(thin, size), count_params(thin)
        if (flops, params) != (plan.flops, plan.params):
            raise PlanError(
                f"internal error: G(plan) counts {flops} MACs / {params} params, plan says "
                f"{plan.flops} / {plan.params}; please report this with the architecture name"
            )
    return plan
