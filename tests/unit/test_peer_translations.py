"""The peers' translators without a kernel: the intervals and merges they are built on,
the nftables plan evaluated in Python against the reference, what each translation
says for known policies, and the notes for what a peer cannot express."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shieldwall import abi
from shieldwall.lab import peers
from shieldwall.nft import ir
from shieldwall.lab.peers import iptables as ipt
from shieldwall.lab.peers import nftables as nft
from shieldwall.lab.peers import xdpfilter as xdpf
from shieldwall.nft.ir import Span
from shieldwall.model.parse import ParsedPacket, parse
from shieldwall.policy import Policy, parse_policy
from shieldwall.policy.model import Pipeline
from shieldwall.policy.reference import evaluate, has_icmp, has_ports

from ..peer_strategies import same_shape_policies
from ..policy_strategies import ADDRESSES_V4, ADDRESSES_V6, packets, policies


def policy(rules, default="pass", **extra) -> Policy:
    data = {"version": 1, "default_action": default, "rules": rules, **extra}
    return parse_policy(data, "test.yaml", ".")


# --- intervals ----------------------------------------------------------------------

small_spans = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=6).map(
    lambda pairs: Span((min(a, b), max(a, b)) for a, b in pairs))


@given(small_spans, small_spans, st.integers(0, 40))
def test_span_operations_agree_with_sets(a, b, value):
    def as_set(span):
        return set(span.values())
    assert as_set(a | b) == as_set(a) | as_set(b)
    assert as_set(a & b) == as_set(a) & as_set(b)
    assert as_set(a - b) == as_set(a) - as_set(b)
    assert as_set(a.complement(0, 40)) == set(range(41)) - as_set(a)
    assert (value in a) == (value in as_set(a))
    assert a.isdisjoint(b) == as_set(a).isdisjoint(as_set(b))
    assert all(lo2 > hi1 + 1 for (_, hi1), (lo2, _) in zip(a.parts, a.parts[1:]))


@given(st.lists(small_spans, min_size=1, max_size=6), small_spans)
def test_an_interval_index_is_the_union_of_what_it_was_given(added, probe):
    index = ir.IntervalIndex(added[0])
    for span in added[1:]:
        index.add(span)
    union = set().union(*(set(span.values()) for span in added))
    assert index.isdisjoint(probe) == union.isdisjoint(set(probe.values()))
    assert list(zip(index.los, index.his)) == list(Span(zip(index.los, index.his)).parts)
    assert set(Span(zip(index.los, index.his)).values()) == union


@given(st.lists(st.tuples(small_spans, st.sampled_from("xyz")), max_size=6))
def test_first_wins_gives_each_value_its_first_entry(entries):
    flat = ir.first_wins(entries)
    for value in range(41):
        owner = next((v for span, v in entries if value in span), None)
        found = [v for lo, hi, v in flat if lo <= value <= hi]
        assert found == ([] if owner is None else [owner])
    assert all(a[1] < b[0] for a, b in zip(flat, flat[1:]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(max_rules=0), st.lists(st.sampled_from(ADDRESSES_V4 + ADDRESSES_V6)))
def test_fastpath_ranges_are_the_longest_prefix_decision(pol, addresses):
    for text in addresses:
        addr = ipaddress.ip_address(text)
        pkt = ParsedPacket(src=addr.packed.rjust(16, b"\0") if addr.version == 6 else
                           bytes(10) + b"\xff\xff" + addr.packed,
                           family=abi.SW_FAMILY_IPV4 if addr.version == 4 else abi.SW_FAMILY_IPV6)
        decision = evaluate(pol, pkt)
        ranges = ir.fastpath_ranges(ir.fastpath_of(pol), addr.version)
        found = [v for lo, hi, v in ranges if lo <= int(addr) <= hi]
        decided = decision.reason in ("allowlisted", "blocklisted")
        assert found == ([decision.action] if decided else [])


def test_nested_prefixes_keep_an_allowed_host_inside_a_denied_network():
    pol = policy([], fastpath={"allow": ["198.51.100.7", "198.51.100.64/26"],
                               "deny": ["198.51.100.0/24", "198.51.100.66"]})
    ranges = [(str(ipaddress.IPv4Address(lo)), str(ipaddress.IPv4Address(hi)), v)
              for lo, hi, v in ir.fastpath_ranges(pol.fastpath, 4)]
    assert ranges == [("198.51.100.0", "198.51.100.6", "drop"),
                      ("198.51.100.7", "198.51.100.7", "pass"),
                      ("198.51.100.8", "198.51.100.63", "drop"),
                      ("198.51.100.64", "198.51.100.65", "pass"),
                      ("198.51.100.66", "198.51.100.66", "drop"),
                      ("198.51.100.67", "198.51.100.127", "pass"),
                      ("198.51.100.128", "198.51.100.255", "drop")]
    text = nft.nftables_ruleset(pol, "eth1").text
    assert ("198.51.100.0-198.51.100.6 : drop, 198.51.100.7 : accept, "
            "198.51.100.8-198.51.100.63 : drop, 198.51.100.64/31 : accept, "
            "198.51.100.66 : drop, 198.51.100.67-198.51.100.127 : accept, "
            "198.51.100.128/25 : drop") in text
    config = ipt.iptables_rules(pol, "eth1")
    assert "add swpeer-fpallow-4 198.51.100.0/24 nomatch" in config.ipset
    assert "add swpeer-fpdeny-4 198.51.100.7/32 nomatch" in config.ipset


# --- the nftables plan, evaluated in Python ------------------------------------------


def _value(name: str, family: int, pkt: ParsedPacket) -> int | None:
    """The field's value as nftables reads it; None when it cannot be read."""
    if name in ("src", "dst"):
        return int(pkt.src_ip if name == "src" else pkt.dst_ip)
    if name == "proto":
        return pkt.l4_proto
    if name in ("sport", "dport"):
        return getattr(pkt, name) if has_ports(pkt) else None
    if name in ("icmp_type", "icmp_code"):
        return getattr(pkt, name) if has_icmp(pkt) else None
    if name == "length":
        return pkt.l3_len - (ir.IPV6_HLEN if family == 6 else 0)
    if name == "ttl":
        return pkt.ttl
    if name == "vlan":
        return pkt.vlan_id if pkt.vlan_depth else None
    raise AssertionError(name)


