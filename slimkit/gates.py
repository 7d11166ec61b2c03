"""Gated supernet: one gate vector λ ∈ [0, 1] per channel group on a network with frozen weights.

"Pruning from Scratch" (Wang et al. 2020) multiplies each layer's output channels by a learnable
scalar gate while the random weights stay frozen. slimkit shares one gate vector across all
layers of a channel group (the two ends of a residual add are pruned together) and folds it into
the BatchNorm affine: ``BN(x)·λ = normalise(x)·(γ·λ) + β·λ``, so no extra activation tensor is
stored for backward. Groups no BatchNorm reads (e.g. a squeeze-excite reduction) get the gate
as a forward hook on the layers that produce them.

Transformers have LayerNorm, not BatchNorm, so every transformer group takes the hook: the MLP
hidden channels and the embedding width are gated on the outputs of the linears (and the patch
embedding) that produce them. Attention heads get one gate per *head* (the unit G can remove):
it multiplies that head's ``head_dim`` channels of the attention output where the output
projection reads them (a forward pre-hook), so a closed gate silences the whole head. In the
mean the sparsity loss steers, a head gate weighs as its ``head_dim`` channels. All weights are frozen; BatchNorm uses batch
statistics, as in the paper's code. Dropout and stochastic depth are switched off: they would
add noise to the gate signal and to the held-out accuracy used to pick a snapshot. Activations
that would clone their input to run in place run out of place (``slimkit.runtime``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from slimkit.runtime import out_of_place_activations
from slimkit.graph import ChannelGraph

__all__ = ["GatedSupernet", "attach_gates"]


def _key(name: str) -> str:
    return name.replace(".", "__").replace("#", "_")


class _GateScale(nn.Module):
    """Parametrization: a BN weight/bias times the gates of the channels it normalises."""

    def __init__(self, supernet: GatedSupernet, segments: list):
        super().__init__()
        self._supernet = [supernet]  # a list, so the gates are not registered twice
        self.segments = segments

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        return value * self._supernet[0].gate_vector(self.segments)


class GatedSupernet:
    """A model with frozen weights and one learnable gate vector per channel group."""

    def __init__(self, model: nn.Module, graph: ChannelGraph, widths: dict[str, int],
                 fixed: Iterable[str] = ()):
        self.model = model
        self.graph = graph
        self.widths = dict(widths)
        # Fixed groups keep gates of 1 that never learn and take no part in the sparsity term
        # (the paper's own code gates only block-internal channels of ResNets).
        self.fixed = set(fixed)
        unknown = self.fixed - set(graph.groups)
        if unknown:
            raise KeyError(f"unknown channel groups to fix: {sorted(unknown)[:5]}")
        first = next(model.parameters())
        self.head_dims = dict(graph.head_dims)  # head groups: one gate per head
        self.gates = nn.ParameterDict({
            _key(n): nn.Parameter(torch.ones(widths[n] // self.head_dims.get(n, 1), device=first.device,
                                             dtype=torch.float32), requires_grad=n not in self.fixed)
            for n in graph.groups
        })
        self._names = {_key(n): n for n in graph.groups}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._parametrized: list[tuple[nn.Module, str]] = []
        self._attach()

    # ------------------------------------------------------------------------------ gates
    def gate(self, name: str) -> nn.Parameter:
        return self.gates[_key(name)]

    def gate_vector(self, segments: list) -> torch.Tensor:
        parts = []
        for key, rep in segments:
            if isinstance(key, str):
                g = self.channel_gates(key)
                parts.append(g.repeat_interleave(rep) if rep > 1 else g)
            else:
                parts.append(torch.ones(key * rep, device=self._device()))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def channel_gates(self, name: str) -> torch.Tensor:
        """The gate of every channel of group ``name`` (a head's gate repeated over its channels)."""
        g = self.gates[_key(name)]
        head_dim = self.head_dims.get(name, 1)
        return g.repeat_interleave(head_dim) if head_dim > 1 else g

    def _weights(self) -> list[tuple[torch.Tensor, int]]:
        """(learnable gate vector, channels each gate stands for): a head's gate counts its head_dim channels."""
        return [(g, self.head_dims.get(self._names[k], 1)) for k, g in self.gates.items()
                if self._names[k] not in self.fixed]

    def _device(self) -> torch.device:
        return next(iter(self.gates.values())).device

    def parameters(self) -> Iterator[nn.Parameter]:
        """The learnable gates (fixed groups excluded)."""
        return (g for k, g in self.gates.items() if self._names[k] not in self.fixed)

    def gate_mean(self) -> float:
        """Mean of the learnable gates (every channel counts once): the sparsity the loss steers to r."""
        with torch.no_grad():
            return float(self.penalty_mean())

    def penalty_mean(self) -> torch.Tensor:
        total = sum(g.sum() * unit for g, unit in self._weights())
        return total / sum(g.numel() * unit for g, unit in self._weights())

    def nonzero_fraction(self) -> float:
        """Share of learnable gates above zero (channels counted): the sparsity the paper's code compares with r."""
        with torch.no_grad():
            weights = self._weights()
            return float(sum((g > 0).sum() * unit for g, unit in weights) / sum(g.numel() * unit for g, unit in weights))

    def clamp_(self) -> None:
        with torch.no_grad():
            for g in self.parameters():
                g.clamp_(0.0, 1.0)

    def snapshot(self) -> dict[str, list[float]]:
        return {self._names[k]: g.detach().cpu().tolist() for k, g in self.gates.items()}

    # ------------------------------------------------------------------------------ wiring
    def _attach(self) -> None:
        modules = dict(self.model.named_modules())
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._made_out_of_place = out_of_place_activations(self.model)
        covered: set[str] = set()
        for fqn, dims in self.graph.param_dims.items():
            mod_name, _, attr = fqn.rpartition(".")
            module = modules.get(mod_name)
            if not isinstance(module, _BatchNorm) or attr not in ("weight", "bias") or 0 not in dims:
                continue
            segs = dims[0]
            if any(rep != 1 for _, rep in segs):
                continue
            if getattr(module, attr) is None:
                continue
            parametrize.register_parametrization(module, attr, _GateScale(self, segs), unsafe=True)
            self._parametrized.append((module, attr))
            covered.update(k for k, _ in segs if isinstance(k, str))
        for name, head_dim in self.head_dims.items():
            covered.add(name)
            for fqn, dims in self.graph.param_dims.items():
                module = modules.get(fqn.rpartition(".")[0])
                if isinstance(module, nn.Linear) and fqn.endswith(".weight") and dims.get(1) == [(name, 1)]:
                    self._hooks.append(module.register_forward_pre_hook(self._make_input_hook(name)))
        for name, group in self.graph.groups.items():
            if name in covered:
                continue
            for producer in group.producers:
                module = modules.get(producer)
                weight = f"{producer}.weight"
                if module is None or weight not in self.graph.param_dims:
                    continue
                segs = self.graph.param_dims[weight].get(0)
                if segs is None:
                    continue
                channel_dim = -1 if isinstance(module, nn.Linear) else 1
                self._hooks.append(module.register_forward_hook(self._make_hook(segs, channel_dim)))
        self.set_search_mode()

    def _make_hook(self, segs: list, channel_dim: int):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            g = self.gate_vector(segs)
            shape = [1] * output.dim()
            shape[channel_dim] = -1
            return output * g.view(shape)

        return hook

    def _make_input_hook(self, name: str):
        def hook(_module: nn.Module, inputs: tuple) -> tuple:
            return (inputs[0] * self.channel_gates(name),) + tuple(inputs[1:])

        return hook

    def set_search_mode(self) -> None:
        """BN on batch statistics; dropout / drop-path off."""
        self.model.train()
        for m in self.model.modules():
            if isinstance(m, nn.Dropout) or type(m).__name__ in ("DropPath", "StochasticDepth"):
                m.eval()

    def remove(self) -> None:
        """Detach gates and hooks, leaving the plain model."""
        for h in self._hooks:
            h.remove()
        for module, attr in self._parametrized:
            if parametrize.is_parametrized(module, attr):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
        for m in self._made_out_of_place:
            m.inplace = True
        self._hooks.clear()
        self._parametrized.clear()
        self._made_out_of_place.clear()


def attach_gates(model: nn.Module, graph: ChannelGraph, widths: dict[str, int],
                 fixed: Iterable[str] = ()) -> GatedSupernet:
    """Freeze ``model`` (already resized to ``widths``) and attach one gate vector per group;
    ``fixed`` groups keep gates of 1 that do not learn."""
    return GatedSupernet(model, graph, widths, fixed)
