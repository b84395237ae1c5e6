"""The protect stage: packets no legitimate peer sends, each filter off, counted or
dropped (bpf/stages/protect.bpf.c, docs/defenses.md).

    protect:
      tcp_flags: drop        # NULL, XMAS, SYN+FIN, SYN+RST, FIN without ACK
      land: drop             # source address equal to the destination
      bogons: monitor        # or {mode: drop, except: [10.0.0.0/8], extra: [...], own: except}
      fragments: drop        # a later fragment at offset 8 bytes (overlaps the L4 header)
      ipv4_options: monitor
      ipv6_rh0: drop         # routing header type 0 (RFC 5095)
      zero_ports: drop       # TCP or UDP port 0, either end

A key left out takes its default (above). Bogon sources come from the root's one source
classification: the stage's table says, per source class, whether it is a bogon.

A host that sits on a private (or otherwise bogon) network would drop its neighbours:
unless `own: keep`, each bogon range that holds an address of the network namespace the
policy is read in (its interfaces' addresses, loopback and link-local aside) is excepted,
and `check` says which.
"""

from __future__ import annotations

import ipaddress
from array import array
from dataclasses import dataclass, field
from typing import Any

from .. import abi
from ..dataplane.images import pack
from ..dataplane.sources import SourceMap
from ..model.parse import IPPROTO_TCP, IPPROTO_UDP, ParsedPacket
from ..policy.errors import quote
from ..policy.model import Network
from ..policy.reference import Decision, has_l4
from ..policy.validator import Validator
from ..policy.values import describe, parse_items
from . import register
from .base import Stage, StageBuild

TABLE, SEEN, CONSTS = "sw_prot_tab", "sw_prot_seen", ".rodata.prot"
MODES = {"off": abi.SW_PROT_OFF, "monitor": abi.SW_PROT_MONITOR, "drop": abi.SW_PROT_DROP}
# Filter name -> (its SW_PROT_* number, default mode), in the order the stage tests them.
FILTERS = {
    "tcp_flags": (abi.SW_PROT_TCP_FLAGS, "drop"),
    "land": (abi.SW_PROT_LAND, "drop"),
    "bogons": (abi.SW_PROT_BOGONS, "monitor"),
    "fragments": (abi.SW_PROT_FRAGMENTS, "drop"),
    "ipv4_options": (abi.SW_PROT_IPV4_OPTIONS, "monitor"),
    "ipv6_rh0": (abi.SW_PROT_IPV6_RH0, "drop"),
    "zero_ports": (abi.SW_PROT_ZERO_PORTS, "drop"),
}
REASONS = ("bad_tcp_flags", "land", "bogon_source", "fragment_overlap", "ipv4_options",
           "ipv6_rh0", "zero_port")  # filter i drops with SW_R_BAD_TCP_FLAGS + i
REASON = dict(zip(FILTERS, REASONS))
DEFAULT_MODES = {name: default for name, (_, default) in FILTERS.items()}

# Sources no packet from the Internet carries (RFC 6890 special-purpose, multicast and
# reserved space). Private and documentation ranges are among them: a host on such a
# network says so with `except`.
BOGONS_V4 = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
             "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
             "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4")
BOGONS_V6 = ("::/128", "::1/128", "64:ff9b:1::/48", "100::/64", "2001:2::/48", "2001:db8::/32",
             "3fff::/20", "fc00::/7", "fe80::/10", "ff00::/8")

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