def _cond(cond: nft.Cond, pkt: ParsedPacket) -> bool:
    if cond.kind == "tcp_flags":
        return pkt.flags & abi.SW_PKT_HAS_L4 and pkt.l4_proto == 6 and (
            pkt.tcp_flags & cond.mask == cond.value)
    is_frag = bool(pkt.frag & abi.SW_FRAG_IS)
    first = is_frag and pkt.frag_off == 0 and bool(pkt.frag & abi.SW_FRAG_MORE)
    return {"frag_any": is_frag, "frag_first": first,
            "frag_non_first": is_frag and pkt.frag_off > 0}[cond.kind]


def _run_steps(steps, family: int, pkt: ParsedPacket) -> str | None:
    for step in steps:
        if isinstance(step, nft.RuleStep):
            values = {n: _value(n, family, pkt) for n in step.spans}
            if all(v is not None and v in step.spans[n] for n, v in values.items()) and all(
                    _cond(c, pkt) for c in step.conds):
                if step.verdict is not None:
                    return step.verdict
            continue
        key = [_value(n, family, pkt) for n in step.fields]
        if None in key or not all(_cond(c, pkt) for c in step.conds):
            continue
        for combo, verdict in step.elements:
            if all(lo <= v <= hi for v, (lo, hi) in zip(key, combo)):
                return verdict
    return None


def plan_decides(plan: nft.NftPlan, pkt: ParsedPacket) -> str:
    family = 4 if pkt.family == abi.SW_FAMILY_IPV4 else 6
    chain = plan.chains[family]
    for lo, hi, verdict in chain.fastpath:
        if lo <= int(pkt.src_ip) <= hi:
            return verdict
    transport = chain.l3_steps is None or bool(pkt.flags & abi.SW_PKT_HAS_L4) or not (
        pkt.frag & abi.SW_FRAG_IS and pkt.frag_off)
    steps = chain.steps if transport else chain.l3_steps
    verdict = _run_steps(steps, family, pkt)
    if verdict is not None:
        return verdict
    if transport and chain.nd_accept and has_icmp(pkt) and 133 <= pkt.icmp_type <= 137:
        return "pass"
    return chain.default


