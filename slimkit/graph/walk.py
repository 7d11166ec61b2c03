"""The walk over a traced graph: each tensor's channel dimension, followed node by node.

:class:`Walk` visits the ``torch.export`` graph in order. For every call it looks up what each
argument carries (a channel map, a :class:`ParamRef`, a list of those, or nothing tracked) and hands
the call to the *rule* registered for its aten op name in :data:`RULES`; an op without a rule gets
:func:`default_rule`. A rule returns what the op's output carries and records, through the walk's
helpers, which channel spaces must merge (:meth:`Walk.tie`, ``walk.sp.union``), split
(:meth:`Walk.split_segments`) or stay at full width (:meth:`Walk.freeze_value`).

Rules live in :mod:`slimkit.graph.ops`, one small module per family of ops, each registering its
functions with :func:`rule`. The attention ops' logic is the :class:`~slimkit.attention.AttentionAnalysis`
mixin's; its rules are registered like any other (``slimkit.graph.ops.attention``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimkit.attention import AttentionAnalysis
from slimkit.graph.channels import StoredSize
from slimkit.graph.tracing import meta_shape, op_name
from slimkit.graph.unionfind import SpaceSegments, Spaces

__all__ = ["CMap", "OpCall", "ParamRef", "RULES", "Rule", "Walk", "default_rule", "rule", "tensor_operands"]

# A tracked channel dimension of a tensor value: (dim, ((space id, rep), ...)).
CMap = tuple[int, SpaceSegments]


class ParamRef:
    """A parameter or buffer flowing through the graph (before it meets activations)."""

    def __init__(self, fqn: str, shape: tuple[int, ...]):
        self.fqn, self.shape = fqn, shape


@dataclass
class OpCall:
    """One ``call_function`` node as a rule sees it."""

    node: Any  # the torch.fx node (``node.meta["val"]``, ``node.kwargs``, ``node.target``)
    op: str  # aten op name without overload: "conv2d", "add_"
    args: list  # the node's positional arguments: fx nodes and constants
    ins: list  # what each argument carries: a CMap, a ParamRef, a list of them, None, or the constant itself
    out_shape: tuple[int, ...] | None  # the output's traced shape (None: not a single tensor)


# A rule: what the op's output carries (a CMap, a list of them for several outputs, or None: nothing
# tracked) from the walk and the call. It ties, splits or freezes spaces through the walk's helpers.
Rule = Callable[["Walk", OpCall], Any]

RULES: dict[str, Rule] = {}


def rule(*ops: str) -> Callable[[Rule], Rule]:
    """Register the decorated function as the rule of each aten op in ``ops`` (names without the
    overload: "conv2d", "add_"). One rule per op: a second registration is a programming error."""
    def register(fn: Rule) -> Rule:
        for op in ops:
            if op in RULES:
                raise ValueError(f"aten op {op!r} already has a rule: {RULES[op].__module__}.{RULES[op].__qualname__}")
            RULES[op] = fn
        return fn
    return register


class Walk(AttentionAnalysis):
    """The state of one walk (union-find, what every node carries, parameter ties, MAC terms, stored
    sizes) and the helpers rules use to change it."""

    param_ref_type = ParamRef

    def __init__(self, ep: torch.export.ExportedProgram, model: nn.Module):
        self.ep = ep
        self.model = model
        self.sp = Spaces()
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
        elif isinstance(v, ParamRef):
            self.used.add(v.fqn)
        elif isinstance(v, list):
            for item in v:
                self.freeze_value(item, reason)

    def freeze_args(self, node: Any, reason: str) -> None:
        for a in node.all_input_nodes:
            self.freeze_value(self.env.get(a), reason)

    def tie(self, fqn: str, dim: int, segs: SpaceSegments, who: str) -> None:
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

    def param_cmap(self, ref: ParamRef) -> CMap | None:
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

    def cmap_of(self, v: Any) -> CMap | None:
        if isinstance(v, ParamRef):
            return self.param_cmap(v)
        if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], int):
            return v
        return None

    def mark_no_expand(self, cm: CMap | None) -> CMap | None:
        """A full-range slice to a stored width stays a no-op when channels shrink but would
        truncate them when they grow: such channels may be pruned, not expanded."""
        if cm is not None:
            for sid, _ in self.sp.expand(cm[1]):
                self.sp.no_expand.add(sid)
        return cm

    def width(self, cm: CMap) -> int:
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
                    self.env[node] = ParamRef(fqn, self.shapes_by_fqn.get(fqn, meta_shape(node)))
                elif node.name in user_inputs:
                    shape = meta_shape(node)
                    sid = self.sp.new(shape[1], "input")
                    self.sp.freeze(sid, "network input")
                    self.env[node] = (1, ((sid, 1),))
                else:  # lifted constants
                    self.env[node] = None
            elif node.op == "call_function":
                try:
                    self.env[node] = self.visit(node)
                except Exception as exc:  # an op we misread must not break analysis
                    self.freeze_args(node, f"{op_name(node.target)}: {exc}")
                    self.env[node] = None
                self.check_width(node)
            elif node.op == "output":
                for a in node.all_input_nodes:
                    self.freeze_value(self.env.get(a), "network output")

    def check_width(self, node: Any) -> None:
        """Safety net: a tracked dim whose width disagrees with the real shape is frozen."""
        v = self.env.get(node)
        if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], int):
            shape = meta_shape(node)
            if shape is None or v[0] >= len(shape) or shape[v[0]] != self.width(v):
                self.freeze_value(v, f"{op_name(node.target)}: channel bookkeeping mismatch")
                self.env[node] = None

    def visit(self, node: Any) -> Any:
        """What ``node``'s output carries: its op's rule (or the default rule) applied to the call."""
        op = op_name(node.target)
        args = list(node.args)
        ins = [self.lookup(a) for a in args]
        out_shape = meta_shape(node)
        ins = self.bind_param_operands(op, args, ins, out_shape)
        return RULES.get(op, default_rule)(self, OpCall(node=node, op=op, args=args, ins=ins, out_shape=out_shape))

    # ------------------------------------------------------------- channels shared by operands
    def tie_elementwise(self, op: str, tracked: list, out_shape: tuple[int, ...]) -> Any:
        """Operands combined channel by channel (``tracked``: (arg node, its CMap or None)) must
        have one channel list; the output's CMap, or None after freezing them where they cannot."""
        nd = len(out_shape)
        aligned: list[tuple[int, CMap]] = []
        for a, cm in tracked:
            shape = meta_shape(a)
            if cm is None:
                continue
            aligned.append((cm[0] + nd - len(shape), cm))
        out_dim = aligned[0][0]
        ref = aligned[0][1]
        ok = all(d == out_dim for d, _ in aligned)
        for a, cm in tracked:
            if cm is not None:
                continue
            shape = meta_shape(a)
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

    # ------------------------------------------------------------------- splits of channels
    def split_segments(self, cm: CMap, sizes: list[int]) -> list[SpaceSegments] | None:
        """Cut ``cm``'s channel list into consecutive pieces of ``sizes``; a space that straddles a
        cut is split in two (a new space each side). A space repeated ``rep`` times per channel
        (after a channel shuffle) can only be cut between repeats; None where a cut is not."""
        segs = list(self.sp.expand(cm[1]))
        if any(not isinstance(rep, int) for _, rep in segs) or sum(self.sp.size[s] * r for s, r in segs) != sum(sizes):
            return None
        pieces: list[SpaceSegments] = []
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

    def tie_pieces(self, pieces: list[SpaceSegments], why: str) -> bool:
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