@dataclass(frozen=True)
class Protect:
    modes: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MODES))
    bogons: tuple[Network, ...] = ()          # the list in force: defaults + extra
    not_bogons: tuple[Network, ...] = ()      # `except`, and the host's own bogon ranges
    own: tuple[Network, ...] = ()             # of those, the host's own (for check)

    def is_bogon(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        if addr is None:
            return False
        best = max((n.prefixlen for n in self.bogons if addr.version == n.version and addr in n), default=-1)
        cut = max((n.prefixlen for n in self.not_bogons if addr.version == n.version and addr in n),
                  default=-1)
        return best > cut


# Every host has these: they say nothing of the network it sits on.
ALWAYS_LOCAL = tuple(ipaddress.ip_network(p) for p in ("127.0.0.0/8", "::1/128", "fe80::/10"))


def own_ranges(bogons: tuple[Network, ...]) -> tuple[Network, ...]:
    """The bogon ranges that hold an address of this network namespace."""
    from pyroute2 import IPRoute
    with IPRoute() as ip:
        found = [ipaddress.ip_address(a.get_attr("IFA_ADDRESS")) for a in ip.get_addr()]
    mine = [a for a in found if not any(a.version == n.version and a in n for n in ALWAYS_LOCAL)]
    return tuple(sorted({n for n in bogons for a in mine if a.version == n.version and a in n},
                        key=lambda n: (n.version, n)))


def bad_tcp_flags(f: int) -> bool:
    return (f == 0 or f & (TCP_FIN | TCP_PSH | TCP_URG) == TCP_FIN | TCP_PSH | TCP_URG
            or f & (TCP_SYN | TCP_FIN) == TCP_SYN | TCP_FIN
            or f & (TCP_SYN | TCP_RST) == TCP_SYN | TCP_RST
            or f & (TCP_FIN | TCP_ACK) == TCP_FIN)


def matched(section: Protect, name: str, pkt: ParsedPacket) -> bool:
    """Filter `name` on a parsed packet, as the stage tests it."""
    if name == "tcp_flags":
        return has_l4(pkt) and pkt.l4_proto == IPPROTO_TCP and bad_tcp_flags(pkt.tcp_flags)
    if name == "land":
        return pkt.src == pkt.dst
    if name == "bogons":
        return section.is_bogon(pkt.src_ip)
    if name == "fragments":
        return bool(pkt.frag & abi.SW_FRAG_IS) and pkt.frag_off == 1
    if name == "ipv4_options":
        return bool(pkt.flags & abi.SW_PKT_IPV4_OPTIONS)
    if name == "ipv6_rh0":
        return bool(pkt.flags & abi.SW_PKT_IPV6_RH0)
    if name == "zero_ports":
        return has_l4(pkt) and pkt.l4_proto in (IPPROTO_TCP, IPPROTO_UDP) and 0 in (pkt.sport, pkt.dport)
    raise KeyError(name)


class ProtectStage(Stage):
    name = "protect"
    reasons = REASONS
    keys = ("protect",)
    order = 15  # after the fastpath's lists, before the rules
    config_maps = {TABLE: ("__u32", "__u32")}  # a table: one value (lib/table.h)
    state_maps = {SEEN: ("__u32", "__u64")}

    # -- the policy file ----------------------------------------------------------------
    def section(self, doc: dict, v: Validator) -> Protect | None:
        if "protect" not in doc:
            return None
        # Sub-keys other stages own (protect.syn, ...) never reach here, but an unknown
        # key's hint names them too.
        from . import policy_keys
        others = tuple(k.split(".", 1)[1] for k in policy_keys() if k.startswith("protect."))
        spec = v.mapping(doc["protect"], "protect", tuple(FILTERS) + others)
        if spec is None:
            return None
        spec = {k: value for k, value in spec.items() if k in FILTERS}
        modes = dict(DEFAULT_MODES)
        own = "except"
        extra: list[Network] = []
        excepted: list[Network] = []
        for key, value in spec.items():
            if key == "bogons" and isinstance(value, dict):
                sub = v.mapping(value, "protect.bogons", ("mode", "except", "extra", "own"))
                if sub is None:
                    continue
                value = sub.get("mode", modes["bogons"])
                own = sub.get("own", own)
                if own not in ("except", "keep"):
                    v.report("protect.bogons.own", f"expected except or keep, got {describe(own)}")
                for listed, into in (("except", excepted), ("extra", extra)):
                    if listed in sub:
                        items = v.check(f"protect.bogons.{listed}", parse_items, sub[listed], v.address)
                        if items is not None:
                            if items.negated or any(not isinstance(x, (ipaddress.IPv4Network,
                                                                         ipaddress.IPv6Network))
                                                    for x in items.plain):
                                v.report(f"protect.bogons.{listed}", "prefixes only (no sets, no negation)")
                            else:
                                into.extend(items.plain)
            if value not in MODES:
                v.report(f"protect.{key}", f"expected off, monitor or drop, got {quote(value) if isinstance(value, str) else describe(value)}")
                continue
            modes[key] = value
        bogons = tuple(ipaddress.ip_network(p) for p in BOGONS_V4 + BOGONS_V6) + tuple(extra)
        mine = own_ranges(bogons) if own == "except" and modes["bogons"] != "off" else ()
        return Protect(modes, bogons, tuple(excepted) + mine, mine)

    def busy(self, section: Protect | None) -> bool:
        return section is not None and any(m != "off" for m in section.modes.values())

    def summary(self, section: Protect | None) -> list[str]:
        if section is None:
            return []
        on = [f"{k} ({m})" for k, m in section.modes.items() if m != "off"]
        lines = [f"protect: {', '.join(on) or 'every filter off'}"]
        if section.own:
            lines.append("protect: bogons of this host's own networks excepted: "
                         + ", ".join(map(str, section.own)))
        return lines

    # -- the reference model ------------------------------------------------------------
    def decide(self, section: Protect, pkt: ParsedPacket) -> Decision | None:
        hit = self.monitored(section, pkt)
        if hit and section.modes[hit[-1]] == "drop":
            return Decision("drop", REASON[hit[-1]])
        return None

    def monitored(self, section: Protect, pkt: ParsedPacket) -> list[str]:
        """The filters a packet is counted by (every one it matches, up to the first
        that drops it)."""
        out = []
        for name in FILTERS:
            if section.modes[name] != "off" and matched(section, name, pkt):
                out.append(name)
                if section.modes[name] == "drop":
                    break
        return out

    # -- the data plane -----------------------------------------------------------------
    def image(self, section: Protect) -> Protect:
        return section

    def sources(self, image: Protect) -> SourceMap | None:
        if image.modes["bogons"] == "off":
            return None
        nodes: dict[int, list[tuple[int, int, int]]] = {4: [(0, 0, 0)], 6: [(0, 0, 0)]}
        for nets, value in ((image.bogons, 1), (image.not_bogons, 0)):
            for net in nets:
                nodes[net.version].append((int(net.network_address), net.prefixlen, value))
        # An `except` prefix equal to a bogon prefix wins: it comes last for that node.
        return SourceMap({ver: list({(a, p): (a, p, c) for a, p, c in found}.values())
                          for ver, found in nodes.items()})

    def build(self, image: Protect, column: list[int] | None) -> StageBuild:
        values = array("I", column or [0])
        consts = {"mode": [MODES[image.modes[name]] for name in FILTERS]}
        return StageBuild(rodata={CONSTS: pack("struct sw_prot_consts", consts)},
                          table=(TABLE, values.tobytes()), memory=4 * len(values))

    def describe(self, image: Protect) -> list[str]:
        return [f"protect: {sum(m != 'off' for m in image.modes.values())} filters on; "
                "bogons from the root's source classification"]

    # -- status ------------------------------------------------------------------------
    def status(self, maps: dict[str, Any]) -> dict:
        if SEEN not in maps:
            return {}
        return {"filters": {name: sum(int(c) for c in maps[SEEN].lookup(number))
                            for name, (number, _) in FILTERS.items()}}

    def status_lines(self, report: dict) -> list[str]:
        counts = report.get("filters", {})
        seen = ", ".join(f"{name} {n:,}" for name, n in counts.items() if n)
        return [f"protect: {seen or 'nothing matched'}"] if counts else []


register(ProtectStage())
