"""The icmp stage: per-type rate limits for ICMP and ICMPv6, and errors about no flow of
this host dropped (bpf/stages/icmp.bpf.c, docs/defenses.md "ICMP").

    protect:
      icmp:
        rates:
          echo_request: {pps: 100, burst: 200}   # ICMP 8 and ICMPv6 128
          icmpv6/2: {pps: 1000}                  # a type by number, in one family
          time_exceeded: off                     # no limit (the default for errors)
        unrelated: drop                          # off | monitor | drop

`protect: {icmp: {}}` gives the defaults: echo requests limited to DEFAULT_ECHO in
each family, every other type unlimited, unrelated errors dropped. A type's bucket is
shared by every source (one per family and type). Neighbor discovery (ICMPv6 133-137)
is never limited or dropped here: a policy that tries is refused.

The stage's decisions depend on time, on the bytes of the error's embedded packet and
on the host's sockets, so `decide` hands every packet on: IcmpModel is the reference,
given the socket lookup as an input the way the kernel's table answers it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from .. import abi
from ..dataplane.images import pack
from ..model.parse import ICMP_PROTO, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, ParsedPacket
from ..policy.errors import quote
from ..policy.reference import ND_TYPES, Decision, has_l4
from ..policy.validator import Validator
from ..policy.values import describe
from . import register
from .base import Stage, StageBuild
from .limit import Limit, LimiterModel, Limits, bucket_consts, parse_limit

BUCKETS, STATS, CLOCK, CONSTS = "sw_icmp_buckets", "sw_icmp_stats", "sw_icmp_clock", ".rodata.icmp"
V4, V6 = abi.SW_FAMILY_IPV4, abi.SW_FAMILY_IPV6
MODES = {"off": abi.SW_PROT_OFF, "monitor": abi.SW_PROT_MONITOR, "drop": abi.SW_PROT_DROP}
FAMILY_WORD = {V4: "icmp", V6: "icmpv6"}

# Names of types, per family; a name stands for the type in each family that has it.
TYPE_NAMES: dict[str, dict[int, int]] = {
    "echo_reply": {V4: 0, V6: 129},
    "dest_unreachable": {V4: 3, V6: 1},
    "source_quench": {V4: 4},
    "redirect": {V4: 5, V6: 137},
    "echo_request": {V4: 8, V6: 128},
    "router_advertisement": {V4: 9, V6: 134},
    "router_solicitation": {V4: 10, V6: 133},
    "time_exceeded": {V4: 11, V6: 3},
    "parameter_problem": {V4: 12, V6: 4},
    "timestamp": {V4: 13},
    "timestamp_reply": {V4: 14},
    "packet_too_big": {V6: 2},
    "neighbor_solicitation": {V6: 135},
    "neighbor_advertisement": {V6: 136},
}
ERRORS = {V4: frozenset({3, 4, 5, 11, 12}), V6: frozenset({1, 2, 3, 4})}
# Echo requests are answered by the kernel at its own cost: by default a shared
# 1000 per second (and a burst as large) in each family. Errors are not limited.
DEFAULT_ECHO = {"pps": 1000, "burst": 1000}

Slot = tuple[int, int]  # (family, type)
# The kernel's socket table as the stage asks it: (proto, family, local address, local
# port, remote address, remote port) -> whether a socket holds that flow (for TCP, one
# that is not a listener). Addresses are 16 bytes, IPv4 mapped.
SocketLookup = Callable[[int, int, bytes, int, bytes, int], bool]


def slot_index(family: int, icmp_type: int) -> int:
    return (256 if family == V6 else 0) + icmp_type


def slot_name(family: int, icmp_type: int) -> str:
    for name, types in TYPE_NAMES.items():
        if types.get(family) == icmp_type:
            return f"{FAMILY_WORD[family]}/{name}"
    return f"{FAMILY_WORD[family]}/{icmp_type}"


@dataclass(frozen=True)
class Icmp:
    """The section: each limited (family, type) with its limit, and the unrelated mode."""

    rates: Mapping[Slot, Limit] = field(default_factory=dict)
    unrelated: str = "drop"

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.rates.items())), self.unrelated))

    def limits(self) -> Limits:
        """The buckets as the limit stage's model keys them: one rule id per slot."""
        return Limits({str(slot_index(*s)): limit for s, limit in self.rates.items()},
                      tuple((slot_index(*s), str(slot_index(*s))) for s in self.rates))


# -- the policy file -----------------------------------------------------------------


def type_slots(key: Any) -> list[Slot] | str:
    """The (family, type) pairs a rates key names, or what is wrong with it."""
    if isinstance(key, str) and key in TYPE_NAMES:
        return sorted(TYPE_NAMES[key].items())
    if isinstance(key, str) and "/" in key:
        word, _, number = key.partition("/")
        family = {w: f for f, w in FAMILY_WORD.items()}.get(word)
        if family is not None and number.isdigit() and int(number) < 256:
            return [(family, int(number))]
        if family is not None and number in TYPE_NAMES and family in TYPE_NAMES[number]:
            return [(family, TYPE_NAMES[number][family])]
    return (f"unknown ICMP type {quote(key) if isinstance(key, str) else describe(key)} "
            f"(a name: {', '.join(TYPE_NAMES)}; or icmp/N, icmpv6/N)")


