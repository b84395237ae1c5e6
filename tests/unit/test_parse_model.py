"""The reference parser against docs/parsing.md, on packets built with scapy."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from shieldwall import abi
from shieldwall.model.parse import ParsedPacket, RootDecision, parse

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
V4 = {"src": "192.0.2.1", "dst": "198.51.100.7", "ttl": 61}
V6 = {"src": "2001:db8::1", "dst": "2001:db8::2", "hlim": 63}
FRAG_FIRST = abi.SW_FRAG_IS | abi.SW_FRAG_MORE
AH_NEXT_HDR = 51


def frame(pkt: Packet | bytes) -> bytes:
    return pkt if isinstance(pkt, bytes) else bytes(pkt)


def passes(pkt: Packet | bytes) -> ParsedPacket:
    parsed, decision = parse(frame(pkt))
    assert decision is None, abi.reason_name(decision.reason)
    return parsed


def dropped(pkt: Packet | bytes, reason: int) -> ParsedPacket:
    parsed, decision = parse(frame(pkt))
    assert decision == RootDecision(abi.SW_ACT_DROP, reason), (
        decision and abi.reason_name(decision.reason)
    )
    return parsed


def mapped(addr: str) -> bytes:
    return ipaddress.IPv6Address(f"::ffff:{addr}").packed


def v6(addr: str) -> bytes:
    return ipaddress.IPv6Address(addr).packed


def ah(next_hdr: int, payload_len: int = 4) -> bytes:
    """An AH header of (payload_len + 2) * 4 bytes; scapy's AH needs the IPsec extras."""
    return bytes([next_hdr, payload_len]) + bytes((payload_len + 2) * 4 - 2)


# --- whole packets, every field --------------------------------------------------------


def test_ipv4_tcp_fills_every_field() -> None:
    pkt = ETH / IP(**V4) / TCP(sport=1234, dport=80, flags="SA") / Raw(b"x" * 10)
    assert passes(pkt) == ParsedPacket(
        src=mapped("192.0.2.1"),
        dst=mapped("198.51.100.7"),
        frame_len=len(pkt),
        l3_off=14,
        l4_off=34,
        eth_proto=0x0800,
        l3_len=50,
        sport=1234,
        dport=80,
        family=abi.SW_FAMILY_IPV4,
        l4_proto=6,
        ttl=61,
        tcp_flags=abi.SW_TCP_SYN | abi.SW_TCP_ACK,
        flags=abi.SW_PKT_HAS_L4,
    )


def test_ipv6_udp_fills_every_field() -> None:
    pkt = ETH / IPv6(**V6) / UDP(sport=53, dport=40000) / Raw(b"q" * 12)
    assert passes(pkt) == ParsedPacket(
        src=v6("2001:db8::1"),
        dst=v6("2001:db8::2"),
        frame_len=len(pkt),
        l3_off=14,
        l4_off=54,
        eth_proto=0x86DD,
        l3_len=60,
        sport=53,
        dport=40000,
        family=abi.SW_FAMILY_IPV6,
        l4_proto=17,
        ttl=63,
        flags=abi.SW_PKT_HAS_L4,
    )


def test_ip_properties() -> None:
    p4 = passes(ETH / IP(**V4) / UDP())
    assert p4.src_ip == ipaddress.IPv4Address("192.0.2.1")
    assert p4.dst_ip == ipaddress.IPv4Address("198.51.100.7")
    p6 = passes(ETH / IPv6(**V6) / UDP())
    assert p6.src_ip == ipaddress.IPv6Address("2001:db8::1")
    assert p6.dst_ip == ipaddress.IPv6Address("2001:db8::2")
    non_ip, _ = parse(bytes(ETH / ARP()))
    assert non_ip.src_ip is None and non_ip.dst_ip is None


# --- layer 4 ---------------------------------------------------------------------------