CHAINS = [None, ("policy",), ("fastpath", "policy"), ("policy", "fastpath"), ("fastpath",), ()]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(max_rules=16), st.lists(packets(), min_size=1, max_size=12), st.booleans(),
       st.sampled_from(CHAINS))
def test_nftables_plan_decides_like_the_reference(pol, frames, counters, stages):
    if stages is not None:  # any chain the reference can run, valid in a file or not
        pol = replace(pol, pipeline=Pipeline(stages=stages))
    plan = nft.plan(pol, counters)
    for frame in frames:
        pkt, root = parse(frame)
        if root is not None or pkt.vlan_depth == 2:
            continue  # non-IP: the base chain; two tags: a documented difference
        assert plan_decides(plan, pkt) == evaluate(pol, pkt).action, (frame.hex(), plan)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(same_shape_policies(), st.lists(packets(), min_size=1, max_size=12))
def test_merged_lookups_keep_first_match_order(pol, frames):
    plan = nft.plan(pol)
    for frame in frames:
        pkt, root = parse(frame)
        if root is not None or pkt.vlan_depth == 2:
            continue
        assert plan_decides(plan, pkt) == evaluate(pol, pkt).action, (frame.hex(), plan)


# --- what the translations say ------------------------------------------------------


def test_rules_of_one_shape_become_one_lookup():
    rules = [{"name": f"r{i}", "action": "drop",
              "match": {"src": f"198.51.100.{i}", "proto": "tcp", "dport": 1000 + i}}
             for i in range(100)]
    text = nft.nftables_ruleset(policy(rules), "eth1").text
    assert "set g1_v4 { typeof ip saddr . meta l4proto . th dport; elements = {" in text
    assert "198.51.100.99 . tcp . 1099 }" in text
    assert "\t\tip saddr . meta l4proto . th dport @g1_v4 drop\n" in text
    assert text.count(" drop") == 1
    config = ipt.iptables_rules(policy(rules), "eth1")
    assert "create swpeer-1-4 hash:net,port family inet" in config.ipset
    assert "add swpeer-1-4 198.51.100.99/32,tcp:1099" in config.ipset
    assert "-A SWPEER -m set --match-set swpeer-1-4 src,dst -j DROP" in config.ipv4
    assert config.ipv6 == ""


def test_a_verdict_map_when_verdicts_differ_and_keys_are_disjoint():
    rules = [{"name": "a", "action": "pass", "match": {"dst": "192.0.2.1", "proto": "tcp", "dport": 22}},
             {"name": "b", "action": "drop", "match": {"dst": "192.0.2.1", "proto": "tcp", "dport": 23}},
             {"name": "c", "action": "drop", "match": {"src": "198.51.100.0/24"}},
             {"name": "d", "action": "pass", "match": {"dst": "192.0.2.2", "proto": "udp", "dport": 53}}]
    text = nft.nftables_ruleset(policy(rules), "eth1").text
    # d moves up past c only if it is disjoint from c: it is not (any source), so it stays.
    assert "map g1_v4 { typeof ip daddr . meta l4proto . th dport : verdict; elements = " \
           "{ 192.0.2.1 . tcp . 22 : accept, 192.0.2.1 . tcp . 23 : drop } }" in text
    assert text.index("ip saddr 198.51.100.0/24 drop") < text.index("ip daddr 192.0.2.2 udp dport 53 accept")


def test_overlapping_rules_of_different_verdicts_are_not_merged():
    rules = [{"name": "a", "action": "pass", "match": {"dst": "192.0.2.0/24", "proto": "tcp", "dport": 22}},
             {"name": "b", "action": "drop", "match": {"dst": "192.0.2.1", "proto": "tcp", "dport": "0-1023"}}]
    text = nft.nftables_ruleset(policy(rules), "eth1").text
    assert "vmap @g" not in text
    assert text.index("tcp dport 22 accept") < text.index("tcp dport 0-1023 drop")


def test_one_field_overlaps_are_flattened_first_wins():
    rules = [{"name": "a", "action": "pass", "match": {"src": "198.51.100.7"}},
             {"name": "b", "action": "drop", "match": {"src": "198.51.100.0/24"}}]
    text = nft.nftables_ruleset(policy(rules), "eth1").text
    assert ("198.51.100.0-198.51.100.6 : drop, 198.51.100.7 : accept, "
            "198.51.100.8-198.51.100.255 : drop") in text


