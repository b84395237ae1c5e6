"""Address classification tables: multibit tries that map an address to a class in one
table read per address byte (bpf/lib/table.h, sw_addr_class).

The kernel's own LPM trie is a binary trie: a lookup for a random address follows one
node per bit that distinguishes the stored prefixes, about 13 dependent reads for 10,000
of them and over 20 for a million, and an attacker picks the addresses. Here a node is
256 entries indexed by one byte, so an IPv4 lookup reads at most 4 entries and an IPv6
one at most 16, fewer where no longer prefix lives. A single address (/32, /128) costs
up to a node per byte of its own: the first ones go into the trie anyway (a hash
lookup costs more than the few reads they add), and past HOST_NODES nodes the rest go
to a hash, which the leaf above them flags.

Nodes come as (address, prefix length, class) with longest-prefix semantics, the root
(0, 0, class) included, as policy.classes and dataplane.sources produce them.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from .. import abi
from .tables import TableImage

FANOUT = abi.SW_TRIE_FANOUT
CHILD = abi.SW_TRIE_CHILD
HOSTS = abi.SW_TRIE_HOSTS
CLASS = abi.SW_TRIE_CLASS
V4_MAPPED = bytes(10) + b"\xff\xff"

Node = tuple[int, int, int]

# Trie nodes (1 KiB each) that single addresses may add before they go to the hash.
HOST_NODES = 2048
# Room in a host hash for live set entries beyond the compiled ones (allocated as
# they come: the hash is not preallocated).
LIVE_HOSTS = 1 << 18


@dataclass(eq=False)
class Trie:
    """Where one classifier's tries live in its table, and its host hash."""

    root4: int = 0
    root6: int = 0
    hosts: dict[bytes, int] = field(default_factory=dict)  # 16-byte address -> class


def host_key(addr: int, version: int) -> bytes:
    return V4_MAPPED + addr.to_bytes(4, "big") if version == 4 else addr.to_bytes(16, "big")


def hash_size(hosts: dict[bytes, int]) -> int:
    return len(hosts) + LIVE_HOSTS


def host_contents(hosts: dict[bytes, int]) -> tuple[bytes, bytes]:
    """Keys and struct sw_host values of compiled single addresses."""
    values = array("I")
    for cls in hosts.values():
        values.extend((cls, cls, cls, abi.SW_HOST_COMPILED, 0, 0))
    return b"".join(hosts), values.tobytes()


def build(tab: TableImage, nodes: dict[int, list[Node]]) -> Trie:
    """Both families' tries in tab, and the host hash; every class must fit SW_TRIE_CLASS."""
    trie = Trie()
    trie.root4 = _family(tab, nodes.get(4, [(0, 0, 0)]), 32, 4, trie.hosts)
    trie.root6 = _family(tab, nodes.get(6, [(0, 0, 0)]), 128, 6, trie.hosts)
    return trie


def _new_node(tab: TableImage, fill: int) -> int:
    tab.align(FANOUT)
    base = tab.add(array("I", [fill]) * FANOUT)
    return base // FANOUT


def _family(tab: TableImage, nodes: list[Node], bits: int, version: int,
            hosts: dict[bytes, int]) -> int:
    ordered = sorted(nodes, key=lambda n: n[1])  # shorter prefixes first: longer ones override
    root_class = next((cls for addr, plen, cls in ordered if plen == 0), 0)
    if root_class > CLASS:
        raise ValueError(f"{root_class} classes do not fit an address trie")
    root = _new_node(tab, root_class)
    e = tab.entries
    singles = []
    for addr, plen, cls in ordered:
        if plen == 0:
            continue
        if cls > CLASS:
            raise ValueError(f"{cls} classes do not fit an address trie")
        if plen == bits:
            singles.append((addr, cls))
            continue
        level = (plen - 1) // 8
        node = _descend(tab, root, addr, bits, level)
        e = tab.entries
        span = 1 << (8 * (level + 1) - plen)
        first = (addr >> (bits - 8 * (level + 1))) & 0xFF & ~(span - 1)
        start = node * FANOUT + first
        e[start:start + span] = array("I", [cls]) * span
    # Single addresses last (in address order, so neighbours share nodes), in the trie
    # while it stays small, then in the hash, each flagging the leaf that holds it.
    budget = len(tab.entries) // FANOUT + HOST_NODES
    hashed = []
    for addr, cls in sorted(singles):
        if len(tab.entries) // FANOUT + bits // 8 > budget:
            hashed.append((addr, cls))
            continue
        node = _descend(tab, root, addr, bits, bits // 8 - 1)
        tab.entries[node * FANOUT + (addr & 0xFF)] = cls
    e = tab.entries
    for addr, cls in hashed:
        node, index = root, 0
        for level in range(bits // 8):
            index = node * FANOUT + ((addr >> (bits - 8 * (level + 1))) & 0xFF)
            if not e[index] & CHILD:
                break
            node = e[index] & CLASS
        tab.entries[index] |= HOSTS
        hosts[host_key(addr, version)] = cls
    return root


def _descend(tab: TableImage, root: int, addr: int, bits: int, level: int) -> int:
    """The node at `level` on addr's path, creating the nodes on the way; a new node
    starts as copies of the entry it replaces (the longest prefix above it)."""
    node = root
    for i in range(level):
        index = node * FANOUT + ((addr >> (bits - 8 * (i + 1))) & 0xFF)
        entry = tab.entries[index]
        if entry & CHILD:
            node = entry & CLASS
        else:
            child = _new_node(tab, entry)
            tab.entries[index] = CHILD | child
            node = child
    return node


def leaf(entries: "array | memoryview", root4: int, root6: int, addr16: bytes, v4: bool) -> int:
    """The index of the entry the walk for addr16 stops at (sw_addr_class), in a table's
    entries: a TableImage's, or a running table mapped (dataplane.livehosts); `v4`:
    the packet is IPv4 (an IPv6 packet walks the IPv6 trie, whatever its address)."""
    node = root4 if v4 else root6
    index = 0
    for byte in addr16[12:] if v4 else addr16:
        index = node * FANOUT + byte
        if not entries[index] & CHILD:
            break
        node = entries[index] & CLASS
    return index


def lookup(tab: TableImage, trie: Trie, addr16: bytes, family: int) -> int:
    """sw_addr_class() in Python, for the tests."""
    v4 = family == abi.SW_FAMILY_IPV4
    entry = tab.entries[leaf(tab.entries, trie.root4, trie.root6, addr16, v4)]
    mapped = not v4 and addr16[:12] == V4_MAPPED
    if entry & HOSTS and not mapped and addr16 in trie.hosts:
        return trie.hosts[addr16]
    return entry & CLASS