def test_ipv4_udp() -> None:
    p = passes(ETH / IP(**V4) / UDP(sport=5000, dport=53))
    assert (p.l4_proto, p.sport, p.dport, p.flags) == (17, 5000, 53, abi.SW_PKT_HAS_L4)


def test_ipv4_icmp() -> None:
    p = passes(ETH / IP(**V4) / ICMP(type=3, code=4))
    assert (p.l4_proto, p.icmp_type, p.icmp_code) == (1, 3, 4)
    assert (p.sport, p.dport, p.flags) == (0, 0, abi.SW_PKT_HAS_L4)


def test_ipv6_tcp() -> None:
    p = passes(ETH / IPv6(**V6) / TCP(sport=443, dport=50000, flags="R"))
    assert (p.l4_off, p.l4_proto, p.sport, p.dport) == (54, 6, 443, 50000)
    assert p.tcp_flags == abi.SW_TCP_RST


def test_ipv6_icmpv6() -> None:
    p = passes(ETH / IPv6(**V6) / ICMPv6EchoRequest())
    assert (p.l4_proto, p.icmp_type, p.icmp_code, p.flags) == (58, 128, 0, abi.SW_PKT_HAS_L4)


def test_tcp_options_are_within_the_data_offset() -> None:
    p = passes(ETH / IP(**V4) / TCP(options=[("MSS", 1460), ("NOP", None), ("WScale", 7)]))
    assert (p.l4_off, p.flags) == (34, abi.SW_PKT_HAS_L4)


@pytest.mark.parametrize(
    "pkt",
    [
        pytest.param(ETH / IP(**V4, proto=47) / Raw(b"gre!"), id="ipv4-gre"),
        pytest.param(ETH / IP(**V4, proto=58) / Raw(b"\x80\0\0\0"), id="icmpv6-in-ipv4"),
        pytest.param(ETH / IPv6(**V6, nh=1) / Raw(b"\x08\0\0\0"), id="icmp-in-ipv6"),
        pytest.param(ETH / IPv6(**V6, nh=59), id="ipv6-no-next-header"),
    ],
)
def test_other_protocols_have_no_l4_fields(pkt: Packet) -> None:
    p = passes(pkt)
    assert p.l4_off == p.l3_off + (20 if p.family == 4 else 40)
    assert (p.sport, p.dport, p.icmp_type, p.icmp_code, p.tcp_flags, p.flags) == (0,) * 6


# --- VLAN and non-IP -------------------------------------------------------------------


def test_one_vlan_tag() -> None:
    p = passes(ETH / Dot1Q(vlan=100) / IP(**V4) / UDP())
    assert (p.vlan_id, p.vlan_depth, p.l3_off, p.l4_off, p.eth_proto) == (100, 1, 18, 38, 0x0800)


def test_two_tags_802_1ad_outer() -> None:
    pkt = ETH / Dot1AD(vlan=10) / Dot1Q(vlan=4000, prio=5) / IPv6(**V6) / UDP()
    assert frame(pkt)[12:14] == b"\x88\xa8"
    p = passes(pkt)
    # The innermost tag's id only: the priority bits are not part of it.
    assert (p.vlan_id, p.vlan_depth, p.l3_off, p.eth_proto) == (4000, 2, 22, 0x86DD)


def test_three_tags_are_too_deep() -> None:
    pkt = ETH / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / IP() / UDP()
    dropped(pkt, abi.SW_R_VLAN_TOO_DEEP)


@pytest.mark.parametrize("tags", [0, 1, 2])
def test_arp_is_non_ip_passed_by_the_root(tags: int) -> None:
    pkt = ETH
    for vlan in range(1, tags + 1):
        pkt = pkt / Dot1Q(vlan=vlan)
    parsed, decision = parse(frame(pkt / ARP()))
    assert decision == RootDecision(abi.SW_ACT_PASS, abi.SW_R_NON_IP)
    assert (parsed.eth_proto, parsed.vlan_depth) == (0x0806, tags)
    assert (parsed.family, parsed.l3_off, parsed.src) == (0, 0, bytes(16))


