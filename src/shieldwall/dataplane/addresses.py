"""Addresses as the data plane keys them: 16 bytes, IPv4 mapped into ::ffff:0:0/96."""

from __future__ import annotations

import ipaddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_V4_MAPPED = bytes(10) + b"\xff\xff"


def lpm_key(net: IPNetwork) -> dict:
    """The sw_lpm_key for a prefix; IPv4 prefixes sit 96 bits deep."""
    if net.version == 4:
        return {"prefixlen": net.prefixlen + 96, "addr": list(_V4_MAPPED + net.network_address.packed)}
    return {"prefixlen": net.prefixlen, "addr": list(net.network_address.packed)}


def from_key_bytes(addr: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if addr[:12] == _V4_MAPPED:
        return ipaddress.IPv4Address(addr[12:16])
    return ipaddress.IPv6Address(addr)
