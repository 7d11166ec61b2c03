"""Union-find over channel spaces: the bookkeeping under the channel-graph walk.

Every conv/linear output (and every network input, parameter read element-wise, untracked concat
piece) is a *space* of channels. Ops that force equal widths merge spaces (:meth:`Spaces.union`);
a concat re-expresses one space as a list of others (:meth:`Spaces.substitute`); a split cuts a
space into pieces (:meth:`Spaces.split_space`). Facts that must survive a merge travel with the
root: frozen (and why), "may shrink but not grow", the structural divisor, producers and consumers.
"""

from __future__ import annotations

import math

__all__ = ["SpaceSegments", "Spaces"]

# Channels as consecutive spaces: ((space id, rep), ...); rep multiplies a space's width (a
# flatten of C×H×W repeats each channel H·W times; attention heads count channels at 1/head_dim).
SpaceSegments = tuple[tuple[int, int], ...]


class Spaces:
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
        self.subst: dict[int, SpaceSegments] = {}
        # pieces of a split space: (source space name, first channel) names them "conv[0:8]"
        self.origin: dict[int, tuple[str, int]] = {}

    def expand(self, segs: SpaceSegments) -> SpaceSegments:
        """Segments with every substituted space replaced by what it stands for."""
        out: list[tuple[int, int]] = []
        for sid, rep in segs:
            root = self.find(sid)
            if root in self.subst:
                out.extend((s, r * rep) for s, r in self.expand(self.subst[root]))
            else:
                out.append((root, rep))
        return tuple(out)

    def substitute(self, sid: int, segs: SpaceSegments, why: str) -> None:
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
