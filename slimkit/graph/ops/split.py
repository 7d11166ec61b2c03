"""Splits of the channels into pieces (``split``/``chunk``), and picking one output of a multi-output op.

Each piece becomes a space of its own; pieces that must stay equal (``chunk``, an ``int`` split
size) are tied to one width. Split sizes stored on the calling module (``torch.split(x,
self.splits, 1)``) are recorded as a :class:`StoredSize` so G rewrites them; sizes it cannot find
freeze the split channels.
"""

from __future__ import annotations

from typing import Any

from slimkit.graph.channels import StoredSize
from slimkit.graph.tracing import call_site, meta_shape, stored_candidates
from slimkit.graph.walk import OpCall, Walk, rule


@rule("getitem")
def getitem(walk: Walk, call: OpCall) -> Any:
    """One output of a multi-output op (a split's piece, batch norm's result)."""
    src, idx = call.ins[0], call.ins[1]
    if isinstance(src, list) and isinstance(idx, int) and idx < len(src):
        return src[idx]
    return None


@rule("split", "split_with_sizes", "chunk", "unsafe_split", "unsafe_split_with_sizes", "unsafe_chunk")
def split(walk: Walk, call: OpCall) -> Any:
    node, op, args = call.node, call.op, call.args
    cm = walk.cmap_of(call.ins[0])
    vals = node.meta.get("val")
    if cm is None or not isinstance(vals, (list, tuple)):
        return None
    in_shape = meta_shape(args[0])
    dim = (args[2] if len(args) > 2 else node.kwargs.get("dim", 0)) % len(in_shape)
    if dim != cm[0]:  # split along tokens/space: every piece keeps the channels
        return [cm] * len(vals)
    sizes = [int(v.shape[dim]) for v in vals]
    module, line = call_site(node)
    where = f"{op} at {module or 'the model'} (`{line}`)" if line else f"{op} at {module or 'the model'}"

    def give_up(why: str) -> None:
        walk.freeze_value(cm, f"{where}: {why}")
        return None

    equal = op.endswith("chunk") or isinstance(args[1], int)
    if equal and len(set(sizes)) != 1:
        return give_up(f"pieces {sizes} are unequal, so the split cannot keep its count when widths change")
    stored = None
    if not op.endswith("chunk"):  # a chunk count follows any width; stored sizes must be rewritten
        matches = []
        for attr, value, div in stored_candidates(walk.model, module, line):
            if equal and isinstance(value, int) and value // div == sizes[0] and value % div == 0:
                matches.append((attr, value, div))
            elif not equal and isinstance(value, (list, tuple)) and list(value) == sizes:
                matches.append((attr, value, 1))
        if len({m[0] for m in matches}) != 1:
            return give_up("the sizes are not a stored attribute of the module slimkit can rewrite" if not matches
                           else f"several stored attributes match the sizes ({', '.join(m[0] for m in matches)})")
        stored = matches[0]
    pieces = walk.split_segments(cm, sizes)
    if pieces is None:
        return give_up("the split channels are repeated copies, their pieces cannot be told apart")
    if equal and not walk.tie_pieces(pieces, op):
        return give_up("pieces cannot be tied to one width")
    if stored is not None:
        attr, value, div = stored
        key = (module, attr)
        old = walk.stored.get(key)
        if old is not None:  # a module called twice: both calls' pieces must agree
            if len(old.pieces) != len(pieces) or not walk.tie_pieces([tuple(old.pieces[0]), pieces[0]], op):
                return give_up(f"self.{attr} splits inputs of different structure")
        else:
            walk.stored[key] = StoredSize(module=module, attr=attr, original=value, mult=div,
                                          pieces=[list(p) for p in pieces], op=where)
    return [(dim, p) for p in pieces]