# --- IPv4 ------------------------------------------------------------------------------


def test_ipv4_options_move_l4() -> None:
    # Record route with one slot (7 bytes) and a NOP: IHL 7.
    pkt = ETH / IP(**V4, options=[IPOption_RR(routers=["10.0.0.1"]), IPOption_NOP()]) / UDP(dport=7)
    p = passes(pkt)
    assert (p.l4_off, p.dport, p.l3_len) == (14 + 28, 7, 28 + 8)


def test_ipv4_first_fragment_parses_l4() -> None:
    p = passes(ETH / IP(**V4, flags="MF") / TCP(dport=22) / Raw(b"a" * 16))
    assert (p.frag, p.frag_off, p.dport, p.l4_off) == (FRAG_FIRST, 0, 22, 34)


@pytest.mark.parametrize("more", [True, False])
def test_ipv4_non_first_fragment_has_no_l4(more: bool) -> None:
    pkt = ETH / IP(**V4, proto=6, frag=185, flags="MF" if more else 0) / Raw(b"\xff" * 40)
    p = passes(pkt)
    assert p.frag == abi.SW_FRAG_IS | (abi.SW_FRAG_MORE if more else 0)
    assert (p.frag_off, p.l4_proto, p.l4_off, p.sport, p.flags) == (185, 6, 0, 0, 0)


def test_ipv4_dont_fragment_is_not_a_fragment() -> None:
    assert passes(ETH / IP(**V4, flags="DF") / UDP()).frag == 0


def test_tiny_first_fragment_with_truncated_tcp() -> None:
    dropped(ETH / IP(**V4, proto=6, flags="MF") / Raw(bytes(8)), abi.SW_R_TRUNCATED_L4)


@pytest.mark.parametrize("field", [{"ihl": 4}, {"ihl": 0}, {"version": 5}, {"version": 6}])
def test_bad_ipv4_header(field: dict) -> None:
    dropped(ETH / IP(**V4, **field) / UDP(), abi.SW_R_BAD_IPV4_HEADER)


def test_ipv4_options_past_the_frame() -> None:
    # IHL says 60 bytes, the frame holds 28 after Ethernet: the header is cut, not the length.
    dropped(ETH / IP(**V4, ihl=15) / UDP(), abi.SW_R_TRUNCATED_IPV4)


@pytest.mark.parametrize("tot_len", [19, 23, 33, 1000])
def test_bad_ipv4_length(tot_len: int) -> None:
    # IHL is 6 (24 bytes); the frame holds 24 + 8 after Ethernet.
    pkt = ETH / IP(**V4, len=tot_len, options=[IPOption_NOP()] * 4) / UDP()
    dropped(pkt, abi.SW_R_BAD_IPV4_LENGTH)


def test_ethernet_padding_is_not_counted() -> None:
    pkt = frame(ETH / IP(**V4) / UDP(dport=9))
    padded = pkt + bytes(60 - len(pkt))
    p = passes(padded)
    assert (p.frame_len, p.l3_len, p.dport) == (60, 28, 9)


def test_ethernet_padding_never_completes_a_header() -> None:
    # A whole TCP header after the IP packet's declared end is padding, not layer 4.
    pkt = frame(ETH / IP(**V4, len=20 + 8, proto=6) / TCP())
    dropped(pkt, abi.SW_R_TRUNCATED_L4)


# --- IPv6 ------------------------------------------------------------------------------


def test_ipv6_hop_by_hop_routing_dest_opts() -> None:
    hop_by_hop = IPv6ExtHdrHopByHop(options=[PadN(optdata=bytes(6))])  # 16 bytes
    exts = hop_by_hop / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt()
    p = passes(ETH / IPv6(**V6) / exts / TCP(dport=443))
    assert (p.l4_off, p.l4_proto, p.dport) == (14 + 40 + 16 + 8 + 8, 6, 443)
    assert p.l3_len == 40 + 32 + 20


