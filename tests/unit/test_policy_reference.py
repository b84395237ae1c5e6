"""The reference model of rule semantics, on packets built with scapy and parsed by the
reference parser, so each case is a real frame."""

from __future__ import annotations

import textwrap
from dataclasses import fields

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw

from shieldwall import abi
from shieldwall.model.parse import ParsedPacket, parse
from shieldwall.policy import Decision, Match, evaluate, parse_policy_text
from shieldwall.policy.reference import _FIELD_TESTS, matches

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def packet(l3: Packet, *, eth: Packet | None = None) -> ParsedPacket:
    parsed, root = parse(bytes((eth or ETH) / l3))
    assert root is None or root.reason == abi.SW_R_NON_IP
    return parsed


def v4(src: str = "192.0.2.1", dst: str = "192.0.2.2", **kw) -> Packet:
    return IP(src=src, dst=dst, **kw)


def v6(src: str = "2001:db8::1", dst: str = "2001:db8::2", **kw) -> Packet:
    return IPv6(src=src, dst=dst, **kw)


def policy(body: str, default: str = "pass", sets: str = ""):
    text = f"version: 1\ndefault_action: {default}\n{sets}rules:\n" + textwrap.indent(
        textwrap.dedent(body), "  "
    )
    return parse_policy_text(text, "policy.yaml", ".")


def match_holds(match: str, pkt: ParsedPacket, sets: str = "") -> bool:
    rules = policy(f"- name: r\n  action: drop\n  match: {match}\n", sets=sets)
    return matches(rules.rules[0].match, pkt)


TCP22 = packet(v4(src="203.0.113.7") / TCP(sport=40000, dport=22, flags="S"))
UDP53 = packet(v4() / UDP(sport=53, dport=33000) / Raw(b"x" * 600))
ICMP_ECHO = packet(v4() / ICMP(type=8, code=0))
ICMPV6_ECHO = packet(v6() / ICMPv6EchoRequest())
GRE = packet(v4(proto=47) / Raw(b"\x00" * 8))
FIRST_FRAG = packet(v4(flags="MF", frag=0) / UDP(sport=53, dport=53) / Raw(b"x" * 16))
NON_FIRST_FRAG = packet(v4(proto=17, frag=100) / Raw(b"x" * 16))
LAST_FRAG_V6 = packet(v6() / IPv6ExtHdrFragment(offset=50, m=0, nh=6) / Raw(b"x" * 16))
FIRST_FRAG_V6 = packet(v6() / IPv6ExtHdrFragment(offset=0, m=1) / TCP(dport=22) / Raw(b"x" * 8))


# --- the issue's example ------------------------------------------------------------

EXAMPLE = policy(
    """\
    - name: allow-admin
      match: {src: [203.0.113.7], proto: tcp, dport: 22}
      action: pass
    - name: drop-blocklisted
      match: {src: "@blocklist"}
      action: drop
    - name: web-only
      match: {dst: [192.0.2.10], proto: tcp, dport: ["!80", "!443"]}
      action: drop
    - name: watch-big-dns
      match: {proto: udp, sport: 53, length: "512-"}
      action: count
    """,
    sets='sets:\n  blocklist: {type: prefix, entries: [198.51.100.0/24, "2001:db8:bad::/48"]}\n',
)


