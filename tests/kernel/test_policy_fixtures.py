"""The policy stage on a table of policies and packets, one or more cases per match
field: the expected verdict is written out, and the reference model must agree with it."""

from __future__ import annotations

import textwrap

import pytest
from scapy.layers.inet6 import ICMPv6ND_RA

from shieldwall import abi
from shieldwall.config import configure
from shieldwall.dataplane import addrtrie
from shieldwall.kernel import libbpf
from shieldwall.dataplane.pipeline import Pipeline, PipelineConfig
from shieldwall.model.parse import parse
from shieldwall.policy import evaluate, parse_policy_text
from shieldwall.policy import classifier
from shieldwall.stages.policy import rule_counters

from .packets import (ICMP, TCP, UDP, ICMPv6EchoRequest, ICMPv6ND_NS, IPv6ExtHdrDestOpt,
                      IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, eth, v4, v6)

pytestmark = pytest.mark.kernel

SETS = """\
sets:
  bad: {type: prefix, entries: [198.51.100.0/24, "2001:db8:bad::/48", 203.0.113.9]}
  inner: {type: prefix, entries: [192.0.2.128/25]}
"""


def policy(rules: str, default: str = "pass"):
    text = f"version: 1\ndefault_action: {default}\n{SETS}rules:\n" + \
        textwrap.indent(textwrap.dedent(rules), "  ")
    return parse_policy_text(text, "fixture.yaml", ".")


@pytest.fixture(scope="module", params=["direct", "chains"])
def pipeline(request, hook):
    """Every case twice: small rulesets in direct mode, and through the chains."""
    saved = classifier.DIRECT
    classifier.DIRECT = request.param == "direct"
    try:
        with Pipeline.load(PipelineConfig(hook=hook)) as p:
            yield p
    finally:
        classifier.DIRECT = saved


_installed: dict[int, object] = {}
_baseline: dict[int, dict] = {}


def install(pipeline, pol) -> None:
    if _installed.get(id(pipeline)) is not pol:
        pipeline.apply(configure(pol))
        _installed[id(pipeline)] = pol
        # Counters follow rule names across rulesets (from earlier tests too): each
        # test counts from its own install.
        _baseline[id(pipeline)] = rule_counters(pipeline.maps)


def since_install(pipeline) -> dict[int, tuple[int, int, int]]:
    """(packets, bytes, would_drop) each rule added since its ruleset was installed."""
    base = _baseline[id(pipeline)]
    return {i: (c.packets - base[i].packets, c.bytes - base[i].bytes, c.would_drop - base[i].would_drop)
            for i, c in rule_counters(pipeline.maps).items()}


def hits_since_install(pipeline) -> dict[int, int]:
    return {i: added[0] for i, added in since_install(pipeline).items()}


def verdict(pipeline, cpu, pol, packet) -> tuple[str, str, str | None]:
    """The stage's (action, reason, deciding rule), after checking the reference agrees."""
    frame = bytes(packet)
    install(pipeline, pol)
    got = pipeline.run(frame, cpu)
    want = evaluate(pol, parse(frame)[0])
    assert (got.action, got.reason, got.rule_id) == (want.action, want.reason, want.rule_id)
    assert got.module == "policy"
    return got.action, got.reason, want.rule


def rule(field: str, value: str, action: str = "drop") -> str:
    return f"- {{name: {field}, action: {action}, match: {{{field}: {value}}}}}\n"


TCP_SYN = eth() / v4() / TCP(sport=40000, dport=22, flags="S")
DROP = ("drop", "rule")
DEFAULT = ("pass", "default", None)

