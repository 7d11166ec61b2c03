"""``slimkit.prune``: architecture name + budget -> ChannelPlan.

Methods: ``uniform`` scales every channel group by one factor (the papers' baseline);
``scratch`` learns channel gates on random frozen weights and thresholds them (Wang et al. 2020).
"""

from __future__ import annotations

from typing import Any

from slimkit import registry
from slimkit.budget import Budget, check_budget, max_widths, parse_budget, search_threshold, search_uniform
from slimkit.device import resolve_device
from slimkit.errors import BudgetError, PlanError, SlimkitError
from slimkit.flops import count_flops, count_params
from slimkit.attention import input_size_kwargs
from slimkit.generator import build_source, channel_graph, generate, resize_model
from slimkit.plan import ChannelPlan

__all__ = ["prune", "arch_kwargs_for", "METHODS"]

METHODS = ("scratch", "uniform")

# A CPU cannot run the papers' gate budgets interactively: a short run at a reduced resolution.
CPU_STEPS = 300
CPU_LR = 0.05  # 300 steps instead of ~4,000: a larger Adam step so the gate mean still reaches r
CPU_SEARCH_SIDE = 64
CPU_VAL_IMAGES = 2000


def arch_kwargs_for(num_classes: int | None, in_chans: int | None) -> dict[str, Any]:
    """Only what the user set goes into the plan: defaults stay the library's."""
    out: dict[str, Any] = {}
    if num_classes is not None:
        out["num_classes"] = num_classes
    if in_chans is not None:
        out["in_chans"] = in_chans
    return out


