"""The frame `shieldwall verdict` runs for a captured one: its first bytes, when need be.

A test run takes frames up to a size (the linear part plus MAX_SKB_FRAGS pages), yet
captures taken on a host hold bigger ones: GRO and TSO aggregates (BIG TCP) of 80 KB and
more, built by the host and never on a wire in that shape. Such a frame is judged on its
first bytes, the way a capture's snapshot length keeps them, as is a frame the capture
itself cut short. Where the cut falls inside the IP packet, the copy's IP length field is
set to what is kept: left as it was, it would overrun the frame, and the root would drop
the frame as malformed (bad_ipv4_length, bad_ipv6_length), a verdict on the cut rather
than on the packet. docs/verdict.md gives the rules; every change is named in the note.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .. import abi
from ..model.parse import (ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_HOPOPTS, IPPROTO_TCP,
                          IPPROTO_UDP, IPV4_MIN_HLEN, IPV6_HLEN, VLAN_ETHERTYPES, VLAN_HLEN)

# The longest IP packet, header included, that the root parses: its l3_len is 16 bits,
# so IPv6 too is held to 65535 bytes, 40 of them header.
IP_MAX_LEN = 0xFFFF
# Protocols whose aggregates the kernel (and tcpdump, reading them) gives a length of 0:
# TCP, and UDP carrying tunnelled TCP (VXLAN, Geneve).
BIG_TCP_PROTOCOLS = frozenset({IPPROTO_TCP, IPPROTO_UDP})
# The hop-by-hop header the kernel puts in a BIG TCP IPv6 aggregate: 8 bytes, holding
# only a Jumbo Payload option (RFC 2675) with the length after the IPv6 header.
JUMBO_HBH_LEN = 8
IPV6_TLV_JUMBO = 0xC2


@dataclass(frozen=True)
class Judged:
    data: bytes  # what to run
    note: str | None  # what was changed, and why; None when the frame runs as captured


@dataclass
class _IPHeader:
    family: str  # "IPv4" or "IPv6", as the note names it
    off: int  # where it starts in the frame
    length_at: int  # where its 16-bit length field is
    counted_from: int  # where the bytes the length field counts start
    fixed: int  # the header bytes that must be kept for the length to mean anything


def judged_frame(data: bytes, wire_len: int, limit: int) -> Judged:
    """The frame to run for a captured frame of wire_len bytes, of which data was kept,
    when a test run takes at most `limit` bytes."""
    buf = bytearray(data)
    wire_len = max(wire_len, len(buf))
    notes: list[str] = []
    ip = _ip_header(buf)
    end = None  # where the IP packet ends by its header
    big = False  # its length field says 0 for "the rest of the frame"
    if ip and ip.family == "IPv4":
        length = _u16(buf, ip.length_at)
        big = length == 0 and buf[ip.off + 9] in BIG_TCP_PROTOCOLS and \
            wire_len - ip.off > IP_MAX_LEN
        end = wire_len if big else ip.off + length
    elif ip:
        length = _u16(buf, ip.length_at)
        if length == 0 and _kernel_jumbo(buf, ip.off, wire_len):
            (jumbo,) = struct.unpack_from("!I", buf, ip.off + IPV6_HLEN + 4)
            # The kernel adds it to an aggregate and takes it out before segmenting one:
            # the segments on the wire, which XDP sees, never carry it.
            buf[ip.off + 6] = buf[ip.off + IPV6_HLEN]
            del buf[ip.off + IPV6_HLEN:ip.off + IPV6_HLEN + JUMBO_HBH_LEN]
            wire_len -= JUMBO_HBH_LEN
            notes.append("its jumbo hop-by-hop header (BIG TCP) left out")
            big = True
            end = ip.off + IPV6_HLEN + jumbo - JUMBO_HBH_LEN
        else:
            big = length == 0 and buf[ip.off + 6] in BIG_TCP_PROTOCOLS and \
                wire_len - ip.counted_from > IP_MAX_LEN
            end = wire_len if big else ip.counted_from + length

    keep, why = len(buf), "the capture kept no more"
    if keep > limit:
        keep, why = limit, "the most a test run takes on this kernel"
    length_note = None
    # The length is rewritten where the cut made it overrun, and where it says 0 for a
    # BIG TCP aggregate (which the root would call malformed, though its segments are
    # not). A length that overruns the packet on the wire too is the packet's own flaw,
    # and judged as it is.
    if ip and end is not None and (keep < end or big) and end <= wire_len \
            and keep >= ip.off + ip.fixed:
        if keep - ip.off > IP_MAX_LEN:
            keep = ip.off + IP_MAX_LEN
            why = f"the root parses IP packets of at most {IP_MAX_LEN} bytes"
        old, new = _u16(buf, ip.length_at), keep - ip.counted_from
        struct.pack_into("!H", buf, ip.length_at, new)
        if ip.family == "IPv4":
            check_at = ip.off + 10
            struct.pack_into("!H", buf, check_at, _checksum_update(_u16(buf, check_at), old, new))
        field = "total length" if ip.family == "IPv4" else "payload length"
        length_note = f"{ip.family} {field} {old}{' (BIG TCP)' if big else ''} set to {new}"
    del buf[keep:]
    if keep < wire_len:
        notes.append(f"judged on its first {keep} of {wire_len} bytes ({why})")
    if length_note:
        notes.append(length_note)
    return Judged(bytes(buf), "; ".join(notes) or None)


def _u16(buf: bytearray, off: int) -> int:
    return (buf[off] << 8) | buf[off + 1]


def _ip_header(buf: bytearray) -> _IPHeader | None:
    """The IP header as the root finds it (docs/parsing.md), if its fixed part is there."""
    if len(buf) < ETH_HLEN:
        return None
    off, proto = ETH_HLEN, _u16(buf, ETH_HLEN - 2)
    for _ in range(abi.SW_MAX_VLAN_DEPTH):
        if proto not in VLAN_ETHERTYPES or off + VLAN_HLEN > len(buf):
            break
        proto = _u16(buf, off + 2)
        off += VLAN_HLEN
    if proto == ETH_P_IPV4 and off + IPV4_MIN_HLEN <= len(buf) and buf[off] >> 4 == 4 \
            and buf[off] & 0x0F >= 5:
        return _IPHeader("IPv4", off, off + 2, off, (buf[off] & 0x0F) * 4)
    if proto == ETH_P_IPV6 and off + IPV6_HLEN <= len(buf) and buf[off] >> 4 == 6:
        return _IPHeader("IPv6", off, off + 4, off + IPV6_HLEN, IPV6_HLEN)
    return None


def _kernel_jumbo(buf: bytearray, off: int, wire_len: int) -> bool:
    """Whether the IPv6 packet at off carries the kernel's BIG TCP hop-by-hop header,
    with a jumbo length the kernel would accept (over 65535, within the frame)."""
    hbh = off + IPV6_HLEN
    if buf[off + 6] != IPPROTO_HOPOPTS or hbh + JUMBO_HBH_LEN > len(buf):
        return False
    if buf[hbh + 1] != 0 or buf[hbh + 2] != IPV6_TLV_JUMBO or buf[hbh + 3] != 4:
        return False
    (jumbo,) = struct.unpack_from("!I", buf, hbh + 4)
    return IP_MAX_LEN < jumbo <= wire_len - hbh


def _checksum_update(check: int, old: int, new: int) -> int:
    """The IPv4 header checksum after one 16-bit word changed from old to new (RFC 1624):
    a checksum that was right stays right, one that was wrong stays wrong."""
    total = (~check & 0xFFFF) + (~old & 0xFFFF) + new
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
