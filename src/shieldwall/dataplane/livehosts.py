"""Live set entries in a running generation: single addresses laid over its address
lookups in place, without a new ruleset (docs/updates.md, "Live set entries").

A lookup (the root's source classification, the policy's destinations) is a multibit
trie with a host hash (addrtrie). An address that joins a set takes, in each lookup
that reads the set, the class its current class turns into (FieldClasses.live, merged
for sources by dataplane.sources): the compiler made those classes exist beforehand,
so nothing else changes. The address goes into the lookup's host hash (struct
sw_host), then one aligned store flags the trie entry its walk stops at, through the
table mapped into memory: every other address under that entry misses the hash and
keeps its class. Each step leaves every packet with either its old class or its new
one.

Whatever cannot be laid over this way (a prefix, a set read by a program's constants,
a set past the class budget, a full hash) is compiled into the set instead, by a new
generation (engine.livesets).
"""

from __future__ import annotations

import mmap
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Iterable

from .. import abi
from ..kernel.libbpf import map_info
from . import addrtrie


@dataclass(eq=False)
class Lookup:
    """One address lookup of a generation: its table and host hash (map names), the
    roots of its tries, and per set the class each class takes inside the set."""

    name: str
    table: str
    hosts: str
    root4: int
    root6: int
    sets: dict[str, dict[int, int]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "table": self.table, "hosts": self.hosts,
                "root4": self.root4, "root6": self.root6,
                "sets": {s: [[k, v] for k, v in t.items()] for s, t in self.sets.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "Lookup":
        return cls(d["name"], d["table"], d["hosts"], int(d["root4"]), int(d["root6"]),
                   {s: {int(k): int(v) for k, v in t} for s, t in d["sets"].items()})


@dataclass(eq=False)
class LiveIndex:
    """What a generation's live entries need: its lookups, and which lookups read each
    set of the policy ("direct" and other names of no lookup: read where entries
    cannot be laid over)."""

    lookups: dict[str, Lookup] = field(default_factory=dict)
    reads: dict[str, set[str]] = field(default_factory=dict)
    sets: set[str] = field(default_factory=set)  # every set of the policy, read or not
    # Live entries this generation compiled into their sets: a change to one needs a
    # new generation.
    compiled: dict[str, set[str]] = field(default_factory=dict)

    def in_place(self, name: str) -> bool:
        """Whether single addresses of set `name` can be laid over every lookup that
        reads it (a set nothing reads takes them trivially)."""
        return all(place in self.lookups and name in self.lookups[place].sets
                   for place in self.reads.get(name, ()))

    def to_json(self) -> dict:
        return {"lookups": [lk.to_json() for lk in self.lookups.values()],
                "reads": {s: sorted(p) for s, p in self.reads.items()}, "sets": sorted(self.sets),
                "compiled": {s: sorted(p) for s, p in self.compiled.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "LiveIndex":
        lookups = [Lookup.from_json(x) for x in d.get("lookups", [])]
        return cls({lk.name: lk for lk in lookups},
                   {s: set(p) for s, p in d.get("reads", {}).items()}, set(d.get("sets", ())),
                   {s: set(p) for s, p in d.get("compiled", {}).items()})


def is_host(net: Any) -> bool:
    return net.prefixlen == net.max_prefixlen


def host_key(net: Any) -> bytes:
    return addrtrie.host_key(int(net.network_address), net.version)


@dataclass(frozen=True)
class Membership:
    """An address's live sets, each with its expiry (CLOCK_MONOTONIC ns; 0: none)."""

    sets: tuple[tuple[str, int], ...]


class MappedTable:
    """A running table's entries, mapped: a store to one entry is one aligned u32
    write, which a packet reads whole (BPF_F_MMAPABLE arrays)."""

    def __init__(self, table_map: Any) -> None:
        size = map_info(table_map.fd).value_size
        self._mm = mmap.mmap(table_map.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.entries = memoryview(self._mm).cast("I")

    def close(self) -> None:
        self.entries.release()
        self._mm.close()

    def __enter__(self) -> "MappedTable":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HashFull(Exception):
    """A host hash has no room left: the entries go into a new generation instead."""


def lay_over(maps: dict[str, Any], lookup: Lookup, changes: dict[bytes, Membership | None]) -> int:
    """Sets each address's live sets in one lookup (None or no set the lookup reads:
    none any more). Returns how many host entries were written or removed."""
    hosts = maps[lookup.hosts]
    writes: list[tuple[bytes, tuple[int, ...]]] = []
    removes: list[bytes] = []
    with MappedTable(maps[lookup.table]) as table:
        leaves: list[int] = []
        for key, member in changes.items():
            # Live entries are never IPv4-mapped IPv6 (parse_prefix refuses them): an
            # address in that form is IPv4.
            leaf = addrtrie.leaf(table.entries, lookup.root4, lookup.root6, key,
                                 key[:12] == addrtrie.V4_MAPPED)
            current = hosts.lookup(key)
            if current is None:
                origin, flags = table.entries[leaf] & addrtrie.CLASS, 0
            else:
                origin, flags = current.origin, current.flags
            own = [(s, exp) for s, exp in (member.sets if member else ()) if s in lookup.sets]
            if not own:
                if current is None:
                    continue
                if flags & abi.SW_HOST_COMPILED:
                    writes.append((key, (origin, origin, origin, flags, 0, 0)))
                else:
                    removes.append(key)
                continue
            cls = _joined(lookup, origin, [s for s, _ in own])
            timed = [exp for _, exp in own if exp]
            expires = min(timed) if timed else 0
            fallback = _joined(lookup, origin, [s for s, exp in own if exp != expires]) \
                if expires else cls
            writes.append((key, (cls, fallback, origin, flags, expires & 0xFFFFFFFF, expires >> 32)))
            leaves.append(leaf)
        if writes:
            keys = b"".join(k for k, _ in writes)
            values = array("I", [v for _, vals in writes for v in vals]).tobytes()
            try:
                hosts.update_batch(keys, values)
            except OSError as exc:
                raise HashFull(str(exc)) from None
        # The hash holds the entries before the flags send packets to it.
        for index in leaves:
            table.entries[index] = table.entries[index] | addrtrie.HOSTS
    if removes:
        hosts.delete_batch(removes)
    return len(writes) + len(removes)


def _joined(lookup: Lookup, origin: int, sets: Iterable[str]) -> int:
    cls = origin
    for name in sorted(sets):
        cls = lookup.sets[name][cls]
    return cls


def monotonic_ns(wall: float | None) -> int:
    """A wall-clock expiry as the data plane's clock (bpf_ktime_get_coarse_ns), 0 for
    none; an expiry already past is 1, expired."""
    if wall is None:
        return 0
    return max(1, time.clock_gettime_ns(time.CLOCK_MONOTONIC) + int((wall - time.time()) * 1e9))
