"""Reshapes and flattens: where the channel dimension goes, and splits of it into fixed rows.

Squeeze/unsqueeze-like reshapes and channel-major flattens are width-agnostic; a split of the
channels into ``(k rows, C/k)`` (radix / split-attention, channel shuffle) ties the rows to one
width; attention's head splits are :meth:`AttentionAnalysis.reshape_channels`'s; anything else freezes.
"""

from __future__ import annotations

import math
from typing import Any

from slimkit.graph.channels import StoredSize
from slimkit.graph.tracing import call_site, function_text, meta_shape, stored_candidates
from slimkit.graph.walk import CMap, OpCall, Walk, rule


@rule("flatten")
def flatten(walk: Walk, call: OpCall) -> Any:
    node, args = call.node, call.args
    start = args[1] if len(args) > 1 else 0
    end = args[2] if len(args) > 2 else -1
    cm = walk.cmap_of(call.ins[0])
    if cm is None:
        return None
    shape = meta_shape(node.args[0])
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
        walk.freeze_value(cm, "flatten with channels not leading")
        return None
    return (start, tuple((s, r * inner) for s, r in cm[1]) * outer)


@rule("view", "reshape", "reshape_as", "view_as", "_unsafe_view", "unsqueeze", "squeeze", "unflatten")
def reshape(walk: Walk, call: OpCall) -> Any:
    node, out_shape = call.node, call.out_shape
    cm = walk.cmap_of(call.ins[0])
    if cm is None or out_shape is None:
        return None
    in_shape = meta_shape(node.args[0])
    d = cm[0]
    # Only squeeze/unsqueeze-like reshapes (same non-1 dims in order) and channel-major
    # flattens are width-agnostic; anything else (channel shuffle, head splits) freezes.
    in_nz = [(i, s) for i, s in enumerate(in_shape) if s != 1]
    out_nz = [(i, s) for i, s in enumerate(out_shape) if s != 1]
    if [s for _, s in in_nz] == [s for _, s in out_nz] and in_shape[d] != 1:
        k = [i for i, _ in in_nz].index(d)
        return _stored_shape(walk, node, (out_nz[k][0], cm[1]), out_shape)
    if (tuple(out_shape[:d]) == tuple(in_shape[:d]) and len(out_shape) == d + 1
            and out_shape[d] == math.prod(in_shape[d:])):
        rep = math.prod(in_shape[d + 1:])
        return (d, tuple((s, r * rep) for s, r in cm[1]))
    reshaped = walk.reshape_channels(node, cm, in_shape, out_shape)  # attention heads, windows (attention.py)
    if reshaped is not None:
        return reshaped
    return _reshape_pieces(walk, node, cm, in_shape, out_shape)


def _stored_shape(walk: Walk, node: Any, cm: CMap, out_shape: tuple[int, ...]) -> CMap:
    """A reshape to a shape stored on the module (timm's metaformer ``Scale``:
    ``self.scale.view(self.shape)``) is recorded so G rewrites the channel entry."""
    module, line = call_site(node)
    if "self." not in line:
        return cm
    matches = [(attr, value) for attr, value, div in stored_candidates(walk.model, module, line)
               if div == 1 and isinstance(value, (list, tuple)) and len(value) > 1
               and tuple(value) == tuple(out_shape[len(out_shape) - len(value):])]
    if len(matches) == 1:
        attr, value = matches[0]
        key = (module, attr)
        if key not in walk.stored:
            walk.stored[key] = StoredSize(module=module, attr=attr, original=value, pieces=[list(cm[1])],
                                          position=cm[0] - (len(out_shape) - len(value)),
                                          op=f"reshape at {module} (`{line}`)")
    return cm


def _reshape_pieces(walk: Walk, node: Any, cm: CMap, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Any:
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
        walk.freeze_value(cm, why)
        return None
    ins_, outs_ = chunk
    if len(ins_) == 1 and len(outs_) == 2:  # C -> (k, C/k): k rows of one width
        (_, k), (o_m, m) = outs_
        module, line = call_site(node)
        stored = [attr for attr, value, div in stored_candidates(walk.model, module, function_text(node))
                  if isinstance(value, int) and value // div == m]
        if stored or k == m:
            reason = (f"the row width is the stored self.{stored[0]}, which slimkit cannot rewrite" if stored
                      else "rows and row width are equal, so which one is the fixed count is unknown")
            walk.freeze_value(cm, f"{why} at {module} (`{line}`): {reason}")
            return None
        pieces = walk.split_segments(cm, [m] * k)
        if pieces is None or not walk.tie_pieces(pieces, "reshape"):
            walk.freeze_value(cm, f"{why}: its {k} rows cannot be tied to one width")
            return None
        return (o_m, pieces[0])
    if len(outs_) == 1:  # (k, C) -> k·C (and channel-major merges): copies of the channel list
        pos = [i for i, _ in ins_].index(d)
        outer = math.prod(s for _, s in ins_[:pos])
        inner = math.prod(s for _, s in ins_[pos + 1:])
        return (outs_[0][0], tuple((s, r * inner) for s, r in cm[1]) * outer)
    walk.freeze_value(cm, why)
    return None
