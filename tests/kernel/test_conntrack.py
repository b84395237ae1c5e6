"""Connection state on the real programs: the TC egress program records generated
outgoing frames, then the XDP pipeline decides on replies and near misses; every
verdict must be the reference model's (FlowTable marks the reply, evaluate() decides),
on generated policies whose rules read `state`."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Dot1Q, Ether

from shieldwall import abi
from shieldwall.config import configure
from shieldwall.dataplane.pipeline import Pipeline, PipelineConfig
from shieldwall.kernel._libbpf import ffi
from shieldwall.kernel.testrun import prog_test_run
from shieldwall.model.parse import parse
from shieldwall.policy import evaluate, parse_policy_text
from shieldwall.stages.conntrack import FLOWS, FlowTable

from ..policy_strategies import state_policies

pytestmark = pytest.mark.kernel

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])
ETH = dict(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
HOSTS = {4: ["192.0.2.1", "192.0.2.7"], 6: ["2001:db8::1", "2001:db8::2"]}
REMOTES = {4: ["198.51.100.2", "203.0.113.5"], 6: ["2001:db8:1::7", "2001:db8:ffff::42"]}
PORTS = [53, 80, 443, 40000, 40001]
TCP_OUT = ["S", "S", "A", "PA", "FA", "R", "SA"]
TCP_IN = ["SA", "A", "PA", "FA", "R", "S"]
TC_ACT_UNSPEC = 0xFFFFFFFF

REPLIES_ONLY = """version: 1
default_action: drop
rules:
  - {name: replies, match: {state: established}, action: pass}
"""


@pytest.fixture(scope="module")
def pipeline():
    with Pipeline.load(PipelineConfig()) as p:
        yield p


def fresh(pipeline: Pipeline, policy) -> tuple[int, object]:
    """The pipeline for the policy with an empty table; the egress program's fd."""
    pipeline.apply(configure(policy))
    flows = pipeline.maps[FLOWS]
    for key in list(flows.keys()):
        flows.delete(key)
    return pipeline.egress_programs()["conntrack"].fd, flows


def frame(family: int, src: str, dst: str, upper, vlan: int | None = None) -> bytes:
    f = Ether(**ETH)
    if vlan is not None:
        f = f / Dot1Q(vlan=vlan)
    return bytes(f / (IP(src=src, dst=dst) if family == 4 else IPv6(src=src, dst=dst)) / upper)


def echo(family: int, reply: bool, ident: int):
    if family == 4:
        return ICMP(type=0 if reply else 8, id=ident)
    return (ICMPv6EchoReply if reply else ICMPv6EchoRequest)(id=ident)


@st.composite
def conversations(draw) -> tuple[list[bytes], list[bytes]]:
    """The host's outgoing frames, and inbound frames: their replies and near misses
    (another port, identifier or peer, a request instead of a reply)."""
    out, inbound = [], []
    for _ in range(draw(st.integers(1, 6))):
        family = draw(st.sampled_from([4, 6]))
        host, peer = draw(st.sampled_from(HOSTS[family])), draw(st.sampled_from(REMOTES[family]))
        proto = draw(st.sampled_from(["tcp", "udp", "icmp"]))
        lport, rport = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
        vlan = draw(st.sampled_from([None, None, 10]))
        if proto == "tcp":
            for flags in draw(st.lists(st.sampled_from(TCP_OUT), min_size=1, max_size=3)):
                out.append(frame(family, host, peer, TCP(sport=lport, dport=rport, flags=flags), vlan))
        elif proto == "udp":
            out.append(frame(family, host, peer, UDP(sport=lport, dport=rport), vlan))
        else:
            out.append(frame(family, host, peer, echo(family, False, lport), vlan))
        for _ in range(draw(st.integers(1, 3))):
            miss = draw(st.sampled_from(["none", "none", "port", "peer", "kind"]))
            src = draw(st.sampled_from(REMOTES[family])) if miss == "peer" else peer
            sport = draw(st.sampled_from(PORTS)) if miss == "port" else rport
            if proto == "tcp":
                upper = TCP(sport=sport, dport=lport, flags=draw(st.sampled_from(TCP_IN)))
            elif proto == "udp":
                upper = UDP(sport=sport, dport=lport) if miss != "kind" else TCP(sport=sport, dport=lport)
            else:
                upper = echo(family, miss != "kind", lport if miss != "port" else lport + 1)
            inbound.append(frame(family, src, host, upper, draw(st.sampled_from([None, 10]))))
    return out, inbound