def parse_rates(spec: Any, v: Validator) -> dict[Slot, Limit | None] | None:
    """The rates given, by slot: a limit, or None for `off` (no limit)."""
    path = "protect.icmp.rates"
    if not isinstance(spec, dict):
        v.report(path, f"expected a mapping of ICMP types, got {describe(spec)}")
        return None
    found: dict[Slot, Limit | None] = {}
    for key, body in spec.items():
        at = f"{path}.{key}"
        slots = type_slots(key)
        if isinstance(slots, str):
            v.report(at, slots)
            continue
        nd = [t for f, t in slots if f == V6 and t in ND_TYPES]
        if nd:
            v.report(at, f"neighbor discovery (ICMPv6 {', '.join(map(str, nd))}) is never limited: "
                         "IPv6 stops working on the link without it"
                         + ("; limit the IPv4 type as icmp/5" if key == "redirect" else ""))
            continue
        if body in ("off", None) or body is False:  # YAML 1.1 reads a bare off as false
            found.update({s: None for s in slots})
            continue
        body = v.mapping(body, at, ("pps", "burst"), required=("pps",))
        if body is None or "pps" not in body:
            continue
        limit = parse_limit(str(key), body, at, v)
        if limit is not None:
            found.update({s: replace(limit, name=slot_name(*s), per="rule") for s in slots})
    return found


def default_rates() -> dict[Slot, Limit | None]:
    return {s: Limit(slot_name(*s), per="rule", **DEFAULT_ECHO) for s in type_slots("echo_request")}


class IcmpStage(Stage):
    name = "icmp"
    reasons = ("icmp_unrelated", "icmp_limited")
    keys = ("protect.icmp",)
    order = 16  # after the anomaly filters, before the rules (and the rules' limits)
    config_maps = {CLOCK: ("__u32", "__u64[3]")}  # lib/clock.h: pinned so that it ticks
    state_maps = {
        BUCKETS: ("__u32", "struct sw_icmp_bucket"),
        STATS: ("__u32", "struct sw_icmp_stat"),
    }

    # -- the policy file ----------------------------------------------------------------
    def section(self, doc: dict, v: Validator) -> Icmp | None:
        if "protect.icmp" not in doc:
            return None
        spec = doc["protect.icmp"]
        spec = {} if spec is None else v.mapping(spec, "protect.icmp", ("rates", "unrelated"))
        if spec is None:
            return None
        unrelated = spec.get("unrelated", "drop")
        unrelated = "off" if unrelated is False else unrelated  # YAML 1.1's bare off
        if unrelated not in MODES:
            v.report("protect.icmp.unrelated", "expected off, monitor or drop, got "
                     + (quote(unrelated) if isinstance(unrelated, str) else describe(unrelated)))
            unrelated = "drop"
        rates: dict[Slot, Limit | None] = default_rates()
        if "rates" in spec:
            rates.update(parse_rates(spec["rates"], v) or {})
        limited = {s: limit for s, limit in sorted(rates.items()) if limit is not None}
        if len({(x.pps, x.burst) for x in limited.values()}) > abi.SW_ICMP_LIMITS:
            v.report("protect.icmp.rates", f"at most {abi.SW_ICMP_LIMITS} different rates")
            return None
        return Icmp(limited, unrelated)

    def busy(self, section: Icmp | None) -> bool:
        return section is not None and (bool(section.rates) or section.unrelated != "off")

    def summary(self, section: Icmp | None) -> list[str]:
        if section is None:
            return []
        rates = ", ".join(f"{slot_name(*s)} {x.pps:,} pps (burst {x.burst:,})"
                          for s, x in section.rates.items()) or "none"
        return [f"icmp: unrelated errors {section.unrelated}; limits per type: {rates}; "
                "neighbor discovery never limited"]

    def changes(self, old: Icmp | None, new: Icmp | None) -> list[str]:
        return [] if old == new else ["icmp: changed (the buckets are kept)"]

    # -- the reference model ------------------------------------------------------------
    def decide(self, section: Icmp, pkt: ParsedPacket) -> Decision | None:
        # Time, the embedded packet's bytes and the host's sockets decide: IcmpModel.
        return None

    # -- the data plane -----------------------------------------------------------------
    def build(self, image: Icmp, column: list[int] | None) -> StageBuild:
        defs: list[dict] = []
        index: dict[tuple, int] = {}
        slots = [0] * abi.SW_ICMP_SLOTS
        for slot, limit in image.rates.items():
            d = bucket_consts(limit)
            key = (d["pkt_ns"], d["pkt_tol"])
            if key not in index:
                defs.append({"pkt_ns": key[0], "pkt_tol": key[1]})
                index[key] = len(defs)
            slots[slot_index(*slot)] = index[key]
        consts = {"unrelated": MODES[image.unrelated], "nlimits": len(defs), "slot": slots, "def": defs}
        return StageBuild(rodata={CONSTS: pack("struct sw_icmp_consts", consts)})

    def describe(self, image: Icmp) -> list[str]:
        return ["icmp: per ICMP packet an array lookup, a bucket take for a limited type; "
                "per error the embedded header read and, for TCP/UDP from this host, one "
                "kernel socket lookup"]

    # -- status ------------------------------------------------------------------------
    def status(self, maps: dict[str, Any]) -> dict:
        if STATS not in maps:
            return {}
        types: dict[str, dict[str, int]] = {}
        for family in (V4, V6):
            for t in range(256):
                cells = maps[STATS].lookup(slot_index(family, t))
                total = {f: sum(int(getattr(c, f)) for c in cells) for f in ("passed", "limited", "unrelated")}
                if any(total.values()):
                    types[slot_name(family, t)] = total
        return {"types": types, "unrelated": sum(x["unrelated"] for x in types.values())}

    def status_lines(self, report: dict) -> list[str]:
        if "types" not in report:
            return []
        lines = [f"icmp {name}: {s['passed']:,} passed, {s['limited']:,} limited, "
                 f"{s['unrelated']:,} unrelated" for name, s in report["types"].items()]
        return lines + [f"icmp: {report['unrelated']:,} unrelated errors"]


