"""Pruned structures from the literature, by name, so a paper's rows can be rerun as they were defined.

"Pruning Filters for Efficient ConvNets" (Li et al. 2017) prunes CIFAR ResNet-56 and ResNet-110 to
predefined structures that "Rethinking the Value of Network Pruning" (Liu et al. 2019) reuses for its
comparison of fine-tuning with Scratch-E/B: in every residual block only the block-internal channels
(the output of the block's first conv) shrink, by a fixed share per stage, except in the blocks found
sensitive to pruning, which keep full width; the residual streams are never pruned. The shares and
the skipped layers below are those of Rethinking's official code (cifar/l1-norm-pruning,
res56prune.py and res110prune.py), which numbers the network's convs from 1 (the stem) in order, so
block k's first conv (counting blocks from 0 across all stages) is conv 2 + 2k. A kept width is
``int(full × (1 − share))``, the code's floor. Which channels are kept (largest filter L1 norm) is the
criterion's business (slimkit.generator.choose_channels), not the structure's.

Each structure records the FLOPs reduction the paper reports (Li et al. 2017, Table 1) beside the
reduction slimkit counts for it; slimkit's CIFAR ResNets use 1x1-conv (option-B) shortcuts where the
paper's used zero padding, which moves the counts by about 0.1 point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slimkit.errors import PlanError, SlimkitError
from slimkit.graph import ChannelGraph

__all__ = ["Structure", "STRUCTURES", "get_structure", "structure_widths"]

SOURCE = ("Li et al. 2017, 'Pruning Filters for Efficient ConvNets', as in Rethinking's official code "
          "(Eric-mingjie/rethinking-network-pruning, cifar/l1-norm-pruning)")


@dataclass(frozen=True)
class Structure:
    """A predefined structure of one architecture: per-stage shares of block-internal channels pruned,
    and the sensitive layers (the paper's conv numbers) left at full width."""

    name: str
    arch: str  # the canonical architecture name it is defined for
    blocks_per_stage: int
    stage_prune: tuple[float, float, float]  # share of each stage's block-internal channels removed
    skip_layers: tuple[int, ...]  # the paper's conv numbers of the block-internal layers kept whole
    reported_flops_reduction: float  # Li et al. 2017, Table 1

    def skipped_groups(self) -> list[str]:
        """The channel groups of the skipped layers: conv 2 + 2k is the first conv of block k."""
        out = []
        for layer in self.skip_layers:
            block = (layer - 2) // 2
            out.append(f"layer{block // self.blocks_per_stage + 1}.{block % self.blocks_per_stage}.conv1")
        return out

    def block_internal_groups(self) -> list[tuple[str, int]]:
        """Every block-internal group (the block's first conv's output) with its stage (0, 1, 2)."""
        return [(f"layer{stage + 1}.{b}.conv1", stage) for stage in range(3) for b in range(self.blocks_per_stage)]

    def to_json(self) -> dict[str, Any]:
        """What a plan records of the structure (``plan.search['structure']``)."""
        return {"name": self.name, "source": SOURCE, "stage_prune": list(self.stage_prune),
                "skip_layers": list(self.skip_layers), "skipped_groups": self.skipped_groups(),
                "reported_flops_reduction": self.reported_flops_reduction}


STRUCTURES: dict[str, Structure] = {s.name: s for s in (
    Structure("resnet56-a", "slimkit:resnet56", 9, (0.1, 0.1, 0.1), (16, 20, 38, 54), 0.104),
    Structure("resnet56-b", "slimkit:resnet56", 9, (0.6, 0.3, 0.1), (16, 18, 20, 34, 38, 54), 0.276),
    Structure("resnet110-a", "slimkit:resnet110", 18, (0.5, 0.0, 0.0), (36,), 0.159),
    Structure("resnet110-b", "slimkit:resnet110", 18, (0.5, 0.4, 0.3), (36, 38, 74), 0.386),
)}


def get_structure(name: str, arch: str) -> Structure:
    """The structure called ``name`` (case-insensitive), checked to be defined for ``arch`` (canonical)."""
    structure = STRUCTURES.get(str(name).lower())
    if structure is None:
        raise SlimkitError(f"unknown structure '{name}': choose one of {', '.join(STRUCTURES)}")
    if structure.arch != arch:
        mine = [s.name for s in STRUCTURES.values() if s.arch == arch]
        raise SlimkitError(f"structure {structure.name} is defined for {structure.arch}, not {arch}: prune "
                           f"{structure.arch.partition(':')[2]}" + (f", or use {' / '.join(mine)}" if mine else ""))
    return structure


def structure_widths(structure: Structure, graph: ChannelGraph) -> dict[str, int]:
    """Every group's width under ``structure``: block-internal groups at ``int(full × (1 − share))``
    unless skipped, everything else (stem, residual streams) at full width."""
    widths = {name: g.width for name, g in graph.groups.items()}
    internal = structure.block_internal_groups()
    missing = [name for name, _ in internal if name not in widths]
    if missing or len(widths) != len(internal) + 3:  # + the three residual streams
        raise PlanError(f"internal error: the channel graph of {structure.arch} does not have the groups structure "
                        f"{structure.name} names (e.g. {missing[:1] or sorted(widths)[:1]}); please report this")
    skipped = set(structure.skipped_groups())
    for name, stage in internal:
        if name not in skipped:
            widths[name] = int(widths[name] * (1 - structure.stage_prune[stage]))  # the official code's floor
    return widths
