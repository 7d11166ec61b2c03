"""Fresh tensors made from another one (``x.new_zeros(...)``): only its dtype and device are read."""

from __future__ import annotations

from slimkit.graph.walk import OpCall, Walk, rule


@rule("new_zeros", "new_ones", "new_full", "new_empty")
def new_tensor(walk: Walk, call: OpCall) -> None:
    return None
