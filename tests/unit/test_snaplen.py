"""What `verdict` runs for frames a test run cannot take as captured (docs/verdict.md)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop, Jumbo, PadN
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from shieldwall import abi
from shieldwall.cli.snaplen import judged_frame
from shieldwall.model.parse import parse

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
V4 = {"src": "192.0.2.1", "dst": "198.51.100.7"}
V6 = {"src": "2001:db8::1", "dst": "2001:db8::2"}
LIMIT = 73152  # what this suite's kernel takes; the logic does not depend on the value
BIG = 80000  # payload bytes of a BIG TCP aggregate


def eth(*tags: str):
    frame = ETH
    for kind in tags:
        frame = frame / (Dot1AD(vlan=100) if kind == "ad" else Dot1Q(vlan=7))
    return frame


def aggregate(headers, payload: int = BIG, fill: bytes = b"x") -> bytes:
    # scapy refuses to build length fields past 64K: the headers are built alone and the
    # payload appended, as the kernel's aggregates hold it.
    return bytes(headers) + fill * payload


def big_v4(*tags: str, proto=None) -> bytes:
    return aggregate(eth(*tags) / IP(len=0, **V4) / (proto or TCP(sport=4242, dport=443)))


def big_v6_jumbo(payload: int = BIG) -> bytes:
    hbh = IPv6ExtHdrHopByHop(nh=6, options=[Jumbo(jumboplen=8 + 20 + payload)])
    return aggregate(ETH / IPv6(plen=0, nh=0, **V6) / hbh / TCP(sport=4242, dport=443), payload)


def big_v6_plain() -> bytes:
    return aggregate(ETH / IPv6(plen=0, **V6) / TCP(sport=4242, dport=443))


def parses(data: bytes):
    parsed, decision = parse(data)
    assert decision is None, abi.reason_name(decision.reason)
    return parsed


def valid_ipv4_checksum(header: bytes) -> bool:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


@pytest.mark.parametrize("frame", [
    ETH / IP(**V4) / TCP(dport=80),
    ETH / IPv6(**V6) / UDP(dport=53) / Raw(b"q" * 1400),
    ETH / Dot1Q(vlan=7) / IP(**V4) / UDP() / Raw(b"j" * 8950),  # a jumbo frame fits
    ETH / IP(len=3000, **V4) / UDP() / Raw(b"z" * 1000),  # a lying length stays a lie
    ETH / IP(len=0, **V4) / TCP() / Raw(b"z" * 1000),  # length 0 on a small frame too
    ETH / IPv6(plen=0, **V6) / TCP() / Raw(b"z" * 1000),
    ETH / IPv6(plen=0, nh=0, **V6) / IPv6ExtHdrHopByHop(options=[Jumbo(jumboplen=70000)]) / TCP(),
])
def test_frames_that_fit_run_as_captured(frame):
    data = bytes(frame)
    assert judged_frame(data, len(data), LIMIT).data == data
    assert judged_frame(data, len(data), LIMIT).note is None


@pytest.mark.parametrize("tags", [(), ("q",), ("ad", "q")])
def test_big_tcp_ipv4_is_judged_on_its_first_65535_ip_bytes(tags):
    data = big_v4(*tags)
    judged = judged_frame(data, len(data), LIMIT)
    off = 14 + 4 * len(tags)
    assert len(judged.data) == off + 65535
    assert judged.data[:off + 2] == data[:off + 2]
    assert judged.data[off + 12:] == data[off + 12:off + 65535]
    parsed = parses(judged.data)
    assert (parsed.l3_len, parsed.sport, parsed.dport) == (65535, 4242, 443)
    assert valid_ipv4_checksum(judged.data[off:off + 20])
    assert judged.note == (f"judged on its first {off + 65535} of {len(data)} bytes (the root "
                           "parses IP packets of at most 65535 bytes); IPv4 total length 0 "
                           "(BIG TCP) set to 65535")


def test_big_udp_ipv4_counts_as_big_tcp():
    """Tunnelled BIG TCP (VXLAN, Geneve) is UDP outside."""
    data = big_v4(proto=UDP(dport=4789, len=0))
    assert parses(judged_frame(data, len(data), LIMIT).data).l3_len == 65535


def test_a_zero_length_that_is_no_big_tcp_stays_malformed():
    data = big_v4(proto=ICMP())
    judged = judged_frame(data, len(data), LIMIT)
    assert judged.data == data[:LIMIT]
    assert judged.note == (f"judged on its first {LIMIT} of {len(data)} bytes "
                           "(the most a test run takes on this kernel)")
    assert parse(judged.data)[1].reason == abi.SW_R_BAD_IPV4_LENGTH


def test_the_kernels_jumbo_hop_by_hop_header_is_left_out():
    data = big_v6_jumbo()
    judged = judged_frame(data, len(data), LIMIT)
    parsed = parses(judged.data)
    assert (parsed.l3_len, parsed.l4_off, parsed.l4_proto, parsed.dport) == (65535, 54, 6, 443)
    assert len(judged.data) == 14 + 65535
    assert judged.data[54:] == data[62:62 + 65535 - 40]
    assert judged.note == ("its jumbo hop-by-hop header (BIG TCP) left out; judged on its first "
                           f"65549 of {len(data) - 8} bytes (the root parses IP packets of at most "
                           "65535 bytes); IPv6 payload length 0 (BIG TCP) set to 65495")


def test_big_tcp_ipv6_without_hop_by_hop_header():
    data = big_v6_plain()
    judged = judged_frame(data, len(data), LIMIT)
    assert parses(judged.data).l3_len == 65535
    assert judged.note.endswith("IPv6 payload length 0 (BIG TCP) set to 65495")


@pytest.mark.parametrize("hbh", [
    IPv6ExtHdrHopByHop(nh=6, options=[Jumbo(jumboplen=60000)]),  # a jumbo length below 64K
    IPv6ExtHdrHopByHop(nh=6, options=[Jumbo(jumboplen=900000)]),  # past the frame
    IPv6ExtHdrHopByHop(nh=6, options=[PadN(optdata=b"\0" * 4), Jumbo(jumboplen=80036)]),
])
def test_other_jumbograms_are_run_as_they_are(hbh):
    data = aggregate(ETH / IPv6(plen=0, nh=0, **V6) / hbh / TCP())
    judged = judged_frame(data, len(data), LIMIT)
    assert judged.data == data[:LIMIT]
    assert parse(judged.data)[1] is not None


def test_a_frame_past_the_limit_is_cut_there():
    data = b"\x02" * 12 + b"\x88\xb5" + bytes(100_000)
    judged = judged_frame(data, len(data), LIMIT)
    assert judged.data == data[:LIMIT]
    assert judged.note == (f"judged on its first {LIMIT} of {len(data)} bytes "
                           "(the most a test run takes on this kernel)")


def test_a_packet_that_ends_before_the_cut_keeps_its_length():
    packet = bytes(ETH / IP(**V4) / UDP(dport=53) / Raw(b"z" * 1000))
    data = packet + bytes(100_000)  # padding no parser reads
    judged = judged_frame(data, len(data), LIMIT)
    assert judged.data == data[:LIMIT]
    assert parses(judged.data).l3_len == 1028


@pytest.mark.parametrize("ip, field", [(IP(**V4), "IPv4 total length 1428 set to 82"),
                                       (IPv6(**V6), "IPv6 payload length 1408 set to 42")])
def test_a_frame_the_capture_cut_gets_the_length_it_kept(ip, field):
    packet = bytes(ETH / ip / UDP(dport=53) / Raw(b"z" * 1400))
    judged = judged_frame(packet[:96], len(packet), LIMIT)
    assert parses(judged.data).dport == 53
    assert judged.note == \
        f"judged on its first 96 of {len(packet)} bytes (the capture kept no more); {field}"


def test_a_cut_inside_the_ip_header_changes_nothing():
    packet = bytes(ETH / IP(**V4) / UDP() / Raw(b"z" * 1400))
    judged = judged_frame(packet[:30], len(packet), LIMIT)
    assert judged.data == packet[:30]
    assert parse(judged.data)[1].reason == abi.SW_R_TRUNCATED_IPV4


def test_a_wrong_ipv4_checksum_stays_wrong():
    data = bytearray(big_v4())
    data[24:26] = b"\x12\x34"
    judged = judged_frame(bytes(data), len(data), LIMIT)
    assert not valid_ipv4_checksum(judged.data[14:34])


SMALL_OR_BIG = st.one_of(st.integers(0, 60_000), st.integers(70_000, 120_000))


@settings(max_examples=150, deadline=None)
@given(family=st.sampled_from(["v4", "v6"]), proto=st.sampled_from(["tcp", "udp"]),
       payload=SMALL_OR_BIG, snap=st.integers(54, 130_000), limit=st.integers(3520, 200_000),
       vlan=st.booleans())
def test_a_well_formed_packet_is_never_judged_malformed(family, proto, payload, snap, limit, vlan):
    """However the capture or the kernel cut it, its headers parse and say what they said;
    only a cut inside them leaves the root too little to judge."""
    l4 = TCP(sport=1000, dport=2000) if proto == "tcp" else UDP(sport=1000, dport=2000)
    big = payload > 60_000
    if big and proto == "udp":
        l4.len = 0
    if family == "v4":
        ip, ip_hlen = (IP(len=0, **V4) if big else IP(**V4)), 20
    else:
        ip, ip_hlen = (IPv6(plen=0, **V6) if big else IPv6(**V6)), 40
    off = 18 if vlan else 14
    headers = eth(*(("q",) if vlan else ())) / ip / l4
    data = aggregate(headers, payload) if big else bytes(headers / Raw(b"p" * payload))
    ip_len = len(data) - off
    judged = judged_frame(data[:snap], len(data), limit)
    assert len(judged.data) <= min(snap, limit)
    parsed, decision = parse(judged.data)
    if len(judged.data) < off + ip_hlen + len(l4):
        assert decision is not None and decision.reason in (
            abi.SW_R_TRUNCATED_IPV4, abi.SW_R_TRUNCATED_IPV6, abi.SW_R_TRUNCATED_L4)
    else:
        assert decision is None, abi.reason_name(decision.reason)
        assert (parsed.sport, parsed.dport) == (1000, 2000)
        assert parsed.l3_len == min(ip_len, len(judged.data) - off)
