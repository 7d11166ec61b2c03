"""Attention heads as channel groups: the transformer half of the channel graph and of G.

A vision transformer has three kinds of width: the hidden width of each MLP (an ordinary linear
group), the attention heads of each block, and the embedding width that the residual stream,
patch embedding, class token, positional embedding, norms and classifier share. This module
teaches the channel-graph walk (``slimkit.graph``) the tensor operations attention is made of and
teaches G the module attributes that attention's forward reads, so heads and the embedding width
become prunable in the same generic way as CNN channels.

* **Heads.** A reshape that splits a tracked channel dimension into ``[..., heads, head_dim]``
  inside a known attention module (table below) makes the heads dimension the tracked one, in
  units of ``head_dim`` channels (a segment with repetition ``1/head_dim``); a packed q/k/v
  projection (``[3, heads, head_dim]`` or ``[3, width]``) is re-expressed as three copies of one
  head space. ``scaled_dot_product_attention``, ``matmul``/``bmm`` over heads, ``unbind``,
  ``select``, the relative-position-bias table (``index`` of a parameter) and the merge back to
  ``heads·head_dim`` channels keep it. The group's divisor is ``head_dim``, so only whole heads
  are ever kept.
* **Tied attention.** Where the forward derives the attention width from its *input* width
  (``nn.MultiheadAttention``: ``head_dim = embed_dim // num_heads``; torchvision's Swin:
  ``C // num_heads``), heads cannot shrink on their own: the head space is tied to the input's
  (the embedding width then moves in whole heads). Attention modules not in the table keep the
  old, safe answer: a channel split there freezes.
* **MACs.** The two matrix products of attention cost ``B·N_q·N_k·(d_k + d_v)`` MACs per head;
  the graph records that coefficient with the head segments, so predicted MACs follow the heads
  (``ChannelGraph.count_flops``) and equal torch's counter on the regenerated model.
* **G.** After the tensors are resized, :func:`rewrite_attention_modules` sets the attributes the
  forward reads (``num_heads``, ``attn_dim``, ``embed_dim``/``head_dim``, torchvision ViT's
  ``hidden_dim``).
"""

from __future__ import annotations

import inspect
import math
from fractions import Fraction
from typing import Any

import torch
from torch import nn

__all__ = ["AttentionAnalysis", "attention_kind", "rewrite_attention_modules", "input_size_kwargs"]


# ------------------------------------------------------------------------ known modules
def _class(module_path: str, name: str) -> type | None:
    try:
        module = __import__(module_path, fromlist=[name])
    except ImportError:
        return None
    return getattr(module, name, None)


# Attention modules whose forward G knows how to rewrite. "heads": the attention width is free of
# the input width (heads prune per block); "tied": the forward computes it from the input width.
# (qkv weight, output-projection weight) name the tensors whose input sides the tie joins.
_KINDS: list[tuple[str, str, str, str, str]] = [
    ("timm.layers.attention", "Attention", "heads", "qkv.weight", "proj.weight"),
    ("timm.models.swin_transformer", "WindowAttention", "heads", "qkv.weight", "proj.weight"),
    ("torch.nn", "MultiheadAttention", "tied", "in_proj_weight", "out_proj.weight"),
    ("torchvision.models.swin_transformer", "ShiftedWindowAttention", "tied", "qkv.weight", "proj.weight"),
]


def _kind_table() -> dict[type, tuple[str, str, str]]:
    table = {}
    for module_path, name, kind, qkv, proj in _KINDS:
        cls = _class(module_path, name)
        if cls is not None:
            table[cls] = (kind, qkv, proj)
    return table


_TABLE = _kind_table()


def attention_kind(module: nn.Module) -> tuple[str, str, str] | None:
    """(kind, qkv weight, projection weight) for a known attention module, else None. Exact
    types only: a subclass may compute its widths differently."""
    return _TABLE.get(type(module))


def _shape(node: Any) -> tuple[int, ...] | None:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    if isinstance(val, torch.Tensor):
        return tuple(int(s) for s in val.shape)
    return None


