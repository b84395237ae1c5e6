"""The syn stage: SYN floods answered in the driver (bpf/stages/syn.bpf.c,
docs/defenses.md "SYN floods").

    protect:
      syn: {ports: [80, 443], mode: cookie}

A SYN to a protected port gets its SYN-ACK from XDP (XDP_TX): in `cookie` mode its
sequence number is the kernel's syncookie and the host's nf_synproxy completes the
handshake (shieldwall sets up its nftables table and sysctls while the stage is in
force); in `auth` mode its ACK number is a challenge whose RST answer authenticates the
source for `auth_ttl`. Other keys:

    activate: always                     # default
    activate: {above: 10k, below: 2k}    # by the SYN rate to the ports, with hysteresis
    auth_ttl: 300s                       # auth mode
    mss: 1460                            # the SYN-ACK's MSS (IPv6: 20 less)
    wscale: 7                            # the window scale it offers
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Any

from .. import abi
from ..dataplane.images import pack
from ..model.parse import IPPROTO_TCP, ParsedPacket
from ..policy.errors import quote
from ..policy.reference import Decision, has_l4
from ..policy.validator import Validator
from ..policy.values import describe, parse_duration, parse_rate
from . import register
from .base import HostNeeds, Stage, StageBuild

PORTS, STATE, AUTH, CLOCK, CONSTS = "sw_syn_ports", "sw_syn_state", "sw_syn_auth", "sw_syn_clock", ".rodata.syn"
KEY = "protect.syn"
KEYS = ("ports", "mode", "activate", "auth_ttl", "mss", "wscale")
MODES = {"cookie": abi.SW_SYN_MODE_COOKIE, "auth": abi.SW_SYN_MODE_AUTH}
MAX_PPS = 10**9
MAX_AUTH_TTL = 86400
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = abi.SW_TCP_FIN, abi.SW_TCP_SYN, abi.SW_TCP_RST, abi.SW_TCP_ACK
# What nf_synproxy needs (Documentation/networking/nf_conntrack-sysctl.rst): cookies the
# kernel checks on every ACK, timestamps to carry the options a cookie cannot, and
# conntrack that does not pick up a connection from its middle.
SYSCTLS = {"net/ipv4/tcp_syncookies": "2", "net/ipv4/tcp_timestamps": "1",
           "net/netfilter/nf_conntrack_tcp_loose": "0"}


@dataclass(frozen=True)
class Syn:
    ports: tuple[int, ...]
    mode: str = "cookie"
    always: bool = True
    above: int = 0          # SYNs a second that activate it (activate: {above, below})
    below: int = 0
    auth_ttl: float = 300.0
    mss: int = 1460
    wscale: int = 7

    @property
    def mss6(self) -> int:
        return self.mss - 20  # the IPv6 header is 20 bytes longer


# -- the policy file ---------------------------------------------------------------------


def _number(spec: dict, key: str, lo: int, hi: int, default: int, v: Validator) -> int:
    value = spec.get(key, default)
    if type(value) is not int or not lo <= value <= hi:
        v.report(f"{KEY}.{key}", f"expected a whole number from {lo} to {hi}, got {describe(value)}")
        return default
    return value


def parse_syn(value: Any, v: Validator) -> Syn | None:
    spec = v.mapping(value, KEY, KEYS, required=("ports",))
    if spec is None or "ports" not in spec:
        return None
    ok = True
    ports = []
    for i, port in enumerate(v.sequence(spec["ports"], f"{KEY}.ports")):
        if type(port) is not int or not 1 <= port <= 65535:
            v.report(f"{KEY}.ports[{i}]", f"expected a TCP port from 1 to 65535, got {describe(port)}")
            ok = False
        else:
            ports.append(port)
    if isinstance(spec["ports"], list) and not spec["ports"]:
        v.report(f"{KEY}.ports", "name at least one port to protect")
        ok = False
    mode = spec.get("mode", "cookie")
    if mode not in MODES:
        v.report(f"{KEY}.mode", f"expected cookie or auth, got "
                                f"{quote(mode) if isinstance(mode, str) else describe(mode)}")
        ok = False
    always, above, below = True, 0, 0
    activate = spec.get("activate", "always")
    if isinstance(activate, dict):
        rates = v.mapping(activate, f"{KEY}.activate", ("above", "below"), required=("above", "below"))
        if rates is None or not {"above", "below"} <= rates.keys():
            ok = False
        else:
            above = v.check(f"{KEY}.activate.above", parse_rate, rates["above"], "a SYN rate", MAX_PPS)
            below = v.check(f"{KEY}.activate.below", parse_rate, rates["below"], "a SYN rate", MAX_PPS)
            if above is None or below is None:
                ok = False
            elif below > above:
                v.report(f"{KEY}.activate.below", f"below ({below:,}) must not exceed above ({above:,})")
                ok = False
            always = False
    elif activate != "always":
        v.report(f"{KEY}.activate", f"expected always or {{above: PPS, below: PPS}}, got {describe(activate)}")
        ok = False
    auth_ttl = 300.0
    if "auth_ttl" in spec:
        if mode != "auth":
            v.report(f"{KEY}.auth_ttl", "auth_ttl goes with mode: auth")
            ok = False
        auth_ttl = v.check(f"{KEY}.auth_ttl", parse_duration, spec["auth_ttl"]) or 0
        if not 0 < auth_ttl <= MAX_AUTH_TTL:
            if auth_ttl:
                v.report(f"{KEY}.auth_ttl", "an authentication lasts at most 1d")
            ok = False
    mss = _number(spec, "mss", 536, 9000, 1460, v)
    wscale = _number(spec, "wscale", 0, 14, 7, v)
    if not ok or "mss" in spec and mss != spec["mss"] or "wscale" in spec and wscale != spec["wscale"]:
        return None
    return Syn(tuple(sorted(set(ports))), mode, always, above or 0, below or 0, auth_ttl, mss, wscale)


# -- the reference model -----------------------------------------------------------------

# The challenge: SipHash-1-3 (the data plane's sw_syn_hash), 64-bit words little-endian.
MASK64 = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & MASK64


def _round(v: list[int]) -> None:
    v[0] = (v[0] + v[1]) & MASK64; v[1] = _rotl(v[1], 13) ^ v[0]; v[0] = _rotl(v[0], 32)
    v[2] = (v[2] + v[3]) & MASK64; v[3] = _rotl(v[3], 16) ^ v[2]
    v[0] = (v[0] + v[3]) & MASK64; v[3] = _rotl(v[3], 21) ^ v[0]
    v[2] = (v[2] + v[1]) & MASK64; v[1] = _rotl(v[1], 17) ^ v[2]; v[2] = _rotl(v[2], 32)


def challenge(key0: int, key1: int, src: bytes, dst: bytes, sport: int, dport: int, slot: int) -> int:
    """The 64 bits the auth mode's SYN-ACK carries for this connection in this time slot
    (slot: bpf_ktime_get_coarse_ns() >> SW_SYN_SLOT_SHIFT): its low 32 bits are the ACK
    number, the high 32 its sequence number. Addresses are the 16-byte forms."""
    words = [*struct.unpack("<2Q", src), *struct.unpack("<2Q", dst),
             sport | dport << 16 | (slot & 0xffffffff) << 32]
    v = [key0 ^ 0x736F6D6570736575, key1 ^ 0x646F72616E646F6D,
         key0 ^ 0x6C7967656E657261, key1 ^ 0x7465646279746573]
    for m in words + [40 << 56]:
        v[3] ^= m
        _round(v)
        v[0] ^= m
    v[2] ^= 0xFF
    for _ in range(3):
        _round(v)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def is_syn(pkt: ParsedPacket) -> bool:
    return pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN


def answerable(pkt: ParsedPacket) -> bool:
    """Whether the stage can turn the packet into its answer in place (no IPv4 options,
    no IPv6 extension headers, not a fragment)."""
    ip_len = 20 if pkt.family == abi.SW_FAMILY_IPV4 else 40
    return not pkt.frag and pkt.l4_off == pkt.l3_off + ip_len


# -- the stage ---------------------------------------------------------------------------


class SynStage(Stage):
    name = "syn"
    reasons = ("bad_cookie", "syn_cookie", "syn_challenge", "syn_authenticated", "syn_unanswerable")
    keys = (KEY,)
    order = 17  # after the lists and the protect filters, before the limit stage's blocks
                # and the rules: a SYN flood costs no lookup beyond the port's bit
    config_maps = {PORTS: ("__u32", "struct sw_syn_portmap"),
                   CLOCK: ("__u32", "__u64[3]")}  # lib/clock.h: pinned so that it ticks
    state_maps = {STATE: ("__u32", "struct sw_syn_state"),
                  AUTH: ("struct sw_syn_auth_key", "struct sw_syn_auth")}

    # -- the policy file ----------------------------------------------------------------
    def section(self, doc: dict, v: Validator) -> Syn | None:
        return parse_syn(doc[KEY], v) if KEY in doc else None

    def busy(self, section: Syn | None) -> bool:
        return section is not None

    def summary(self, section: Syn | None) -> list[str]:
        if section is None:
            return []
        when = "always" if section.always else \
            f"above {section.above:,} SYN/s, off below {section.below:,} SYN/s"
        how = ("syncookies, completed by nf_synproxy" if section.mode == "cookie" else
               f"SYN authentication, sources kept {section.auth_ttl:g}s")
        return [f"syn: ports {', '.join(map(str, section.ports))} answered in XDP ({how}); "
                f"active {when}"]

    def changes(self, old: Syn | None, new: Syn | None) -> list[str]:
        if old == new:
            return []
        if new is None:
            return ["syn: removed (its nftables table and sysctls go)"]
        return ["syn: added" if old is None else "syn: changed"]

    # -- the reference model ------------------------------------------------------------
    def decide(self, section: Syn, pkt: ParsedPacket) -> Decision | None:
        """The verdict of a fresh stage: no socket on the host for the packet, no source
        authenticated, an `activate` by rate not active yet, and an ACK whose cookie does
        not check (a random one checks with odds of about 2^-29)."""
        if not has_l4(pkt) or pkt.l4_proto != IPPROTO_TCP or pkt.dport not in section.ports:
            return None
        if not section.always:
            return None
        if is_syn(pkt):
            if not answerable(pkt):
                return Decision("drop", "syn_unanswerable")
            return Decision("tx", "syn_cookie" if section.mode == "cookie" else "syn_challenge")
        if section.mode == "auth" and not pkt.tcp_flags & TCP_RST:
            return None  # auth mode checks RSTs only
        return Decision("drop", "bad_cookie")

    # -- the data plane -----------------------------------------------------------------
    def build(self, image: Syn, column: list[int] | None) -> StageBuild:
        words = [0] * 2048
        for port in image.ports:
            words[port >> 5] |= 1 << (port & 31)
        consts = {"mode": MODES[image.mode], "always": int(image.always),
                  "above": image.above, "below": image.below,
                  "auth_ttl_ns": int(image.auth_ttl * 1e9),
                  "mss4": image.mss, "mss6": image.mss6, "wscale": image.wscale}
        return StageBuild(rodata={CONSTS: pack("struct sw_syn_consts", consts)},
                          contents={PORTS: (struct.pack("<I", 0),
                                            pack("struct sw_syn_portmap", {"word": words}))},
                          memory=8192)

    def describe(self, image: Syn) -> list[str]:
        if image.mode == "cookie":
            rest = ("the kernel's cookie helper; any other packet to one a socket lookup "
                    "and a cookie check")
        else:
            rest = "a SipHash; a RST to one a socket lookup and two SipHashes"
        return [f"syn: one bit test per TCP packet; a SYN to a protected port costs its "
                f"SYN-ACK and {rest}"]

    # -- the host beside the data plane -------------------------------------------------
    def host(self, section: Syn | None, iface: str) -> HostNeeds | None:
        if section is None or section.mode != "cookie":
            return None
        return HostNeeds(HostNeeds.table_for(self.name, iface), synproxy_ruleset(section), dict(SYSCTLS),
                         f"{KEY}.mode: cookie needs nftables with SYNPROXY (nft, nf_synproxy) "
                         "in this network namespace; mode: auth needs neither")

    # -- status ------------------------------------------------------------------------
    def status(self, maps: dict[str, Any]) -> dict:
        if STATE not in maps:
            return {}
        st = maps[STATE].lookup(0)
        report: dict[str, Any] = {"active": bool(st.active), "syn_rate": int(st.last_rate)}
        if st.since_ns:
            report["since"] = time.time() - (time.clock_gettime(time.CLOCK_MONOTONIC) - st.since_ns / 1e9)
        if AUTH in maps:
            report["authenticated"] = sum(1 for _ in maps[AUTH].keys())
        return report

    def status_lines(self, report: dict) -> list[str]:
        if "active" not in report:
            return []
        since = ""
        if "since" in report:
            since = " since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report["since"]))
        line = f"syn: {'active' if report['active'] else 'inactive'}{since}; " \
               f"{report['syn_rate']:,} SYN/s in the last measured second"
        if "authenticated" in report:
            line += f"; {report['authenticated']:,} authenticated sources"
        return [line]


def synproxy_ruleset(section: Syn) -> str:
    """The body of shieldwall's nftables table for cookie mode: SYNs to the ports skip
    conntrack (they are answered by XDP, or by SYNPROXY when the stage is inactive), and
    the handshake's ACK, untracked or invalid to conntrack, goes to SYNPROXY."""
    ports = ", ".join(map(str, section.ports))
    return (
        "chain raw {\n"
        "  type filter hook prerouting priority raw; policy accept;\n"
        f"  tcp dport {{ {ports} }} tcp flags syn / fin,syn,rst,ack notrack\n"
        "}\n"
        "chain input {\n"
        "  type filter hook input priority filter; policy accept;\n"
        f"  meta nfproto ipv4 tcp dport {{ {ports} }} ct state invalid,untracked "
        f"synproxy mss {section.mss} wscale {section.wscale} timestamp sack-perm\n"
        f"  meta nfproto ipv6 tcp dport {{ {ports} }} ct state invalid,untracked "
        f"synproxy mss {section.mss6} wscale {section.wscale} timestamp sack-perm\n"
        f"  tcp dport {{ {ports} }} ct state invalid drop\n"
        "}\n")


register(SynStage())
