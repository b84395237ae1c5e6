"""Connection state without a kernel: the `state` match and the `conntrack` section as
the loader reads them (errors name the field), the chain that holds the stage, the
reference table of the host's flows, the classifier on marked packets, `check`'s
warning and the peers' refusal."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether

from shieldwall import abi
from shieldwall.lab.peers import iptables_rules, nftables_ruleset, xdp_filter_config
from shieldwall.lab.peers.common import NotExpressible
from shieldwall.model.parse import parse
from shieldwall.policy import PolicyError, State, analyze, classifier, parse_policy_text
from shieldwall.policy.classifier import plan
from shieldwall.policy.reference import chain, evaluate_rules
from shieldwall.stages.conntrack import FlowTable

from ..policy_strategies import packets, state_policies

ETH = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])
REPLIES = "  - {name: replies, match: {state: established}, action: pass}\n"


def load(rules: str = REPLIES, default: str = "drop", extra: str = ""):
    return parse_policy_text(f"version: 1\ndefault_action: {default}\n{extra}rules:\n{rules}",
                             "policy.yaml", ".")


def problem(**kwargs) -> str:
    with pytest.raises(PolicyError) as info:
        load(**kwargs)
    return str(info.value)


# -- the policy file --------------------------------------------------------------------

def test_state_takes_established_or_new():
    assert load().rules[0].match.state is State.ESTABLISHED
    assert load("  - {name: n, match: {state: NEW}, action: drop}\n").rules[0].match.state is State.NEW


@pytest.mark.parametrize("value, message", [
    ("estab", "rules[0].match.state: 'estab' is not a valid state (one of: new, established)"),
    ("3", "rules[0].match.state: expected state (one of: new, established), got the number 3"),
    ("[established]", "rules[0].match.state: expected state (one of: new, established), got a list"),
])
def test_a_bad_state_is_named_with_its_field(value, message):
    assert message in problem(rules=f"  - {{name: r, match: {{state: {value}}}, action: pass}}\n")


@pytest.mark.parametrize("section, message", [
    ("conntrack: {timeouts: {tcp: 0}}", "conntrack.timeouts.tcp: expected seconds from 1 to 604800, got the number 0"),
    ("conntrack: {timeouts: {udp: fast}}", "conntrack.timeouts.udp: expected seconds from 1 to 604800"),
    ("conntrack: {timeouts: {syn: 5}}", "conntrack.timeouts: unknown key 'syn'"),
    ("conntrack: {size: 5}", "conntrack: unknown key 'size'"),
    ("conntrack: 5", "conntrack: expected a mapping"),
])
def test_bad_timeouts_are_named_with_their_field(section, message):
    assert message in problem(extra=section + "\n")


def test_the_stage_runs_only_when_a_rule_reads_state():
    assert chain(load()) == ("conntrack", "policy")
    assert "conntrack" not in chain(load("  - {name: web, match: {dport: 80}, action: pass}\n"))
    timeouts = load(extra="conntrack: {timeouts: {udp: 5}}\n").sections["conntrack"].timeouts
    assert timeouts["udp"] == 5 and timeouts["tcp"] == 86400


def test_a_chain_without_the_stage_is_refused_when_a_rule_reads_state():
    message = problem(extra="pipeline: {stages: [policy]}\n")
    assert "pipeline.stages: stage 'conntrack' is left out" in message


def test_check_warns_about_a_default_drop_without_the_replies_rule():
    bare = load("  - {name: web, match: {dport: 80}, action: pass}\n")
    (warning,) = [w for w in analyze(bare).warnings if w.path == "default_action"]
    assert "{name: replies, match: {state: established}, action: pass}" in str(warning)
    assert not [w for w in analyze(load()).warnings if w.path == "default_action"]
    # A rule that drops replies does not make the default drop safe.
    dropping = load("  - {name: refuse, match: {state: established}, action: drop}\n")
    assert [w for w in analyze(dropping).warnings if w.path == "default_action"]


# -- the reference table ----------------------------------------------------------------

def out4(upper) -> bytes:
    return bytes(ETH / IP(src="192.0.2.1", dst="198.51.100.2") / upper)


def in4(upper, src: str = "198.51.100.2") -> bytes:
    return bytes(ETH / IP(src=src, dst="192.0.2.1") / upper)


def established(table: FlowTable, frame: bytes, now: float = 0.0) -> bool:
    return table.established(frame, parse(frame)[0], now)


def test_a_tcp_flow_is_opened_by_the_hosts_syn_alone():
    table = FlowTable()
    reply = in4(TCP(sport=80, dport=40000, flags="SA"))
    table.outgoing(out4(TCP(sport=40000, dport=80, flags="A")))
    table.outgoing(out4(TCP(sport=40000, dport=80, flags="SA")))  # answering someone's SYN
    assert not established(table, reply)
    table.outgoing(out4(TCP(sport=40000, dport=80, flags="S")))
    assert established(table, reply)
    assert not established(table, in4(TCP(sport=80, dport=40000), src="203.0.113.5"))
    assert not established(table, in4(TCP(sport=81, dport=40000)))


def test_the_hosts_close_shortens_the_flow_and_a_syn_reopens_it():
    table = FlowTable(timeouts={"tcp": 100, "closing": 10, "udp": 60, "icmp": 30})
    reply = in4(TCP(sport=80, dport=40000, flags="A"))
    table.outgoing(out4(TCP(sport=40000, dport=80, flags="S")))
    table.outgoing(out4(TCP(sport=40000, dport=80, flags="FA")), now=1)
    table.outgoing(out4(TCP(sport=40000, dport=80, flags="A")), now=2)
    assert established(table, reply, now=11) and not established(table, reply, now=12)
    table.outgoing(out4(TCP(sport=40000, dport=80, flags="S")), now=20)
    assert established(table, reply, now=100)


def test_udp_and_echo_replies_by_ports_and_identifier():
    table = FlowTable()
    table.outgoing(out4(UDP(sport=40001, dport=53)))
    table.outgoing(out4(ICMP(type=8, id=7)))
    table.outgoing(bytes(ETH / IPv6(src="2001:db8::1", dst="2001:db8:1::7") / ICMPv6EchoRequest(id=9)))
    assert established(table, in4(UDP(sport=53, dport=40001)))
    assert not established(table, in4(UDP(sport=53, dport=40002)))
    assert established(table, in4(ICMP(type=0, id=7)))
    assert not established(table, in4(ICMP(type=0, id=8)))
    assert not established(table, in4(ICMP(type=8, id=7)))  # a request is no reply
    v6 = ETH / IPv6(src="2001:db8:1::7", dst="2001:db8::1")
    assert established(table, bytes(v6 / ICMPv6EchoReply(id=9)))
    assert not established(table, bytes(v6 / ICMPv6EchoRequest(id=9)))
    # Replies expire; inbound packets never add flows.
    assert not established(table, in4(UDP(sport=53, dport=40001)), now=61)
    before = dict(table.flows)
    table.mark(in4(UDP(sport=9, dport=9)), parse(in4(UDP(sport=9, dport=9)))[0])
    assert table.flows == before


# -- the classifier ---------------------------------------------------------------------

@st.composite
def marked(draw) -> list:
    """Parsed packets, each a reply or not."""
    return [replace(parse(frame)[0], flags=parse(frame)[0].flags | abi.SW_PKT_ESTABLISHED)
            if draw(st.booleans()) else parse(frame)[0]
            for frame in draw(st.lists(packets(), min_size=5, max_size=12))]


@settings(max_examples=150, **SETTINGS)
@given(state_policies(), marked(), st.booleans())
def test_chains_and_direct_mode_decide_state_as_the_reference(pol, pkts, direct):
    saved = classifier.DIRECT
    classifier.DIRECT = direct
    try:
        p = plan(pol)
        for pkt in pkts:
            assert p.decide(pkt).rule_id == evaluate_rules(pol, pkt).rule_id
    finally:
        classifier.DIRECT = saved


# -- peers ------------------------------------------------------------------------------

def test_peers_say_plainly_that_they_cannot_see_connection_state():
    pol = load()
    for note in (nftables_ruleset(pol, "eth9"), iptables_rules(pol, "eth9"),
                 xdp_filter_config(pol, "eth9")):
        assert isinstance(note, NotExpressible)
        assert "stage conntrack: the rules' `state` needs the kernel's connection tracking" \
            in str(note)