def kernel_flows(flows) -> set[tuple]:
    """The table's keys as the reference writes them."""
    return {(bytes(ffi.buffer(k.local)), bytes(ffi.buffer(k.remote)), k.lport, k.rport, k.proto,
             k.family) for k in flows.keys()}


def run_conversation(pipeline, cpu, policy, out, inbound, table: FlowTable) -> int:
    egress, flows = fresh(pipeline, policy)
    for f in out:
        assert prog_test_run(egress, f).retval == TC_ACT_UNSPEC  # it only watches
        table.outgoing(f)
    assert kernel_flows(flows) == set(table.flows)
    replies = 0
    for f in inbound:
        fields, root = parse(f)
        assert root is None
        marked = table.mark(f, fields)
        want = evaluate(policy, marked)
        got = pipeline.run(f, cpu)
        assert (got.action, got.reason, got.rule_id) == (want.action, want.reason, want.rule_id), \
            (policy.rules, f.hex())
        replies += table.established(f, fields)
    return replies


@settings(max_examples=60, **SETTINGS)
@given(state_policies(), conversations())
def test_replies_and_near_misses_decide_as_the_reference(pipeline, cpu, policy, talk):
    out, inbound = talk
    run_conversation(pipeline, cpu, policy, out, inbound, FlowTable())


def test_only_replies_to_the_hosts_own_flows_pass(pipeline, cpu):
    policy = parse_policy_text(REPLIES_ONLY, "replies.yaml", ".")
    out = [frame(4, "192.0.2.1", "198.51.100.2", TCP(sport=40000, dport=80, flags="S")),
           frame(6, "2001:db8::1", "2001:db8:1::7", UDP(sport=40001, dport=53), vlan=10),
           frame(4, "192.0.2.1", "198.51.100.2", echo(4, False, 7)),
           frame(6, "2001:db8::1", "2001:db8:1::7", echo(6, False, 9)),
           # The host answers a connection someone else opened: that opens nothing.
           frame(4, "192.0.2.1", "203.0.113.5", TCP(sport=22, dport=50000, flags="SA"))]
    inbound = {
        frame(4, "198.51.100.2", "192.0.2.1", TCP(sport=80, dport=40000, flags="SA")): "pass",
        frame(6, "2001:db8:1::7", "2001:db8::1", UDP(sport=53, dport=40001)): "pass",
        frame(4, "198.51.100.2", "192.0.2.1", echo(4, True, 7)): "pass",
        frame(6, "2001:db8:1::7", "2001:db8::1", echo(6, True, 9)): "pass",
        # Spoofed "replies": another peer, port or identifier, a flow never opened.
        frame(4, "203.0.113.5", "192.0.2.1", TCP(sport=80, dport=40000, flags="SA")): "drop",
        frame(4, "198.51.100.2", "192.0.2.1", TCP(sport=81, dport=40000, flags="A")): "drop",
        frame(4, "198.51.100.2", "192.0.2.1", echo(4, True, 8)): "drop",
        frame(4, "198.51.100.2", "192.0.2.1", echo(4, False, 7)): "drop",
        frame(4, "203.0.113.5", "192.0.2.1", TCP(sport=50000, dport=22, flags="A")): "drop",
        frame(6, "2001:db8:1::7", "2001:db8::1", TCP(sport=53, dport=40001, flags="A")): "drop",
        # IPv6 between the IPv4-mapped addresses of an IPv4 flow: no reply to it.
        frame(6, "::ffff:198.51.100.2", "::ffff:192.0.2.1", TCP(sport=80, dport=40000, flags="SA")): "drop",
    }
    egress, flows = fresh(pipeline, policy)
    assert pipeline.run(next(iter(inbound)), cpu).action == "drop"  # nothing recorded yet
    for f in out:
        prog_test_run(egress, f)
    assert len(list(flows.keys())) == 4
    for f, action in inbound.items():
        assert pipeline.run(f, cpu).action == action, parse(f)[0]
    # Inbound packets never create entries.
    assert len(list(flows.keys())) == 4