@pytest.mark.parametrize(
    ("l3", "expected"),
    [
        (v4(src="203.0.113.7") / TCP(dport=22), Decision("pass", "rule", "allow-admin", 1)),
        (v4(src="198.51.100.9") / TCP(dport=22), Decision("drop", "rule", "drop-blocklisted", 2)),
        (v6(src="2001:db8:bad::1") / UDP(dport=53), Decision("drop", "rule", "drop-blocklisted", 2)),
        (v6(src="2001:db8:bad:1::1", dst="2001:db8::10") / UDP(), Decision("drop", "rule", "drop-blocklisted", 2)),
        (v6(src="2001:db8:bae::1") / UDP(), Decision("pass", "default")),
        (v4(dst="192.0.2.10") / TCP(dport=443), Decision("pass", "default")),
        (v4(dst="192.0.2.10") / TCP(dport=80), Decision("pass", "default")),
        (v4(dst="192.0.2.10") / TCP(dport=8080), Decision("drop", "rule", "web-only", 3)),
        (v4(dst="192.0.2.10") / UDP(dport=8080), Decision("pass", "default")),
        (v4(dst="192.0.2.11") / TCP(dport=8080), Decision("pass", "default")),
        (v4() / UDP(sport=53) / Raw(b"x" * 484), Decision("pass", "default", counted=["watch-big-dns"])),
        (v4() / UDP(sport=53) / Raw(b"x" * 483), Decision("pass", "default")),
    ],
)
def test_issue_example(l3: Packet, expected: Decision) -> None:
    assert evaluate(EXAMPLE, packet(l3)) == expected


# --- order and actions ---------------------------------------------------------------


def test_first_deciding_rule_wins() -> None:
    p = policy(
        """\
        - {name: c1, action: count, match: {proto: tcp}}
        - {name: m1, action: monitor, match: {dport: 22}}
        - {name: p, action: pass, match: {dport: 22}}
        - {name: c2, action: count}
        - {name: d, action: drop}
        """
    )
    assert evaluate(p, TCP22) == Decision("pass", "rule", "p", 3, counted=["c1", "m1"], would_drop=["m1"])
    assert evaluate(p, UDP53) == Decision("drop", "rule", "d", 5, counted=["c2"])


def test_monitor_is_shadow_mode() -> None:
    # The monitor rule changes nothing but the record: the same verdict as without it.
    with_monitor = policy(
        """\
        - {name: shadow, action: monitor, match: {proto: tcp}}
        - {name: ssh, action: pass, match: {dport: 22}}
        """,
        default="drop",
    )
    without = policy("- {name: ssh, action: pass, match: {dport: 22}}\n", default="drop")
    for pkt in (TCP22, UDP53, ICMP_ECHO):
        shadowed, plain = evaluate(with_monitor, pkt), evaluate(without, pkt)
        assert (shadowed.action, shadowed.reason, shadowed.rule) == (plain.action, plain.reason, plain.rule)
    assert evaluate(with_monitor, TCP22).would_drop == ["shadow"]
    assert evaluate(with_monitor, UDP53).would_drop == []


def test_count_rules_all_fire_in_order() -> None:
    p = policy(
        """\
        - {name: a, action: count}
        - {name: b, action: count, match: {proto: udp}}
        - {name: c, action: count, match: {proto: tcp}}
        - {name: d, action: monitor}
        """,
        default="drop",
    )
    assert evaluate(p, UDP53) == Decision("drop", "default", counted=["a", "b", "d"], would_drop=["d"])


def test_default_action_applies_when_nothing_decides() -> None:
    assert evaluate(policy("[]\n", default="drop"), TCP22) == Decision("drop", "default")
    assert evaluate(policy("[]\n", default="pass"), TCP22) == Decision("pass", "default")


def test_decision_reasons_are_abi_reason_names() -> None:
    for reason in ("rule", "default", "nd_protected", "allowlisted", "blocklisted", "non_ip"):
        assert reason in abi.REASON_CODES


# --- never locked out -----------------------------------------------------------------


def test_non_ip_frames_pass() -> None:
    arp = packet(ARP(psrc="192.0.2.1", pdst="192.0.2.2"))
    assert evaluate(policy("- {name: all, action: drop}\n", default="drop"), arp) == Decision("pass", "non_ip")


ND = [ICMPv6ND_RS(), ICMPv6ND_RA(), ICMPv6ND_NS(tgt="2001:db8::2"), ICMPv6ND_NA(tgt="2001:db8::1"),
      ICMPv6ND_Redirect(tgt="2001:db8::3", dst="2001:db8::4")]