# ------------------------------------------------------------------------ analysis
class AttentionAnalysis:
    """Attention ops for the channel-graph walk. Mixed into ``slimkit.graph.walk.Walk``, whose
    union-find (``self.sp``), environment and tie helpers these methods use."""

    param_ref_type: type = object  # set by the analyzer: its class of parameter references

    def init_attention(self) -> None:
        self.attention_terms: list[tuple[tuple[tuple[int, Any], ...], int]] = []
        self.head_spaces: dict[int, tuple[int, str]] = {}  # space -> (head_dim, attention module)
        self.attention_modules: dict[str, tuple[str, int]] = {}  # module -> (kind, head_dim)
        self.tied_spaces: set[int] = set()

    # -- helpers
    def _attention_module(self, node: Any) -> tuple[str, nn.Module, tuple[str, str, str]] | None:
        stack = node.meta.get("nn_module_stack") or {}
        modules = dict(self.model.named_modules())
        for path, _ in reversed(list(stack.values())):
            module = modules.get(path)
            if module is not None:
                kind = attention_kind(module)
                if kind is not None:
                    return path, module, kind
        return None

    def _single(self, cm: Any) -> tuple[int, Any] | None:
        segs = self.sp.expand(cm[1])
        return segs[0] if len(segs) == 1 else None

    def _param_space(self, ref: Any, d: int) -> tuple[int, tuple[tuple[int, int], ...]]:
        """Dimension ``d`` of a parameter as a channel space of its own (see ``param_cmap``)."""
        key = (ref.fqn, d)
        if key not in self._param_spaces:
            sid = self.sp.new(ref.shape[d], f"{ref.fqn}[{d}]")
            self._param_spaces[key] = sid
            self.tie(ref.fqn, d, ((sid, 1),), ref.fqn.rsplit(".", 1)[0])
        return (d, ((self._param_spaces[key], 1),))

    def unify_scaled(self, ref_segs: tuple, segs: tuple) -> bool:
        """Join a one-segment space counted in other units (a per-head bias table: one entry per
        head, vs. heads counted in channels with repetition 1/head_dim). True if joined."""
        if len(ref_segs) != 1 or len(segs) != 1:
            return False
        (a, ra), (b, rb) = ref_segs[0], segs[0]
        a, b = self.sp.find(a), self.sp.find(b)
        if a == b or b in self.sp.frozen or b in self.sp.subst or a in self.sp.subst:
            return False
        if self.sp.size[a] * ra != self.sp.size[b] * rb:
            return False
        self.sp.substitute(b, ((a, Fraction(ra) / Fraction(rb)),), "per-head tensor")
        return True

    def _unify(self, cms: list) -> tuple | None:
        """Make the one-segment channel maps ``cms`` one space; their segments, or None."""
        ref = self.sp.expand(cms[0][1])
        for cm in cms[1:]:
            segs = self.sp.expand(cm[1])
            if len(segs) == 1 and len(ref) == 1 and segs[0][1] == ref[0][1]:
                self.sp.union(ref[0][0], segs[0][0], "attention heads")
            elif not self.unify_scaled(ref, segs):
                return None
        return cms[0][1]

    # -- parameters read element-wise with a tracked activation (positional embeddings)
    def bind_param_operands(self, op: str, args: list, ins: list, out_shape: Any) -> list:
        """A parameter with several non-trivial dims (``pos_embed`` [1, N, C]) added to an
        activation follows the activation's channels in the dimension that lines up with them."""
        refs = [i for i, v in enumerate(ins) if isinstance(v, self.param_ref_type)
                and sum(1 for s in v.shape if s > 1) > 1]
        if not refs or out_shape is None or op.rstrip("_") not in ("add", "sub", "mul", "div"):
            return ins
        nd = len(out_shape)
        tracked = [(a, self.cmap_of(v)) for a, v in zip(args, ins)
                   if hasattr(a, "op") and not isinstance(v, self.param_ref_type) and self.cmap_of(v) is not None]
        if len(tracked) != 1:
            return ins
        a, cm = tracked[0]
        out_dim = cm[0] + nd - len(_shape(a))
        ins = list(ins)
        for i in refs:
            ref = ins[i]
            d = out_dim - (nd - len(ref.shape))
            if 0 <= d < len(ref.shape) and ref.shape[d] == self.width(cm):
                ins[i] = self._param_space(ref, d)
        return ins

    # -- ops that keep the channel dimension while indexing another one
    def visit_unbind(self, node: Any, ins: list, args: list) -> Any:
        cm = self.cmap_of(ins[0])
        vals = node.meta.get("val")
        if cm is None or not isinstance(vals, (list, tuple)):
            return None
        nd = len(_shape(args[0]))
        dim = (args[1] if len(args) > 1 else 0) % nd
        if dim == cm[0]:
            self.freeze_value(cm, "unbind of channels")
            return None
        out = (cm[0] - (1 if dim < cm[0] else 0), cm[1])
        return [out] * len(vals)

    def visit_select(self, node: Any, ins: list, args: list) -> Any:
        cm = self.cmap_of(ins[0])
        if cm is None:
            return None
        dim = args[1] % len(_shape(args[0]))
        if dim == cm[0]:
            self.freeze_value(cm, "select of one channel")
            return None
        return (cm[0] - (1 if dim < cm[0] else 0), cm[1])

    def visit_index(self, node: Any, ins: list, args: list) -> Any:
        """``table[index]`` with one 1-D index on dim 0 (relative-position bias tables)."""
        src, indices = ins[0], args[1]
        in_shape = _shape(args[0])
        idx_shapes = [_shape(i) if i is not None else None for i in indices]
        if not (len(indices) == 1 and idx_shapes[0] is not None and len(idx_shapes[0]) == 1):
            self.freeze_args(node, "index with several index tensors")
            return None
        if isinstance(src, self.param_ref_type):
            if len(in_shape) != 2:
                self.used.add(src.fqn)
                return None
            return self._param_space(src, 1)
        cm = self.cmap_of(src)
        if cm is None:
            return None
        if cm[0] == 0:
            self.freeze_value(cm, "index of channels")
            return None
        return cm

    # -- reshapes: keep, merge into, or split the channel dimension
    def reshape_channels(self, node: Any, cm: Any, in_shape: tuple, out_shape: tuple) -> Any:
        """The reshapes the first rules of ``visit_reshape`` do not cover: the channel dimension
        kept while others split or merge (window partitions, [N·N, H] -> [N, N, H]), channels
        merged with the dims after them ([B, N, H, D] -> [B, N, H·D]) or before them (channel-minor,
        Swin's patch merging), and attention's split of channels into heads. None: not handled."""
        d = cm[0]
        prefix = math.prod(in_shape[:d])
        width = in_shape[d]
        suffix = math.prod(in_shape[d + 1:])
        for d2 in range(len(out_shape)):
            if math.prod(out_shape[:d2]) != prefix or out_shape[d2] == 1:
                continue
            # kept or merged with the dims after it
            for j in range(d + 1, len(in_shape) + 1):
                merged = math.prod(in_shape[d + 1:j])
                if out_shape[d2] == width * merged and math.prod(out_shape[d2 + 1:]) == math.prod(in_shape[j:]):
                    return (d2, tuple((s, r * merged) for s, r in cm[1]))
                if out_shape[d2] < width * merged:
                    break
            # split into [..., heads, head_dim]
            for k in range(2, len(out_shape) - d2 + 1):
                if math.prod(out_shape[d2:d2 + k]) == width and math.prod(out_shape[d2 + k:]) == suffix:
                    return self.split_heads(node, cm, d2, tuple(out_shape[d2:d2 + k]))
            break
        # channel-minor merge: [..., a, b, C] -> [..., a·b·C]: copies of the channels, in order
        for i in range(d - 1, -1, -1):
            copies = math.prod(in_shape[i:d])
            for d2 in range(len(out_shape)):
                if (math.prod(out_shape[:d2]) == math.prod(in_shape[:i]) and out_shape[d2] == copies * width
                        and math.prod(out_shape[d2 + 1:]) == suffix):
                    return self.repeat_channels(cm, d2, copies)
        return None

    def repeat_channels(self, cm: Any, dim: int, copies: int) -> Any:
        if not 1 < copies <= 64:  # more copies: a spatial flatten, better frozen than 1000 segments
            return None
        return (dim, tuple(cm[1]) * copies)

    def split_heads(self, node: Any, cm: Any, dim: int, factors: tuple[int, ...]) -> Any:
        found = self._attention_module(node)
        seg = self._single(cm)
        if found is None or seg is None or seg[1] != 1:
            return None
        path, module, (kind, _, _) = found
        heads = getattr(module, "num_heads", None)
        sid = self.sp.find(seg[0])
        if sid in self.sp.frozen or sid in self.sp.subst or not isinstance(heads, int):
            return None
        if len(factors) >= 2 and factors[-2] == heads:
            copies, head_dim = math.prod(factors[:-2]), factors[-1]
        elif len(factors) == 2 and factors[0] in (2, 3) and factors[1] % heads == 0:
            copies, head_dim = factors[0], 0  # packed q/k/v: [3, width]; heads split later
        else:
            return None
        if copies > 1:  # q, k and v (or k and v) each take one copy of one head space: the projection's
            # rows are all of q's channels, then all of k's (a tile of the channel list, not each channel
            # repeated in place, which is what a segment's rep means), so weights are inherited row for row
            inner = self.sp.new(self.sp.size[sid] // copies, self.sp.name[sid])
            self.sp.substitute(sid, ((inner, 1),) * copies, "packed attention projection")
            sid = self.sp.find(inner)
        if not head_dim:
            return (dim + 1, ((sid, 1),))
        self.sp.divisor[sid] = math.lcm(self.sp.divisor[sid], head_dim)
        self.head_spaces[sid] = (head_dim, path)
        self.attention_modules[path] = (kind, head_dim)
        return (dim + len(factors) - 2, ((sid, Fraction(1, head_dim)),))

    # -- the products of attention
    def visit_sdpa(self, node: Any, ins: list, args: list) -> Any:
        q, k, v = (self.cmap_of(x) for x in ins[:3])
        shapes = [_shape(a) for a in args[:3]]
        mask_arg = args[3] if len(args) > 3 else node.kwargs.get("attn_mask")
        mask = self.cmap_of(self.lookup(mask_arg)) if mask_arg is not None else None
        cms = [q, k, v]
        if mask is not None:
            mask_shape = _shape(mask_arg)
            mask = (mask[0] + 4 - len(mask_shape), mask[1])
            cms.append(mask)
        if any(cm is None or cm[0] != 1 for cm in cms) or any(len(s) != 4 for s in shapes):
            self.freeze_args(node, "scaled_dot_product_attention over untracked heads")
            return None
        segs = self._unify(cms)
        if segs is None:
            self.freeze_args(node, "scaled_dot_product_attention: heads do not line up")
            return None
        (b, h, nq, dk), (_, _, nk, _), (_, _, _, dv) = shapes
        self.attention_terms.append((tuple(segs), b * nq * nk * (dk + dv)))
        return (1, segs)

    def visit_matmul(self, node: Any, ins: list, args: list, out_shape: tuple) -> Any:
        """Batched matmul whose batch dims carry the heads (Q·Kᵀ, softmax·V)."""
        shapes = [_shape(a) for a in args[:2]]
        cms = [self.cmap_of(x) for x in ins[:2]]
        if any(s is None or len(s) < 3 for s in shapes):
            return None
        nd = len(out_shape)
        aligned = []
        for cm, shape in zip(cms, shapes):
            if cm is None:
                continue
            if cm[0] >= len(shape) - 2:
                return None  # a matrix dim: the product mixes channels
            aligned.append((cm[0] + nd - len(shape), cm))
        if not aligned or any(d != aligned[0][0] for d, _ in aligned):
            return None
        out_dim = aligned[0][0]
        for cm, shape in zip(cms, shapes):
            k = out_dim - (nd - len(shape))
            if cm is None and 0 <= k < len(shape) and shape[k] != 1:
                return None  # an untracked full-width operand
        segs = self._unify([cm for _, cm in aligned])
        if segs is None:
            return None
        heads = out_shape[out_dim]
        inner = shapes[0][-1]
        self.attention_terms.append((tuple(segs), math.prod(out_shape) // heads * inner))
        return (out_dim, segs)

    # -- after the walk
    def tie_attention_widths(self) -> None:
        """Tied attention: the head space is the input's channel space (see the module doc)."""
        modules = dict(self.model.named_modules())
        for path, (kind, _) in list(self.attention_modules.items()):
            if kind != "tied":
                continue
            _, qkv, proj = attention_kind(modules[path])
            qkv_in = self.ties.get(f"{path}.{qkv}", {}).get(1)
            heads_in = self.ties.get(f"{path}.{proj}", {}).get(1)
            if not qkv_in or not heads_in:
                continue
            a, b = self.sp.expand(tuple(qkv_in)), self.sp.expand(tuple(heads_in))
            if len(a) == 1 and len(b) == 1 and a[0][1] == b[0][1] == 1:
                self.sp.union(a[0][0], b[0][0], f"{path}: attention width follows its input")
                self.tied_spaces.add(self.sp.find(a[0][0]))
            else:
                for sid, _ in a + b:
                    self.sp.freeze(sid, f"{path}: attention width is computed from an input split in pieces")


# ------------------------------------------------------------------------ G
def rewrite_attention_modules(model: nn.Module, attention_modules: dict[str, tuple[str, int]]) -> None:
    """Set the attributes attention's forward reads to agree with the resized tensors."""
    modules = dict(model.named_modules())
    for path, (_, head_dim) in attention_modules.items():
        module = modules[path]
        if isinstance(module, nn.MultiheadAttention):
            width = module.in_proj_weight.shape[1]
            module.embed_dim = module.kdim = module.vdim = width
            module.head_dim = head_dim
            module.num_heads = width // head_dim
            continue
        width = module.proj.weight.shape[1]
        module.num_heads = width // head_dim
        if hasattr(module, "attn_dim"):
            module.attn_dim = width
    for module in modules.values():
        # torchvision's ViT reshapes the patch embedding to its stored hidden_dim
        if type(module).__name__ == "VisionTransformer" and hasattr(module, "conv_proj"):
            module.hidden_dim = module.conv_proj.out_channels


def _takes_img_size(cls: type) -> bool:
    """Whether ``cls(...)`` accepts ``img_size``, also through a subclass's ``**kwargs`` passed on to
    its base (timm's LevitDistilled takes ``*args, **kwargs`` for Levit's ``img_size``)."""
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        if "img_size" in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
    return False


def input_size_kwargs(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, Any]:
    """Constructor arguments a transformer needs to run at ``input_size`` (C, H, W): timm's
    ``img_size``, torchvision ViT's ``image_size``. Empty for models that take any size."""
    side = tuple(input_size[1:])
    img_size = {"img_size": side[0] if side[0] == side[1] else list(side)}
    patch_embed = getattr(model, "patch_embed", None)
    stored = getattr(patch_embed, "img_size", None)
    if stored is not None and tuple(stored) != side:
        return img_size
    # timm models whose patch embedding has another name (CoaT's patch_embed1..4) still take
    # img_size; rebuild them when their configured size is not the one asked for.
    configured = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if stored is None and configured and tuple(configured[1:]) != side and _takes_img_size(type(model)):
        return img_size
    if type(model).__name__ == "VisionTransformer" and hasattr(model, "image_size") and hasattr(model, "conv_proj"):
        if model.image_size != side[0] or side[0] != side[1]:
            return {"image_size": side[0]}
    return {}
