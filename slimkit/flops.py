"""Counting multiply-accumulates (MACs) and parameters, the convention of the papers' tables.

"FLOPs" in slimkit means multiply-accumulates of conv and linear layers at the model's input size,
batch 1 — what MobileNet, AMC and "Pruning from Scratch" report (MobileNet-V1 569M). We use
torch's own ``FlopCounterMode`` (it counts 2 FLOPs per MAC for conv/matmul ops and nothing for
BN, activations or pooling), so the numbers match the papers to the MAC without a hand-written
counter. Parameters include every parameter tensor.

Transformers: the two matrix products of attention (Q·Kᵀ and softmax·V) count too, as the
counter already does for ``matmul``/``bmm`` — B·heads·N_q·N_k·(d_k + d_v) MACs per attention.
Two gaps in torch's counter are closed here so every way of running attention counts the same:
the CPU kernel of ``scaled_dot_product_attention`` has no formula in torch (we give it the one
torch uses for the CUDA kernels), and ``nn.MultiheadAttention``'s inference fast path runs its
projections inside one fused kernel the counter cannot see (switched off while counting).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from slimkit.errors import SlimkitError
from slimkit.validate import check_input_size, check_type

__all__ = ["count_flops", "model_macs", "count_params", "count_flops_per_layer", "format_count"]


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# Attention kernels torch's counter has no formula for (it counts their CUDA siblings).
_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def _run_counted(model: nn.Module, input_size: Sequence[int]) -> FlopCounterMode:
    was_training = model.training
    fast_path = torch.backends.mha.get_fastpath_enabled()
    # The counter's module tracker hooks every input that requires grad; a view of a parameter made
    # under no_grad (PiT's and CaiT's expanded class token) requires grad but has no grad_fn, which the
    # tracker asserts on. Counting needs no gradients, so parameters stop requiring them meanwhile.
    grad_params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    try:
        for p in grad_params:
            p.requires_grad_(False)
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.zeros(1, *input_size, device=device)
        torch.backends.mha.set_fastpath_enabled(False)  # its fused kernel hides the projections
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
            model(x)
    finally:
        for p in grad_params:
            p.requires_grad_(True)
        torch.backends.mha.set_fastpath_enabled(fast_path)
        model.train(was_training)
    return counter


def count_flops(model: nn.Module, input_size: Sequence[int]) -> int:
    """MACs of one forward pass at ``input_size`` = (C, H, W), batch 1."""
    check_type("count_flops", "model", model, nn.Module, "a torch.nn.Module")
    size = check_input_size("count_flops", input_size, required=True)
    try:
        return model_macs(model, size)
    except (RuntimeError, ValueError, AssertionError, IndexError) as exc:  # the model rejects the input
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise SlimkitError(f"count_flops: {type(model).__name__} cannot run on a batch of shape "
                           f"{[1, *size]}: {type(exc).__name__}: {first}") from exc


def model_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """:func:`count_flops` unchecked, for slimkit's own callers: a model's failure propagates as raised,
    its traceback intact (which module failed is read from it)."""
    return _run_counted(model, input_size).get_total_flops() // 2


def count_flops_per_layer(model: nn.Module, input_size: Sequence[int]) -> dict[str, int]:
    """MACs of each leaf module (conv/linear) that does any, keyed by module name."""
    counts = _run_counted(model, input_size).get_flop_counts()
    root = type(model).__name__
    leaf_names = {name for name, m in model.named_modules() if not list(m.children())}
    out: dict[str, int] = {}
    for key, per_op in counts.items():
        name = key[len(root) + 1 :] if key.startswith(root + ".") else None
        if name in leaf_names:
            total = sum(per_op.values()) // 2
            if total:
                out[name] = total
    return out


def count_params(model: nn.Module) -> int:
    """Every parameter of ``model`` (shared ones once)."""
    check_type("count_params", "model", model, nn.Module, "a torch.nn.Module")
    return sum(p.numel() for p in model.parameters())


def format_count(n: float, unit: str = "") -> str:
    """150_000_000 -> '150.0M' (the budget strings' own units)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.{2 if suffix == 'G' else 1}f}{suffix}{unit}"
    return f"{int(n)}{unit}"
