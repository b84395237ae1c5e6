"""The root program on a table of packets: expected action, reason and deciding module."""

from __future__ import annotations

import pytest

from shieldwall.kernel.errors import BpfError

from .conftest import harness_runs

from .packets import (ARP, ICMP, TCP, UDP, ICMPv6EchoRequest, IPv6ExtHdrDestOpt,
                      IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, eth, v4, v6)

pytestmark = pytest.mark.kernel

END = ("pass", "end_of_chain", "root")


def dest_opts(n: int):
    chain = IPv6ExtHdrDestOpt()
    for _ in range(n - 1):
        chain = chain / IPv6ExtHdrDestOpt()
    return chain


def cut(pkt, n: int) -> bytes:
    return bytes(pkt)[:n]


FIXTURES = [
    ("ipv4-tcp", eth() / v4() / TCP(sport=1234, dport=80, flags="S"), END),
    ("ipv4-udp", eth() / v4() / UDP(sport=53, dport=5353), END),
    ("ipv4-icmp", eth() / v4() / ICMP(), END),
    ("ipv4-options", eth() / v4(options=b"\x01\x01\x01\x00") / TCP(), END),
    ("ipv6-tcp", eth() / v6() / TCP(), END),
    ("ipv6-icmpv6", eth() / v6() / ICMPv6EchoRequest(), END),
    ("ipv6-ext-chain", eth() / v6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting()
     / IPv6ExtHdrDestOpt() / UDP(), END),
    ("ipv6-fragment-first", eth() / v6() / IPv6ExtHdrFragment(m=1) / UDP() / (b"x" * 64), END),
    ("ipv6-fragment-later", eth() / v6() / IPv6ExtHdrFragment(offset=100) / (b"x" * 64), END),
    ("ipv6-ext-too-deep", eth() / v6() / dest_opts(7) / UDP(), ("drop", "ipv6_ext_too_deep", "root")),
    ("ipv6-ext-six", eth() / v6() / dest_opts(6) / UDP(), END),
    ("vlan-1q", eth(("q", 10)) / v4() / TCP(), END),
    ("vlan-qinq", eth(("ad", 100), ("q", 10)) / v6() / UDP(), END),
    ("vlan-three-tags", eth(("ad", 1), ("q", 2), ("q", 3)) / v4() / TCP(),
     ("drop", "vlan_too_deep", "root")),
    ("arp", eth() / ARP(), ("pass", "non_ip", "root")),
    ("ipv4-fragment-first", eth() / v4(flags="MF") / UDP() / (b"x" * 64), END),
    ("ipv4-fragment-later", eth() / v4(frag=100) / (b"x" * 64), END),
    ("ipv4-tiny-first-fragment", eth() / v4(flags="MF", proto=6) / (b"\x00" * 8),
     ("drop", "truncated_l4", "root")),
    ("jumbo-udp", eth() / v4() / UDP() / (b"j" * 8900), END),
    ("truncated-vlan", cut(eth(("q", 10)) / v4(), 16), ("drop", "truncated_vlan", "root")),
    ("truncated-ipv4", cut(eth() / v4() / TCP(), 30), ("drop", "truncated_ipv4", "root")),
    ("bad-ipv4-version", bytes(eth() / v4(version=5) / TCP()), ("drop", "bad_ipv4_header", "root")),
    ("bad-ipv4-ihl", bytes(eth() / v4(ihl=3) / TCP()), ("drop", "bad_ipv4_header", "root")),
    ("ipv4-length-past-frame", bytes(eth() / v4(len=400) / TCP()), ("drop", "bad_ipv4_length", "root")),
    ("truncated-tcp", cut(eth() / v4(len=40) / TCP(), 44), ("drop", "bad_ipv4_length", "root")),
    ("tcp-bad-offset", eth() / v4() / TCP(dataofs=2), ("drop", "bad_tcp_header", "root")),
    ("truncated-ipv6", cut(eth() / v6() / UDP(), 40), ("drop", "truncated_ipv6", "root")),
    ("ipv6-length-past-frame", eth() / v6(plen=500) / UDP(), ("drop", "bad_ipv6_length", "root")),
    # payload length + 40 does not fit 16 bits: it must not wrap into a small length.
    ("ipv6-length-near-64k", eth() / v6(plen=65535, nh=59) / (b"z" * 20),
     ("drop", "bad_ipv6_length", "root")),
    ("ipv6-length-near-64k-udp", eth() / v6(plen=65500) / UDP(), ("drop", "bad_ipv6_length", "root")),
    ("truncated-udp-in-l3", eth() / v4(len=24) / UDP(), ("drop", "truncated_l4", "root")),
]


@pytest.mark.parametrize("name,packet,expected", [f for f in FIXTURES if f[2]],
                         ids=[f[0] for f in FIXTURES if f[2]])
def test_root_decides(bare_pipeline, cpu, name, packet, expected):
    if not harness_runs(bare_pipeline.config.hook, bytes(packet)):
        with pytest.raises(BpfError, match="Invalid argument"):
            bare_pipeline.run(bytes(packet), cpu)
        return
    verdict = bare_pipeline.run(bytes(packet), cpu)
    assert (verdict.action, verdict.reason, verdict.module) == expected


def test_ethernet_header_alone_is_not_ip(bare_pipeline, cpu):
    # 14 bytes with an unknown EtherType: the smallest frame test-run accepts.
    verdict = bare_pipeline.run(b"\x02" * 12 + b"\x88\xb5", cpu)
    assert (verdict.action, verdict.reason) == ("pass", "non_ip")


def test_counters_count_every_verdict(cpu):
    from shieldwall.dataplane.pipeline import Pipeline, PipelineConfig
    with Pipeline.load(PipelineConfig()) as p:
        for _ in range(3):
            p.run(bytes(eth() / v4() / TCP()), cpu)
        p.run(bytes(eth() / ARP()), cpu)
        counters = p.counters()
    assert counters[("pass", "end_of_chain")][0] == 3
    assert counters[("pass", "non_ip")][0] == 1
    assert counters[("pass", "end_of_chain")][1] == 3 * len(bytes(eth() / v4() / TCP()))


@pytest.mark.parametrize("outcome", ["pass", "drop"])
def test_an_empty_chain_slot_gives_the_configured_outcome(cpu, outcome):
    # A stage whose slot is emptied after load (as if it failed to load or was removed):
    # the fastpath's tail call to slot 1 finds nothing.
    from shieldwall.config import configure
    from shieldwall.dataplane.pipeline import Pipeline
    from shieldwall.policy import parse_policy
    policy = parse_policy({"version": 1, "default_action": "pass",
                           "fastpath": {"allow": ["203.0.113.0/24"]},
                           "pipeline": {"on_missing_stage": outcome}}, "missed.yaml", ".")
    with Pipeline.load(configure(policy)) as p:
        p.maps["sw_stages"].delete(1)
        verdict = p.run(bytes(eth() / v4() / TCP()), cpu)
        assert (verdict.action, verdict.reason, verdict.module) == (outcome, "missed_stage", "root")
        assert p.counters()[(outcome, "missed_stage")][0] == 1
        # Non-IP frames are the root's own decision: no stage, no miss.
        assert p.run(bytes(eth() / ARP()), cpu).reason == "non_ip"
