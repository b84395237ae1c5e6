"""Unit tier: the policy compiled for `up --mode nft` (shieldwall.nft.compile) and the
transactions that apply it (engine.nftmode): limits become dynamic sets keyed by the
source's prefix, blocks a set dropped before the rules, SYN cookies SYNPROXY through the
syn stage's table; what nftables cannot say is listed with its field; every counter
has a meaning; the scripts declare sets before the rules and delete only leftovers."""

from __future__ import annotations

import re

import pytest

from shieldwall.config import configure
from shieldwall.engine import host, nftmode
from shieldwall.nft.compile import Counted, compile_policy, table_name
from shieldwall.policy import parse_policy


def _policy(doc: dict):
    return parse_policy({"version": 1, "default_action": "pass", **doc}, "(test)", ".")


def _compiled(doc: dict, suffix: str = "_r1"):
    return compile_policy(_policy(doc), "eth-lab0", suffix)


def _lines(compiled, word: str) -> list[str]:
    return [line.strip() for line in compiled.text.splitlines() if word in line]


def _fields(compiled) -> list[str]:
    return [u.field for u in compiled.unexpressed]


LIMITED = {
    "limits": {"udp-src": {"per": "source", "prefix4": 24, "prefix6": 56, "pps": 1000,
                           "burst": 2000, "block": "90s"}},
    "rules": [{"name": "udp", "match": {"proto": "udp"}, "action": {"limit": "udp-src"}}],
}


def test_a_per_source_limit_is_a_meter_keyed_by_the_sources_prefix():
    c = _compiled(LIMITED)
    over = _lines(c, 'comment "udp (rate_limited)"')
    assert len(over) == 2  # one per family
    v4 = [line for line in over if "ip saddr" in line][0]
    assert re.search(r"update @meter_\w+ \{ ip saddr & 255\.255\.255\.0 limit rate over 1000/second "
                     r"burst 2000 packets \}", v4), v4
    assert "add @blocked_v4_24 { ip saddr & 255.255.255.0 timeout 90s }" in v4 and v4.endswith(
        'drop comment "udp (rate_limited)"')
    v6 = [line for line in over if "ip6 saddr" in line][0]
    assert "ip6 saddr & ffff:ffff:ffff:ff00::" in v6 and "@blocked_v6_56" in v6
    # What is not over goes on to the rule's accept, counted as the rule's.
    assert any(line.endswith('accept comment "udp"') for line in _lines(c, 'comment "udp"'))
    assert c.meaning["udp (rate_limited)"] == Counted("drop", "rate_limited", "udp")
    assert c.meaning["udp"] == Counted("pass", "rule", "udp")


def test_blocked_prefixes_are_dropped_before_every_rule():
    c = _compiled({**LIMITED, "rules": [
        {"name": "ssh", "match": {"proto": "tcp", "dport": 22}, "action": "pass"}, *LIMITED["rules"]]})
    chain = c.text.split("chain ipv4_r1 {")[1].split("}")[0].splitlines()
    blocked = next(i for i, line in enumerate(chain) if "@blocked_v4_24" in line)
    assert chain[blocked].strip().startswith("ip saddr & 255.255.255.0 @blocked_v4_24 counter name")
    assert blocked < next(i for i, line in enumerate(chain) if "goto" in line)
    assert c.meaning["(blocked)"] == Counted("drop", "blocked")
    assert {"blocked_v4_24", "blocked_v6_56"} <= set(c.state)


def test_per_rule_limits_are_one_bucket_for_both_families_and_bit_rates_a_second_test():
    c = _compiled({"limits": {"web": {"per": "rule", "pps": 500, "bps": "8M"}},
                   "rules": [{"name": "web", "match": {"proto": "tcp", "dport": 443},
                              "action": {"limit": "web"}}]})
    objects = re.findall(r"^\tlimit (\S+) \{ (.*) \}$", c.text, re.M)
    assert [rate for _, rate in objects] == ["rate over 500/second burst 500 packets",
                                             "rate over 1000000 bytes/second burst 1000000 bytes"]
    for name, _ in objects:
        # Referenced from the IPv4 and the IPv6 chain: one bucket for the rule.
        assert len(_lines(c, f'limit name "{name}"')) == 2


