"""One classification of the source address for every stage that keys on it.

Stages hand in their own longest-prefix maps of sources (the fastpath its lists, the
policy its src classes, ...). The root classifies a packet's source once against their
common refinement; each stage then reads its own value for that class from a column of
its table. One trie walk per packet, whatever the number of stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Node = tuple[int, int, int]


@dataclass(eq=False)
class SourceMap:
    """A stage's view of sources: per IP version, (address, length, value) nodes with
    longest-prefix semantics, each version's list holding its root (0, 0, value)."""

    nodes: dict[int, list[Node]]


@dataclass(eq=False)
class Sources:
    """The merged classification: trie nodes by global class, and per stage its value
    for every global class."""

    nodes: dict[int, list[Node]] = field(default_factory=dict)
    columns: dict[str, list[int]] = field(default_factory=dict)

    @property
    def classes(self) -> int:
        return len(next(iter(self.columns.values()), ()))


def merge(maps: dict[str, SourceMap]) -> Sources:
    """The common refinement of the stages' maps."""
    names = sorted(maps)
    ids: dict[tuple[int, ...], int] = {}
    out = Sources()
    for version, bits in ((4, 32), (6, 128)):
        own: dict[tuple[int, int], dict[int, int]] = {}
        for s, name in enumerate(names):
            for addr, plen, value in maps[name].nodes.get(version, [(0, 0, 0)]):
                own.setdefault((addr, plen), {})[s] = value
        own.setdefault((0, 0), {})
        nodes: list[Node] = []
        stack: list[tuple[int, int, tuple[int, ...], int]] = []  # address, length, values, class
        for addr, plen in sorted(own):
            while stack and addr >> (bits - stack[-1][1]) != stack[-1][0] >> (bits - stack[-1][1]):
                stack.pop()
            parent = stack[-1][2] if stack else tuple(0 for _ in names)
            values = tuple(own[(addr, plen)].get(s, parent[s]) for s in range(len(names)))
            cls = ids.setdefault(values, len(ids))
            if not stack or cls != stack[-1][3]:
                nodes.append((addr, plen, cls))
            stack.append((addr, plen, values, cls))
        out.nodes[version] = nodes
    out.columns = {name: [values[s] for values in ids] for s, name in enumerate(names)}
    return out