@pytest.mark.parametrize("message", ND, ids=lambda m: type(m).__name__)
def test_neighbor_discovery_survives_default_drop(message: Packet) -> None:
    pkt = packet(v6(dst="ff02::1", hlim=255) / message)
    assert 133 <= pkt.icmp_type <= 137
    p = policy("- {name: watch, action: count, match: {proto: icmpv6}}\n", default="drop")
    assert evaluate(p, pkt) == Decision("pass", "nd_protected", counted=["watch"])


def test_rules_apply_to_neighbor_discovery() -> None:
    pkt = packet(v6() / ICMPv6ND_NS(tgt="2001:db8::2"))
    p = policy("- {name: no-ns, action: drop, match: {proto: icmpv6, icmp_type: 135}}\n", default="drop")
    assert evaluate(p, pkt) == Decision("drop", "rule", "no-ns", 1)


@pytest.mark.parametrize(
    "l3",
    [
        v6() / ICMPv6EchoRequest(),  # type 128
        v6() / ICMPv6PacketTooBig(),  # type 2
        v4() / ICMP(type=135),  # ICMPv4 with an ND type number is not ND
        v6() / IPv6ExtHdrFragment(offset=8, nh=58) / Raw(b"\x87" + b"\x00" * 15),  # no header read
    ],
)
def test_only_neighbor_discovery_is_protected(l3: Packet) -> None:
    assert evaluate(policy("[]\n", default="drop"), packet(l3)) == Decision("drop", "default")


# --- list semantics -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dport", "port", "holds"),
    [
        ("[22, 80]", 22, True),
        ("[22, 80]", 80, True),
        ("[22, 80]", 443, False),
        ('["!22"]', 22, False),
        ('["!22"]', 23, True),
        ('["!80", "!443"]', 8080, True),
        ('["!80", "!443"]', 443, False),
        ('["1000-2000", "!1500"]', 1500, False),
        ('["1000-2000", "!1500"]', 1501, True),
        ('["1000-2000", "!1500"]', 999, False),
        ('["1000-", "!1500-1600"]', 65535, True),
        ('["-1023"]', 0, True),
        ('["-1023"]', 1024, False),
        ('[22, "!22"]', 22, False),  # a negated item always excludes
    ],
)
def test_list_rule(dport: str, port: int, holds: bool) -> None:
    assert match_holds(f"{{dport: {dport}}}", packet(v4() / UDP(dport=port))) is holds


def test_address_lists_mix_families_and_sets() -> None:
    sets = "sets:\n  bad: {type: prefix, entries: [192.0.2.128/25, \"2001:db8:bad::/48\"]}\n"
    match = '{src: [192.0.2.0/24, "2001:db8::/32", "!@bad", "!192.0.2.5"]}'
    cases = {
        "192.0.2.1": True, "192.0.2.5": False, "192.0.2.200": False, "198.51.100.1": False,
        "2001:db8::1": True, "2001:db8:bad::1": False,
    }
    for src, holds in cases.items():
        l3 = v4(src=src) if "." in src else v6(src=src)
        assert match_holds(match, packet(l3 / UDP()), sets) is holds, src


def test_only_negated_addresses() -> None:
    match = '{dst: ["!192.0.2.0/24"]}'
    assert match_holds(match, packet(v4(dst="198.51.100.1") / UDP()))
    assert not match_holds(match, packet(v4(dst="192.0.2.1") / UDP()))
    # An IPv4 prefix never matches an IPv6 address, so it never excludes one either.
    assert match_holds(match, packet(v6() / UDP()))


def test_ipv6_default_route_does_not_match_ipv4() -> None:
    assert not match_holds('{src: ["::/0"]}', TCP22)
    assert match_holds("{src: [0.0.0.0/0]}", TCP22)


def test_empty_match_matches_every_ip_packet() -> None:
    for pkt in (TCP22, UDP53, ICMP_ECHO, ICMPV6_ECHO, GRE, NON_FIRST_FRAG, LAST_FRAG_V6):
        assert matches(Match(), pkt)