def test_a_flow_limit_on_packets_without_ports_is_listed_and_the_rule_still_applies():
    c = _compiled({"limits": {"f": {"per": "flow", "pps": 10}},
                   "rules": [{"name": "any", "match": {"dst": "198.51.100.0/24"},
                              "action": {"limit": "f"}}]})
    assert "limits.f.per" in _fields(c)
    assert not _lines(c, "rate_limited")
    assert _lines(c, 'accept comment "any"')
    with_ports = _compiled({"limits": {"f": {"per": "flow", "pps": 10}},
                            "rules": [{"name": "t", "match": {"proto": "tcp"}, "action": {"limit": "f"}}]})
    assert not with_ports.unexpressed
    assert _lines(with_ports, "ip saddr . ip daddr . meta l4proto . th sport . th dport limit rate over 10/second")


def test_limit_state_keeps_its_name_across_revisions_unless_the_limit_changes():
    a, b = _compiled(LIMITED, "_r1"), _compiled(LIMITED, "_r2")
    assert set(a.state) == set(b.state)
    changed = {**LIMITED, "limits": {"udp-src": {**LIMITED["limits"]["udp-src"], "pps": 999}}}
    c = _compiled(changed, "_r3")
    meters = lambda x: {s for s in x.state if s.startswith("meter_")}  # noqa: E731
    assert meters(a) and meters(a).isdisjoint(meters(c))
    # Configuration sets and chains carry the revision: old and new can stand side by side.
    assert "chain ipv4_r1 {" in a.text and "chain ipv4_r2 {" in b.text


def test_syn_cookies_run_as_synproxy_through_the_syn_stages_own_table():
    policy = _policy({"protect": {"syn": {"ports": [80, 443]}}})
    c = compile_policy(policy, "eth-lab0")
    assert "syn" in c.chain and any("SYNPROXY" in d for d in c.differences)
    need = host.needs(type("C", (), {"policy": policy, "pipeline": configure(policy)})(), "eth-lab0")["syn"]
    assert need.table == "shieldwall_syn_eth_lab0"
    assert "synproxy mss 1460 wscale 7 timestamp sack-perm" in need.ruleset
    assert need.sysctls["net/ipv4/tcp_syncookies"] == "2"


@pytest.mark.parametrize("section, field", [
    ({"syn": {"ports": [80], "mode": "auth"}}, "protect.syn.mode"),
    ({"syn": {"ports": [80], "activate": {"above": "20k", "below": "5k"}}}, "protect.syn.activate"),
    ({"reflection": {}}, "protect.reflection"),
    ({"icmp": {}}, "protect.icmp"),
])
def test_what_nftables_cannot_do_is_listed_with_its_field(section, field):
    c = _compiled({"protect": section})
    assert field in _fields(c)
    assert all(u.why for u in c.unexpressed)


def test_land_is_listed_and_the_other_anomaly_filters_are_rules():
    c = _compiled({"protect": {"land": "drop", "bogons": "drop", "ipv4_options": "drop"}})
    assert _fields(c) == ["protect.land"]
    assert c.meaning["(protect bogons)"] == Counted("drop", "bogon_source")
    assert _lines(c, "ip hdrlength > 5")
    assert len(_lines(c, 'comment "(protect tcp_flags)"')) == 10  # five patterns, two families
    assert _lines(c, "rt type 0") and _lines(c, "frag frag-off 1")
    monitored = _compiled({"protect": {"bogons": "monitor"}})
    assert monitored.meaning["(protect bogons: monitor)"].action is None


