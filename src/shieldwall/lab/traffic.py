"""Packet templates for floods and benchmarks (documentation addresses only)."""

from __future__ import annotations

import ipaddress

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from ..model.parse import ETH_HLEN

SPOOFED_V4 = "198.51.100.0/24"
SPOOFED_V6 = "2001:db8:bad::/48"
IPV4_SRC_OFFSET = ETH_HLEN + 12  # where an untagged IPv4 source address starts

FLOOD_SOURCES = 250  # spoofed sources a flood cycles through: 198.51.100.1 and up
FLOOD_FIRST_SOURCE = "198.51.100.1"


def flood_sources() -> list[str]:
    first = ipaddress.ip_address(FLOOD_FIRST_SOURCE)
    return [str(first + i) for i in range(FLOOD_SOURCES)]


def syn_flood_v4(dst_mac: str, src_mac: str, dst: str) -> bytes:
    return bytes(Ether(dst=dst_mac, src=src_mac) / IP(src=FLOOD_FIRST_SOURCE, dst=dst)
                 / TCP(sport=40000, dport=80, flags="S"))


def builtin_mix(dst_mac: str = "02:00:00:00:00:01", src_mac: str = "02:00:00:00:00:02",
                dst4: str = "192.0.2.1", dst6: str = "2001:db8:0:1::1") -> list[bytes]:
    """A flood's usual shapes: SYNs, UDP over IPv6, VLAN-tagged, fragments."""
    eth = Ether(dst=dst_mac, src=src_mac)
    return [
        syn_flood_v4(dst_mac, src_mac, dst4),
        bytes(eth / IPv6(src="2001:db8:bad::7", dst=dst6) / UDP(sport=53, dport=4444) / (b"a" * 64)),
        bytes(eth / Dot1Q(vlan=42) / IP(src="198.51.100.9", dst=dst4) / UDP(dport=123) / (b"n" * 48)),
        bytes(eth / IP(src="198.51.100.77", dst=dst4, frag=64) / (b"f" * 512)),
    ]
