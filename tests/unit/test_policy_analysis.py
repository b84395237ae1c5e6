"""The checks of `check`: dead rules, suspicious sets, and the summary."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shieldwall import abi
from shieldwall.model.parse import IPV4_MAPPED_PREFIX, ParsedPacket
from shieldwall.policy import (
    Family,
    Fragment,
    Item,
    Items,
    Match,
    PrefixSet,
    Range,
    TcpFlags,
    analyze,
    load_policy,
    parse_policy_text,
)
from shieldwall.policy.analysis import covers, field_space, nested_prefixes, normalize, subtract, within
from shieldwall.policy.reference import matches

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def warnings(body: str, sets: str = "", fastpath: str = "") -> list[str]:
    text = f"version: 1\ndefault_action: pass\n{sets}{fastpath}rules:\n" + textwrap.indent(
        textwrap.dedent(body), "  "
    )
    report = analyze(parse_policy_text(text, "policy.yaml", "."))
    return [str(w) for w in report.warnings]


# --- rules that can never match -------------------------------------------------------


def test_rule_covered_by_an_earlier_deciding_rule() -> None:
    found = warnings(
        """\
        - {name: block-net, action: drop, match: {src: [198.51.100.0/24]}}
        - {name: admin, action: pass, match: {src: [198.51.100.7], proto: tcp, dport: 22}}
        """
    )
    assert found == [
        "policy.yaml: rules[1]: never matches: rules[0] (block-net) decides every packet it would match"
    ]


def test_catch_all_shadows_everything_after_it() -> None:
    found = warnings(
        """\
        - {name: ssh, action: pass, match: {dport: 22}}
        - {name: all, action: drop}
        - {name: late, action: count, match: {proto: udp}}
        - {name: later, action: monitor}
        """
    )
    assert found == [
        "policy.yaml: rules[2]: never matches: rules[1] (all) decides every packet it would match",
        "policy.yaml: rules[3]: never matches: rules[1] (all) decides every packet it would match",
    ]


def test_count_and_monitor_rules_do_not_shadow() -> None:
    assert warnings(
        """\
        - {name: c, action: count}
        - {name: m, action: monitor}
        - {name: d, action: drop, match: {proto: tcp}}
        """
    ) == []


@pytest.mark.parametrize(
    ("earlier", "later", "shadowed"),
    [
        ("{dport: 22}", "{dport: 22, proto: tcp}", True),
        ("{dport: 22, proto: tcp}", "{dport: 22}", False),  # later also matches UDP
        ('{dport: ["!80"]}', "{dport: 22}", True),
        ('{dport: ["!80"]}', "{dport: [22, 80]}", False),
        ('{dport: ["!80", "!443"]}', '{dport: ["!1-1024"]}', True),
        ('{dport: "1-1000"}', '{dport: ["1-500", "501-1000"]}', True),
        ('{dport: ["1-500", "502-1000"]}', '{dport: "1-1000"}', False),
        ("{src: [192.0.2.0/25, 192.0.2.128/25]}", "{src: [192.0.2.0/24]}", True),
        ('{src: ["!192.0.2.0/24"]}', "{src: [198.51.100.0/24]}", True),
        ('{src: ["!192.0.2.0/24"]}', '{src: ["!192.0.2.0/25"]}', False),
        ('{src: ["::/0"]}', "{src: [0.0.0.0/0]}", False),
        ('{tcp_flags: "SYN"}', '{tcp_flags: "SYN,!ACK"}', True),
        ('{tcp_flags: "SYN,!ACK"}', '{tcp_flags: "SYN"}', False),
        ('{tcp_flags: "!ACK"}', '{tcp_flags: "ACK"}', False),
        ("{fragment: any}", "{fragment: first}", True),
        ("{fragment: first}", "{fragment: non_first}", False),
        ("{family: ipv6}", "{family: ipv6, ttl: 1}", True),
        ("{family: ipv6}", "{family: ipv4}", False),
        ("{proto: [tcp, udp]}", "{proto: udp}", True),
        ('{length: "1000-"}', '{length: "1500-2000"}', True),
        ("{vlan: 10}", '{vlan: ["10", "!11"]}', True),
    ],
)
def test_shadowing_field_by_field(earlier: str, later: str, shadowed: bool) -> None:
    found = warnings(
        f"""\
        - {{name: first, action: drop, match: {earlier}}}
        - {{name: second, action: pass, match: {later}}}
        """
    )
    assert bool(found) is shadowed, found


def test_shadowing_through_a_set() -> None:
    sets = 'sets:\n  bad: {type: prefix, entries: [198.51.100.0/24, "2001:db8:bad::/48"]}\n'
    found = warnings(
        """\
        - {name: bad, action: drop, match: {src: "@bad"}}
        - {name: one, action: pass, match: {src: ["2001:db8:bad::1"]}}
        - {name: other, action: pass, match: {src: [198.51.101.0/24]}}
        """,
        sets,
    )
    assert found == ["policy.yaml: rules[1]: never matches: rules[0] (bad) decides every packet it would match"]


@pytest.mark.parametrize(
    ("match", "reason"),
    [
        ("{proto: icmp, dport: 22}", "dport needs proto tcp or udp"),
        ("{proto: udp, tcp_flags: SYN}", "tcp_flags needs proto tcp"),
        ("{proto: [tcp, udp], icmp_type: 8}", "icmp_type needs proto icmp or icmpv6"),
        ('{proto: ["!tcp", "!udp"], sport: 53}', "sport needs proto tcp or udp"),
        ("{fragment: non_first, dport: 53}", "dport needs a layer-4 header, which non-first fragments lack"),
        ('{dport: ["!0-"]}', "dport matches no value"),
        ('{src: [192.0.2.0/24, "!192.0.2.0/24"]}', "src matches no value"),
        ("{family: ipv6, src: [192.0.2.0/24]}", "src has no ipv6 address"),
        ('{family: ipv4, dst: ["2001:db8::/32"]}', "dst has no ipv4 address"),
    ],
)
def test_rules_that_contradict_themselves(match: str, reason: str) -> None:
    assert warnings(f"- {{name: r, action: drop, match: {match}}}\n") == [
        f"policy.yaml: rules[0]: never matches: {reason}"
    ]


@pytest.mark.parametrize(
    "match",
    ["{proto: tcp, dport: 22}", "{proto: [icmp, tcp], tcp_flags: SYN}", "{fragment: first, dport: 53}",
     '{family: ipv6, src: [192.0.2.0/24, "2001:db8::/32"]}', "{proto: icmpv6, icmp_type: 128}"],
)
def test_satisfiable_rules_are_not_flagged(match: str) -> None:
    assert warnings(f"- {{name: r, action: drop, match: {match}}}\n") == []


# --- sets ---------------------------------------------------------------------------


def test_empty_and_unused_sets(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    text = textwrap.dedent(
        """\
        version: 1
        default_action: pass
        sets:
          empty: {type: prefix, files: [empty.txt]}
          spare: {type: prefix, entries: [192.0.2.0/24]}
          allowed: {type: prefix, entries: [203.0.113.0/24]}
        fastpath: {allow: ["@allowed"]}
        rules:
          - {name: r, action: drop, match: {src: "@empty"}}
        """
    )
    (tmp_path / "p.yaml").write_text(text)
    report = analyze(load_policy(tmp_path / "p.yaml"))
    assert [(w.path, w.problem) for w in report.warnings] == [
        ("rules[0]", "never matches: src matches no value"),
        ("sets.empty", "the set is empty: nothing matches it"),
        ("sets.spare", "the set is not used by any rule or stage"),
    ]


def test_nested_prefixes_in_a_set() -> None:
    sets = textwrap.dedent(
        """\
        sets:
          s:
            type: prefix
            entries: [198.51.100.0/24, 198.51.100.7, 198.51.100.128/25, 198.51.100.129,
                      203.0.113.0/24, "2001:db8::/32", "2001:db8:1::/48"]
        """
    )
    assert warnings('- {name: r, action: drop, match: {src: "@s"}}\n', sets) == [
        "policy.yaml: sets.s: 4 prefixes lie inside other prefixes of the set: "
        "198.51.100.7/32 in 198.51.100.0/24, 198.51.100.128/25 in 198.51.100.0/24, "
        "198.51.100.129/32 in 198.51.100.0/24 and 1 more"
    ]


def test_nested_prefixes_do_not_cross_families() -> None:
    nets = [ipaddress.ip_network(n) for n in ("0.0.0.0/0", "::/127")]
    assert nested_prefixes(nets) == []


# --- summary ------------------------------------------------------------------------


def test_summary_of_the_tor_example() -> None:
    report = analyze(load_policy(EXAMPLES / "tor-relays.yaml"))
    # Its own comment says it: the replies to the host's own connections need rules.
    assert [w.path for w in report.warnings] == ["default_action"]
    summary = report.summary
    assert summary.rules == 5
    assert summary.rules_by_action == {"pass": 4, "count": 1}
    assert (summary.sets["relays"].ipv4, summary.sets["relays"].ipv6) == (4, 2)
    assert summary.sets["relays"].files == ("cached-consensus",)
    assert summary.stages["fastpath"] == ["fastpath: 0 allowed, 0 denied prefixes"]
    assert summary.stages["policy"] == ["rules: 5 (1 count, 4 pass); default action: drop"]


def test_basic_example_is_clean() -> None:
    report = analyze(load_policy(EXAMPLES / "basic.yaml"))
    assert report.warnings == ()
    assert report.summary.stages["fastpath"] == ["fastpath: 1 allowed, 1 denied prefixes"]


# --- the interval algebra and the soundness of covers() ----------------------------------


def test_interval_operations() -> None:
    assert normalize([(5, 9), (1, 3), (4, 4), (20, 30)]) == ((1, 9), (20, 30))
    assert subtract(((0, 100),), ((10, 20), (50, 50))) == ((0, 9), (21, 49), (51, 100))
    assert within(((3, 4),), ((0, 9),)) and not within(((3, 10),), ((0, 9),))


ranges = st.tuples(st.integers(0, 40), st.integers(0, 40)).map(lambda t: Range(min(t), max(t)))
range_items = st.lists(st.builds(Item, ranges, st.booleans()), min_size=1, max_size=4).map(
    lambda items: Items(tuple(items))
)


@given(range_items, st.integers(0, 65535))
def test_field_space_agrees_with_the_list_rule(items: Items, port: int) -> None:
    space = field_space("dport", items)
    assert any(lo <= port <= hi for lo, hi in space) is items.holds(lambda r: port in r)


NETS = [ipaddress.ip_network(n) for n in (
    "192.0.2.0/24", "192.0.2.0/25", "192.0.2.128/26", "198.51.100.0/24", "0.0.0.0/0",
    "2001:db8::/32", "2001:db8::/48", "::/0",
)]
SET = PrefixSet("s", "prefix", (NETS[1], NETS[6]))
addr_items = st.lists(
    st.builds(Item, st.sampled_from([*NETS, SET]), st.booleans()), min_size=1, max_size=3
).map(lambda items: Items(tuple(items)))
small_ports = st.lists(st.builds(Item, st.sampled_from([Range(22, 22), Range(20, 25), Range(0, 65535)]),
                                 st.booleans()), min_size=1, max_size=2).map(lambda i: Items(tuple(i)))
protos = st.lists(st.builds(Item, st.sampled_from([Range(6, 6), Range(17, 17), Range(1, 1), Range(58, 58)]),
                            st.booleans()), min_size=1, max_size=2).map(lambda i: Items(tuple(i)))
flags = st.sampled_from([TcpFlags(2, 2), TcpFlags(18, 2), TcpFlags(16, 0), TcpFlags(18, 18)])
matches_st = st.builds(
    Match,
    src=st.none() | addr_items,
    proto=st.none() | protos,
    dport=st.none() | small_ports,
    tcp_flags=st.none() | flags,
    fragment=st.none() | st.sampled_from(Fragment),
    family=st.none() | st.sampled_from(Family),
)

ADDRS = ["192.0.2.1", "192.0.2.130", "198.51.100.1", "203.0.113.1", "2001:db8::1", "2001:db8:1::1"]


@st.composite
def packets(draw: st.DrawFn) -> ParsedPacket:
    src = ipaddress.ip_address(draw(st.sampled_from(ADDRS)))
    family = abi.SW_FAMILY_IPV4 if src.version == 4 else abi.SW_FAMILY_IPV6
    raw = IPV4_MAPPED_PREFIX + src.packed if src.version == 4 else src.packed
    frag = draw(st.sampled_from([(0, 0), (1, 0), (3, 0), (1, 10), (3, 10)]))
    proto = draw(st.sampled_from([6, 17, 1, 58, 47]))
    has_l4 = frag[1] == 0 and proto in (6, 17, 1 if src.version == 4 else 58)
    return ParsedPacket(
        src=raw, family=family, l4_proto=proto, frag=frag[0], frag_off=frag[1],
        dport=draw(st.sampled_from([22, 23, 80])) if has_l4 else 0,
        tcp_flags=draw(st.integers(0, 255)) if has_l4 and proto == 6 else 0,
        flags=abi.SW_PKT_HAS_L4 if has_l4 else 0,
    )


@settings(max_examples=400)
@given(matches_st, matches_st, st.lists(packets(), min_size=1, max_size=20))
def test_covers_is_sound(outer: Match, inner: Match, pkts: list[ParsedPacket]) -> None:
    if covers(outer, inner):
        for pkt in pkts:
            assert not matches(inner, pkt) or matches(outer, pkt)


def test_a_default_drop_is_warned_about_the_hosts_own_connections() -> None:
    text = "version: 1\ndefault_action: drop\nrules:\n  - {name: web, action: pass, match: {dport: 80}}\n"
    found = [str(w) for w in analyze(parse_policy_text(text, "policy.yaml", ".")).warnings]
    assert len(found) == 1 and found[0].startswith(
        "policy.yaml: default_action: drop also drops the replies to connections this host opens")
    assert warnings("- {name: web, action: pass, match: {dport: 80}}\n") == []