def test_counting_rules_are_left_out_unless_counters_are_asked_for():
    rules = [{"name": "watch", "action": "count", "match": {"proto": "udp"}},
             {"name": "block", "action": "drop", "match": {"src": "198.51.100.0/24"}}]
    plain = nft.nftables_ruleset(policy(rules), "eth1").text
    assert "watch" not in plain and "counter" not in plain
    counted = nft.nftables_ruleset(policy(rules), "eth1", counters=True).text
    assert 'meta l4proto udp counter comment "watch"' in counted
    assert 'ip saddr 198.51.100.0/24 counter drop comment "block"' in counted
    assert 'counter accept comment "(default)"' in counted


def test_drop_by_default_keeps_neighbor_discovery_and_non_ip():
    rules = [{"name": "admins", "action": "pass", "match": {"src": "203.0.113.7"}}]
    text = nft.nftables_ruleset(policy(rules, default="drop"), "eth1").text
    assert "icmpv6 type 133-137 accept\n\t\tdrop" in text
    assert "meta protocol vmap { ip : jump ipv4, ip6 : jump ipv6, 8021q : drop, 8021ad : drop }" in text
    assert "policy accept;" in text  # ARP and the rest
    v6 = ipt.iptables_rules(policy([], default="drop"), "eth1").ipv6
    assert "-A SWPEER -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT\n" in v6
    assert v6.rstrip().endswith("-A SWPEER-frag -j DROP\nCOMMIT")


def test_without_rules_everything_fits_the_base_chain():
    pol = policy([], default="drop", fastpath={"deny": ["198.51.100.0/24"]})
    text = nft.nftables_ruleset(pol, "eth1").text
    assert text.endswith(
        '\tchain ingress {\n'
        '\t\ttype filter hook ingress device "eth1" priority -500; policy accept;\n'
        '\t\tip saddr @fastpath_v4 drop\n'
        '\t\t@th,0,24 >= 0x0 icmpv6 type 133-137 accept\n'
        '\t\tmeta protocol { ip, ip6, 8021q, 8021ad } drop\n'
        '\t}\n}\n'), text


def test_later_fragments_never_reach_port_rules():
    text = nft.nftables_ruleset(policy([{"name": "a", "action": "drop",
                                         "match": {"dport": 53}}]), "eth1").text
    assert "ip frag-off & 0x1fff == 0 goto ipv4_transport" in text
    assert "@th,0,24 >= 0x0 goto ipv6_transport" in text
    assert "chain ipv4 {\n\t\tip frag-off & 0x1fff == 0 goto ipv4_transport\n\t\taccept\n\t}" in text


def test_vlan_guard_leaves_header_dependencies_alone():
    # `ether type { 8021q, 8021ad }` made nft 1.0.6 check the IP version behind a second
    # tag (`@ll,160,16 0x86dd`) for the `frag` that follows: a raw load does not.
    text = nft.nftables_ruleset(policy([{"name": "a", "action": "drop",
                                         "match": {"vlan": 0, "fragment": "non_first"}}]),
                                "eth1").text
    assert "ether type" not in text
    assert "@ll,96,16 { 0x8100, 0x88a8 } @ll,112,16 & 0xfff 0 frag frag-off != 0 drop" in text
    assert "@ll,96,16 { 0x8100, 0x88a8 } @ll,112,16 & 0xfff 0 ip frag-off & 0x1fff != 0 drop" in text


def test_iptables_cannot_see_vlan_tags():
    note = ipt.iptables_rules(policy([{"name": "tagged", "action": "drop",
                                       "match": {"vlan": 10}}]), "eth1")
    assert isinstance(note, peers.NotExpressible)
    assert note.reasons == ("rule tagged: vlan: iptables sees no VLAN tag (tagged frames "
                            "never reach PREROUTING on the parent device)",)


def test_iptables_negations_and_ranges():
    rules = [{"name": "a", "action": "drop",
              "match": {"src": ["!198.51.100.0/24", "!203.0.113.0/24"], "proto": ["!tcp"],
                        "ttl": "2-254", "length": ["!0-100", "!200-300"]}}]
    v4 = ipt.iptables_rules(policy(rules), "eth1").ipv4
    assert ("-A SWPEER -m set ! --match-set swpeer-1-4 src ! -p tcp -m length ! --length 0:100 "
            "-m length ! --length 200:300 -m ttl --ttl-gt 1 -m ttl --ttl-lt 255 -j DROP") in v4