CASES = [
    # field, value, packet, matches
    ("src", "192.0.2.0/24", eth() / v4(src="192.0.2.7") / TCP(), True),
    ("src", "192.0.2.0/24", eth() / v4(src="198.51.100.7") / TCP(), False),
    ("src", '"2001:db8:1::/48"', eth() / v6(src="2001:db8:1::7") / UDP(), True),
    ("src", '"2001:db8:1::/48"', eth() / v6(src="2001:db8:2::7") / UDP(), False),
    # Nested prefixes: the /25 inside the /24 is excluded, the rest of the /24 admitted.
    ("src", '[192.0.2.0/24, "!192.0.2.128/25"]', eth() / v4(src="192.0.2.7") / TCP(), True),
    ("src", '[192.0.2.0/24, "!192.0.2.128/25"]', eth() / v4(src="192.0.2.200") / TCP(), False),
    ("src", '["!192.0.2.0/24"]', eth() / v4(src="203.0.113.1") / TCP(), True),
    # An IPv4 prefix never holds an IPv6 address, not even the IPv4-mapped form of one.
    ("src", '["!192.0.2.0/24"]', eth() / v6(src="2001:db8::1") / TCP(), True),
    ("src", '["!192.0.2.0/24"]', eth() / v6(src="::ffff:192.0.2.1") / TCP(), True),
    ("src", "192.0.2.0/24", eth() / v6(src="::ffff:192.0.2.1") / TCP(), False),
    ("src", '"@bad"', eth() / v4(src="198.51.100.77") / TCP(), True),
    ("src", '"@bad"', eth() / v4(src="203.0.113.9") / TCP(), True),
    ("src", '"@bad"', eth() / v4(src="203.0.113.10") / TCP(), False),
    ("src", '"@bad"', eth() / v6(src="2001:db8:bad:1::1") / TCP(), True),
    ("src", '["@bad", "!198.51.100.0/25"]', eth() / v4(src="198.51.100.7") / TCP(), False),
    ("src", '["@bad", "!198.51.100.0/25"]', eth() / v4(src="198.51.100.200") / TCP(), True),
    ("src", '["192.0.2.0/24", "!@inner"]', eth() / v4(src="192.0.2.130") / TCP(), False),
    ("dst", "192.0.2.1", eth() / v4(dst="192.0.2.1") / TCP(), True),
    ("dst", "192.0.2.1", eth() / v4(dst="192.0.2.2") / TCP(), False),
    ("proto", "udp", eth() / v4() / UDP(), True),
    ("proto", "udp", eth() / v4() / TCP(), False),
    ("proto", '"!tcp"', eth() / v4(proto=47) / (b"\x00" * 8), True),
    ("proto", "tcp", eth() / v6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / TCP(), True),
    ("proto", "udp", eth() / v4(frag=10, proto=17) / (b"x" * 16), True),
    ("sport", "53", eth() / v4() / UDP(sport=53), True),
    ("sport", "53", eth() / v4() / UDP(sport=54), False),
    ("dport", "1000-2000", eth() / v4() / TCP(dport=1500), True),
    ("dport", '["!80", "!443"]', eth() / v4() / TCP(dport=8080), True),
    ("dport", '["!80", "!443"]', eth() / v4() / TCP(dport=443), False),
    # Ports do not apply without a TCP or UDP header: even a negated list fails.
    ("dport", '["!80"]', eth() / v4() / ICMP(), False),
    ("dport", '["!80"]', eth() / v4(frag=10, proto=6) / (b"x" * 16), False),
    ("dport", "22", eth() / v6() / IPv6ExtHdrDestOpt() / TCP(dport=22), True),
    ("tcp_flags", '"SYN,!ACK"', TCP_SYN, True),
    ("tcp_flags", '"SYN,!ACK"', eth() / v4() / TCP(flags="SA"), False),
    ("tcp_flags", '"!SYN"', eth() / v4() / UDP(), False),
    ("icmp_type", "8", eth() / v4() / ICMP(type=8), True),
    ("icmp_type", "128", eth() / v6() / ICMPv6EchoRequest(), True),
    # Type and code only exist in ICMP of the packet's own family.
    ("icmp_type", '["!8"]', eth() / v6(nh=1) / ICMP(type=0), False),
    ("icmp_code", "3", eth() / v4() / ICMP(type=3, code=3), True),
    ("icmp_code", "3", eth() / v4() / ICMP(type=3, code=1), False),
    ("length", '"100-"', eth() / v4() / UDP() / (b"x" * 72), True),
    ("length", '"100-"', eth() / v4() / UDP() / (b"x" * 71), False),
    ("ttl", '"0-1"', eth() / v4(ttl=1) / TCP(), True),
    ("ttl", '"0-1"', eth() / v6(hlim=64) / TCP(), False),
    ("vlan", "10", eth(("q", 10)) / v4() / TCP(), True),
    ("vlan", "10", eth(("ad", 10), ("q", 20)) / v4() / TCP(), False),
    ("vlan", '["!10"]', eth() / v4() / TCP(), False),
    ("vlan", '["!10"]', eth(("q", 11)) / v6() / TCP(), True),
    ("fragment", "any", eth() / v4(flags="MF") / UDP() / (b"x" * 16), True),
    ("fragment", "first", eth() / v4(flags="MF") / UDP() / (b"x" * 16), True),
    ("fragment", "first", eth() / v4(frag=10, proto=17) / (b"x" * 16), False),
    ("fragment", "non_first", eth() / v4(frag=10, proto=17) / (b"x" * 16), True),
    ("fragment", "non_first", eth() / v6() / IPv6ExtHdrFragment(offset=9, nh=17) / (b"x" * 16), True),
    ("fragment", "first", eth() / v6() / IPv6ExtHdrFragment(m=1) / UDP() / (b"x" * 16), True),
    ("fragment", "any", eth() / v6() / IPv6ExtHdrFragment() / UDP(), False),
    ("fragment", "any", eth() / v4() / UDP(), False),
    ("family", "ipv6", eth() / v6() / UDP(), True),
    ("family", "ipv6", eth() / v4() / UDP(), False),
]


