"""One classification of the source address for every stage that keys on it.

Stages hand in their own longest-prefix maps of sources (the fastpath its lists, the
policy its src classes, ...). The root classifies a packet's source once against their
common refinement; each stage then reads its own value for that class from a column of
its table. One trie walk per packet, whatever the number of stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..policy.classes import LIVE_CLASSES

Node = tuple[int, int, int]


@dataclass(eq=False)
class SourceMap:
    """A stage's view of sources: per IP version, (address, length, value) nodes with
    longest-prefix semantics, each version's list holding its root (0, 0, value)."""

    nodes: dict[int, list[Node]]
    # Per set, a value's value once an address also joins the set as a single address
    # (FieldClasses.live); a set the stage does not read changes nothing.
    live: dict[str, dict[int, int]] = field(default_factory=dict)
    reads: frozenset[str] = frozenset()  # the sets the stage's values depend on


@dataclass(eq=False)
class Sources:
    """The merged classification: trie nodes by global class, and per stage its value
    for every global class; `live`: per set, each global class's class once inside it
    as a single address, for every set each stage reading it can follow."""

    nodes: dict[int, list[Node]] = field(default_factory=dict)
    columns: dict[str, list[int]] = field(default_factory=dict)
    live: dict[str, dict[int, int]] = field(default_factory=dict)

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
    out.live = _live(maps, names, ids)
    out.columns = {name: [values[s] for values in ids] for s, name in enumerate(names)}
    return out


def _live(maps: dict[str, SourceMap], names: list[str],
          ids: dict[tuple[int, ...], int]) -> dict[str, dict[int, int]]:
    """Global classes for live entries, closed under joining any set, as each stage's
    own; a set some stage reads but cannot follow has none (its entries are compiled)."""
    sets = sorted({s for m in maps.values() for s in m.live})
    out: dict[str, dict[int, int]] = {
        s: {} for s in sets if all(s in maps[n].live or s not in maps[n].reads for n in names)}
    budget = len(ids) + LIVE_CLASSES
    done = 0
    while done < len(ids):
        combos = list(ids)
        for cls in range(done, len(combos)):
            for s in list(out):
                values = tuple(maps[n].live.get(s, {}).get(v, v) for n, v in zip(names, combos[cls]))
                if values not in ids and len(ids) >= budget:
                    del out[s]  # over budget: this set's entries are compiled
                    continue
                out[s][cls] = ids.setdefault(values, len(ids))
        done = len(combos)
    return out