def test_every_field_must_hold() -> None:
    match = '{src: [203.0.113.7], proto: tcp, dport: 22, tcp_flags: "SYN,!ACK"}'
    assert match_holds(match, TCP22)
    assert not match_holds(match, packet(v4(src="203.0.113.7") / TCP(dport=22, flags="SA")))
    assert not match_holds(match, packet(v4(src="203.0.113.8") / TCP(dport=22, flags="S")))


def test_every_match_field_has_a_test() -> None:
    assert set(_FIELD_TESTS) == {f.name for f in fields(Match)}


# --- fields that cannot apply ---------------------------------------------------------


@pytest.mark.parametrize("pkt", [ICMP_ECHO, ICMPV6_ECHO, GRE, NON_FIRST_FRAG, LAST_FRAG_V6])
@pytest.mark.parametrize("match", ["{dport: \"0-\"}", "{sport: [\"!53\"]}", "{dport: [\"!1-65535\"]}"])
def test_ports_need_tcp_or_udp(pkt: ParsedPacket, match: str) -> None:
    assert not match_holds(match, pkt)


@pytest.mark.parametrize("pkt", [UDP53, ICMP_ECHO, GRE, NON_FIRST_FRAG, LAST_FRAG_V6])
def test_tcp_flags_need_tcp(pkt: ParsedPacket) -> None:
    assert not match_holds('{tcp_flags: "!SYN"}', pkt)


def test_tcp_flags() -> None:
    synack = packet(v4() / TCP(flags="SA"))
    assert match_holds('{tcp_flags: "SYN"}', synack)
    assert match_holds('{tcp_flags: "syn,ack,!rst"}', synack)
    assert not match_holds('{tcp_flags: "SYN,!ACK"}', synack)
    assert match_holds('{tcp_flags: "!FIN"}', synack)
    assert match_holds('{tcp_flags: "ECE,CWR"}', packet(v4() / TCP(flags="SEC")))


def test_first_fragment_has_ports() -> None:
    assert match_holds("{dport: 53, proto: udp}", FIRST_FRAG)
    assert match_holds("{dport: 22, tcp_flags: \"SYN\"}", FIRST_FRAG_V6)


@pytest.mark.parametrize(
    ("match", "pkt", "holds"),
    [
        ("{icmp_type: 8}", ICMP_ECHO, True),
        ("{icmp_type: 8, icmp_code: 0}", ICMP_ECHO, True),
        ("{icmp_code: 1}", ICMP_ECHO, False),
        ("{icmp_type: 128}", ICMPV6_ECHO, True),  # the number as written, per family
        ("{icmp_type: 8}", ICMPV6_ECHO, False),
        ('{icmp_type: ["!0"]}', UDP53, False),
        ('{icmp_type: ["!0"]}', TCP22, False),
        ('{icmp_code: "0-"}', GRE, False),
    ],
)
def test_icmp_fields(match: str, pkt: ParsedPacket, holds: bool) -> None:
    assert match_holds(match, pkt) is holds


def test_icmp_inside_ipv6_is_not_icmp() -> None:
    # Protocol 1 in IPv6 is not parsed: type and code do not apply.
    pkt = packet(v6(nh=1) / Raw(b"\x08\x00\x00\x00"))
    assert not match_holds('{icmp_type: "0-"}', pkt)
    assert match_holds("{proto: icmp}", pkt)


def test_vlan_needs_a_tag_and_uses_the_innermost() -> None:
    untagged = packet(v4() / UDP())
    tagged = packet(v4() / UDP(), eth=ETH / Dot1Q(vlan=100))
    qinq = packet(v4() / UDP(), eth=ETH / Dot1Q(vlan=7) / Dot1Q(vlan=100))
    assert not match_holds('{vlan: "0-"}', untagged)
    assert not match_holds('{vlan: ["!100"]}', untagged)
    assert match_holds("{vlan: 100}", tagged)
    assert match_holds("{vlan: 100}", qinq)
    assert not match_holds("{vlan: 7}", qinq)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("any", {"first": True, "non_first": True, "last_v6": True, "whole": False, "first_v6": True}),
        ("first", {"first": True, "non_first": False, "last_v6": False, "whole": False, "first_v6": True}),
        ("non_first", {"first": False, "non_first": True, "last_v6": True, "whole": False, "first_v6": False}),
    ],
)
def test_fragment(kind: str, expected: dict[str, bool]) -> None:
    pkts = {
        "first": FIRST_FRAG, "non_first": NON_FIRST_FRAG, "last_v6": LAST_FRAG_V6,
        "whole": UDP53, "first_v6": FIRST_FRAG_V6,
    }
    assert {name: match_holds(f"{{fragment: {kind}}}", pkt) for name, pkt in pkts.items()} == expected


