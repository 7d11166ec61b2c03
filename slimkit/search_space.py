"""Which channel groups a gate search may thin: every group, or the paper's own search space.

"Pruning from Scratch" (Wang et al. 2020) describes gates on every layer, but its official code
(frankwang345/pruning-from-scratch) gates only block-internal channels of ResNets: the residual
stream keeps its channel-expanded width (1.25x on CIFAR) and the target r is a share of the
*unexpanded* model's FLOPs. ``search_space="paper"`` reproduces that; the default ``"full"``
lets every group shrink.

A residual stream is recognised from the channel graph alone: a group written by two or more
layers that compute new channels (convs or linears; depthwise and grouped convs only pass their
input's channels through) is a sum of several layers' outputs, i.e. a residual add. So ResNets'
stage streams and MobileNet-V2's projection outputs are streams; MobileNet-V1, which has no adds,
has none, and the paper's space equals the full one there.
"""

from __future__ import annotations

from slimkit.graph import ChannelGraph

__all__ = ["SEARCH_SPACES", "residual_stream_groups"]

SEARCH_SPACES = ("full", "paper")

_PASS_THROUGH = ("depthwise", "grouped", "grouped_fixed")  # conv kinds whose outputs are their inputs' channels


def residual_stream_groups(graph: ChannelGraph) -> list[str]:
    """Groups whose channels are the sum of two or more layers' outputs (residual streams)."""
    out = []
    for name, group in graph.groups.items():
        writers = {p for p in group.producers if graph.conv_kinds.get(p, ("dense", 1))[0] not in _PASS_THROUGH}
        if len(writers) >= 2:
            out.append(name)
    return out
