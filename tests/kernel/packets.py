"""Packet builders shared by the kernel tests (scapy, documentation addresses only)."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (ICMPv6EchoRequest, ICMPv6ND_NS, IPv6, IPv6ExtHdrDestOpt,
                                IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

SRC4, DST4 = "198.51.100.7", "192.0.2.1"
SRC6, DST6 = "2001:db8:1::7", "2001:db8::1"
MACS = dict(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")


def eth(*tags: tuple[str, int]) -> Ether:
    frame = Ether(**MACS)
    for kind, vid in tags:
        frame = frame / (Dot1AD(vlan=vid) if kind == "ad" else Dot1Q(vlan=vid))
    return frame


def v4(**kw) -> IP:
    return IP(src=kw.pop("src", SRC4), dst=kw.pop("dst", DST4), **kw)


def v6(**kw) -> IPv6:
    return IPv6(src=kw.pop("src", SRC6), dst=kw.pop("dst", DST6), **kw)


__all__ = ["ARP", "ICMP", "ICMPv6EchoRequest", "ICMPv6ND_NS", "IPv6ExtHdrDestOpt",
           "IPv6ExtHdrFragment", "IPv6ExtHdrHopByHop", "IPv6ExtHdrRouting", "TCP", "UDP",
           "eth", "v4", "v6"]
