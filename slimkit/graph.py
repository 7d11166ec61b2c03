"""Channel groups: which channels of a traced network must keep one width.

The network is captured with ``torch.export(..., strict=False)`` (it captures every timm and
torchvision CNN we tried, with exact shapes on every node) and each tensor's channel dimension is
followed through the ATen graph. Every conv/linear output starts a *channel space*; spaces are
merged (union-find) where an operation forces equal widths: residual adds and other element-wise
ops, depthwise and grouped convolutions, BatchNorm/LayerNorm, squeeze-excite multiplies, layer
scales. Concatenations are kept as ordered lists of spaces, so DenseNet/Inception concats work.

Channels split into fixed pieces (``split``/``chunk``, mixed-kernel convs, Res2Net scales, CSP
halves, radix/shuffle reshapes to ``(k, C/k)``) make each piece a space of its own; pieces that
must stay equal (``chunk``, an ``int`` split size, a reshape to ``k`` rows) are merged. Where the
sizes are stored on the calling module (found from the traced source line, e.g.
``torch.split(x, self.splits, 1)``), the graph records a :class:`StoredSize` so G rewrites them.

Anything the analysis cannot prove width-agnostic (splits whose sizes it cannot find, reshapes to
stored widths, matmuls) *freezes* the spaces involved: they keep their full width.
That is the safe answer Torch-Pruning lacks: a frozen group costs some pruning freedom, never a
broken network. The network input and the logits are frozen by definition.

The result, :class:`ChannelGraph`, knows for every parameter which dimensions follow which group,
so it can give new parameter shapes, parameter counts and multiply-accumulates for any choice of
widths without building the model (that is what makes threshold searches fast); the generator
then applies those shapes to real modules.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import linecache
import logging
import math
import operator
import re
from fractions import Fraction
import warnings
from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from slimkit.attention import AttentionAnalysis
from slimkit.errors import SlimkitError

__all__ = ["ChannelGroup", "ChannelGraph", "GraphError", "StoredSize", "analyze", "failing_module", "model_error",
           "Segment"]


class GraphError(SlimkitError, RuntimeError):
    """The model could not be traced or analysed (a user-facing error: bad input sizes end here)."""


# What torch and timm say when an input is too small or of a size a model cannot take, in words.
_SIZE_TEXTS = (
    ("Kernel size can't be greater than actual input size", "its feature maps become smaller than a kernel"),
    ("Output size is too small", "its feature maps shrink to nothing"),
    ("doesn't match model", "it is built for one input size only"),
    ("divisible", "its sides must be divisible by the model's patch or window size"),
    ("Expected more than 1 value per channel", "its feature maps shrink to a single value"),
)


def input_size_problem(text: str) -> str | None:
    """A user's words for torch's text about an input the model cannot take (None: not about the size)."""
    return next((words for needle, words in _SIZE_TEXTS if needle in text), None)


@contextlib.contextmanager
def quiet_torch_logs() -> Iterator[None]:
    """Silence torch's own loggers meanwhile: a failed trace logs whole tracebacks (fake-tensor
    ``E...`` lines) and prints its partial graph to stderr before it raises, and the one line slimkit
    reports is what the user needs."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name == "torch" or name.startswith("torch.")]
    loggers.append(logging.getLogger("torch.fx.experimental.symbolic_shapes"))  # torch resets its level: disable
    was = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, disabled in zip(loggers, was):
            lg.disabled = disabled


def failing_module(exc: BaseException, model: nn.Module) -> str | None:
    """The innermost module of ``model`` whose code was running when ``exc`` was raised (its
    qualified name, "" for the root), or None when it did not come from the model's forward."""
    names = {id(m): n for n, m in model.named_modules()}
    found: str | None = None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if owner is not None and id(owner) in names:
            found = names[id(owner)]
        tb = tb.tb_next
    return found


def model_error(doing: str, exc: BaseException, model: nn.Module) -> GraphError:
    """One line for an unexpected failure inside a model's own code: what slimkit was doing, the
    module and class it failed in, and torch's first line of text."""
    where = failing_module(exc, model)
    text = " ".join(str(exc).split())[:200] or type(exc).__name__
    if where is not None:
        module = model.get_submodule(where) if where else model
        at = f" in module '{where or 'model'}' ({type(module).__name__})"
    else:
        at = ""
    return GraphError(f"{doing} failed{at}: {type(exc).__name__}: {text}")


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
    # attention product over tracked heads; channels per head of each head group (gates are per
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


