"""The classifier compiler without a kernel: its decision chains, walked the way the
policy stage walks them (Plan.decide), decide what the reference model decides."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from shieldwall import abi
from shieldwall.model.parse import parse
from shieldwall.policy import Capacity, parse_policy, parse_policy_text
from shieldwall.policy import classifier
from shieldwall.policy.classes import field_classes
from shieldwall.policy.classifier import ClassifierTooLarge, plan
from shieldwall.policy.reference import evaluate_rules
from shieldwall.stages import stage

from ..policy_strategies import large_policies, packets, policies

# Both addresses given: scapy would otherwise ask the host's network for them (ARP).
ETH = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def chains(monkeypatch):
    """These tests are about the decision chains: small rulesets would go direct."""
    monkeypatch.setattr(classifier, "DIRECT", False)


def policy(rules: str, default: str = "pass", sets: str = ""):
    text = f"version: 1\ndefault_action: {default}\n{sets}rules:\n" + \
        textwrap.indent(textwrap.dedent(rules), "  ")
    return parse_policy_text(text, "classifier.yaml", ".")


def same_as_reference(pol, frames) -> None:
    p = plan(pol)
    ids = {rule.name: rule.id for rule in pol.rules}
    for frame in frames:
        pkt = parse(frame)[0]
        want = evaluate_rules(pol, pkt)
        got = p.decide(pkt)
        assert got.rule_id == want.rule_id, (frame, want)
        assert [rule for rule, _ in got.counted] == [ids[n] for n in want.counted]
        assert [rule for rule, would in got.counted if would] == [ids[n] for n in want.would_drop]
        if got.rule_id:
            assert got.verdict == want.action


@settings(max_examples=200, **SETTINGS)
@given(policies(max_rules=16), st.lists(packets(), min_size=5, max_size=15))
def test_chains_decide_as_the_reference(pol, frames):
    same_as_reference(pol, frames)


@settings(max_examples=12, **SETTINGS)
@given(large_policies(), st.lists(packets(), min_size=40, max_size=60))
def test_chains_of_large_policies_decide_as_the_reference(pol, frames):
    # Hundreds to thousands of rules: many classes per field, several buckets, sparse
    # steps; the packets come from the same pools, so they hit deep rules too.
    same_as_reference(pol, frames)


def test_an_address_gets_the_rules_of_every_prefix_holding_it():
    pol = policy("""\
        - {name: wide, action: count, match: {src: 192.0.2.0/24}}
        - {name: narrow, action: count, match: {src: 192.0.2.0/25}}
        - {name: host, action: count, match: {src: 192.0.2.7}}
        """)
    p = plan(pol)
    for addr, hits in [("192.0.2.7", [1, 2, 3]), ("192.0.2.8", [1, 2]), ("192.0.2.200", [1]),
                       ("198.51.100.1", [])]:
        pkt = parse(bytes(ETH / IP(src=addr, dst="192.0.2.1") / UDP()))[0]
        assert [r for r, _ in p.decide(pkt).counted] == hits, addr


def test_nodes_that_change_nothing_are_left_out():
    # The /25 and the host are inside the set's /24: one class for all of them.
    sets = 'sets:\n  s: {type: prefix, entries: [192.0.2.0/24, 192.0.2.0/25, 192.0.2.7]}\n'
    fields = field_classes(policy("- {name: r, action: drop, match: {src: '@s'}}\n", sets=sets).rules)
    assert [(plen) for _, plen, _ in fields["src"].nodes[4]] == [0, 24]
    assert [(plen) for _, plen, _ in fields["src"].nodes[6]] == [0]


def test_ipv4_prefixes_never_hold_ipv6_addresses():
    p = plan(policy("- {name: r, action: drop, match: {src: '!192.0.2.0/24'}}\n"))
    for src, rule in [("192.0.2.1", 0), ("2001:db8::1", 1), ("::ffff:192.0.2.1", 1)]:
        layer = IP(src=src, dst="192.0.2.9") if "." in src and ":" not in src else \
            IPv6(src=src, dst="2001:db8::9")
        assert p.decide(parse(bytes(ETH / layer / UDP()))[0]).rule_id == rule, src


def test_small_fields_share_one_lookup_and_large_ones_keep_their_own():
    ports = "".join(f"- {{name: p{i}, action: pass, match: {{proto: udp, dport: {1000 + i}}}}}\n"
                    for i in range(80))
    p = plan(policy("- {name: a, action: drop, match: {proto: tcp, tcp_flags: \"SYN,FIN\", ttl: 0-1}}\n"
                    + ports))
    assert set(p.misc_fields) == {"proto", "tcp_flags", "ttl"}
    assert p.fields["dport"].count > classifier.MISC_FIELD_CLASSES


def test_sources_and_destinations_go_to_separate_buckets():
    rules = "".join(f"- {{name: s{i}, action: drop, match: {{src: 198.51.100.{i}}}}}\n"
                    f"- {{name: d{i}, action: pass, match: {{dst: 192.0.2.{i}, proto: tcp, dport: {1000 + i}}}}}\n"
                    for i in range(200))
    p = plan(policy(rules))
    assert len(p.buckets) == 2
    # Each bucket's states grow with its own rules, not with the product of both.
    assert all(max(s.states for s in b.steps) <= 210 for b in p.buckets)


def test_a_sparse_step_holds_only_what_differs_from_its_default(monkeypatch):
    monkeypatch.setattr(classifier, "DENSE_FREE", 0)
    monkeypatch.setattr(classifier, "DENSE_RATIO", 0)
    rules = "".join(f"- {{name: r{i}, action: pass, match: {{dst: 192.0.2.{i}, proto: tcp, dport: {2000 + i}}}}}\n"
                    for i in range(100))
    pol = policy(rules, default="drop")
    p = plan(pol)
    sparse = [s for b in p.buckets for s in b.steps if not s.dense]
    assert sparse and sum(len(s.exceptions) for s in sparse) <= 2 * 100 + 1
    frames = [bytes(ETH / IP(src="203.0.113.1", dst=f"192.0.2.{i}") / TCP(dport=2000 + j))
              for i in range(0, 100, 7) for j in (i, i + 1)]
    same_as_reference(pol, frames)


def test_a_policy_past_the_budget_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(classifier, "TABLE_BUDGET", 5000)
    rules = "".join(f"- {{name: r{i}, action: drop, match: {{sport: {i}-{i + 300}, dport: {i}-{i + 300}, length: {i}-{i + 900}}}}}\n"
                    for i in range(0, 3000, 10))
    with pytest.raises(ClassifierTooLarge, match="table entries"):
        plan(policy(rules))


def test_every_packet_costs_a_bounded_number_of_lookups():
    rules = "".join(f"- {{name: r{i}, action: drop, match: {{src: 198.51.100.{i % 256}, proto: tcp, dport: {i}}}}}\n"
                    for i in range(2000))
    n = plan(policy(rules)).lookups()
    assert n["buckets"] <= abi.SW_POL_MAX_BUCKETS
    assert n["chain_steps"] <= abi.SW_POL_MAX_BUCKETS * abi.SW_POL_MAX_STEPS
    assert n["field_lookups"] == 3


def test_small_rulesets_go_direct_and_decide_as_the_reference(monkeypatch):
    monkeypatch.setattr(classifier, "DIRECT", True)
    pol = policy("""\
        - {name: a, action: count, match: {src: ["192.0.2.0/24", "!192.0.2.7"], proto: tcp}}
        - {name: b, action: drop, match: {dport: ["!22", "1000-2000"], tcp_flags: "SYN,!ACK"}}
        - {name: c, action: pass, match: {fragment: non_first, family: ipv6}}
        """)
    p = plan(pol)
    assert p.direct is not None and p.buckets == []
    frames = [bytes(ETH / IP(src=src, dst="198.51.100.1") / TCP(dport=dport, flags=flags))
              for src in ("192.0.2.1", "192.0.2.7", "203.0.113.1")
              for dport in (22, 1500, 80) for flags in ("S", "SA")]
    same_as_reference(pol, frames)


def test_a_ruleset_too_big_for_direct_mode_takes_the_chains(monkeypatch):
    monkeypatch.setattr(classifier, "DIRECT", True)
    many = "".join(f"- {{name: r{i}, action: drop, match: {{dport: {i}}}}}\n" for i in range(17))
    assert plan(policy(many)).direct is None
    wide = "- {name: r, action: drop, match: {dport: [1, 3, 5, 7, 9, 11, 13, 15, 17]}}\n"
    assert plan(policy(wide)).direct is None
    merged = "- {name: r, action: drop, match: {dport: [1, 2, 3, 4, 5, 6, 7, 8, 9, 100]}}\n"
    assert plan(policy(merged)).direct[0].tests["dport"].items == ((1, 9), (100, 100))


@settings(max_examples=200, **SETTINGS)
@given(policies(max_rules=16), st.lists(packets(), min_size=5, max_size=15))
def test_direct_mode_decides_as_the_reference(pol, frames):
    classifier.DIRECT = True  # hypothesis does not take function-scoped fixtures
    try:
        same_as_reference(pol, frames)
    finally:
        classifier.DIRECT = False


def test_capacity():
    rules = [{"name": f"r{i}", "action": "count"} for i in range(abi.SW_POL_MAX_RULES + 1)]
    data = {"version": 1, "default_action": "pass", "rules": rules}
    big = parse_policy(data, "big.yaml", ".", Capacity(rules=len(rules)))
    with pytest.raises(ValueError, match="at most 10240"):
        stage("policy").image(big.ruleset)
