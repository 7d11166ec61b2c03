"""The channel graph's result: groups of channels that share one width, and how every parameter,
stored split size and attention product follows them (:class:`ChannelGraph`).

This is the data :func:`slimkit.graph.analyze` returns and everything above the graph reads (budget
searches, gates, G); it knows nothing of tracing. For any choice of widths it gives new parameter
shapes, parameter counts and multiply-accumulates without building the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ChannelGraph", "ChannelGroup", "Segment", "StoredSize"]


# A segment of a channel dimension: `key` is a group name (variable width) or an int (frozen
# width); `rep` multiplies it (a flatten of C×H×W feeds a Linear with C·H·W inputs; a grouped
# conv that keeps its group count reads width/groups channels per group: a fractional rep).
Segment = tuple[Any, Any]


@dataclass
class ChannelGroup:
    """Channels that must share one width."""

    name: str
    width: int  # width in the traced (source) model
    divisor: int = 1  # structural divisor (grouped convs keep their group width)
    can_expand: bool = True  # False where a no-op slice to a stored width would truncate
    producers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)


@dataclass
class StoredSize:
    """A split size kept on a module (``self.splits``, ``self.width``, ``self.expand_chs // 2``)
    that G must rewrite when the pieces it splits change width."""

    module: str  # module path, "" for the root model
    attr: str
    original: Any  # the source value (an int, or a list/tuple of piece widths)
    pieces: list[list[Segment]]  # each piece's channel segments
    mult: int = 1  # an int attr holds piece width x mult (``self.expand_chs // 2``: mult 2)
    position: int | None = None  # a stored shape: only this entry follows the (single) piece
    op: str = ""  # what was split, for reports: "split_with_sizes at blocks.1.0.conv_pw"


@dataclass
class ChannelGraph:
    """Channel groups of one model at one input size, and how parameters follow them."""

    input_size: tuple[int, ...]
    groups: dict[str, ChannelGroup]
    frozen: dict[str, str]  # frozen space name -> reason
    param_dims: dict[str, dict[int, list[Segment]]]  # tensor fqn -> dim -> segments
    tensor_shapes: dict[str, tuple[int, ...]]  # every parameter and buffer, source shapes
    param_names: set[str]  # which of tensor_shapes are parameters (the rest are buffers)
    conv_kinds: dict[str, tuple[str, int]]  # conv module -> ("depthwise"|"grouped"|"dense", per)
    mac_terms: list[tuple[str, int]]  # (weight fqn, output positions) for every conv/linear call
    other_macs: int = 0  # counted MACs not from conv/linear weights or tracked attention
    unused_params: int = 0  # parameters never executed (aux heads): counted, never resized
    stored_sizes: list[StoredSize] = field(default_factory=list)  # split sizes G rewrites
    # Attention (slimkit.attention): (head segments, MACs per unit of their width) for every
    # attention product over tracked heads (and every other product linear in one width: ECA's conv
    # along the channels, GC's pooling matmul); channels per head of each head group (gates are per
    # head there); attention modules G rewrites -> (kind, head_dim).
    attention_terms: list[tuple[list[Segment], int]] = field(default_factory=list)
    head_dims: dict[str, int] = field(default_factory=dict)
    attention_modules: dict[str, tuple[str, int]] = field(default_factory=dict)
    # What was traced: the ATen ops in order and every parameter/buffer shape, hashed. Equal
    # fingerprints mean the same computation up to weight values (a plan of user code records it).
    fingerprint: str = ""

    # ----------------------------------------------------------------------------- widths
    def full_widths(self) -> dict[str, int]:
        return {name: g.width for name, g in self.groups.items()}

    def _check(self, widths: dict[str, int]) -> None:
        unknown = set(widths) - set(self.groups)
        if unknown:
            raise KeyError(f"unknown channel groups: {sorted(unknown)[:5]}")

    def shapes(self, widths: dict[str, int]) -> dict[str, tuple[int, ...]]:
        """Shape of every parameter/buffer that changes when groups take ``widths``."""
        self._check(widths)
        out: dict[str, tuple[int, ...]] = {}
        for fqn, dims in self.param_dims.items():
            shape = list(self.tensor_shapes[fqn])
            for dim, segs in dims.items():
                shape[dim] = int(sum(  # reps may be fractions (grouped convs keeping their count)
                    (widths.get(k, self.groups[k].width) if isinstance(k, str) else k) * rep
                    for k, rep in segs
                ))
            if tuple(shape) != self.tensor_shapes[fqn]:
                out[fqn] = tuple(shape)
        return out

    def stored_size_values(self, widths: dict[str, int]) -> dict[tuple[str, str], Any]:
        """(module, attr) -> new value of every stored split size that ``widths`` change."""
        self._check(widths)
        out: dict[tuple[str, str], Any] = {}
        for s in self.stored_sizes:
            piece_widths = [int(sum((widths.get(k, self.groups[k].width) if isinstance(k, str) else k) * rep
                                    for k, rep in segs)) for segs in s.pieces]
            if s.position is not None:
                value: Any = type(s.original)(piece_widths[0] if i == s.position else v
                                              for i, v in enumerate(s.original))
            elif isinstance(s.original, (list, tuple)):
                value = type(s.original)(piece_widths)
            else:
                value = piece_widths[0] * s.mult
            if value != s.original:
                out[(s.module, s.attr)] = value
        return out

    def count_flops(self, widths: dict[str, int] | None = None) -> int:
        """FLOPs as the papers and ``slimkit.count_flops`` count them: multiply-accumulates of conv/linear
        layers (and attention products) at ``input_size``, batch 1, for these widths (default: full)."""
        shapes = self.shapes(widths) if widths else {}
        total = self.other_macs + self.attention_macs(widths)
        for fqn, positions in self.mac_terms:
            total += positions * math.prod(shapes.get(fqn, self.tensor_shapes[fqn]))
        return total

    def attention_macs(self, widths: dict[str, int] | None = None) -> int:
        """MACs of attention's matrix products (Q·Kᵀ and softmax·V): linear in the heads."""
        widths = widths or {}
        return int(sum(
            coefficient * sum((widths.get(k, self.groups[k].width) if isinstance(k, str) else k) * rep
                              for k, rep in segs)
            for segs, coefficient in self.attention_terms
        ))

    def freeze_groups(self, names: set[str], reason: str) -> None:
        """Keep ``names`` at their full width from now on: they leave ``groups`` for ``frozen``, and
        every tensor, stored split size and attention product that followed them keeps its width."""
        def fixed(segs: list[Segment]) -> list[Segment]:
            return [((self.groups[k].width if k in names else k), rep) for k, rep in segs]

        for fqn in list(self.param_dims):
            dims = {d: fixed(segs) for d, segs in self.param_dims[fqn].items()}
            if any(isinstance(k, str) for segs in dims.values() for k, _ in segs):
                self.param_dims[fqn] = dims
            else:
                del self.param_dims[fqn]
        for stored in self.stored_sizes:
            stored.pieces = [fixed(piece) for piece in stored.pieces]
        self.attention_terms = [(fixed(segs), c) for segs, c in self.attention_terms]
        for name in sorted(names):
            self.head_dims.pop(name, None)
            self.frozen[name] = reason
            del self.groups[name]

    def count_params(self, widths: dict[str, int] | None = None) -> int:
        shapes = self.shapes(widths) if widths else {}
        return self.unused_params + sum(
            math.prod(shapes.get(fqn, shape))
            for fqn, shape in self.tensor_shapes.items()
            if fqn in self.param_names
        )

