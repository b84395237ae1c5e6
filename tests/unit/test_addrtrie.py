"""Address tries and the merged source classification, against a linear longest-prefix
scan."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from shieldwall import abi
from shieldwall.dataplane import addrtrie
from shieldwall.dataplane.sources import SourceMap, merge
from shieldwall.dataplane.tables import TableImage
from shieldwall.policy.classes import longest_match

V4_BASE, V6_BASE = 0xC0000200, 0x20010DB8 << 96  # 192.0.2.0, 2001:db8::


def _nodes(rnd: random.Random, count: int) -> dict[int, list[tuple[int, int, int]]]:
    nodes = {4: {(0, 0): rnd.randrange(4)}, 6: {(0, 0): rnd.randrange(4)}}
    for _ in range(count):
        version = rnd.choice([4, 6])
        bits = 32 if version == 4 else 128
        plen = rnd.choice([1, 7, 8, 9, 16, 20, 24, 25, 31, 32, 32] if version == 4 else
                          [1, 8, 16, 32, 48, 56, 64, 100, 127, 128, 128])
        near = V4_BASE if version == 4 else V6_BASE
        addr = (near ^ rnd.getrandbits(12)) if rnd.random() < 0.8 else rnd.getrandbits(bits)
        addr &= ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)
        nodes[version].setdefault((addr, plen), rnd.randrange(1, 60))
    return {v: [(a, p, c) for (a, p), c in n.items()] for v, n in nodes.items()}


def _probe(rnd: random.Random, nodes, version: int) -> int:
    bits = 32 if version == 4 else 128
    if rnd.random() < 0.7:
        addr, plen, _ = rnd.choice(nodes[version])
        return addr | (rnd.getrandbits(bits - plen) if plen < bits else 0)
    return rnd.getrandbits(bits)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 40), st.sampled_from([0, 3, addrtrie.HOST_NODES]))
def test_trie_lookups_are_longest_prefix_matches(seed, count, host_nodes):
    # Single addresses in the trie, in the hash, and some of each.
    addrtrie.HOST_NODES, saved = host_nodes, addrtrie.HOST_NODES
    try:
        _lookups_match(seed, count)
    finally:
        addrtrie.HOST_NODES = saved


def _lookups_match(seed: int, count: int) -> None:
    rnd = random.Random(seed)
    nodes = _nodes(rnd, count)
    tab = TableImage()
    trie = addrtrie.build(tab, nodes)
    for _ in range(100):
        version = rnd.choice([4, 6])
        addr = _probe(rnd, nodes, version)
        family = abi.SW_FAMILY_IPV4 if version == 4 else abi.SW_FAMILY_IPV6
        got = addrtrie.lookup(tab, trie, addrtrie.host_key(addr, version), family)
        assert got == longest_match(nodes[version], addr, 32 if version == 4 else 128)


def test_a_few_single_addresses_live_in_the_trie():
    nodes = {4: [(0, 0, 0), (V4_BASE | 7, 32, 2)], 6: [(0, 0, 0), (1, 128, 3)]}
    tab = TableImage()
    trie = addrtrie.build(tab, nodes)
    assert trie.hosts == {}
    assert addrtrie.lookup(tab, trie, addrtrie.host_key(V4_BASE | 7, 4), abi.SW_FAMILY_IPV4) == 2
    assert addrtrie.lookup(tab, trie, addrtrie.host_key(1, 6), abi.SW_FAMILY_IPV6) == 3


def test_single_addresses_live_in_the_host_hash_under_a_flagged_leaf(monkeypatch):
    monkeypatch.setattr(addrtrie, "HOST_NODES", 0)
    nodes = {4: [(0, 0, 0), (V4_BASE, 24, 1), (V4_BASE | 7, 32, 2)], 6: [(0, 0, 0)]}
    tab = TableImage()
    trie = addrtrie.build(tab, nodes)
    assert trie.hosts == {addrtrie.host_key(V4_BASE | 7, 4): 2}
    lookup = lambda a: addrtrie.lookup(tab, trie, addrtrie.host_key(a, 4), abi.SW_FAMILY_IPV4)
    assert (lookup(V4_BASE | 7), lookup(V4_BASE | 8), lookup(0x0A000001)) == (2, 1, 0)
    # Four nodes for IPv4 at most: the host took none.
    assert len(tab) <= 1 + 256 * 5


def test_an_ipv6_packet_never_finds_the_ipv4_host_of_its_mapped_address(monkeypatch):
    monkeypatch.setattr(addrtrie, "HOST_NODES", 0)
    nodes = {4: [(0, 0, 0), (V4_BASE | 7, 32, 2)], 6: [(0, 0, 5), (1, 128, 6)]}  # ::1 flags ::/8
    tab = TableImage()
    trie = addrtrie.build(tab, nodes)
    mapped = addrtrie.host_key(V4_BASE | 7, 4)  # ::ffff:192.0.2.7, the same 16 bytes
    assert addrtrie.lookup(tab, trie, mapped, abi.SW_FAMILY_IPV6) == 5
    assert addrtrie.lookup(tab, trie, mapped, abi.SW_FAMILY_IPV4) == 2


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 3))
def test_merged_sources_give_each_stage_its_own_answer(seed, stages):
    rnd = random.Random(seed)
    maps = {f"s{i}": SourceMap(_nodes(rnd, rnd.randrange(0, 15))) for i in range(stages)}
    merged = merge(maps)
    tab = TableImage()
    trie = addrtrie.build(tab, merged.nodes)
    for _ in range(100):
        version = rnd.choice([4, 6])
        addr = _probe(rnd, maps[rnd.choice(list(maps))].nodes, version)
        family = abi.SW_FAMILY_IPV4 if version == 4 else abi.SW_FAMILY_IPV6
        cls = addrtrie.lookup(tab, trie, addrtrie.host_key(addr, version), family)
        for name, m in maps.items():
            assert merged.columns[name][cls] == longest_match(m.nodes[version], addr,
                                                              32 if version == 4 else 128)