def test_last_ipv4_fragment_is_non_first() -> None:
    last = packet(v4(proto=6, frag=3, flags=0) / Raw(b"x" * 8))
    assert match_holds("{fragment: non_first}", last)
    assert not match_holds("{fragment: first}", last)
    assert match_holds("{proto: tcp}", last)  # proto applies to every fragment


def test_proto_after_extension_headers() -> None:
    pkt = packet(v6() / IPv6ExtHdrHopByHop() / TCP(dport=80))
    assert match_holds("{proto: tcp, dport: 80}", pkt)
    assert not match_holds("{proto: 0}", pkt)


def test_proto_lists_and_negation() -> None:
    assert match_holds('{proto: ["!tcp", "!udp"]}', ICMP_ECHO)
    assert not match_holds('{proto: ["!tcp", "!udp"]}', UDP53)
    assert match_holds("{proto: [gre, esp]}", GRE)


def test_length_is_the_l3_length() -> None:
    pkt4 = packet(v4() / UDP() / Raw(b"x" * 72))  # 20 + 8 + 72
    pkt6 = packet(v6() / UDP() / Raw(b"x" * 52))  # payload 60, + 40
    for pkt in (pkt4, pkt6):
        assert match_holds("{length: 100}", pkt)
        assert not match_holds('{length: "101-"}', pkt)
    # Ethernet padding after the IP packet does not count.
    padded = packet(v4(len=30) / UDP(len=10) / Raw(b"x" * 2) / Raw(b"\x00" * 30))
    assert padded.frame_len == 14 + 60
    assert match_holds("{length: 30}", padded)


def test_ttl_and_hop_limit() -> None:
    assert match_holds('{ttl: "-1"}', packet(v4(ttl=1) / UDP()))
    assert match_holds("{ttl: 255}", packet(v6(hlim=255) / UDP()))
    assert not match_holds('{ttl: ["!64"]}', packet(v4(ttl=64) / UDP()))


def test_family() -> None:
    assert match_holds("{family: ipv4}", TCP22)
    assert not match_holds("{family: ipv6}", TCP22)
    assert match_holds("{family: ipv6}", ICMPV6_ECHO)


# --- fastpath ------------------------------------------------------------------------


def test_fastpath_before_rules_longest_prefix_wins() -> None:
    text = textwrap.dedent(
        """\
        version: 1
        default_action: pass
        sets:
          friends: {type: prefix, entries: ["2001:db8:f::/48"]}
        fastpath:
          allow: [198.51.100.7, "@friends"]
          deny: [198.51.100.0/24, "2001:db8::/32"]
        rules:
          - {name: drop-all, action: drop}
        """
    )
    p = parse_policy_text(text, "policy.yaml", ".")
    assert evaluate(p, packet(v4(src="198.51.100.7") / UDP())) == Decision("pass", "allowlisted")
    assert evaluate(p, packet(v4(src="198.51.100.8") / UDP())) == Decision("drop", "blocklisted")
    assert evaluate(p, packet(v6(src="2001:db8:f::1") / UDP())) == Decision("pass", "allowlisted")
    assert evaluate(p, packet(v6(src="2001:db8:e::1") / UDP())) == Decision("drop", "blocklisted")
    assert evaluate(p, packet(v4(src="203.0.113.1") / UDP())) == Decision("drop", "rule", "drop-all", 1)
    # The fastpath looks at the source address only.
    assert evaluate(p, packet(v4(src="203.0.113.1", dst="198.51.100.7") / UDP())).reason == "rule"
