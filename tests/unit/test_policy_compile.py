"""The classifier compiler without a kernel: its images, read the way the policy stage
reads them, decide what the reference model decides."""

from __future__ import annotations

import ipaddress
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from shieldwall import abi
from shieldwall.model.parse import ParsedPacket, parse
from shieldwall.policy import Capacity, parse_policy, parse_policy_text
from shieldwall.policy.compile import BLOCK_RULES, FIELDS, PolicyImage, compile_policy
from shieldwall.policy.reference import evaluate_rules, has_icmp, has_ports, has_tcp

from ..policy_strategies import packets, policies

KINDS = {"decides": abi.SW_POL_V_DECIDES, "drops": abi.SW_POL_V_DROPS,
         "would_drop": abi.SW_POL_V_WOULD_DROP}


def policy(rules: str, default: str = "pass", sets: str = ""):
    text = f"version: 1\ndefault_action: {default}\n{sets}rules:\n" + \
        textwrap.indent(textwrap.dedent(rules), "  ")
    return parse_policy_text(text, "compile.yaml", ".")


# --- the data plane's reading of an image, as policy.bpf.c does it ------------------


def _key(name: str, pkt: ParsedPacket) -> int | None:
    """sw_pol_key: the value a scalar field keys its class by, None if it does not apply."""
    frag = (abi.SW_POL_FRAG_NONE if not pkt.frag & abi.SW_FRAG_IS else
            abi.SW_POL_FRAG_LATER if pkt.frag_off else
            abi.SW_POL_FRAG_FIRST if pkt.frag & abi.SW_FRAG_MORE else abi.SW_POL_FRAG_OTHER)
    keys = {
        "proto": pkt.l4_proto, "length": pkt.l3_len, "ttl": pkt.ttl, "fragment": frag,
        "family": int(pkt.family == abi.SW_FAMILY_IPV6),
        "sport": pkt.sport if has_ports(pkt) else None,
        "dport": pkt.dport if has_ports(pkt) else None,
        "tcp_flags": pkt.tcp_flags if has_tcp(pkt) else None,
        "icmp_type": pkt.icmp_type if has_icmp(pkt) else None,
        "icmp_code": pkt.icmp_code if has_icmp(pkt) else None,
        "vlan": pkt.vlan_id if pkt.vlan_depth else None,
    }
    return keys[name]


def _trie_class(image: PolicyImage, name: str, addr: bytes) -> int:
    trie = image.tries[name]
    table = {}
    for i in range(len(trie)):
        key = trie.keys[20 * i:20 * i + 20]
        table[(int.from_bytes(key[:4], sys.byteorder), key[4:])] = trie.classes[i]
    value = int.from_bytes(addr, "big")
    for plen in range(128, -1, -1):
        prefix = (value >> (128 - plen) << (128 - plen)).to_bytes(16, "big")
        if (plen, prefix) in table:
            return table[(plen, prefix)]
    raise AssertionError("the roots hold every address")


def _vector(image: PolicyImage, base: int, cls: int) -> int:
    start = (base + cls * image.nblocks) * abi.SW_POL_BLOCK_WORDS
    words = image.blocks[start:start + image.nblocks * abi.SW_POL_BLOCK_WORDS]
    return sum(w << (64 * i) for i, w in enumerate(words))


def decide(image: PolicyImage, pkt: ParsedPacket) -> tuple[int, list[int], bool]:
    """(deciding rule id or 0, ids of the non-deciding hits before it, its verdict drops)."""
    acc = (1 << image.rules) - 1
    for name, fid in FIELDS.items():
        f = image.fields[fid]
        if not f.used:
            continue
        if name in ("src", "dst"):
            addr = pkt.src if name == "src" else pkt.dst
            mapped = pkt.family == abi.SW_FAMILY_IPV6 and addr[:12] == bytes(10) + b"\xff\xff"
            cls = f.na_class if mapped else _trie_class(image, name, addr)
        else:
            key = _key(name, pkt)
            cls = f.na_class if key is None else image.keys[f.key_base + key]
        acc &= _vector(image, f.vec_base, cls)
    kinds = {k: _vector(image, image.kinds_base, v) for k, v in KINDS.items()}
    decides = acc & kinds["decides"]
    low = decides & -decides
    before = acc & (low - 1) if decides else acc
    counted = [i + 1 for i in range(image.rules) if before >> i & 1]
    return low.bit_length(), counted, bool(kinds["drops"] & low)