# --- xdp-filter: what it can and cannot say -----------------------------------------


def test_xdp_filter_lists_addresses_and_ports():
    pol = policy([{"name": "bad", "action": "drop", "match": {"src": ["198.51.100.0/30", "2001:db8::1"]}},
                  {"name": "dns", "action": "drop", "match": {"proto": "udp", "dport": 53}},
                  {"name": "web", "action": "drop", "match": {"dport": [80, 443]}}])
    config = xdpf.xdp_filter_config(pol, "eth1", strict=False)
    assert config.commands == (
        ("xdp-filter", "load", "-m", "native", "-p", "allow", "-f", "tcp,udp,ipv4,ipv6", "eth1"),
        ("xdp-filter", "ip", "198.51.100.0", "-m", "src"),
        ("xdp-filter", "ip", "198.51.100.1", "-m", "src"),
        ("xdp-filter", "ip", "198.51.100.2", "-m", "src"),
        ("xdp-filter", "ip", "198.51.100.3", "-m", "src"),
        ("xdp-filter", "ip", "2001:db8::1", "-m", "src"),
        ("xdp-filter", "port", "53", "-m", "dst", "-p", "udp"),
        ("xdp-filter", "port", "80", "-m", "dst", "-p", "tcp,udp"),
        ("xdp-filter", "port", "443", "-m", "dst", "-p", "tcp,udp"),
    )


def test_xdp_filter_leaves_allowed_sources_out_of_its_deny_list():
    pol = policy([{"name": "bad", "action": "drop", "match": {"src": "198.51.100.0/30"}}],
                 fastpath={"allow": ["198.51.100.2"], "deny": ["203.0.113.8/31"]})
    config = xdpf.xdp_filter_config(pol, "eth1")
    assert [c[2] for c in config.commands[1:]] == [
        "198.51.100.0", "198.51.100.1", "198.51.100.3", "203.0.113.8", "203.0.113.9"]
    assert config.differences == ()


@pytest.mark.parametrize("rules, default, fastpath, reason", [
    ([{"name": "web-only", "action": "drop", "match": {"dport": ["!80", "!443"]}}], "pass", {},
     "rule web-only: port negation needs 65534 port entries (at most 1024)"),
    ([{"name": "both", "action": "drop", "match": {"src": "192.0.2.1", "dport": 22}}], "pass", {},
     "rule both: dport, src: xdp-filter matches one source address, destination "
     "address or TCP/UDP port per entry (ports under tcp and/or udp), no other field and no "
     "two together"),
    ([{"name": "ok", "action": "pass", "match": {"dst": "192.0.2.1"}},
      {"name": "late", "action": "drop", "match": {"src": "192.0.2.0/30"}}], "pass", {},
     "rule ok: a pass rule before drop rules it overlaps: xdp-filter has no rule order"),
    ([{"name": "neg", "action": "drop", "match": {"src": "!192.0.2.0/24"}}], "pass", {},
     "rule neg: src negation (xdp-filter lists exact addresses)"),
    ([{"name": "wide", "action": "drop", "match": {"src": "2001:db8::/112"}}],
     "pass", {}, "65536 entries needed, at most 1024 (xdp-filter lists addresses one by one): "
     "rule wide 65536"),
    ([{"name": "d", "action": "drop", "match": {"proto": "udp", "dport": 53}},
      {"name": "s", "action": "drop", "match": {"proto": "tcp", "sport": 53}}], "pass", {},
     "port 53: xdp-filter keeps one set of flags per port, so tcp sport, udp dport would "
     "also match tcp dport, udp sport"),
    ([{"name": "p", "action": "drop", "match": {"dport": 22}}], "pass",
     {"allow": ["192.0.2.7"]},
     "fastpath.allow: xdp-filter cannot exempt these sources from its destination and port "
     "entries"),
    ([{"name": "fam", "action": "drop", "match": {"family": "ipv4", "dport": 22}}], "pass", {},
     "rule fam: family with ports (xdp-filter's ports apply to IPv4 and IPv6 alike)"),
])
def test_xdp_filter_says_exactly_what_it_cannot_express(rules, default, fastpath, reason):
    note = xdpf.xdp_filter_config(policy(rules, default, fastpath=fastpath), "eth1",
                                  strict=False)
    assert isinstance(note, peers.NotExpressible)
    assert reason in note.reasons, note.reasons
    assert str(note).startswith("xdp-filter cannot express this policy: ")