# -- the reference model -------------------------------------------------------------


def embedded_flow(frame: bytes, pkt: ParsedPacket) -> tuple[int, bytes, int, bytes, int] | None:
    """What an error says this host sent: (proto, local, local port, remote, remote port)
    with ports 0 for protocols without; None when it cannot be (cut short, another
    source than the error's destination, a later fragment, extension headers past
    the second). The stage reads the same bytes (sw_icmp_related)."""
    off, end = pkt.l4_off + 8, min(len(frame), pkt.l3_off + pkt.l3_len)
    inner = frame[off:end]
    if pkt.family == V4:
        if len(inner) < 20 or inner[0] >> 4 != 4 or (inner[0] & 0xF) < 5:
            return None
        src, dst = bytes(10) + b"\xff\xff" + inner[12:16], bytes(10) + b"\xff\xff" + inner[16:20]
        if src != pkt.dst or struct.unpack("!H", inner[6:8])[0] & 0x1FFF:
            return None
        proto, at = inner[9], (inner[0] & 0xF) * 4
    else:
        if len(inner) < 40 or inner[0] >> 4 != 6 or inner[8:24] != pkt.dst:
            return None
        src, dst, proto, at = inner[8:24], inner[24:40], inner[6], 40
        for _ in range(abi.SW_ICMP_INNER_EXT):
            if proto == 44:
                h = inner[at:at + 8]
                if len(h) < 8 or (h[2] << 8 | (h[3] & 0xF8)):
                    return None
                proto, at = h[0], at + 8
            elif proto in (0, 43, 60):
                h = inner[at:at + 2]
                if len(h) < 2:
                    return None
                proto, at = h[0], at + (h[1] + 1) * 8
        if proto in (0, 43, 44, 51, 60):
            return None
    l4 = inner[at:at + 8]
    if len(l4) < 8:
        return None
    if proto in (IPPROTO_TCP, IPPROTO_UDP):
        sport, dport = struct.unpack("!HH", l4[:4])
        return proto, src, sport, dst, dport
    return proto, src, 0, dst, 0


def is_error(pkt: ParsedPacket) -> bool:
    return pkt.icmp_type in ERRORS[pkt.family]


def related(frame: bytes, pkt: ParsedPacket, sockets: SocketLookup) -> bool:
    flow = embedded_flow(frame, pkt)
    if flow is None:
        return False
    proto, local, lport, remote, rport = flow
    if proto not in (IPPROTO_TCP, IPPROTO_UDP):
        return True  # an echo, or a protocol without sockets to ask: its source suffices
    return sockets(proto, pkt.family, local, lport, remote, rport)


class IcmpModel:
    """The stage over time: the buckets (the limit stage's GCRA model, one key per
    family and type, time in ns given by the caller) and the unrelated check, with
    the kernel's socket table given as `sockets`."""

    def __init__(self, section: Icmp, sockets: SocketLookup):
        self.section = section
        self.sockets = sockets
        self.buckets = LimiterModel(section.limits())
        self.counts: dict[Slot, dict[str, int]] = {}

    def decide(self, frame: bytes, pkt: ParsedPacket, now: int = 0) -> Decision | None:
        if not has_l4(pkt) or pkt.l4_proto != ICMP_PROTO[pkt.family]:
            return None
        if pkt.l4_proto == IPPROTO_ICMPV6 and pkt.icmp_type in ND_TYPES:
            return None
        slot = (pkt.family, pkt.icmp_type)
        count = self.counts.setdefault(slot, {"passed": 0, "limited": 0, "unrelated": 0})
        if self.section.unrelated != "off" and is_error(pkt) and not related(frame, pkt, self.sockets):
            count["unrelated"] += 1
            if self.section.unrelated == "drop":
                return Decision("drop", "icmp_unrelated")
        if slot in self.section.rates and not self.buckets.offer(slot_index(*slot), pkt, now):
            count["limited"] += 1
            return Decision("drop", "icmp_limited")
        count["passed"] += 1
        return None


register(IcmpStage())