# --- against the reference ---------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), st.lists(packets(), min_size=1, max_size=10))
def test_images_decide_as_the_reference(pol, frames):
    image = compile_policy(pol)
    ids = {rule.name: rule.id for rule in pol.rules}
    for frame in frames:
        pkt = parse(frame)[0]
        want = evaluate_rules(pol, pkt)
        rule, counted, drops = decide(image, pkt)
        assert rule == want.rule_id
        assert counted == [ids[name] for name in want.counted]
        if rule:
            assert ("drop" if drops else "pass") == want.action


def test_an_address_gets_the_rules_of_every_prefix_holding_it():
    pol = policy("""\
        - {name: wide, action: count, match: {src: 192.0.2.0/24}}
        - {name: narrow, action: count, match: {src: 192.0.2.0/25}}
        - {name: host, action: count, match: {src: 192.0.2.7}}
        """)
    image = compile_policy(pol)
    for addr, hits in [("192.0.2.7", [1, 2, 3]), ("192.0.2.8", [1, 2]), ("192.0.2.200", [1]),
                       ("198.51.100.1", [])]:
        pkt = parse(bytes(Ether() / IP(src=addr, dst="192.0.2.1") / UDP()))[0]
        assert decide(image, pkt)[1] == hits, addr


def test_nodes_that_change_nothing_are_left_out():
    # The /25 and the host are inside the set's /24: one class for all of them.
    sets = 'sets:\n  s: {type: prefix, entries: [192.0.2.0/24, 192.0.2.0/25, 192.0.2.7]}\n'
    image = compile_policy(policy("- {name: r, action: drop, match: {src: '@s'}}\n", sets=sets))
    trie = image.tries["src"]
    prefixes = sorted(int.from_bytes(trie.keys[20 * i:20 * i + 4], sys.byteorder)
                      for i in range(len(trie)))
    assert prefixes == [0, 96, 96 + 24]  # ::/0, ::ffff:0:0/96, the /24


def test_ipv4_prefixes_never_hold_ipv6_addresses():
    image = compile_policy(policy("- {name: r, action: drop, match: {src: '!192.0.2.0/24'}}\n"))
    field = image.fields[FIELDS["src"]]
    v4_inside = _trie_class(image, "src", ipaddress.IPv6Address("::ffff:192.0.2.1").packed)
    v6 = _trie_class(image, "src", ipaddress.IPv6Address("2001:db8::1").packed)
    assert _vector(image, field.vec_base, v4_inside) == 0
    assert _vector(image, field.vec_base, v6) == 1
    assert _vector(image, field.vec_base, field.na_class) == 1  # ::ffff:192.0.2.1 in IPv6


def test_scalar_fields_take_a_key_range_only_when_used():
    image = compile_policy(policy("- {name: r, action: drop, match: {dport: 22, ttl: 1-5}}\n"))
    assert len(image.keys) == 65536 + 256
    used = {name for name, fid in FIELDS.items() if image.fields[fid].used}
    assert used == {"dport", "ttl"}
    dport = image.fields[FIELDS["dport"]]
    assert image.keys[dport.key_base + 22] != image.keys[dport.key_base + 23]
    assert _vector(image, dport.vec_base, dport.na_class) == 0


def test_vectors_span_blocks_of_512_rules():
    rules = "".join(f"- {{name: r{i}, action: drop, match: {{dport: {i}}}}}\n" for i in range(1025))
    image = compile_policy(policy(rules))
    assert image.nblocks == 3 == -(-1025 // BLOCK_RULES)
    pkt = ParsedPacket(family=abi.SW_FAMILY_IPV4, l4_proto=6, dport=1024, flags=abi.SW_PKT_HAS_L4,
                       src=bytes(10) + b"\xff\xff" + bytes(4), dst=bytes(10) + b"\xff\xff" + bytes(4))
    assert decide(image, pkt)[0] == 1025


def test_capacity():
    rules = [{"name": f"r{i}", "action": "count"} for i in range(abi.SW_POL_MAX_RULES + 1)]
    data = {"version": 1, "default_action": "pass", "rules": rules}
    big = parse_policy(data, "big.yaml", ".", Capacity(rules=len(rules)))
    with pytest.raises(ValueError, match="at most 10240"):
        compile_policy(big)