def test_the_hosts_fin_shortens_the_flows_life(pipeline, cpu):
    text = REPLIES_ONLY + "conntrack: {timeouts: {closing: 1}}\n"
    policy = parse_policy_text(text, "closing.yaml", ".")
    egress, _ = fresh(pipeline, policy)
    syn = frame(4, "192.0.2.1", "198.51.100.2", TCP(sport=40000, dport=80, flags="S"))
    fin = frame(4, "192.0.2.1", "198.51.100.2", TCP(sport=40000, dport=80, flags="FA"))
    ack = frame(4, "192.0.2.1", "198.51.100.2", TCP(sport=40000, dport=80, flags="A"))
    reply = frame(4, "198.51.100.2", "192.0.2.1", TCP(sport=80, dport=40000, flags="FA"))
    prog_test_run(egress, syn)
    prog_test_run(egress, fin)
    prog_test_run(egress, ack)  # the last ACK of the close does not reopen the flow
    assert pipeline.run(reply, cpu).action == "pass"
    time.sleep(1.2)
    assert pipeline.run(reply, cpu).action == "drop"
    # A new SYN on the same ports opens the flow again.
    prog_test_run(egress, syn)
    assert pipeline.run(reply, cpu).action == "pass"


def test_the_table_survives_a_reload(pipeline, cpu):
    policy = parse_policy_text(REPLIES_ONLY, "replies.yaml", ".")
    egress, _ = fresh(pipeline, policy)
    prog_test_run(egress, frame(4, "192.0.2.1", "198.51.100.2", UDP(sport=40000, dport=53)))
    reply = frame(4, "198.51.100.2", "192.0.2.1", UDP(sport=53, dport=40000))
    again = parse_policy_text(REPLIES_ONLY + "  - {name: dns, match: {dport: 53}, action: pass}\n",
                              "again.yaml", ".")
    pipeline.apply(configure(again))  # state maps are kept, as a reload keeps them
    assert pipeline.run(reply, cpu).action == "pass"


def test_the_table_stays_within_its_bound_and_keeps_the_newest_flows(pipeline, cpu):
    policy = parse_policy_text(REPLIES_ONLY, "replies.yaml", ".")
    egress, flows = fresh(pipeline, policy)
    opened = abi.SW_CT_MAX_FLOWS + 4_000
    template = frame(4, "192.0.2.1", "198.51.100.2", UDP(sport=1, dport=53))
    port_at = len(template) - 8  # the UDP header's source port
    for n in range(opened):
        ports = (1024 + n % 60_000).to_bytes(2, "big") + (53 + n // 60_000).to_bytes(2, "big")
        prog_test_run(egress, template[:port_at] + ports + template[port_at + 4:])
    assert abi.SW_CT_MAX_FLOWS - 4_000 < len(list(flows.keys())) <= abi.SW_CT_MAX_FLOWS
    newest = opened - 1
    reply = frame(4, "198.51.100.2", "192.0.2.1",
                  UDP(sport=53 + newest // 60_000, dport=1024 + newest % 60_000))
    assert pipeline.run(reply, cpu).action == "pass"
