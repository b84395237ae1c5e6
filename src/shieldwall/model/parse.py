"""Reference of the root program's parser, following docs/parsing.md to the letter.

``parse(frame)`` returns the ``struct sw_pkt`` fields the parser fills plus the root's own
decision, if it makes one. The kernel tests compare both with what the BPF program wrote.

Choices the specification leaves open, made the same way in the BPF program:

* ``l4_off`` is where the upper-layer header starts (after IPv4 options or the last
  IPv6 extension header) whenever the walk gets there, even for protocols whose header
  is not parsed. It is 0 for a non-first fragment, whose payload starts no header.
* The IP packet's declared length bounds everything after the fixed IP header, IPv6
  extension headers included: Ethernet padding is never parsed as a header.
* An IPv6 fragment header marks a fragment by the IPv4 rule: only when M is set or the
  offset is non-zero (an atomic fragment is a whole packet). A later fragment header
  overrides an earlier one. For a non-first fragment, ``l4_proto`` is the fragment
  header's next-header value.
* A malformed packet keeps the fields parsed before the problem; layer-4 fields are
  only written once their header passed every check.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .. import abi

ETH_HLEN = 14
VLAN_HLEN = 4
IPV4_MIN_HLEN = 20
IPV6_HLEN = 40
IPV6_EXT_MIN_LEN = 8
IPV6_FRAG_HLEN = 8
TCP_MIN_HLEN = 20
UDP_HLEN = 8
ICMP_MIN_LEN = 4

ETH_P_IPV4 = 0x0800
ETH_P_IPV6 = 0x86DD
VLAN_ETHERTYPES = frozenset({0x8100, 0x88A8})  # 802.1Q, 802.1ad

IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
IPPROTO_DSTOPTS = 60
IPV6_EXT_HEADERS = frozenset(
    {IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_AH, IPPROTO_FRAGMENT}
)
# ICMP is only parsed in the family it belongs to.
ICMP_PROTO = {abi.SW_FAMILY_IPV4: IPPROTO_ICMP, abi.SW_FAMILY_IPV6: IPPROTO_ICMPV6}

IPV4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"
NO_ADDRESS = bytes(16)


@dataclass(frozen=True)
class ParsedPacket:
    """The ``struct sw_pkt`` fields the parser fills; names and order as in the header."""

    src: bytes = NO_ADDRESS
    dst: bytes = NO_ADDRESS
    frame_len: int = 0
    l3_off: int = 0
    l4_off: int = 0
    eth_proto: int = 0
    vlan_id: int = 0
    l3_len: int = 0
    frag_off: int = 0
    sport: int = 0
    dport: int = 0
    vlan_depth: int = 0
    family: int = abi.SW_FAMILY_NONE
    l4_proto: int = 0
    ttl: int = 0
    frag: int = 0
    tcp_flags: int = 0
    icmp_type: int = 0
    icmp_code: int = 0
    flags: int = 0

    @property
    def src_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        return _address(self.family, self.src)

    @property
    def dst_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        return _address(self.family, self.dst)


@dataclass(frozen=True)
class RootDecision:
    """A verdict the root program gives itself instead of handing the packet to the chain."""

    action: int
    reason: int


def parse(frame: bytes) -> tuple[ParsedPacket, RootDecision | None]:
    """Parse one Ethernet frame; the decision is None when the packet goes on to the stages."""
    walk = _Walk(frame)
    try:
        decision = _parse_layers(walk)
    except _Malformed as bad:
        decision = RootDecision(abi.SW_ACT_DROP, bad.reason)
    return ParsedPacket(**walk.fields), decision


def _address(family: int, raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if family == abi.SW_FAMILY_IPV4:
        return ipaddress.IPv4Address(raw[12:])
    if family == abi.SW_FAMILY_IPV6:
        return ipaddress.IPv6Address(raw)
    return None


class _Malformed(Exception):
    def __init__(self, reason: int) -> None:
        super().__init__(abi.reason_name(reason))
        self.reason = reason


class _Walk:
    """One parse in progress: the frame, how much of it is available, the fields so far."""

    def __init__(self, frame: bytes) -> None:
        self.buf = memoryview(frame)
        # Shrinks to the end of the IP packet once its length is known.
        self.end = len(frame)
        self.fields: dict[str, int | bytes] = {"frame_len": len(frame)}

    def need(self, off: int, length: int, reason: int) -> None:
        if off + length > self.end:
            raise _Malformed(reason)

    def unpack(self, fmt: str, off: int, reason: int, size: int = 0) -> tuple:
        """Read fmt at off, failing with reason unless max(size, fmt's size) bytes are there."""
        self.need(off, max(size, struct.calcsize(fmt)), reason)
        return struct.unpack_from(fmt, self.buf, off)

    def set(self, **fields: int | bytes) -> None:
        self.fields.update(fields)

    def flag(self, bit: int) -> None:
        self.fields["flags"] = int(self.fields.get("flags", 0)) | bit


def _parse_layers(walk: _Walk) -> RootDecision | None:
    off, eth_proto = _link_layer(walk)
    if eth_proto == ETH_P_IPV4:
        family, parse_ip = abi.SW_FAMILY_IPV4, _ipv4
    elif eth_proto == ETH_P_IPV6:
        family, parse_ip = abi.SW_FAMILY_IPV6, _ipv6
    else:
        return RootDecision(abi.SW_ACT_PASS, abi.SW_R_NON_IP)
    walk.set(family=family, l3_off=off)
    l4_off, l4_proto = parse_ip(walk, off)
    walk.set(l4_off=l4_off, l4_proto=l4_proto)
    if l4_off:
        _layer4(walk, l4_off, l4_proto, family)
    return None


def _link_layer(walk: _Walk) -> tuple[int, int]:
    """Ethernet and up to SW_MAX_VLAN_DEPTH tags: the L3 offset and the innermost EtherType."""
    (eth_proto,) = walk.unpack("!12xH", 0, abi.SW_R_TRUNCATED_ETH)
    off, depth = ETH_HLEN, 0
    while eth_proto in VLAN_ETHERTYPES:
        if depth == abi.SW_MAX_VLAN_DEPTH:
            raise _Malformed(abi.SW_R_VLAN_TOO_DEEP)
        tci, eth_proto = walk.unpack("!HH", off, abi.SW_R_TRUNCATED_VLAN)
        off += VLAN_HLEN
        depth += 1
        walk.set(vlan_id=tci & 0x0FFF, vlan_depth=depth)
    walk.set(eth_proto=eth_proto)
    return off, eth_proto


def _frag_bits(offset: int, more: bool) -> int:
    if not (offset or more):
        return 0
    return abi.SW_FRAG_IS | (abi.SW_FRAG_MORE if more else 0)


def _ipv4(walk: _Walk, off: int) -> tuple[int, int]:
    """The IPv4 header at off: (l4_off, protocol)."""
    ver_ihl, tot_len, frag_field, ttl, proto, src, dst = walk.unpack(
        "!BxHxxHBBxx4s4s", off, abi.SW_R_TRUNCATED_IPV4
    )
    version, ihl = ver_ihl >> 4, ver_ihl & 0x0F
    if version != 4 or ihl < 5:
        raise _Malformed(abi.SW_R_BAD_IPV4_HEADER)
    hlen = ihl * 4
    walk.need(off, hlen, abi.SW_R_TRUNCATED_IPV4)
    if tot_len < hlen or off + tot_len > walk.end:
        raise _Malformed(abi.SW_R_BAD_IPV4_LENGTH)
    walk.end = off + tot_len
    if hlen > IPV4_MIN_HLEN:
        walk.flag(abi.SW_PKT_IPV4_OPTIONS)

    frag_off = frag_field & 0x1FFF
    walk.set(
        src=IPV4_MAPPED_PREFIX + src,
        dst=IPV4_MAPPED_PREFIX + dst,
        l3_len=tot_len,
        ttl=ttl,
        frag=_frag_bits(frag_off, bool(frag_field & 0x2000)),
        frag_off=frag_off,
    )
    return (off + hlen if frag_off == 0 else 0), proto


def _ipv6(walk: _Walk, off: int) -> tuple[int, int]:
    """The IPv6 header at off and its extension headers: (l4_off, upper-layer protocol)."""
    ver_word, payload_len, next_hdr, hop_limit, src, dst = walk.unpack(
        "!IHBB16s16s", off, abi.SW_R_TRUNCATED_IPV6
    )
    if ver_word >> 28 != 6:
        raise _Malformed(abi.SW_R_BAD_IPV6_HEADER)
    # A length past 16 bits cannot be stored, and no frame that short holds it anyway.
    if IPV6_HLEN + payload_len > 0xFFFF or off + IPV6_HLEN + payload_len > walk.end:
        raise _Malformed(abi.SW_R_BAD_IPV6_LENGTH)
    walk.end = off + IPV6_HLEN + payload_len
    walk.set(src=src, dst=dst, l3_len=payload_len + IPV6_HLEN, ttl=hop_limit)

    off += IPV6_HLEN
    for _ in range(abi.SW_MAX_IPV6_EXT):
        if next_hdr not in IPV6_EXT_HEADERS:
            return off, next_hdr
        hdr_type = next_hdr
        # Bytes 2-3 are only meaningful in a fragment header.
        next_hdr, hdr_len, frag_field = walk.unpack(
            "!BBH", off, abi.SW_R_TRUNCATED_IPV6_EXT, IPV6_EXT_MIN_LEN
        )
        length = _ipv6_ext_len(hdr_type, hdr_len)
        if hdr_type == IPPROTO_ROUTING and frag_field >> 8 == 0:  # routing type 0
            walk.flag(abi.SW_PKT_IPV6_RH0)
        walk.need(off, length, abi.SW_R_TRUNCATED_IPV6_EXT)
        off += length
        if hdr_type == IPPROTO_FRAGMENT:
            frag_off = frag_field >> 3
            walk.set(frag=_frag_bits(frag_off, bool(frag_field & 1)), frag_off=frag_off)
            if frag_off:
                return 0, next_hdr
    if next_hdr in IPV6_EXT_HEADERS:
        raise _Malformed(abi.SW_R_IPV6_EXT_TOO_DEEP)
    return off, next_hdr


def _ipv6_ext_len(hdr_type: int, hdr_len: int) -> int:
    if hdr_type == IPPROTO_FRAGMENT:
        return IPV6_FRAG_HLEN
    if hdr_type == IPPROTO_AH:
        return (hdr_len + 2) * 4
    return (hdr_len + 1) * 8


def _layer4(walk: _Walk, off: int, proto: int, family: int) -> None:
    if proto == IPPROTO_TCP:
        sport, dport, doff_byte, tcp_flags = walk.unpack(
            "!HH8xBB", off, abi.SW_R_TRUNCATED_L4, TCP_MIN_HLEN
        )
        data_offset = doff_byte >> 4
        if data_offset < 5:
            raise _Malformed(abi.SW_R_BAD_TCP_HEADER)
        walk.need(off, data_offset * 4, abi.SW_R_TRUNCATED_L4)
        walk.set(sport=sport, dport=dport, tcp_flags=tcp_flags)
    elif proto == IPPROTO_UDP:
        sport, dport = walk.unpack("!HH", off, abi.SW_R_TRUNCATED_L4, UDP_HLEN)
        walk.set(sport=sport, dport=dport)
    elif proto == ICMP_PROTO[family]:
        icmp_type, icmp_code = walk.unpack("!BB", off, abi.SW_R_TRUNCATED_L4, ICMP_MIN_LEN)
        walk.set(icmp_type=icmp_type, icmp_code=icmp_code)
    else:
        return
    walk.flag(abi.SW_PKT_HAS_L4)