def prune(arch: str, budget: str | Budget, *, method: str = "scratch", num_classes: int | None = None,
          in_chans: int | None = None, input_size: tuple[int, int, int] | None = None,
          expand: float = 1.0, round_to: int = 8, seed: int = 0, tolerance: float | None = None,
          verify: bool = True, data: str = "fashion-mnist", data_dir: str | None = None,
          preset: str | None = None, gamma: float | None = None, lr: float | None = None,
          batch_size: int | None = None, epochs: float | None = None, steps: int | None = None,
          search_size: int | None = None, val_size: int | None = None, device: str = "auto",
          backend: str = "ort-cpu", threads: int | None = None, batch: int = 1, weights: str | None = None,
          progress: Any | None = None, log: Any | None = None) -> ChannelPlan:
    """Plan the widths of ``arch`` so it meets ``budget`` (e.g. '150M', '50%', '3.5Mp').

    ``method='scratch'`` learns gates on random frozen weights (on ``data``) and thresholds them;
    ``method='uniform'`` scales every group by one factor. ``log`` receives one-line notes.
    A latency budget ('8ms', or '50%' with ``Budget(kind='latency')``) is measured on ``backend``
    with ``threads`` and ``batch`` (see :mod:`slimkit.latency_search`); ``tolerance`` then
    defaults to 5%. ``weights`` (a checkpoint of the full model) learns the gates on those trained
    weights instead of random ones: the paper's comparison with structures from trained weights.
    """
    if method not in METHODS:
        raise SlimkitError(f"unknown method '{method}': choose one of {', '.join(METHODS)}")
    if expand < 1.0:
        raise SlimkitError(f"--expand must be >= 1.0 (channel expansion widens the supernet), got {expand}")
    if round_to < 1:
        raise SlimkitError(f"--round-to must be >= 1, got {round_to}")
    spec = registry.resolve(arch)
    b = parse_budget(budget) if isinstance(budget, str) else budget
    if tolerance is None:
        tolerance = 0.05 if b.kind == "latency" else 0.01  # measured latency is noisier than counted FLOPs
    say = log or (lambda _msg: None)
    size = tuple(input_size) if input_size else registry.default_input_size(spec.canonical, in_chans=in_chans)
    bundle = None
    if method == "scratch":
        from slimkit.data import load_data

        dev = resolve_device(device)
        side = search_size or (size[1] if dev.type == "cuda" else min(size[1], CPU_SEARCH_SIDE))
        if side != size[1] and input_size_kwargs(build_source(spec.canonical, arch_kwargs_for(None, in_chans)),
                                                 (size[0], side, side)):
            say(f"{spec.canonical} is built for one image size: gates are learned at {size[1]} px "
                "(pass a smaller --input-size for a faster search)")
            side = size[1]
        bundle = load_data(data, data_dir=data_dir, input_size=(size[0], side, side * size[2] // size[1]),
                           val_size=val_size, seed=seed)
        if num_classes is None:
            num_classes = bundle.num_classes
        elif num_classes != bundle.num_classes:
            raise SlimkitError(f"--num-classes {num_classes} but {data} has {bundle.num_classes} classes: "
                               "drop --num-classes or use matching data")
    kwargs = arch_kwargs_for(num_classes, in_chans)
    if input_size and tuple(size) != registry.default_input_size(spec.canonical, in_chans=in_chans):
        # transformers with a stored image size (timm's img_size, torchvision ViT's image_size)
        # are built for the asked size; the plan records it in arch_kwargs, so G rebuilds the same
        kwargs.update(input_size_kwargs(build_source(spec.canonical, kwargs), size))
    graph = channel_graph(spec.canonical, kwargs, size)
    if not graph.groups:
        raise SlimkitError(f"{spec.canonical} has no prunable channel groups (all are frozen)")
    full_flops = graph.count_macs()
    meter = None
    if b.kind == "latency":  # measure the full and smallest models first: fail before any gate learning
        from slimkit.latency_search import LatencyMeter, resolve_target

        template = ChannelPlan(arch=spec.canonical, arch_kwargs=kwargs, input_size=list(size), expand=expand,
                               round_to=round_to, method=method, seed=seed, groups={})
        meter = LatencyMeter(template, graph, backend=backend, threads=threads, batch=batch)
        target_ratio, _, _ = resolve_target(meter, b, tolerance, say)
        flops_guess = Budget("flops", b.text, round(target_ratio * full_flops))  # gates' r: latency ~ FLOPs
    else:
        b = check_budget(graph, b, round_to, expand)  # before any gate learning: fail in seconds, not minutes
    if bundle is not None:
        say(f"data: {bundle.description}")
    gates = None
    if meter is not None:
        if method == "scratch":
            gates_result, search = _learn_gates(
                spec.canonical, kwargs, graph, flops_guess, bundle, expand=expand, seed=seed, preset=preset,
                gamma=gamma, lr=lr, batch_size=batch_size, epochs=epochs, steps=steps, device=device, data=data,
                progress=progress, say=say, weights=weights)
            gates = gates_result.gates
        else:
            search = {}
        result, b, latency = _search_latency(meter, graph, b, gates, round_to, expand, tolerance, say)
        search["latency_search"] = latency.pop("search")
        meter.close()
    elif method == "uniform":
        result = search_uniform(graph, b, round_to=round_to, expand=expand, tolerance=tolerance)
        search = {"factor": round(result.value, 6), "iterations": result.iterations}
    else:
        assert bundle is not None
        gates_result, search = _learn_gates(
            spec.canonical, kwargs, graph, b, bundle, expand=expand, seed=seed, preset=preset, gamma=gamma,
            lr=lr, batch_size=batch_size, epochs=epochs, steps=steps, device=device, data=data,
            progress=progress, say=say, weights=weights)
        result = search_threshold(graph, gates_result.gates, b, round_to=round_to, expand=expand,
                                  tolerance=tolerance)
        filled = result.value != result.value  # NaN: no single τ fit, channels added in gate order
        search.update({"threshold": None if filled else round(result.value, 6),
                       "threshold_iterations": result.iterations,
                       "selection": "gate-order fill" if filled else "threshold"})
    search.update({"tolerance": tolerance, "full_flops": full_flops, "full_params": graph.count_params()})
    plan = ChannelPlan(
        arch=spec.canonical, arch_kwargs=kwargs, input_size=list(size), expand=expand,
        round_to=round_to, method=method, seed=seed, budget=b.to_json(),
        groups={n: {"full": g.width, "width": result.widths[n]} for n, g in graph.groups.items()},
        flops=result.flops, params=result.params, search=search,
        latency=latency if meter is not None else None,
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


def _learn_gates(arch: str, kwargs: dict[str, Any], graph, budget: Budget, bundle, *, expand: float, seed: int,
                 preset: str | None, gamma: float | None, lr: float | None, batch_size: int | None,
                 epochs: float | None, steps: int | None, device: str, data: str, progress: Any, say: Any,
                 weights: str | None = None):
    """Build the (expanded) supernet with frozen random weights and learn its gates."""
    import torch

    from slimkit.gates import attach_gates
    from slimkit.search import PRESETS, GateSearchConfig, search_gates, steps_for_epochs

    preset = preset or ("imagenet" if data.startswith("imagefolder:") else "cifar")
    if preset not in PRESETS:
        raise SlimkitError(f"unknown --preset '{preset}': choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    dev = resolve_device(device)
    bs = batch_size or p["batch_size"]
    if steps is None and epochs is None and dev.type == "cpu":
        n_steps = CPU_STEPS
        lr = CPU_LR if lr is None else lr
        say(f"CPU: a short gate search of {n_steps} steps at lr {lr} (paper: {p['epochs']:g} epochs at lr 0.01); "
            "pass --epochs or --steps for more")
    else:
        n_steps = steps or steps_for_epochs(epochs if epochs is not None else p["epochs"], len(bundle.train), bs)
    lr = 0.01 if lr is None else lr
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = registry.create_model(arch, **kwargs)
    if weights is not None:
        _load_full_weights(model, weights, arch, kwargs)
        if expand != 1.0:
            raise SlimkitError("--weights learns gates on a trained full model: it cannot be combined with --expand")
    widths = max_widths(graph, expand, round_to=1)
    if expand != 1.0:
        resize_model(model, graph, widths)
    supernet = attach_gates(model, graph, widths)
    r = min(1.0, budget.value / graph.count_macs(widths)) if budget.kind == "flops" else \
        min(1.0, budget.value / graph.count_params(widths))
    cfg = GateSearchConfig(target=r, gamma=gamma if gamma is not None else p["gamma"], lr=lr, batch_size=bs,
                           steps=n_steps, evals=10, val_images=CPU_VAL_IMAGES if dev.type == "cpu" else None,
                           seed=seed, device=str(dev))
    say(f"gates: {sum(widths.values())} channels in {len(widths)} groups, r = {r:.3f}, γ = {cfg.gamma}, "
        f"batch {bs}, {n_steps} steps at {list(bundle.train.input_size)} on {dev}")
    res = search_gates(supernet, bundle, cfg, progress=progress)
    if not res.qualified:
        say(f"warning: no snapshot reached mean gate <= r ({r:.3f}); using the sparsest (mean {res.gate_mean:.3f})")
    flat = [v for vs in res.gates.values() for v in vs]
    info = {"weights": "random" if weights is None else f"trained ({weights})",
            "preset": preset, "gamma": cfg.gamma, "lr": lr, "batch_size": bs, "steps": n_steps,
            "target_r": round(r, 6), "search_input": list(bundle.train.input_size), "data": data,
            "device": str(dev), "chosen_step": res.step, "val_accuracy": round(res.val_accuracy, 4),
            "qualified": res.qualified, "seconds": round(res.seconds, 1),
            "gates": {"mean": round(sum(flat) / len(flat), 4), "min": round(min(flat), 4),
                      "max": round(max(flat), 4),
                      "zero": sum(1 for v in flat if v <= 0.0), "one": sum(1 for v in flat if v >= 1.0)},
            "history": [{k: round(v, 4) for k, v in h.items()} for h in res.history]}
    return res, info


def _search_latency(meter, graph, budget: Budget, gates, round_to: int, expand: float, tolerance: float, say):
    """Latency budget -> widths, the resolved budget and the plan's ``latency`` record."""
    from slimkit.budget import SearchResult
    from slimkit.latency_search import search_latency

    full_flops = graph.count_macs()

    def plan_at(f: float) -> dict[str, int]:
        b = Budget("flops", f"{f:.1%}", round(f * full_flops))
        for tol in (0.01, 0.03, 0.1, 10.0):  # the latency search wants a plan near f, not exactly at it
            try:
                if gates is None:
                    return search_uniform(graph, b, round_to=round_to, expand=expand, tolerance=tol).widths
                return search_threshold(graph, gates, b, round_to=round_to, expand=expand, tolerance=tol).widths
            except BudgetError:
                continue
        raise BudgetError(f"no plan near {f:.1%} of the full model's MACs")

    res = search_latency(meter, budget, plan_at, tolerance=tolerance, log=say)
    m = res.measurement
    resolved = Budget("latency", budget.text, res.target_ratio * res.full_ms / 1000.0, budget.fraction)
    latency = {"backend": meter.backend, "device": meter.device_text, "threads": meter.threads, "batch": meter.batch,
               "median_ms": round(m.median_ms, 4), "p90_ms": round(m.stats["p90_ms"], 4),
               "std_ms": round(m.stats["std_ms"], 4), "ratio_to_full": round(m.ratio, 4),
               "ratio_ci": [round(m.ci[0], 4), round(m.ci[1], 4)], "full_median_ms": round(res.full_ms, 4),
               "target_ratio": round(res.target_ratio, 4), "runs": m.runs, "measured": True,
               "search": {"measured_plans": res.measured_plans, "seconds": round(res.seconds, 1),
                          "tolerance": tolerance, "selection": res.selection, "trace": res.trace}}
    say(f"latency: {m.ratio:.3f}x the full model ({m.ratio * res.full_ms:.3f} ms; budget {budget.text} = "
        f"{res.target_ratio * res.full_ms:.3f} ms), {res.measured_plans} plans measured in {res.seconds:.0f}s")
    widths = res.widths
    return SearchResult(widths, graph.count_macs(widths), graph.count_params(widths), float("nan"), 0), resolved, latency


def _load_full_weights(model, path: str, arch: str, kwargs: dict[str, Any]) -> None:
    """Trained weights for gate learning: a checkpoint of the *full* model of the same architecture."""
    import json

    from slimkit.train import load_checkpoint

    ckpt = load_checkpoint(path)
    plan = ChannelPlan.from_dict(json.loads(ckpt["plan"]), source=str(path))
    if registry.resolve(plan.arch).canonical != arch or plan.arch_kwargs != kwargs or \
            any(g["width"] != g["full"] for g in plan.groups.values()) or plan.expand != 1.0:
        raise SlimkitError(f"{path} is not a checkpoint of the full {arch} {kwargs}: train one with "
                           f"`slimkit train {arch.split(':')[-1]}`")
    model.load_state_dict(ckpt["model"])