def test_ipv6_ah_length_counts_in_4_byte_units() -> None:
    p = passes(ETH / IPv6(**V6, nh=AH_NEXT_HDR) / Raw(ah(17, payload_len=4)) / UDP(dport=500))
    assert (p.l4_off, p.l4_proto, p.dport) == (14 + 40 + 24, 17, 500)


def test_ipv6_first_fragment_parses_l4() -> None:
    p = passes(ETH / IPv6(**V6) / IPv6ExtHdrFragment(m=1, offset=0) / UDP(dport=4789))
    assert (p.frag, p.frag_off, p.l4_off, p.l4_proto, p.dport) == (FRAG_FIRST, 0, 62, 17, 4789)


def test_ipv6_non_first_fragment_stops_the_walk() -> None:
    fragment = IPv6ExtHdrFragment(m=0, offset=100, nh=6)
    pkt = ETH / IPv6(**V6) / fragment / IPv6ExtHdrDestOpt() / Raw(bytes(30))
    p = passes(pkt)
    # The walk stops at the fragment header: the destination options after it are not read.
    assert (p.frag, p.frag_off, p.l4_off, p.l4_proto, p.flags) == (abi.SW_FRAG_IS, 100, 0, 6, 0)


def test_ipv6_atomic_fragment_is_not_a_fragment() -> None:
    p = passes(ETH / IPv6(**V6) / IPv6ExtHdrFragment(m=0, offset=0) / TCP())
    assert (p.frag, p.frag_off, p.l4_off, p.flags) == (0, 0, 62, abi.SW_PKT_HAS_L4)


def ext_chain(count: int, **last: int) -> Packet:
    """count 8-byte destination-options headers; `last` sets fields of the last one."""
    chain = IPv6ExtHdrDestOpt(**last)
    for _ in range(count - 1):
        chain = IPv6ExtHdrDestOpt() / chain
    return chain


def test_six_extension_headers_are_walked() -> None:
    p = passes(ETH / IPv6(**V6, nh=60) / ext_chain(6) / UDP())
    assert (p.l4_off, p.l4_proto, p.flags) == (14 + 40 + 48, 17, abi.SW_PKT_HAS_L4)


def test_seven_extension_headers_are_too_deep() -> None:
    dropped(ETH / IPv6(**V6, nh=60) / ext_chain(7) / UDP(), abi.SW_R_IPV6_EXT_TOO_DEEP)


def test_seventh_header_too_deep_even_when_cut() -> None:
    # The depth limit is checked before the 7th header's bytes are looked at.
    pkt = frame(ETH / IPv6(**V6, nh=60) / ext_chain(6, nh=0))
    assert len(pkt) == 14 + 40 + 48 and pkt[-8] == 0
    dropped(pkt, abi.SW_R_IPV6_EXT_TOO_DEEP)


def test_bad_ipv6_header() -> None:
    dropped(ETH / IPv6(**V6, version=4) / UDP(), abi.SW_R_BAD_IPV6_HEADER)


def test_bad_ipv6_length() -> None:
    dropped(ETH / IPv6(**V6, plen=9) / UDP(), abi.SW_R_BAD_IPV6_LENGTH)


def test_ipv6_padding_is_not_an_extension_header() -> None:
    # Payload length 0 says there is nothing after the fixed header, padding or not.
    dropped(frame(ETH / IPv6(**V6, nh=0, plen=0)) + bytes(16), abi.SW_R_TRUNCATED_IPV6_EXT)


# --- truncation at each layer ----------------------------------------------------------


def test_truncated_frame_at_every_length() -> None:
    """Cutting a valid frame fails by layer; once the IP header is whole, on its length."""
    full = frame(ETH / Dot1Q(vlan=7) / IP(**V4) / TCP())
    expected = [abi.SW_R_TRUNCATED_ETH] * 14 + [abi.SW_R_TRUNCATED_VLAN] * 4
    expected += [abi.SW_R_TRUNCATED_IPV4] * 20
    expected += [abi.SW_R_BAD_IPV4_LENGTH] * (len(full) - len(expected))
    for cut, reason in enumerate(expected):
        dropped(full[:cut], reason)