def test_xdp_filter_differences_are_refused_when_strict_and_listed_otherwise():
    deny = policy([{"name": "admins", "action": "pass", "match": {"src": "203.0.113.7"}}], "drop")
    strict = xdpf.xdp_filter_config(deny, "eth1")
    loose = xdpf.xdp_filter_config(deny, "eth1", strict=False)
    assert isinstance(strict, peers.NotExpressible)
    assert strict.reasons == (xdpf.DIFFERENCES["deny_non_ip"], xdpf.DIFFERENCES["deny_nd"])
    assert loose.mode == "deny" and loose.differences == strict.reasons
    ports = policy([{"name": "dns", "action": "drop", "match": {"proto": "udp", "dport": 53}},
                    {"name": "w", "action": "count", "match": {"proto": "udp"}}])
    loose = xdpf.xdp_filter_config(ports, "eth1", strict=False)
    assert loose.differences == (xdpf.DIFFERENCES["port_fragments"],
                                 xdpf.DIFFERENCES["port_mobility"])
    assert loose.ignored == ("rule w: count (xdp-filter has no per-rule counters)",)
    exact = policy([{"name": "bad", "action": "drop", "match": {"src": "198.51.100.0/30"}}])
    assert xdpf.xdp_filter_config(exact, "eth1").differences == ()


def test_a_chain_without_the_fastpath_or_the_rules():
    pol = policy([{"name": "block", "action": "drop", "match": {"src": "198.51.100.0/24"}}],
                 fastpath={"deny": ["203.0.113.0/24"]},
                 pipeline={"stages": ["policy", "fastpath"]})
    text = nft.nftables_ruleset(pol, "eth1").text
    assert "fastpath" not in text  # the policy stage always decides first
    assert "ip saddr 198.51.100.0/24 drop" in text
    assert "swpeer-fpdeny" not in ipt.iptables_rules(pol, "eth1").ipset
    only_fastpath = replace(pol, pipeline=Pipeline(stages=("fastpath",)))
    text = nft.nftables_ruleset(only_fastpath, "eth1").text
    assert "198.51.100.0/24" not in text and "ip saddr @fastpath_v4 drop" in text
    assert xdpf.xdp_filter_config(only_fastpath, "eth1").commands[0][5] == "allow"


def test_a_stage_no_peer_has_is_a_note():
    pol = replace(policy([]), pipeline=Pipeline(stages=("ratelimit", "policy")))
    for translate in (nft.nftables_ruleset, ipt.iptables_rules, xdpf.xdp_filter_config):
        note = translate(pol, "eth1")
        assert isinstance(note, peers.NotExpressible)
        assert any(r.startswith("stage ratelimit: ") for r in note.reasons), note


def test_many_rules_with_one_problem_are_one_reason():
    rules = [{"name": f"t{i}", "action": "drop", "match": {"vlan": i}} for i in range(1, 8)]
    note = ipt.iptables_rules(policy(rules), "eth1")
    assert note.reasons == ("rules t1, t2, t3 and 4 more: vlan: iptables sees no VLAN tag "
                            "(tagged frames never reach PREROUTING on the parent device)",)


def test_later_fragment_headers_leave_iptables_nft_open_only_when_a_rule_reads_l4():
    """The nft backend may read ports from a later fragment header: the expected outcome
    is open (None) exactly when the translation declares that difference."""
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
    from scapy.layers.l2 import Ether

    from ..peer_expectations import iptables_passes
    frame = bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
                  / IPv6(src="2001:db8::1", dst="2001:db8:abcd::1")
                  / IPv6ExtHdrFragment(offset=0) / IPv6ExtHdrFragment(offset=5)
                  / TCP(dport=22))
    plain = policy([])
    assert ipt.DIFFERENCES["nft_backend_fragments"] not in ipt.iptables_rules(plain, "x").differences
    assert iptables_passes(plain, frame, "nft") is True
    ports = policy([{"name": "ssh", "match": {"proto": "tcp", "dport": 22}, "action": "drop"}])
    assert ipt.DIFFERENCES["nft_backend_fragments"] in ipt.iptables_rules(ports, "x").differences
    assert iptables_passes(ports, frame, "nft") is None
