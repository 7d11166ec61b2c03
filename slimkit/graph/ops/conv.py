"""Convolutions: each output starts a channel space; depthwise and grouped convs keep the input's."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from torch import nn

from slimkit.graph.channels import StoredSize
from slimkit.graph.tracing import function_text, meta_shape, stored_candidates
from slimkit.graph.unionfind import SpaceSegments
from slimkit.graph.walk import CMap, OpCall, ParamRef, Walk, rule


@rule("conv1d", "conv2d", "conv3d", "convolution", "_convolution")
def convolution(walk: Walk, call: OpCall) -> CMap:
    node, ins, out_shape = call.node, call.ins, call.out_shape
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    if not isinstance(w, ParamRef):
        raise ValueError("convolution with a computed weight")
    groups = meta_shape(node.args[0])[1] // w.shape[1]  # robust to omitted default args
    module = walk.module_of(w.fqn)
    cm = walk.cmap_of(x)
    out_ch, in_per_group = w.shape[0], w.shape[1]
    walk.used.add(w.fqn)
    if cm is not None and cm[0] != 1:
        return _conv_along_channels(walk, call, cm, module)
    walk.mac_terms.append((w.fqn, math.prod(out_shape) // out_ch))
    in_segs = cm[1] if cm else None
    if groups == 1:
        if in_segs is not None:
            walk.tie(w.fqn, 1, in_segs, module)
        sid = walk.sp.new(out_ch, module, producer=module)
        segs = ((sid, 1),)
        walk.conv_kinds.setdefault(module, ("dense", 1))
    elif in_per_group == 1 and out_ch == groups and in_segs is not None:
        # Depthwise: output channels are the input's (concat pieces included).
        segs = in_segs
        for s_, _ in walk.sp.expand(in_segs):
            walk.sp.producers[walk.sp.find(s_)].append(module)
        walk.conv_kinds[module] = ("depthwise", 1)
        _stored_groups(walk, node, module, groups, in_segs)
    elif in_per_group == out_ch // groups and in_segs is not None and len(in_segs) == 1 and in_segs[0][1] == 1:
        # Grouped convs with equal in/out group widths: output channels are the input's.
        # Keep whichever of (group width, group count) gives the finer width steps: ResNeXt
        # (32 groups of 4) keeps its group width, RegNet (few groups of up to 232) its count.
        segs = in_segs
        root = walk.sp.find(in_segs[0][0])
        if groups < in_per_group:
            walk.sp.divisor[root] = math.lcm(walk.sp.divisor[root], groups)
            walk.conv_kinds[module] = ("grouped_fixed", groups)
            walk.tie(w.fqn, 1, ((in_segs[0][0], Fraction(1, groups)),), module)
        else:
            walk.sp.divisor[root] = math.lcm(walk.sp.divisor[root], in_per_group)
            walk.conv_kinds[module] = ("grouped", in_per_group)
        walk.sp.producers[root].append(module)
    elif (pieces := walk.split_segments(cm, [in_per_group] * groups) if cm and groups <= 64 else None) \
            and walk.tie_pieces(pieces, f"{module} groups"):
        # Grouped convs whose groups widen or narrow (ResNeSt's radix conv): the group count
        # stays, each group reads one tied input piece and writes one tied output piece.
        walk.tie(w.fqn, 1, pieces[0], module)
        sid = walk.sp.new(out_ch, module, producer=module)
        rows = walk.sp.split_space(sid, [out_ch // groups] * groups)
        for row in rows[1:]:
            walk.sp.union(rows[0], row, f"{module} groups")
        segs = walk.sp.expand(((sid, 1),))
        walk.conv_kinds[module] = ("grouped_fixed", groups)
    else:
        if cm:
            walk.freeze_value(cm, f"{module}: grouped conv with unequal group widths")
        sid = walk.sp.new(out_ch, module, producer=module)
        walk.sp.freeze(sid, f"{module}: grouped conv with unequal group widths")
        segs = ((sid, 1),)
        walk.conv_kinds[module] = ("frozen", in_per_group)
    walk.tie(w.fqn, 0, segs, module)
    if isinstance(b, ParamRef):
        walk.tie(b.fqn, 0, segs, module)
    return (1, segs)


def _conv_along_channels(walk: Walk, call: OpCall, cm: CMap, module: str) -> CMap | None:
    """The channels lie along a spatial axis (ECA's ``conv1d`` slides one small kernel over the
    pooled channel vector, viewed as ``(B, 1, C)``): the kernel does not depend on the width, and a
    length-keeping conv leaves the channels where they were. A stride or dilation that changes the
    length cannot follow a width change, so the channels freeze."""
    d, out_shape, w = cm[0], call.out_shape, call.ins[1]
    if out_shape is not None and out_shape[d] == meta_shape(call.node.args[0])[d]:
        # its MACs grow with the width along that axis, not with its weight: a linear term
        walk.attention_terms.append((cm[1], math.prod(out_shape) // out_shape[d] * math.prod(w.shape[1:])))
        return cm
    walk.freeze_value(cm, f"{module}: a convolution that changes the length of the axis holding the channels")
    return None


def _stored_groups(walk: Walk, node: Any, module: str, groups: int, segs: SpaceSegments) -> None:
    """A functional depthwise conv (timm's BlurPool2d: ``F.conv2d(x, self.filt,
    groups=channels)`` with ``channels = self.channels``) reads its group count from the
    module: G rewrites it with the width. Conv modules' ``groups`` G sets itself."""
    try:
        owner = walk.model.get_submodule(module) if module else walk.model
    except AttributeError:
        return
    if isinstance(owner, nn.modules.conv._ConvNd) or (module, "groups") in walk.stored:
        return
    attrs = {attr for attr, value, div in stored_candidates(walk.model, module, function_text(node))
             if div == 1 and isinstance(value, int) and value == groups}
    if len(attrs) == 1:
        attr = attrs.pop()
        walk.stored.setdefault((module, attr), StoredSize(module=module, attr=attr, original=groups,
                                                          pieces=[list(segs)], op=f"conv groups at {module}"))