def test_a_bogon_exception_wins_over_the_bogon_range_that_holds_it():
    c = _compiled({"protect": {"bogons": {"mode": "drop", "except": ["10.1.0.0/16"], "own": "keep"}}})
    elements = re.search(r"set bogons_v4_r1 \{[^}]*elements = \{ ([^}]*) \}", c.text).group(1)
    assert "10.0.0.0/16" in elements and "10.2.0.0-10.255.255.255" in elements
    assert "10.1.0.0" not in elements


def test_a_policy_that_reads_state_runs_after_connection_tracking():
    c = _compiled({"default_action": "drop", "rules": [
        {"name": "replies", "match": {"state": "established"}, "action": "pass"},
        {"name": "fresh-ssh", "match": {"state": "new", "proto": "tcp", "dport": 22}, "action": "pass"}]})
    assert c.family == "inet" and not c.unexpressed
    assert c.base == "type filter hook prerouting priority -150; policy accept;"
    assert c.text.startswith("table inet shieldwall_eth_lab0 {")
    assert _lines(c, 'iifname "eth-lab0" meta protocol ip jump ipv4_r1')
    replies = _lines(c, 'comment "replies"')
    assert replies and all(line.startswith("ct direction reply ct state established ") for line in replies)
    fresh = _lines(c, 'comment "fresh-ssh"')
    assert {line.split(" tcp dport")[0] for line in fresh} == {"ct direction original",
                                                               "ct state != established"}
    assert any(d.startswith("state:") for d in c.differences)
    assert _compiled({"rules": [{"name": "x", "match": {"dport": 9}, "action": "drop"}]}).family == "netdev"


def test_every_rule_is_counted_by_name_and_every_counter_has_a_meaning():
    c = _compiled({"fastpath": {"allow": ["192.0.2.0/28"], "deny": ["203.0.113.0/24"]},
                   "default_action": "drop",
                   "rules": [{"name": "web", "match": {"proto": "tcp", "dport": [80, 443]}, "action": "pass"},
                             {"name": "seen", "match": {"dport": 9}, "action": "count"}]})
    comments = set(re.findall(r'comment "([^"]+)"', c.text))
    assert comments == set(c.meaning) == set(c.counters)
    assert {"web", "seen", "(default)", "(allowlisted)", "(blocklisted)", "(nd_protected)",
            "(non_ip)"} <= comments
    for line in c.text.splitlines():
        if "comment" in line:
            assert 'counter name "c_' in line, line
    assert c.meaning["seen"].action is None and c.meaning["(default)"] == Counted("drop", "default")
    # No anonymous set: several values are a named set, declared before the rules.
    assert "{ 80, 443 }" not in c.text.split("chain ")[1]
    assert c.rules == ((1, "web"), (2, "seen"))


def test_no_policy_only_counts():
    c = compile_policy(None, "eth-lab0")
    assert c.table == table_name("eth-lab0") == "shieldwall_eth_lab0"
    assert c.meaning == {"(default)": Counted("pass", "default")} and "drop" not in c.text


def test_the_transactions_declare_first_switch_rules_then_remove_only_leftovers():
    new = _compiled(LIMITED, "_r2")
    declared = nftmode.declare_script(new)
    assert "chain" not in declared and "@" not in declared and "set meter_" in declared
    switch = nftmode.switch_script(new, exists=True)
    assert switch.startswith(f"flush chain netdev {new.table} ingress\n")
    assert "type filter hook" not in switch  # the hook stays as it is
    assert "type filter hook" in nftmode.switch_script(new, exists=False)
    old = _compiled(LIMITED, "_r1")
    listed = {"nftables": [{kind: {"name": name}} for kind, name in old.names | {("set", "foreign")}]}
    cleanup = nftmode.cleanup_script(new, listed).splitlines()
    deleted = {line.split()[-1] for line in cleanup if line.startswith("delete")}
    assert deleted == {name for kind, name in old.names - new.names} | {"foreign"}
    assert "ingress" not in deleted and not deleted & set(new.state)
    first_delete = next(i for i, line in enumerate(cleanup) if line.startswith("delete"))
    assert all(line.startswith("flush chain") for line in cleanup[:first_delete])