@pytest.mark.parametrize("field,value,packet,hit", CASES,
                         ids=[f"{c[0]}={c[1]}-{i}" for i, c in enumerate(CASES)])
def test_match_field(pipeline, cpu, field, value, packet, hit):
    pol = policy(rule(field, value))
    expected = ("drop", "rule", field) if hit else DEFAULT
    assert verdict(pipeline, cpu, pol, packet) == expected


def test_first_deciding_rule_wins_and_count_monitor_go_on(pipeline, cpu):
    pol = policy("""\
        - {name: c, action: count, match: {proto: tcp}}
        - {name: m, action: monitor, match: {dport: 22}}
        - {name: p, action: pass, match: {src: 198.51.100.0/24, dport: 22}}
        - {name: d, action: drop}
        """, default="drop")
    assert verdict(pipeline, cpu, pol, TCP_SYN) == ("pass", "rule", "p")
    assert verdict(pipeline, cpu, pol, TCP_SYN) == ("pass", "rule", "p")
    assert verdict(pipeline, cpu, pol, eth() / v4() / UDP()) == ("drop", "rule", "d")
    added = since_install(pipeline)
    assert [added[i][0] for i in (1, 2, 3, 4)] == [2, 2, 2, 1]
    assert (added[1][2], added[2][2]) == (0, 2)
    assert added[3][1] == 2 * len(bytes(TCP_SYN))
    assert rule_counters(pipeline.maps)[3].last_hit_ns > 0


def test_default_action_and_nd_protection(pipeline, cpu):
    pol = policy(rule("dport", "22"), default="drop")
    assert verdict(pipeline, cpu, pol, eth() / v4() / UDP()) == ("drop", "default", None)
    for nd in (ICMPv6ND_NS(tgt="2001:db8::1"), ICMPv6ND_RA()):
        assert verdict(pipeline, cpu, pol, eth() / v6() / nd) == ("pass", "nd_protected", None)
    # Only default_action spares neighbor discovery: a rule drops it.
    pol = policy(rule("proto", "icmpv6"), default="drop")
    nd = eth() / v6() / ICMPv6ND_NS(tgt="2001:db8::1")
    assert verdict(pipeline, cpu, pol, nd) == ("drop", "rule", "proto")
    assert verdict(pipeline, cpu, pol, eth() / v6() / IPv6ExtHdrFragment(offset=9, nh=58)
                   / (b"x" * 8)) == ("drop", "rule", "proto")
    assert hits_since_install(pipeline)[0] == 0


def test_every_counting_rule_before_the_decider_counts(pipeline, cpu):
    rules = "".join(f"- {{name: c{i}, action: count, match: {{proto: tcp}}}}\n" for i in range(12))
    pol = policy(rules + "- {name: d, action: drop, match: {dport: 22}}\n")
    for _ in range(3):
        assert verdict(pipeline, cpu, pol, TCP_SYN) == ("drop", "rule", "d")
    hits = hits_since_install(pipeline)
    assert [hits[i] for i in range(1, 14)] == [3] * 13


