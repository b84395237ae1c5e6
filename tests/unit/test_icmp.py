"""The icmp stage without a kernel: `protect.icmp` as the loader reads it (errors name
the field, neighbor discovery can never be limited), the chain, the constants it
builds, and the reference model (IcmpModel) on echo, errors and neighbor discovery."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6ND_NS, ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from shieldwall import abi
from shieldwall.kernel._libbpf import ffi
from shieldwall.model.parse import parse
from shieldwall.policy import PolicyError, parse_policy_text
from shieldwall.policy.reference import chain
from shieldwall.stages import stage
from shieldwall.stages.icmp import IcmpModel, embedded_flow, slot_index

ETH = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
HOST4, HOST6 = "192.0.2.1", "2001:db8::1"


def load(icmp: str):
    return parse_policy_text(f"version: 1\ndefault_action: pass\nprotect:\n  icmp: {icmp}\n",
                             "policy.yaml", ".")


def problem(icmp: str) -> str:
    with pytest.raises(PolicyError) as info:
        load(icmp)
    return str(info.value)


def test_defaults_limit_echo_in_both_families_and_drop_unrelated_errors():
    section = load("{}").sections["icmp"]
    assert section.unrelated == "drop"
    assert {slot: (x.pps, x.burst) for slot, x in section.rates.items()} == \
        {(4, 8): (1000, 1000), (6, 128): (1000, 1000)}
    assert "icmp" in chain(load("{}"))
    assert "icmp" not in chain(load("{unrelated: off, rates: {echo_request: off}}"))


def test_rates_by_name_and_number_in_one_family_or_both():
    section = load("{rates: {time_exceeded: {pps: 5, burst: 2}, icmpv6/2: {pps: 7}, "
                   "icmp/13: {pps: 9}, echo_request: off}, unrelated: monitor}").sections["icmp"]
    assert {slot: (x.pps, x.burst) for slot, x in section.rates.items()} == \
        {(4, 11): (5, 2), (6, 3): (5, 2), (6, 2): (7, 7), (4, 13): (9, 9)}
    assert section.unrelated == "monitor"


@pytest.mark.parametrize(("icmp", "said"), [
    ("{rates: {neighbor_solicitation: {pps: 5}}}",
     "protect.icmp.rates.neighbor_solicitation: neighbor discovery (ICMPv6 135) is never limited"),
    ("{rates: {icmpv6/134: {pps: 5}}}",
     "protect.icmp.rates.icmpv6/134: neighbor discovery (ICMPv6 134) is never limited"),
    ("{rates: {router_solicitation: {pps: 5}}}", "neighbor discovery (ICMPv6 133)"),
    ("{rates: {redirect: {pps: 5}}}", "limit the IPv4 type as icmp/5"),
    ("{rates: {pingg: {pps: 5}}}", "protect.icmp.rates.pingg: unknown ICMP type 'pingg'"),
    ("{rates: {icmp/300: {pps: 5}}}", "protect.icmp.rates.icmp/300: unknown ICMP type"),
    ("{rates: {echo_request: {pps: 0}}}", "protect.icmp.rates.echo_request.pps:"),
    ("{rates: {echo_request: {burst: 5}}}", "protect.icmp.rates.echo_request: missing key 'pps'"),
    ("{rates: {echo_request: {pps: 5, per: source}}}", "protect.icmp.rates.echo_request: unknown key 'per'"),
    ("{unrelated: sometimes}", "protect.icmp.unrelated: expected off, monitor or drop"),
    ("{rate: {}}", "protect.icmp: unknown key 'rate'"),
    ("[]", "protect.icmp: expected a mapping"),
])
def test_bad_sections_name_the_field(icmp, said):
    assert said in problem(icmp)


def test_neighbor_discovery_is_never_limited_by_any_accepted_section():
    for icmp in ("{}", "{rates: {icmpv6/132: {pps: 1}}}", "{rates: {echo_reply: {pps: 1}}}"):
        section = load(icmp).sections["icmp"]
        assert not [t for f, t in section.rates if f == 6 and 133 <= t <= 137]


def test_the_constants_index_each_slot_to_its_rate():
    section = load("{rates: {echo_request: {pps: 10, burst: 4}, time_exceeded: {pps: 10, burst: 4}, "
                   "icmpv6/2: {pps: 20}}}").sections["icmp"]
    raw = stage("icmp").build(section, None).rodata[".rodata.icmp"]
    consts = ffi.from_buffer("struct sw_icmp_consts *", bytearray(raw))
    assert consts.unrelated == abi.SW_PROT_DROP and consts.nlimits == 2
    same = consts.slot[slot_index(4, 8)]
    assert same == consts.slot[slot_index(6, 128)] == consts.slot[slot_index(4, 11)] != 0
    assert getattr(consts, "def")[same - 1].pkt_ns == 100_000_000
    assert getattr(consts, "def")[same - 1].pkt_tol == 3 * 100_000_000
    assert consts.slot[slot_index(6, 2)] not in (0, same)
    assert consts.slot[slot_index(6, 135)] == 0


def v4_error(inner: bytes, src: str = "198.51.100.1") -> bytes:
    return bytes(ETH / IP(src=src, dst=HOST4) / ICMP(type=3, code=4) / Raw(inner))


def v6_error(inner: bytes) -> bytes:
    return bytes(ETH / IPv6(src="2001:db8:9::1", dst=HOST6) / ICMPv6PacketTooBig() / Raw(inner))


def decide(model: IcmpModel, frame: bytes):
    pkt, root = parse(frame)
    assert root is None
    return model.decide(frame, pkt)


def test_the_model_checks_the_embedded_flow_against_the_sockets_it_is_given():
    asked = []

    def sockets(*flow):
        asked.append(flow)
        return flow[3] == 40000

    model = IcmpModel(load("{}").sections["icmp"], sockets)
    ours = bytes(IP(src=HOST4, dst="203.0.113.5") / UDP(sport=40000, dport=53))[:28]
    other = bytes(IP(src=HOST4, dst="203.0.113.5") / UDP(sport=40001, dport=53))[:28]
    spoofed = bytes(IP(src="192.0.2.9", dst="203.0.113.5") / UDP(sport=40000, dport=53))[:28]
    assert decide(model, v4_error(ours)) is None
    proto, family, _, lport, _, rport = asked[-1]
    assert (proto, family, lport, rport) == (17, 4, 40000, 53)
    assert decide(model, v4_error(other)).reason == "icmp_unrelated"
    count = len(asked)
    assert decide(model, v4_error(spoofed)).reason == "icmp_unrelated"
    assert decide(model, v4_error(ours[:27])).reason == "icmp_unrelated"
    assert len(asked) == count  # neither asked the socket table
    inner6 = bytes(IPv6(src=HOST6, dst="2001:db8:5::5") / UDP(sport=40000, dport=53))[:48]
    assert decide(model, v6_error(inner6)) is None
    echo = bytes(IP(src=HOST4, dst="203.0.113.5") / ICMP(type=8))[:28]
    assert embedded_flow(v4_error(echo), parse(v4_error(echo))[0])[0] == 1
    assert decide(model, v4_error(echo)) is None


def test_the_model_limits_per_type_and_never_touches_neighbor_discovery():
    model = IcmpModel(load("{rates: {echo_request: {pps: 1, burst: 2}}}").sections["icmp"],
                      lambda *flow: False)
    echo = bytes(ETH / IP(src="198.51.100.1", dst=HOST4) / ICMP(type=8))
    echo_other_source = bytes(ETH / IP(src="198.51.100.2", dst=HOST4) / ICMP(type=8))
    assert [decide(model, f) for f in (echo, echo_other_source)] == [None, None]
    assert decide(model, echo).reason == "icmp_limited"
    assert decide(model, bytes(ETH / IPv6(src="2001:db8:9::1", dst=HOST6) / ICMPv6EchoRequest())) is None
    ns = bytes(ETH / IPv6(src="fe80::1", dst=HOST6) / ICMPv6ND_NS(tgt=HOST6))
    assert all(decide(model, ns) is None for _ in range(10))
    assert model.counts[(4, 8)] == {"passed": 2, "limited": 1, "unrelated": 0}
    assert (6, 135) not in model.counts
