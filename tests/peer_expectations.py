"""What each peer should do with a frame: shieldwall's reference decision, changed only
where a peer's documented difference (its module's DIFFERENCES) says it must be.

Also a model of xdp-filter's program (xdpfilt_prog.h in xdp-tools 1.3): the tests check
the model against the real xdp-filter, and the model against the reference, so every
frame where xdp-filter and shieldwall disagree is one a listed difference explains.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import replace

from shieldwall import abi
from shieldwall.nft import ir
from shieldwall.model.parse import ParsedPacket, parse
from shieldwall.policy.model import Policy
from shieldwall.policy.reference import evaluate

VLAN_TYPES = (0x8100, 0x88A8)
IPV6_EXT = {0: "hop", 43: "routing", 44: "fragment", 51: "ah", 60: "dst"}


def shieldwall_passes(policy: Policy, frame: bytes, pkt: ParsedPacket | None = None) -> bool:
    parsed, root = parse(frame)
    if root is not None:
        return root.action == abi.SW_ACT_PASS
    return evaluate(policy, pkt or parsed).action == "pass"


def vlan_ids(frame: bytes) -> list[int]:
    ids, off = [], 12
    while off + 4 <= len(frame) and struct.unpack_from("!H", frame, off)[0] in VLAN_TYPES:
        ids.append(struct.unpack_from("!H", frame, off + 2)[0] & 0x0FFF)
        off += 4
    return ids


def ipv6_fragment_headers(frame: bytes) -> list[tuple[int, bool]]:
    """(offset, more) of each IPv6 fragment header, in order, up to the first non-first."""
    off = 12 + 4 * len(vlan_ids(frame))
    if struct.unpack_from("!H", frame, off)[0] != 0x86DD:
        return []
    off += 2
    nh = frame[off + 6]
    off += 40
    out = []
    for _ in range(8):
        if nh not in IPV6_EXT or off + 8 > len(frame):
            break
        if nh == 44:
            field = struct.unpack_from("!H", frame, off + 2)[0]
            out.append((field >> 3, bool(field & 1)))
            nh, off = frame[off], off + 8
            if field >> 3:
                break
        elif nh == 51:
            nh, off = frame[off], off + (frame[off + 1] + 2) * 4
        else:
            nh, off = frame[off], off + (frame[off + 1] + 1) * 8
    return out


def first_fragment_header_view(frame: bytes, pkt: ParsedPacket) -> ParsedPacket:
    """The packet as nftables and ip6tables classify `fragment`: by the first fragment
    header rather than the last (their documented difference)."""
    headers = ipv6_fragment_headers(frame)
    if len(headers) < 2:
        return pkt
    offset, more = headers[0]
    frag = 0 if not (offset or more) else abi.SW_FRAG_IS | (abi.SW_FRAG_MORE if more else 0)
    return replace(pkt, frag=frag, frag_off=offset)


def nftables_passes(policy: Policy, frame: bytes) -> bool:
    pkt, root = parse(frame)
    if root is None and pkt.vlan_depth == 2:  # DIFFERENCES["qinq"]
        return policy.default_action == "pass"
    return shieldwall_passes(policy, frame, first_fragment_header_view(frame, pkt))


def iptables_passes(policy: Policy, frame: bytes, backend: str) -> bool | None:
    """None: the documented difference leaves the outcome open."""
    if any(vlan_ids(frame)):  # DIFFERENCES["vlan"]: dropped before PREROUTING
        return False
    headers = ipv6_fragment_headers(frame)
    if backend == "nft" and len(headers) > 1 and headers[0][0] == 0 and headers[-1][0] \
            and _reads_ipv6_l4(policy):
        return None  # DIFFERENCES["nft_backend_fragments"]
    pkt, _ = parse(frame)
    return shieldwall_passes(policy, frame, first_fragment_header_view(frame, pkt))


def _reads_ipv6_l4(policy: Policy) -> bool:
    """Whether an IPv6 rule reads ports, flags or ICMP types: only then can the nft
    backend's reading of a later fragment header change a verdict (as the translation
    says when it declares that difference)."""
    return ir.nd_protected(policy) or any(c.needs_l4 for c in ir.chain_clauses(policy, 6))


# --- xdp-filter -------------------------------------------------------------------


class XdpFilterModel:
    """xdp-filter's decision from its configuration commands."""

    def __init__(self, commands) -> None:
        load = commands[0]
        self.deny = load[load.index("-p") + 1] == "deny"
        self.addrs: dict[object, set[str]] = {}
        self.ports: dict[int, set[str]] = {}
        for argv in commands[1:]:
            modes = set(argv[argv.index("-m") + 1].split(","))
            if argv[1] == "ip":
                self.addrs[ipaddress.ip_address(argv[2])] = modes
            else:
                protos = set(argv[argv.index("-p") + 1].split(","))
                self.ports[int(argv[2])] = modes | protos

    def hit(self, frame: bytes) -> bool:
        off, proto = 12, struct.unpack_from("!H", frame, 12)[0]
        for _ in range(4):  # VLAN_MAX_DEPTH
            if proto not in VLAN_TYPES:
                break
            proto = struct.unpack_from("!H", frame, off + 4)[0]
            off += 4
        off += 2
        if proto == 0x0800:
            ihl = (frame[off] & 0x0F) * 4
            src, dst = ipaddress.IPv4Address(frame[off + 12:off + 16]), ipaddress.IPv4Address(frame[off + 16:off + 20])
            l4, off = frame[off + 9], off + ihl
        elif proto == 0x86DD:
            src, dst = ipaddress.IPv6Address(frame[off + 8:off + 24]), ipaddress.IPv6Address(frame[off + 24:off + 40])
            l4, off = frame[off + 6], off + 40
            for _ in range(6):  # skip_ip6hdrext: fragments too, whatever their offset
                if l4 in (0, 43, 60, 135):
                    l4, off = frame[off], off + (frame[off + 1] + 1) * 8
                elif l4 == 51:
                    l4, off = frame[off], off + (frame[off + 1] + 2) * 4
                elif l4 == 44:
                    l4, off = frame[off], off + 8
                else:
                    break
        else:
            return False
        if "dst" in self.addrs.get(dst, ()) or "src" in self.addrs.get(src, ()):
            return True
        if l4 in (6, 17) and off + 4 <= len(frame):
            name = "tcp" if l4 == 6 else "udp"
            sport, dport = struct.unpack_from("!HH", frame, off)
            if {"dst", name} <= self.ports.get(dport, set()):
                return True
            if {"src", name} <= self.ports.get(sport, set()):
                return True
        return False

    def passes(self, frame: bytes) -> bool:
        return self.hit(frame) == self.deny