def test_a_deciding_rule_deep_in_a_large_ruleset(pipeline, cpu):
    # 1,200 rules of one field, counting ones among them.
    rules = "".join(f"- {{name: r{i}, action: {'count' if i % 500 == 7 else 'drop'}, "
                    f"match: {{dport: {i + 1}}}}}\n" for i in range(1200))
    rules += "- {name: low, action: count, match: {dport: 1-9}}\n"
    pol = policy(rules)
    assert verdict(pipeline, cpu, pol, eth() / v4() / TCP(dport=1101)) == ("drop", "rule", "r1100")
    assert verdict(pipeline, cpu, pol, eth() / v4() / TCP(dport=1008)) == ("pass", "default", None)
    assert verdict(pipeline, cpu, pol, eth() / v4() / TCP(dport=8)) == ("pass", "default", None)
    hits = hits_since_install(pipeline)
    assert (hits[1008], hits[8], hits[1201]) == (1, 1, 1)


def test_a_new_ruleset_replaces_the_old_one(pipeline, cpu):
    first = policy(rule("dport", "22"))
    second = policy(rule("dport", "22", action="pass"), default="drop")
    for pol, expected in ((first, "drop"), (second, "pass"), (first, "drop")):
        for _ in range(2):
            assert verdict(pipeline, cpu, pol, TCP_SYN)[0] == expected
        assert hits_since_install(pipeline)[1] == 2
    pipeline.apply(PipelineConfig())
    _installed.clear()
    assert pipeline.run(bytes(TCP_SYN), cpu).reason == "end_of_chain"


def test_counters_follow_rule_names_across_rulesets(pipeline, cpu):
    first = policy("- {name: carry-keep, action: drop, match: {dport: 22}}\n"
                   "- {name: carry-gone, action: drop, match: {dport: 23}}\n")
    second = policy("- {name: carry-new, action: drop, match: {dport: 80}}\n"
                    "- {name: carry-keep, action: drop, match: {dport: 22}}\n")
    for _ in range(2):
        verdict(pipeline, cpu, first, TCP_SYN)
    verdict(pipeline, cpu, first, eth() / v4() / TCP(dport=23))
    kept = rule_counters(pipeline.maps)[1]
    assert kept.packets >= 2
    install(pipeline, second)
    after = rule_counters(pipeline.maps)
    assert after[2].packets == kept.packets and after[2].last_hit_ns == kept.last_hit_ns
    assert after[1].packets == 0  # carry-new: its id held carry-keep's counts before
    verdict(pipeline, cpu, second, TCP_SYN)
    assert rule_counters(pipeline.maps)[2].packets == kept.packets + 1


def test_a_million_single_addresses(pipeline, cpu, tmp_path):
    # Addresses 2001:db8::a:b, in a set file as a blocklist would come: the first fill
    # trie nodes while those stay few (neighbours share them), the rest go to the hash.
    (tmp_path / "big.txt").write_text("".join(f"2001:db8::{i >> 16:x}:{i & 0xffff:x}\n"
                                              for i in range(1_000_000)))
    text = ("version: 1\ndefault_action: pass\n"
            "sets:\n  big: {type: prefix, files: [big.txt]}\n"
            "rules:\n  - {name: big, action: drop, match: {src: \"@big\"}}\n")
    pol = parse_policy_text(text, "big.yaml", tmp_path)
    pipeline.apply(configure(pol))
    _installed.clear()
    nodes = libbpf.map_info(pipeline.maps["sw_src_tab"].fd).value_size // 4 // abi.SW_TRIE_FANOUT
    hashed = pipeline.maps["sw_src_hosts"].max_entries - addrtrie.LIVE_HOSTS
    assert nodes <= addrtrie.HOST_NODES + 64
    assert 0 < hashed < 1_000_000 - 255 * addrtrie.HOST_NODES // 2
    for src, reason in [("2001:db8::f:423f", "rule"), ("2001:db8::f:4241", "default"),
                        ("2001:db8::", "rule"), ("2001:db8::1:0", "rule"), ("2001:db9::", "default"),
                        ("2001:db8::e:ffff", "rule"), ("2001:db8::10:0", "default")]:
        assert pipeline.run(bytes(eth() / v6(src=src) / UDP()), cpu).reason == reason, src
