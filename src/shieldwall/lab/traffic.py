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


ADVERSARIAL_FRAME = 192  # bytes: room for the headers, and l3 lengths drawn up to it


def _padded(layers) -> bytes:
    frame = bytes(layers)
    return frame + bytes(ADVERSARIAL_FRAME - len(frame))


def adversarial_templates(dst_mac: str, src_mac: str, dst4: str, dst6: str) -> list:
    """The random mode's templates: IPv4 sources from each documentation /24, IPv6
    sources anywhere in 2001:db8::/32 (twice: an attacker has more of them), and both
    families VLAN-tagged. The generator rewrites ports, TTL, length, protocol and flags."""
    from .trafgen import Template  # the generator needs the kernel binding; this module not
    from .. import abi
    eth = Ether(dst=dst_mac, src=src_mac)
    v4, v6 = abi.SW_FAMILY_IPV4, abi.SW_FAMILY_IPV6
    templates = [Template(_padded(eth / IP(src=net, dst=dst4) / TCP()), ETH_HLEN, ETH_HLEN + 20, v4, 8)
                 for net in ("198.51.100.0", "203.0.113.0", "192.0.2.0")]
    v6_frame = _padded(eth / IPv6(src="2001:db8::", dst=dst6) / TCP())
    templates += [Template(v6_frame, ETH_HLEN, ETH_HLEN + 40, v6, 96)] * 2
    tagged = eth / Dot1Q(vlan=1)
    templates.append(Template(_padded(tagged / IP(src="198.51.100.0", dst=dst4) / TCP()),
                              ETH_HLEN + 4, ETH_HLEN + 24, v4, 8, vlan_off=ETH_HLEN))
    templates.append(Template(_padded(tagged / IPv6(src="2001:db8::", dst=dst6) / TCP()),
                              ETH_HLEN + 4, ETH_HLEN + 44, v6, 96, vlan_off=ETH_HLEN))
    return templates