def xdp_filter_difference(frame: bytes, deny: bool, ports: bool) -> str | None:
    """The xdpfilter.DIFFERENCES key that explains a disagreement on this frame, if any."""
    pkt, root = parse(frame)
    if deny and root is not None and pkt.family == abi.SW_FAMILY_NONE:
        return "deny_non_ip"
    if deny and pkt.family == abi.SW_FAMILY_IPV6 and pkt.flags & abi.SW_PKT_HAS_L4 \
            and pkt.l4_proto == 58 and 133 <= pkt.icmp_type <= 137:
        return "deny_nd"
    if ports and pkt.frag & abi.SW_FRAG_IS and pkt.frag_off > 0:
        return "port_fragments"
    if ports and pkt.l4_proto == 135:
        return "port_mobility"
    return None


def expected_counts(policy: Policy, frames: list[bytes]) -> dict[str, int]:
    """Per rule name, and "(default)", the frames a translation written with counters
    counts: each counting rule that matched before the decision, and the deciding rule
    or the default. The fastpath and the neighbor discovery exception count nothing."""
    counts: dict[str, int] = {}
    for frame in frames:
        pkt, root = parse(frame)
        if root is not None:
            continue
        decision = evaluate(policy, first_fragment_header_view(frame, pkt))
        names = list(decision.counted)
        if decision.reason == "rule":
            names.append(decision.rule)
        elif decision.reason == "default":
            names.append("(default)")
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    return counts


def reason_rules(reason: str) -> list[str]:
    """The rule names a NotExpressible reason lists ("rule a: ...", "rules a, b and 3
    more: ..."); the ones left out as "N more" are not named."""
    head = reason.split(": ", 1)[0]
    if not head.startswith("rule"):
        return []
    head = re.sub(r" and \d+ more$", "", head.removeprefix("rules ").removeprefix("rule "))
    return head.split(", ")