# ------------------------------------------------------------------------------- analysis
class _Spaces:
    """Union-find over channel spaces, with the facts that must survive a merge."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.name: list[str] = []
        self.frozen: dict[int, str] = {}
        self.no_expand: set[int] = set()
        self.divisor: list[int] = []
        self.producers: list[list[str]] = []
        self.consumers: list[list[str]] = []
        # root -> segments it was re-expressed as (a residual add of one space and a concat)
        self.subst: dict[int, tuple[tuple[int, int], ...]] = {}
        # pieces of a split space: (source space name, first channel) names them "conv[0:8]"
        self.origin: dict[int, tuple[str, int]] = {}

    def expand(self, segs: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        """Segments with every substituted space replaced by what it stands for."""
        out: list[tuple[int, int]] = []
        for sid, rep in segs:
            root = self.find(sid)
            if root in self.subst:
                out.extend((s, r * rep) for s, r in self.expand(self.subst[root]))
            else:
                out.append((root, rep))
        return tuple(out)

    def substitute(self, sid: int, segs: tuple[tuple[int, int], ...], why: str) -> None:
        """Re-express space ``sid`` as the concatenation ``segs`` (all reps 1 relative to it)."""
        root = self.find(sid)
        for s, _ in segs:
            r = self.find(s)
            if root in self.frozen:
                self.freeze(r, self.frozen[root])
            if root in self.no_expand:
                self.no_expand.add(r)
            self.divisor[r] = math.lcm(self.divisor[r], self.divisor[root])
        first = self.find(segs[0][0])
        self.producers[first] = self.producers[root] + self.producers[first]
        self.consumers[first] += self.consumers[root]
        self.subst[root] = segs

    def split_space(self, sid: int, sizes: list[int]) -> list[int]:
        """Re-express space ``sid`` as consecutive new spaces of ``sizes`` (a split of its
        channels); each piece keeps the whole space's producers, consumers and constraints."""
        root = self.find(sid)
        base, offset = self.origin.get(root, (self.producers[root][0] if self.producers[root] else self.name[root], 0))
        pieces = []
        for n in sizes:
            p = self.new(n, f"{base}[{offset}:{offset + n}]")
            self.origin[p] = (base, offset)
            self.producers[p] = list(self.producers[root])
            self.consumers[p] = list(self.consumers[root])
            self.divisor[p] = self.divisor[root]
            if root in self.frozen:
                self.frozen[p] = self.frozen[root]
            if root in self.no_expand:
                self.no_expand.add(p)
            pieces.append(p)
            offset += n
        self.subst[root] = tuple((p, 1) for p in pieces)
        return pieces

    def new(self, size: int, name: str, producer: str | None = None) -> int:
        sid = len(self.parent)
        self.parent.append(sid)
        self.size.append(size)
        self.name.append(name)
        self.divisor.append(1)
        self.producers.append([producer] if producer else [])
        self.consumers.append([])
        return sid

    def find(self, sid: int) -> int:
        while self.parent[sid] != sid:
            self.parent[sid] = self.parent[self.parent[sid]]
            sid = self.parent[sid]
        return sid

    def freeze(self, sid: int, reason: str) -> None:
        self.frozen.setdefault(self.find(sid), reason)

    def union(self, a: int, b: int, why: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            self.freeze(ra, f"{why}: widths {self.size[ra]} and {self.size[rb]} differ")
            self.freeze(rb, f"{why}: widths {self.size[ra]} and {self.size[rb]} differ")
            return
        if rb < ra:  # the older space (earlier in the graph) names the union
            ra, rb = rb, ra
        self.parent[rb] = ra
        if rb in self.frozen:
            self.frozen.setdefault(ra, self.frozen.pop(rb))
        if rb in self.no_expand:
            self.no_expand.add(ra)
        self.divisor[ra] = math.lcm(self.divisor[ra], self.divisor[rb])
        self.producers[ra] += self.producers[rb]
        self.consumers[ra] += self.consumers[rb]


# A tracked channel dimension of a tensor value: (dim, ((space id, rep), ...)).
_CMap = tuple[int, tuple[tuple[int, int], ...]]


class _ParamRef:
    """A parameter or buffer flowing through the graph (before it meets activations)."""

    def __init__(self, fqn: str, shape: tuple[int, ...]):
        self.fqn, self.shape = fqn, shape


# Element-wise ops of several tensors (in-place variants share the name without "_").
_ELEMENTWISE_MULTI = {"add", "sub", "mul", "div", "where", "maximum", "minimum", "addcmul", "lerp", "copy",
                      "expand_as"}
_CONV_OPS = {"conv1d", "conv2d", "conv3d", "convolution", "_convolution"}
_NORM_BN = {"batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
            "native_batch_norm", "_native_batch_norm_legit_functional", "instance_norm"}
_SHAPE_OPS = {"view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "unflatten"}
_SPLIT_OPS = {"split", "split_with_sizes", "chunk", "unsafe_split", "unsafe_split_with_sizes", "unsafe_chunk"}
_SELF_ATTR = re.compile(r"self\.(\w+)(?:\s*//\s*(\d+))?")


def _op_name(target: Any) -> str:
    if target is operator.getitem:
        return "getitem"
    name = getattr(target, "__name__", str(target))  # "conv2d.default"
    return name.split(".")[0]


def _meta_shape(node: Any) -> tuple[int, ...] | None:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    if isinstance(val, torch.Tensor):
        return tuple(int(s) for s in val.shape)
    return None


class _Analyzer(AttentionAnalysis):
    param_ref_type = _ParamRef

    def __init__(self, ep: torch.export.ExportedProgram, model: nn.Module):
        self.ep = ep
        self.model = model
        self.sp = _Spaces()
        self.env: dict[Any, Any] = {}
        # tensor fqn -> dim -> [(space id, rep)]
        self.ties: dict[str, dict[int, list[tuple[int, int]]]] = {}
        self.conv_kinds: dict[str, tuple[str, int]] = {}
        self.mac_terms: list[tuple[str, int]] = []
        self.used: set[str] = set()
        self.stored: dict[tuple[str, str], StoredSize] = {}  # split sizes G must rewrite (sid-level pieces)
        self.init_attention()

    # --------------------------------------------------------------------------- helpers
    def freeze_value(self, v: Any, reason: str) -> None:
        if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], int):
            for sid, _ in self.sp.expand(v[1]):
                self.sp.freeze(sid, reason)
        elif isinstance(v, _ParamRef):
            self.used.add(v.fqn)
        elif isinstance(v, list):
            for item in v:
                self.freeze_value(item, reason)

    def freeze_args(self, node: Any, reason: str) -> None:
        for a in node.all_input_nodes:
            self.freeze_value(self.env.get(a), reason)

    def tie(self, fqn: str, dim: int, segs: tuple[tuple[int, int], ...], who: str) -> None:
        self.used.add(fqn)
        dims = self.ties.setdefault(fqn, {})
        if dim in dims:  # shared module called twice: both uses must agree
            old = dims[dim]
            if len(old) == len(segs) and all(o[1] == s[1] for o, s in zip(old, segs)):
                for (a, _), (b, _) in zip(old, segs):
                    self.sp.union(a, b, f"{who} shared weights")
            else:
                for sid, _ in list(old) + list(segs):
                    self.sp.freeze(sid, f"{who}: shared weights with differing inputs")
            return
        dims[dim] = list(segs)
        for sid, _ in segs:
            self.sp.consumers[self.sp.find(sid)].append(who)

    def param_cmap(self, ref: _ParamRef) -> _CMap | None:
        """A parameter used element-wise becomes a channel space of its own (e.g. a layer
        scale); merging it with an activation's space ties the parameter to that group."""
        nontrivial = [d for d, s in enumerate(ref.shape) if s > 1]
        if len(nontrivial) != 1:
            return None
        return self._param_space(ref, nontrivial[0])

    def lookup(self, a: Any) -> Any:
        if hasattr(a, "op"):
            return self.env.get(a)
        if isinstance(a, (list, tuple)):
            return [self.lookup(x) for x in a]
        return a

    def cmap_of(self, v: Any) -> _CMap | None:
        if isinstance(v, _ParamRef):
            return self.param_cmap(v)
        if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], int):
            return v
        return None

    def mark_no_expand(self, cm: _CMap | None) -> _CMap | None:
        """A full-range slice to a stored width stays a no-op when channels shrink but would
        truncate them when they grow: such channels may be pruned, not expanded."""
        if cm is not None:
            for sid, _ in self.sp.expand(cm[1]):
                self.sp.no_expand.add(sid)
        return cm

    def width(self, cm: _CMap) -> int:
        return sum(self.sp.size[s] * r for s, r in self.sp.expand(cm[1]))

    def module_of(self, fqn: str) -> str:
        return fqn.rsplit(".", 1)[0] if "." in fqn else fqn

    # --------------------------------------------------------------------------- walk
    def run(self) -> None:
        self._param_spaces: dict[tuple[str, int], int] = {}
        sig = self.ep.graph_signature
        p_map = dict(sig.inputs_to_parameters)
        b_map = dict(sig.inputs_to_buffers)
        self.shapes_by_fqn: dict[str, tuple[int, ...]] = {}
        for name, t in list(self.model.named_parameters()) + list(self.model.named_buffers()):
            self.shapes_by_fqn[name] = tuple(t.shape)
        # A module reached under two names (CoaT's shared position encodings: ``cpe1`` is also
        # ``serial_blocks1.0.cpe``) may be traced under either; each tensor is tracked under its
        # first name, the one named_parameters() gives and G resizes.
        first_name: dict[int, str] = {}
        canonical: dict[str, str] = {}
        for name, t in (list(self.model.named_parameters(remove_duplicate=False))
                        + list(self.model.named_buffers(remove_duplicate=False))):
            canonical[name] = first_name.setdefault(id(t), name)
        user_inputs = set(sig.user_inputs)
        for node in self.ep.graph.nodes:
            if node.op == "placeholder":
                fqn = p_map.get(node.name) or b_map.get(node.name)
                fqn = canonical.get(fqn, fqn) if fqn is not None else None
                if fqn is not None:
                    self.env[node] = _ParamRef(fqn, self.shapes_by_fqn.get(fqn, _meta_shape(node)))
                elif node.name in user_inputs:
                    shape = _meta_shape(node)
                    sid = self.sp.new(shape[1], "input")
                    self.sp.freeze(sid, "network input")
                    self.env[node] = (1, ((sid, 1),))
                else:  # lifted constants
                    self.env[node] = None
            elif node.op == "call_function":
                try:
                    self.env[node] = self.visit(node)
                except Exception as exc:  # an op we misread must not break analysis
                    self.freeze_args(node, f"{_op_name(node.target)}: {exc}")
                    self.env[node] = None
                self.check_width(node)
            elif node.op == "output":
                for a in node.all_input_nodes:
                    self.freeze_value(self.env.get(a), "network output")

    def check_width(self, node: Any) -> None:
        """Safety net: a tracked dim whose width disagrees with the real shape is frozen."""
        v = self.env.get(node)
        if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], int):
            shape = _meta_shape(node)
            if shape is None or v[0] >= len(shape) or shape[v[0]] != self.width(v):
                self.freeze_value(v, f"{_op_name(node.target)}: channel bookkeeping mismatch")
                self.env[node] = None

    def visit(self, node: Any) -> Any:
        op = _op_name(node.target)
        args = list(node.args)
        ins = [self.lookup(a) for a in args]
        out_shape = _meta_shape(node)
        ins = self.bind_param_operands(op, args, ins, out_shape)

        if op in _CONV_OPS:
            return self.visit_conv(node, ins, out_shape)
        if op in _NORM_BN:
            return self.visit_norm(node, ins, [1, 2, 3, 4])
        if op == "layer_norm":
            return self.visit_layer_norm(node, ins)
        if op == "group_norm":
            return self.visit_group_norm(ins, args)
        if op == "linear":
            return self.visit_linear(node, ins, out_shape)
        if op == "getitem":
            src, idx = ins[0], ins[1]
            if isinstance(src, list) and isinstance(idx, int) and idx < len(src):
                return src[idx]
            return None
        if op == "flatten":
            return self.visit_flatten(node, ins[0], args[1] if len(args) > 1 else 0,
                                      args[2] if len(args) > 2 else -1)
        if op in _SPLIT_OPS:
            return self.visit_split(node, op, ins, args)
        if op in _SHAPE_OPS:
            return self.visit_reshape(node, ins[0], out_shape)
        if op == "permute":
            cm = self.cmap_of(ins[0])
            if cm is None:
                return None
            dims = [d % len(args[1]) for d in args[1]]
            return (dims.index(cm[0]), cm[1])
        if op in ("transpose", "swapaxes"):
            cm = self.cmap_of(ins[0])
            if cm is None:
                return None
            nd = len(_meta_shape(args[0]))
            a, b = args[1] % nd, args[2] % nd
            return (b if cm[0] == a else a if cm[0] == b else cm[0], cm[1])
        if op == "cat":
            return self.visit_cat(node, ins[0], args[0], args[1] if len(args) > 1 else 0)
        if op == "stack":  # (selective-kernel paths): inputs share channels, a new dim appears
            shape = _meta_shape(args[0][0])
            dim = (args[1] if len(args) > 1 else 0) % (len(shape) + 1)
            res = self.visit_elementwise("stack", [(a, self.cmap_of(v)) for a, v in zip(args[0], ins[0])], shape)
            return None if res is None else (res[0] + 1 if dim <= res[0] else res[0], res[1])
        if op in ("mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp"):
            return self.visit_reduce(node, ins, args, out_shape)
        if op == "linalg_vector_norm":  # (x, ord, dim, keepdim): F.normalize's norm, SSD300's L2Norm on conv4_3
            dim = args[2] if len(args) > 2 else node.kwargs.get("dim")
            keepdim = args[3] if len(args) > 3 else node.kwargs.get("keepdim", False)
            return self.visit_reduce(node, ins[:1], [args[0], dim, keepdim], out_shape)
        if op == "alias":
            # timm's GhostNet slices out[:, :self.out_chs]; export sees a no-op alias.
            return self.mark_no_expand(self.cmap_of(ins[0]))
        if op == "slice":
            return self.visit_slice(node, ins, args, out_shape)
        if op in ("new_zeros", "new_ones", "new_full", "new_empty"):
            return None  # a fresh constant tensor: only the input's dtype/device are read
        if op == "unbind":
            return self.visit_unbind(node, ins, args)
        if op == "select":
            return self.visit_select(node, ins, args)
        if op == "index":
            return self.visit_index(node, ins, args)
        if op == "scaled_dot_product_attention":
            return self.visit_sdpa(node, ins, args)
        if op in ("matmul", "bmm") and out_shape is not None:
            product = self.visit_matmul(node, ins, args, out_shape)
            if product is not None:
                return product

        tensor_ins = [(a, v) for a, v in zip(args, ins) if hasattr(a, "op") and _meta_shape(a) is not None]
        tracked = [(a, self.cmap_of(v)) for a, v in tensor_ins]
        if not any(cm is not None for _, cm in tracked):
            for _, v in tensor_ins:
                if isinstance(v, _ParamRef):
                    self.used.add(v.fqn)
            return None
        if len(tensor_ins) == 1:
            # Single-tensor ops (activations, pooling, dropout, interpolation, softmax, ...) are
            # width-agnostic when they keep the channel dimension where it was.
            (a, cm), = tracked
            in_shape = _meta_shape(a)
            if out_shape is not None and len(out_shape) == len(in_shape) and out_shape[cm[0]] == in_shape[cm[0]]:
                return cm
            self.freeze_value(cm, f"{op} changes the channel dimension")
            return None
        if op.rstrip("_") in _ELEMENTWISE_MULTI and out_shape is not None:
            return self.visit_elementwise(op, tracked, out_shape)
        self.freeze_args(node, f"{op} mixes channels")
        return None

    def stored_groups(self, node: Any, module: str, groups: int, segs: tuple[tuple[int, int], ...]) -> None:
        """A functional depthwise conv (timm's BlurPool2d: ``F.conv2d(x, self.filt,
        groups=channels)`` with ``channels = self.channels``) reads its group count from the
        module: G rewrites it with the width. Conv modules' ``groups`` G sets itself."""
        try:
            owner = self.model.get_submodule(module) if module else self.model
        except AttributeError:
            return
        if isinstance(owner, nn.modules.conv._ConvNd) or (module, "groups") in self.stored:
            return
        attrs = {attr for attr, value, div in self.stored_candidates(module, self.function_text(node))
                 if div == 1 and isinstance(value, int) and value == groups}
        if len(attrs) == 1:
            attr = attrs.pop()
            self.stored.setdefault((module, attr), StoredSize(module=module, attr=attr, original=groups,
                                                              pieces=[list(segs)], op=f"conv groups at {module}"))

    # ------------------------------------------------------------------------ op handlers
    def visit_conv(self, node: Any, ins: list, out_shape: tuple[int, ...]) -> _CMap:
        x, w = ins[0], ins[1]
        b = ins[2] if len(ins) > 2 else None
        if not isinstance(w, _ParamRef):
            raise ValueError("convolution with a computed weight")
        groups = _meta_shape(node.args[0])[1] // w.shape[1]  # robust to omitted default args
        module = self.module_of(w.fqn)
        cm = self.cmap_of(x)
        out_ch, in_per_group = w.shape[0], w.shape[1]
        self.used.add(w.fqn)
        self.mac_terms.append((w.fqn, math.prod(out_shape) // out_ch))
        in_segs = cm[1] if cm else None
        if groups == 1:
            if in_segs is not None:
                self.tie(w.fqn, 1, in_segs, module)
            sid = self.sp.new(out_ch, module, producer=module)
            segs = ((sid, 1),)
            self.conv_kinds.setdefault(module, ("dense", 1))
        elif in_per_group == 1 and out_ch == groups and in_segs is not None:
            # Depthwise: output channels are the input's (concat pieces included).
            segs = in_segs
            for s_, _ in self.sp.expand(in_segs):
                self.sp.producers[self.sp.find(s_)].append(module)
            self.conv_kinds[module] = ("depthwise", 1)
            self.stored_groups(node, module, groups, in_segs)
        elif in_per_group == out_ch // groups and in_segs is not None and len(in_segs) == 1 and in_segs[0][1] == 1:
            # Grouped convs with equal in/out group widths: output channels are the input's.
            # Keep whichever of (group width, group count) gives the finer width steps: ResNeXt
            # (32 groups of 4) keeps its group width, RegNet (few groups of up to 232) its count.
            segs = in_segs
            root = self.sp.find(in_segs[0][0])
            if groups < in_per_group:
                self.sp.divisor[root] = math.lcm(self.sp.divisor[root], groups)
                self.conv_kinds[module] = ("grouped_fixed", groups)
                self.tie(w.fqn, 1, ((in_segs[0][0], Fraction(1, groups)),), module)
            else:
                self.sp.divisor[root] = math.lcm(self.sp.divisor[root], in_per_group)
                self.conv_kinds[module] = ("grouped", in_per_group)
            self.sp.producers[root].append(module)
        elif (pieces := self.split_segments(cm, [in_per_group] * groups) if cm and groups <= 64 else None) \
                and self.tie_pieces(pieces, f"{module} groups"):
            # Grouped convs whose groups widen or narrow (ResNeSt's radix conv): the group count
            # stays, each group reads one tied input piece and writes one tied output piece.
            self.tie(w.fqn, 1, pieces[0], module)
            sid = self.sp.new(out_ch, module, producer=module)
            rows = self.sp.split_space(sid, [out_ch // groups] * groups)
            for row in rows[1:]:
                self.sp.union(rows[0], row, f"{module} groups")
            segs = self.sp.expand(((sid, 1),))
            self.conv_kinds[module] = ("grouped_fixed", groups)
        else:
            if cm:
                self.freeze_value(cm, f"{module}: grouped conv with unequal group widths")
            sid = self.sp.new(out_ch, module, producer=module)
            self.sp.freeze(sid, f"{module}: grouped conv with unequal group widths")
            segs = ((sid, 1),)
            self.conv_kinds[module] = ("frozen", in_per_group)
        self.tie(w.fqn, 0, segs, module)
        if isinstance(b, _ParamRef):
            self.tie(b.fqn, 0, segs, module)
        return (1, segs)

    def visit_norm(self, node: Any, ins: list, param_positions: list[int]) -> Any:
        cm = self.cmap_of(ins[0])
        refs = [ins[i] for i in param_positions if i < len(ins) and isinstance(ins[i], _ParamRef)]
        if cm is None or cm[0] != 1:
            for r in refs:
                self.used.add(r.fqn)
            if cm is not None:
                self.freeze_value(cm, "normalisation over an untracked dimension")
            return None
        for r in refs:
            self.tie(r.fqn, 0, cm[1], self.module_of(r.fqn))
        if isinstance(node.meta.get("val"), (tuple, list)):
            return [cm] + [None] * (len(node.meta["val"]) - 1)
        return cm

    def visit_group_norm(self, ins: list, args: list) -> Any:
        """GroupNorm keeps its group count: the width must stay a multiple of it."""
        cm = self.cmap_of(ins[0])
        refs = [v for v in ins[2:4] if isinstance(v, _ParamRef)]
        if cm is None or cm[0] != 1 or not isinstance(args[1], int):
            self.freeze_value(cm, "group_norm over an untracked dimension")
            for r in refs:
                self.used.add(r.fqn)
            return None
        segs = self.sp.expand(cm[1])
        if args[1] > 1:
            if len(segs) > 1:
                self.freeze_value(cm, f"group_norm with {args[1]} groups over concatenated channels")
                return None
            root = self.sp.find(segs[0][0])
            self.sp.divisor[root] = math.lcm(self.sp.divisor[root], args[1])
        for r in refs:
            self.tie(r.fqn, 0, cm[1], self.module_of(r.fqn))
        return cm

    def visit_layer_norm(self, node: Any, ins: list) -> Any:
        cm = self.cmap_of(ins[0])
        shape = _meta_shape(node.args[0])
        normalized = list(node.args[1])
        refs = [v for v in ins[2:4] if isinstance(v, _ParamRef)]
        if cm is None:
            for r in refs:
                self.used.add(r.fqn)
            return None
        if cm[0] == len(shape) - 1 and len(normalized) == 1:
            for r in refs:
                self.tie(r.fqn, 0, cm[1], self.module_of(r.fqn))
            return cm
        if cm[0] < len(shape) - len(normalized):  # normalising other dims: width-agnostic
            for r in refs:
                self.used.add(r.fqn)
            return cm
        self.freeze_value(cm, "layer_norm over channels and other dims")
        for r in refs:
            self.used.add(r.fqn)
        return None

    def visit_linear(self, node: Any, ins: list, out_shape: tuple[int, ...]) -> _CMap:
        x, w = ins[0], ins[1]
        b = ins[2] if len(ins) > 2 else None
        if not isinstance(w, _ParamRef):
            raise ValueError("linear with a computed weight")
        module = self.module_of(w.fqn)
        self.used.add(w.fqn)
        self.mac_terms.append((w.fqn, math.prod(out_shape) // w.shape[0]))
        cm = self.cmap_of(x)
        in_ndim = len(_meta_shape(node.args[0]))
        if cm is not None:
            if cm[0] == in_ndim - 1:
                self.tie(w.fqn, 1, cm[1], module)
            else:
                self.freeze_value(cm, f"{module}: linear over a non-channel dimension")
        sid = self.sp.new(w.shape[0], module, producer=module)
        self.tie(w.fqn, 0, ((sid, 1),), module)
        if isinstance(b, _ParamRef):
            self.tie(b.fqn, 0, ((sid, 1),), module)
        return (len(out_shape) - 1, ((sid, 1),))

    def visit_flatten(self, node: Any, v: Any, start: int, end: int) -> Any:
        cm = self.cmap_of(v)
        if cm is None:
            return None
        shape = _meta_shape(node.args[0])
        nd = len(shape)
        start, end = start % nd if nd else 0, end % nd if nd else 0
        d = cm[0]
        if d < start:
            return cm
        if d > end:
            return (d - (end - start), cm[1])
        # Each channel becomes a run of the inner dims' size (H·W features after a channel-major
        # flatten); fixed outer dims (a radix of k rows, Swin's 2x2 patch merging) repeat the whole
        # channel list k times. Many copies (a spatial flatten with channels last) freeze instead.
        outer, inner = math.prod(shape[start:d]), math.prod(shape[d + 1 : end + 1])
        if outer > 64:
            self.freeze_value(cm, "flatten with channels not leading")
            return None
        return (start, tuple((s, r * inner) for s, r in cm[1]) * outer)

    def visit_reshape(self, node: Any, v: Any, out_shape: tuple[int, ...] | None) -> Any:
        cm = self.cmap_of(v)
        if cm is None or out_shape is None:
            return None
        in_shape = _meta_shape(node.args[0])
        d = cm[0]
        # Only squeeze/unsqueeze-like reshapes (same non-1 dims in order) and channel-major
        # flattens are width-agnostic; anything else (channel shuffle, head splits) freezes.
        in_nz = [(i, s) for i, s in enumerate(in_shape) if s != 1]
        out_nz = [(i, s) for i, s in enumerate(out_shape) if s != 1]
        if [s for _, s in in_nz] == [s for _, s in out_nz] and in_shape[d] != 1:
            k = [i for i, _ in in_nz].index(d)
            return self.stored_shape(node, (out_nz[k][0], cm[1]), out_shape)
        if (tuple(out_shape[:d]) == tuple(in_shape[:d]) and len(out_shape) == d + 1
                and out_shape[d] == math.prod(in_shape[d:])):
            rep = math.prod(in_shape[d + 1:])
            return (d, tuple((s, r * rep) for s, r in cm[1]))
        reshaped = self.reshape_channels(node, cm, in_shape, out_shape)  # attention heads, windows (attention.py)
        if reshaped is not None:
            return reshaped
        return self.visit_reshape_pieces(node, cm, in_shape, out_shape)

    def stored_shape(self, node: Any, cm: _CMap, out_shape: tuple[int, ...]) -> _CMap:
        """A reshape to a shape stored on the module (timm's metaformer ``Scale``:
        ``self.scale.view(self.shape)``) is recorded so G rewrites the channel entry."""
        module, line = self.call_site(node)
        if "self." not in line:
            return cm
        matches = [(attr, value) for attr, value, div in self.stored_candidates(module, line)
                   if div == 1 and isinstance(value, (list, tuple)) and len(value) > 1
                   and tuple(value) == tuple(out_shape[len(out_shape) - len(value):])]
        if len(matches) == 1:
            attr, value = matches[0]
            key = (module, attr)
            if key not in self.stored:
                self.stored[key] = StoredSize(module=module, attr=attr, original=value, pieces=[list(cm[1])],
                                              position=cm[0] - (len(out_shape) - len(value)),
                                              op=f"reshape at {module} (`{line}`)")
        return cm

    # ------------------------------------------------------------------- splits of channels
    def call_site(self, node: Any) -> tuple[str, str]:
        """(module path, source line) of the Python code that issued ``node``."""
        stack = node.meta.get("nn_module_stack") or {}
        module = re.sub(r"@\d+$", "", list(stack.values())[-1][0]) if stack else ""
        line = ""
        frames = re.findall(r'File "([^"]+)", line (\d+)', node.meta.get("stack_trace") or "")
        if frames:
            path, lineno = frames[-1]
            line = linecache.getline(path, int(lineno)).strip()
        return module, line

    def function_text(self, node: Any) -> str:
        """The calling function's source up to the op's line (``H, DH = self.n_heads,
        self.head_dim`` a few lines above a reshape counts as stored)."""
        frames = re.findall(r'File "([^"]+)", line (\d+)', node.meta.get("stack_trace") or "")
        if not frames:
            return ""
        path, lineno = frames[-1][0], int(frames[-1][1])
        lines = []
        for n in range(lineno, max(0, lineno - 80), -1):
            text = linecache.getline(path, n)
            lines.append(text)
            if re.match(r"\s*def ", text):
                break
        return "".join(reversed(lines))

    def stored_candidates(self, module: str, line: str) -> list[tuple[str, Any, int]]:
        """``self.X`` (and ``self.X // N``) on ``line``: (attr, value, N) for the calling module."""
        try:
            owner = self.model.get_submodule(module) if module else self.model
        except AttributeError:
            return []
        out = []
        for attr, div in _SELF_ATTR.findall(line):
            value = getattr(owner, attr, None)
            if isinstance(value, (int, list, tuple)) and not isinstance(value, bool):
                out.append((attr, value, int(div) if div else 1))
        return out

    def split_segments(self, cm: _CMap, sizes: list[int]) -> list[tuple[tuple[int, int], ...]] | None:
        """Cut ``cm``'s channel list into consecutive pieces of ``sizes``; a space that straddles a
        cut is split in two (a new space each side). A space repeated ``rep`` times per channel
        (after a channel shuffle) can only be cut between repeats; None where a cut is not."""
        segs = list(self.sp.expand(cm[1]))
        if any(not isinstance(rep, int) for _, rep in segs) or sum(self.sp.size[s] * r for s, r in segs) != sum(sizes):
            return None
        pieces: list[tuple[tuple[int, int], ...]] = []
        k = 0
        for want in sizes:
            piece: list[tuple[int, int]] = []
            while want > 0:
                sid, rep = segs[k]
                n = self.sp.size[sid] * rep
                if n > want:  # the cut falls inside this space
                    if want % rep:
                        return None
                    head, tail = self.sp.split_space(sid, [want // rep, (n - want) // rep])
                    segs[k: k + 1] = [(head, rep), (tail, rep)]
                    sid, n = head, want
                piece.append((sid, rep))
                want -= n
                k += 1
            pieces.append(tuple(piece))
        return pieces

    def tie_pieces(self, pieces: list[tuple[tuple[int, int], ...]], why: str) -> bool:
        """Pieces that must keep equal widths (chunk, an int split size, a reshape to k rows)
        become one channel list: aligned spaces merge, a lone space takes the other's structure."""
        ref = max(pieces, key=len)
        for piece in pieces:
            segs, ref_segs = self.sp.expand(piece), self.sp.expand(ref)
            if len(segs) == len(ref_segs) and all(self.sp.size[a] == self.sp.size[b] and ra == rb
                                                  for (a, ra), (b, rb) in zip(segs, ref_segs)):
                for (a, _), (b, _) in zip(ref_segs, segs):
                    self.sp.union(a, b, why)
            elif (len(segs) == 1 and segs[0][1] == 1 and self.sp.find(segs[0][0]) not in self.sp.frozen
                  and all(self.sp.find(s) != self.sp.find(segs[0][0]) for s, _ in ref_segs)):
                # (after a channel shuffle the other piece may hold each channel `rep` times)
                self.sp.substitute(segs[0][0], tuple(ref_segs), why)
            else:
                return False
        return True

    def visit_split(self, node: Any, op: str, ins: list, args: list) -> Any:
        cm = self.cmap_of(ins[0])
        vals = node.meta.get("val")
        if cm is None or not isinstance(vals, (list, tuple)):
            return None
        in_shape = _meta_shape(args[0])
        dim = (args[2] if len(args) > 2 else node.kwargs.get("dim", 0)) % len(in_shape)
        if dim != cm[0]:  # split along tokens/space: every piece keeps the channels
            return [cm] * len(vals)
        sizes = [int(v.shape[dim]) for v in vals]
        module, line = self.call_site(node)
        where = f"{op} at {module or 'the model'} (`{line}`)" if line else f"{op} at {module or 'the model'}"

        def give_up(why: str) -> None:
            self.freeze_value(cm, f"{where}: {why}")
            return None

        equal = op.endswith("chunk") or isinstance(args[1], int)
        if equal and len(set(sizes)) != 1:
            return give_up(f"pieces {sizes} are unequal, so the split cannot keep its count when widths change")
        rule = None
        if not op.endswith("chunk"):  # a chunk count follows any width; stored sizes must be rewritten
            matches = []
            for attr, value, div in self.stored_candidates(module, line):
                if equal and isinstance(value, int) and value // div == sizes[0] and value % div == 0:
                    matches.append((attr, value, div))
                elif not equal and isinstance(value, (list, tuple)) and list(value) == sizes:
                    matches.append((attr, value, 1))
            if len({m[0] for m in matches}) != 1:
                return give_up("the sizes are not a stored attribute of the module slimkit can rewrite" if not matches
                               else f"several stored attributes match the sizes ({', '.join(m[0] for m in matches)})")
            rule = matches[0]
        pieces = self.split_segments(cm, sizes)
        if pieces is None:
            return give_up("the split channels are repeated copies, their pieces cannot be told apart")
        if equal and not self.tie_pieces(pieces, op):
            return give_up("pieces cannot be tied to one width")
        if rule is not None:
            attr, value, div = rule
            key = (module, attr)
            old = self.stored.get(key)
            if old is not None:  # a module called twice: both calls' pieces must agree
                if len(old.pieces) != len(pieces) or not self.tie_pieces([tuple(old.pieces[0]), pieces[0]], op):
                    return give_up(f"self.{attr} splits inputs of different structure")
            else:
                self.stored[key] = StoredSize(module=module, attr=attr, original=value, mult=div,
                                              pieces=[list(p) for p in pieces], op=where)
        return [(dim, p) for p in pieces]

    def visit_reshape_pieces(self, node: Any, cm: _CMap, in_shape: tuple[int, ...],
                             out_shape: tuple[int, ...]) -> Any:
        """Reshapes that split channels into (k rows, C/k) or merge such rows back (radix /
        split-attention, channel shuffle). The row count k is a fixed count and each row a piece:
        rows are tied to one width. A reshape to a width stored on the module freezes instead."""
        d = cm[0]
        in_nz = [(i, s) for i, s in enumerate(in_shape) if s != 1]
        out_nz = [(i, s) for i, s in enumerate(out_shape) if s != 1]
        chunk = None  # the run of input dims and output dims holding the channels
        a = b = 0
        while a < len(in_nz) and b < len(out_nz):
            ins_, outs_ = [in_nz[a]], [out_nz[b]]
            pin, pout = in_nz[a][1], out_nz[b][1]
            while pin != pout:
                if pin < pout and a + 1 < len(in_nz):
                    a += 1
                    ins_.append(in_nz[a])
                    pin *= in_nz[a][1]
                elif pout < pin and b + 1 < len(out_nz):
                    b += 1
                    outs_.append(out_nz[b])
                    pout *= out_nz[b][1]
                else:
                    break
            if pin != pout:
                break
            if any(i == d for i, _ in ins_):
                chunk = (ins_, outs_)
                break
            a, b = a + 1, b + 1
        why = f"reshape {list(in_shape)} -> {list(out_shape)}"
        if chunk is None:
            self.freeze_value(cm, why)
            return None
        ins_, outs_ = chunk
        if len(ins_) == 1 and len(outs_) == 2:  # C -> (k, C/k): k rows of one width
            (_, k), (o_m, m) = outs_
            module, line = self.call_site(node)
            stored = [attr for attr, value, div in self.stored_candidates(module, self.function_text(node))
                      if isinstance(value, int) and value // div == m]
            if stored or k == m:
                reason = (f"the row width is the stored self.{stored[0]}, which slimkit cannot rewrite" if stored
                          else "rows and row width are equal, so which one is the fixed count is unknown")
                self.freeze_value(cm, f"{why} at {module} (`{line}`): {reason}")
                return None
            pieces = self.split_segments(cm, [m] * k)
            if pieces is None or not self.tie_pieces(pieces, "reshape"):
                self.freeze_value(cm, f"{why}: its {k} rows cannot be tied to one width")
                return None
            return (o_m, pieces[0])
        if len(outs_) == 1:  # (k, C) -> k·C (and channel-major merges): copies of the channel list
            pos = [i for i, _ in ins_].index(d)
            outer = math.prod(s for _, s in ins_[:pos])
            inner = math.prod(s for _, s in ins_[pos + 1:])
            return (outs_[0][0], tuple((s, r * inner) for s, r in cm[1]) * outer)
        self.freeze_value(cm, why)
        return None

    def visit_cat(self, node: Any, vals: list, arg_nodes: list, dim: int) -> Any:
        shapes = [_meta_shape(a) for a in arg_nodes]
        nd = len(shapes[0])
        dim %= nd
        cms = [self.cmap_of(v) for v in vals]
        if any(cm is not None and cm[0] == dim for cm in cms):
            segs: list[tuple[int, int]] = []
            for cm, shape in zip(cms, shapes):
                if cm is not None and cm[0] == dim:
                    segs.extend(cm[1])
                else:  # an untracked piece keeps its width
                    if cm is not None:
                        self.freeze_value(cm, "concatenated with channels elsewhere")
                    sid = self.sp.new(shape[dim], "cat-constant")
                    self.sp.freeze(sid, "untracked input of a concat")
                    segs.append((sid, 1))
            return (dim, tuple(segs))
        # concatenation along another dim (batch/tokens): the channel dims must agree
        tracked = [(a, cm) for a, cm in zip(arg_nodes, cms)]
        return self.visit_elementwise("cat", tracked, tuple(_meta_shape(node)))

    def visit_reduce(self, node: Any, ins: list, args: list, out_shape: Any) -> Any:
        cm = self.cmap_of(ins[0])
        if cm is None:
            return None
        in_shape = _meta_shape(args[0])
        nd = len(in_shape)
        dims = args[1] if len(args) > 1 else None
        if dims is None or dims == []:
            return None
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [d % nd for d in dims]
        if cm[0] in dims:
            return None  # channels reduced away: works for any width
        keepdim = bool(args[2]) if len(args) > 2 else bool(node.kwargs.get("keepdim", False))
        d = cm[0] if keepdim else cm[0] - sum(1 for x in dims if x < cm[0])
        return (d, cm[1])

    def visit_slice(self, node: Any, ins: list, args: list, out_shape: Any) -> Any:
        cm = self.cmap_of(ins[0])
        if cm is None:
            return None
        in_shape = _meta_shape(args[0])
        dim = (args[1] if len(args) > 1 else 0) % len(in_shape)
        if dim != cm[0]:
            return cm
        if out_shape is not None and out_shape[dim] == in_shape[dim]:
            return self.mark_no_expand(cm)
        self.freeze_value(cm, "slice of channels to a fixed width")
        return None

    def visit_elementwise(self, op: str, tracked: list, out_shape: tuple[int, ...]) -> Any:
        nd = len(out_shape)
        aligned: list[tuple[int, _CMap]] = []
        for a, cm in tracked:
            shape = _meta_shape(a)
            if cm is None:
                continue
            aligned.append((cm[0] + nd - len(shape), cm))
        out_dim = aligned[0][0]
        ref = aligned[0][1]
        ok = all(d == out_dim for d, _ in aligned)
        for a, cm in tracked:
            if cm is not None:
                continue
            shape = _meta_shape(a)
            k = out_dim - (nd - len(shape))
            if 0 <= k < len(shape) and shape[k] != 1:
                ok = False  # an untracked full-width operand: its width cannot follow
        if ok:
            # Align each operand with the most finely segmented one; a single space facing a
            # concat (GhostNet's shortcut + cat([primary, cheap])) is re-expressed as that concat.
            ref = max((cm for _, cm in aligned), key=lambda cm: len(self.sp.expand(cm[1])))
            ref_segs = self.sp.expand(ref[1])
            for _, cm in aligned:
                segs = self.sp.expand(cm[1])
                if len(segs) == len(ref_segs) and all(x[1] == y[1] for x, y in zip(segs, ref_segs)):
                    for (a, _), (b, _) in zip(ref_segs, segs):
                        self.sp.union(a, b, op)
                elif (len(segs) == 1 and segs[0][0] not in self.sp.frozen
                      and all(r == segs[0][1] for _, r in ref_segs)
                      and all(self.sp.find(s) != segs[0][0] for s, _ in ref_segs)):
                    self.sp.substitute(segs[0][0], tuple((s, 1) for s, _ in ref_segs), op)
                elif self.unify_scaled(ref_segs, segs):  # a per-head bias added to attention
                    pass
                else:
                    ok = False
                    break
        if not ok:
            for _, cm in aligned:
                self.freeze_value(cm, f"{op}: operands' channels do not line up")
            return None
        return (out_dim, ref[1])


def analyze(model: nn.Module, input_size: tuple[int, ...], other_macs: int | None = None) -> ChannelGraph:
    """Trace ``model`` at ``input_size`` (C, H, W) and return its channel groups.

    ``other_macs`` (MACs the counter sees beyond conv/linear weights) can be passed when known;
    by default they are assumed zero, which holds for CNNs.
    """
    was_training = model.training
    model.eval()
    example = torch.zeros(1, *input_size)
    try:
        with warnings.catch_warnings(), quiet_torch_logs():
            warnings.simplefilter("ignore")
            ep = torch.export.export(model, (example,), strict=False)
    except Exception as exc:  # noqa: BLE001 - report any capture failure as one error
        first = str(exc).splitlines()[0] if str(exc) else ""
        size_problem = input_size_problem(first)
        where = failing_module(exc, model)
        at = f" at module '{where}' ({type(model.get_submodule(where)).__name__})" if where else ""
        if size_problem:
            raise GraphError(f"input {input_size[1]}x{input_size[2]} px does not fit this model: {size_problem}{at}; "
                             "use a larger --input-size (or the model's own: leave --input-size out)") from None
        hint = ""
        if "data-dependent" in first:
            hint = ("; the forward pass branches on tensor values, which torch.export cannot trace: decide "
                    "such branches from Python settings instead")
        if "channels" in first and "expected input" in first:
            hint = (f"; the input has {input_size[0]} channel(s): --input-size sets them only with the size "
                    "(3,224,224), --in-chans changes the model's")
        raise GraphError(f"could not trace the model at input {list(input_size)}{at}: {type(exc).__name__}: "
                         f"{first[:300]}{hint}") from exc
    finally:
        model.train(was_training)

    fingerprint = trace_fingerprint(ep, model, input_size)
    an = _Analyzer(ep, model)
    an.run()
    an.tie_attention_widths()
    sp = an.sp

    # Name every root space; a group is a root with a producer that is not frozen.
    groups: dict[str, ChannelGroup] = {}
    root_key: dict[int, Any] = {}
    frozen: dict[str, str] = {}
    used_names: set[str] = set()
    for sid in range(len(sp.parent)):
        root = sp.find(sid)
        if root in root_key or root in sp.subst:
            continue
        if root in sp.frozen or not sp.producers[root]:
            root_key[root] = sp.size[root]
            if sp.producers[root]:
                frozen[sp.name[root]] = sp.frozen[root]
            continue
        name = sp.name[root] if root in sp.origin else sp.producers[root][0]
        base, k = name, 1
        while name in used_names:
            k += 1
            name = f"{base}#{k}"
        used_names.add(name)
        root_key[root] = name
        groups[name] = ChannelGroup(
            name=name,
            width=sp.size[root],
            divisor=sp.divisor[root],
            can_expand=root not in sp.no_expand,
            producers=list(dict.fromkeys(sp.producers[root])),
            consumers=list(dict.fromkeys(sp.consumers[root])),
        )

    param_dims: dict[str, dict[int, list[Segment]]] = {}
    for fqn, dims in an.ties.items():
        resolved = {
            dim: [(root_key[sid], rep) for sid, rep in sp.expand(tuple(segs))] for dim, segs in dims.items()
        }
        if any(isinstance(k, str) for segs in resolved.values() for k, _ in segs):
            param_dims[fqn] = resolved

    stored_sizes = [
        StoredSize(module=r.module, attr=r.attr, original=r.original, mult=r.mult, op=r.op, position=r.position,
                   pieces=[[(root_key[sid], rep) for sid, rep in sp.expand(seg)] for seg in r.pieces])
        for r in an.stored.values()
    ]
    attention_terms = [([(root_key[sid], rep) for sid, rep in sp.expand(segs)], coefficient)
                       for segs, coefficient in an.attention_terms]
    head_dims: dict[str, int] = {}
    for sid, (head_dim, _) in an.head_spaces.items():
        key = root_key.get(sp.find(sid))
        if isinstance(key, str) and sp.find(sid) not in an.tied_spaces:
            head_dims[key] = head_dim

    # Conv kinds are only needed where the conv's groups attribute must follow a group.
    conv_kinds = {m: k for m, k in an.conv_kinds.items() if k[0] in ("depthwise", "grouped")}
    param_names = {n for n, _ in model.named_parameters()}
    unused = sum(
        p.numel() for n, p in model.named_parameters() if n not in an.used
    )
    tensor_shapes = {n: s for n, s in an.shapes_by_fqn.items() if n in an.used}
    return ChannelGraph(
        input_size=tuple(input_size),
        groups=groups,
        frozen=frozen,
        param_dims=param_dims,
        tensor_shapes=tensor_shapes,
        param_names=param_names & set(tensor_shapes),
        conv_kinds=conv_kinds,
        mac_terms=an.mac_terms,
        other_macs=other_macs or 0,
        unused_params=unused,
        stored_sizes=stored_sizes,
        attention_terms=attention_terms,
        head_dims=head_dims,
        attention_modules=dict(an.attention_modules),
        fingerprint=fingerprint,
    )


def trace_fingerprint(ep: torch.export.ExportedProgram, model: nn.Module, input_size: tuple[int, ...]) -> str:
    """A short hash of the traced computation: input size, the op of every graph node in order, and the
    shape of every parameter and buffer (weight values do not count)."""
    ops = [_op_name(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    shapes = sorted((n, list(t.shape)) for n, t in list(model.named_parameters()) + list(model.named_buffers()))
    text = json.dumps([list(input_size), ops, shapes], separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]