def test_truncated_ipv6_frame() -> None:
    full = frame(ETH / IPv6(**V6) / UDP())
    for cut in range(14, 54):
        dropped(full[:cut], abi.SW_R_TRUNCATED_IPV6)
    for cut in range(54, len(full)):
        dropped(full[:cut], abi.SW_R_BAD_IPV6_LENGTH)


HOP_BY_HOP_16 = frame(IPv6ExtHdrHopByHop(nh=59, options=[PadN(optdata=bytes(6 + 8))]))


@pytest.mark.parametrize("cut", range(len(HOP_BY_HOP_16)))
def test_truncated_ipv6_extension_header(cut: int) -> None:
    # First the 8 fixed bytes, then the whole (hdr_ext_len + 1) * 8, must be there.
    assert len(HOP_BY_HOP_16) == 24
    dropped(ETH / IPv6(**V6, nh=0) / Raw(HOP_BY_HOP_16[:cut]), abi.SW_R_TRUNCATED_IPV6_EXT)


def test_truncated_ah() -> None:
    cut_ah = Raw(ah(59, payload_len=4)[:20])
    dropped(ETH / IPv6(**V6, nh=AH_NEXT_HDR) / cut_ah, abi.SW_R_TRUNCATED_IPV6_EXT)


@pytest.mark.parametrize(
    "ip, l4",
    [
        pytest.param(IP(**V4, proto=6), TCP(), id="ipv4-tcp"),
        pytest.param(IP(**V4, proto=17), UDP(), id="ipv4-udp"),
        pytest.param(IP(**V4, proto=1), ICMP(), id="ipv4-icmp"),
        pytest.param(IPv6(**V6, nh=6), TCP(), id="ipv6-tcp"),
        pytest.param(IPv6(**V6, nh=17), UDP(), id="ipv6-udp"),
        pytest.param(IPv6(**V6, nh=58), ICMPv6EchoRequest(), id="ipv6-icmpv6"),
    ],
)
def test_truncated_l4_headers(ip: Packet, l4: Packet) -> None:
    header = frame(l4)[: {TCP: 20, UDP: 8}.get(type(l4), 4)]
    passes(ETH / ip / Raw(header))
    for cut in range(len(header)):
        dropped(ETH / ip / Raw(header[:cut]), abi.SW_R_TRUNCATED_L4)


def test_tcp_data_offset_below_5() -> None:
    dropped(ETH / IP(**V4) / TCP(dataofs=4), abi.SW_R_BAD_TCP_HEADER)


def test_tcp_data_offset_past_the_packet() -> None:
    dropped(ETH / IP(**V4) / TCP(dataofs=15), abi.SW_R_TRUNCATED_L4)


# --- robustness ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    ethertype=st.sampled_from([0x0800, 0x86DD, 0x8100, 0x88A8, 0x0806]),
    body=st.binary(max_size=120),
)
def test_any_bytes_parse_without_exceptions(ethertype: int, body: bytes) -> None:
    pkt = bytes(12) + struct.pack("!H", ethertype) + body
    parsed, decision = parse(pkt)
    assert parsed.frame_len == len(pkt)
    if decision is None:
        assert parsed.family in (abi.SW_FAMILY_IPV4, abi.SW_FAMILY_IPV6)
        assert parsed.l3_off + parsed.l3_len <= len(pkt)
        l3_end = parsed.l3_off + parsed.l3_len
        assert parsed.l4_off == 0 or parsed.l3_off < parsed.l4_off <= l3_end
    else:
        assert decision.action in (abi.SW_ACT_DROP, abi.SW_ACT_PASS)
        assert (decision.action == abi.SW_ACT_PASS) == (decision.reason == abi.SW_R_NON_IP)
