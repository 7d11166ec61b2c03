"""The channel graph of one model: trace it, walk it with every op rule, and name the groups.

:func:`analyze` is the whole pipeline: :func:`~slimkit.graph.tracing.export_program` captures the
model, a :class:`~slimkit.graph.walk.Walk` follows the channels through every node (the rules of
:mod:`slimkit.graph.ops`), and the union-find's root spaces become the named
:class:`~slimkit.graph.channels.ChannelGroup` s of a :class:`~slimkit.graph.channels.ChannelGraph`.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.export.graph_signature import OutputKind, TensorArgument

import slimkit.graph.ops  # noqa: F401 - registers every op rule the walk dispatches to
from slimkit.graph.channels import ChannelGraph, ChannelGroup, Segment, StoredSize
from slimkit.graph.tracing import GraphError, export_program, trace_fingerprint
from slimkit.graph.walk import Walk
from slimkit.validate import show

__all__ = ["analyze"]


def analyze(model: nn.Module, input_size: tuple[int, ...], other_macs: int | None = None) -> ChannelGraph:
    """Trace ``model`` at ``input_size`` (C, H, W) and return its channel groups.

    ``other_macs`` (MACs the counter sees beyond conv/linear weights) can be passed when known;
    by default they are assumed zero, which holds for CNNs.
    """
    ep = export_program(model, input_size)
    # a constant output (a string, a number) is listed by its value: only tensor arguments are outputs
    if not any(isinstance(spec.arg, TensorArgument) for spec in ep.graph_signature.output_specs
               if spec.kind == OutputKind.USER_OUTPUT):
        # Groups are found by what the outputs read: with none, every layer would look prunable, and
        # the ONNX export (the latency check, export, bench) fails on a graph without outputs.
        raise GraphError(f"{type(model).__name__}.forward returns no tensor (it returned "
                         f"{show(ep.graph_signature.user_outputs)}): return the model's output")
    fingerprint = trace_fingerprint(ep, model, input_size)
    walk = Walk(ep, model)
    walk.run()
    walk.tie_attention_widths()
    sp = walk.sp

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
    for fqn, dims in walk.ties.items():
        resolved = {
            dim: [(root_key[sid], rep) for sid, rep in sp.expand(tuple(segs))] for dim, segs in dims.items()
        }
        if any(isinstance(k, str) for segs in resolved.values() for k, _ in segs):
            param_dims[fqn] = resolved

    stored_sizes = [
        StoredSize(module=r.module, attr=r.attr, original=r.original, mult=r.mult, op=r.op, position=r.position,
                   pieces=[[(root_key[sid], rep) for sid, rep in sp.expand(seg)] for seg in r.pieces])
        for r in walk.stored.values()
    ]
    attention_terms = [([(root_key[sid], rep) for sid, rep in sp.expand(segs)], coefficient)
                       for segs, coefficient in walk.attention_terms]
    head_dims: dict[str, int] = {}
    for sid, (head_dim, _) in walk.head_spaces.items():
        key = root_key.get(sp.find(sid))
        if isinstance(key, str) and sp.find(sid) not in walk.tied_spaces:
            head_dims[key] = head_dim

    # Conv kinds are only needed where the conv's groups attribute must follow a group.
    conv_kinds = {m: k for m, k in walk.conv_kinds.items() if k[0] in ("depthwise", "grouped")}
    param_names = {n for n, _ in model.named_parameters()}
    unused = sum(
        p.numel() for n, p in model.named_parameters() if n not in walk.used
    )
    tensor_shapes = {n: s for n, s in walk.shapes_by_fqn.items() if n in walk.used}
    return ChannelGraph(
        input_size=tuple(input_size),
        groups=groups,
        frozen=frozen,
        param_dims=param_dims,
        tensor_shapes=tensor_shapes,
        param_names=param_names & set(tensor_shapes),
        conv_kinds=conv_kinds,
        mac_terms=walk.mac_terms,
        other_macs=other_macs or 0,
        unused_params=unused,
        stored_sizes=stored_sizes,
        attention_terms=attention_terms,
        head_dims=head_dims,
        attention_modules=dict(walk.attention_modules),
        fingerprint=fingerprint,
    )