def tensor_operands(call: OpCall) -> list[tuple[Any, Any]]:
    """(argument node, what it carries) for every argument of ``call`` that is a traced tensor."""
    return [(a, v) for a, v in zip(call.args, call.ins) if hasattr(a, "op") and meta_shape(a) is not None]


def default_rule(walk: Walk, call: OpCall) -> Any:
    """An op without a rule of its own. Single-tensor ops (activations, pooling, dropout,
    interpolation, softmax, ...) are width-agnostic when they keep the channel dimension where it
    was; anything else that touches tracked channels freezes them with a reason naming the op."""
    tensor_ins = tensor_operands(call)
    tracked = [(a, walk.cmap_of(v)) for a, v in tensor_ins]
    if not any(cm is not None for _, cm in tracked):
        for _, v in tensor_ins:
            if isinstance(v, ParamRef):
                walk.used.add(v.fqn)
        return None
    if len(tensor_ins) == 1:
        (a, cm), = tracked
        in_shape = meta_shape(a)
        if call.out_shape is not None and len(call.out_shape) == len(in_shape) \
                and call.out_shape[cm[0]] == in_shape[cm[0]]:
            return cm
        walk.freeze_value(cm, f"{call.op} changes the channel dimension")
        return None
    walk.freeze_args(call.node, f"{call.op} mixes channels")
    return None
