"""The reflection stage: UDP from a reflector's source port passes only when it answers
a query this host sent (bpf/stages/reflection.bpf.c, docs/defenses.md "Reflection and
amplification").

    protect:
      reflection: {}                 # the defaults below
      reflection:
        ports: [27015]               # reflector source ports added to the default list
        only: [53, 123]              # or: exactly these ports instead of the list
        ttl: 5                       # seconds a query of this host waits for its reply
        allow: [192.0.2.53, "@resolvers"]   # sources whose unsolicited replies pass
        limit: {pps: 100, burst: 200}       # per reflector, instead of dropping
        fragments: track             # later UDP fragments need their first; or off

A TC egress program records the host's own UDP to those ports (for DNS, one entry per
query id); the XDP stage looks a reply up with its ends swapped. Later fragments carry no
ports: one passes when the first fragment of its datagram passed the stage.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any

from .. import abi
from ..dataplane.images import pack
from ..dataplane.sources import SourceMap
from ..model.parse import IPPROTO_UDP, ParsedPacket, parse
from ..policy.model import AddrValue, PrefixSet, PrefixTable, expand
from ..policy.reference import Decision, has_l4
from ..policy.validator import Validator
from ..policy.values import describe, parse_items
from . import register
from .base import Stage, StageBuild
from .conntrack import flow_key
from .limit import Limit, LimiterModel, Limits, bucket_consts

QUERIES, FRAG_REPLIES, FRAG_OTHER = "sw_refl_queries", "sw_refl_frag_replies", "sw_refl_frag_other"
BUCKETS, NEWCOMERS, STATS = "sw_refl_buckets", "sw_refl_newcomers", "sw_refl_stats"
TABLE, CLOCK, CONSTS = "sw_refl_tab", "sw_refl_clock", ".rodata.refl"
EGRESS_PROGRAM = "sw_refl_egress"
KEY = "protect.reflection"

# Source ports of the services that answer a small spoofed request with a large reply.
REFLECTORS = {
    19: "chargen", 53: "DNS", 111: "portmap", 123: "NTP", 161: "SNMP", 389: "CLDAP",
    1900: "SSDP", 3702: "WS-Discovery", 5353: "mDNS", 11211: "memcached", 37810: "DVR",
}
DNS_PORT = 53
DEFAULT_TTL = 5
MAX_TTL = 300
FRAG_S = 2          # a first fragment waits this long for the rest of its datagram
FRAGMENT_MODES = {"track": abi.SW_REFL_FRAG_TRACK, "off": abi.SW_REFL_FRAG_OFF}
NS = 1_000_000_000
STAT_FIELDS = ("queries", "matched", "allowed", "dropped", "passed_limit", "limited",
               "frags_passed", "frags_dropped")


@dataclass(frozen=True)
class Reflection:
    ports: frozenset[int] = frozenset(REFLECTORS)
    ttl: int = DEFAULT_TTL
    allow: tuple[AddrValue, ...] = ()
    pps: int | None = None          # `limit`: per reflector, instead of dropping
    burst: int = 0
    fragments: str = "track"
    allow_table: PrefixTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow_table", PrefixTable(expand(self.allow)))

    @property
    def limit(self) -> Limit | None:
        """The per-reflector limit as the limit stage's buckets read one (a source each)."""
        if self.pps is None:
            return None
        return Limit("reflection", prefix4=32, prefix6=128, pps=self.pps, burst=self.burst)


def _port_list(value: Any, path: str, v: Validator) -> list[int] | None:
    if not isinstance(value, list) or not value:
        v.report(path, f"expected a list of ports, got {describe(value)}")
        return None
    good = []
    for i, port in enumerate(value):
        if type(port) is not int or not 1 <= port <= 65535:
            v.report(f"{path}[{i}]", f"expected a port from 1 to 65535, got {describe(port)}")
        else:
            good.append(port)
    return good


def parse_section(spec: Any, v: Validator) -> Reflection | None:
    spec = v.mapping(spec, KEY, ("ports", "only", "ttl", "allow", "limit", "fragments"))
    if spec is None:
        return None
    ports = set(REFLECTORS)
    if "ports" in spec and "only" in spec:
        v.report(KEY, "`ports` adds to the default list, `only` replaces it: give one of them")
    only = _port_list(spec["only"], f"{KEY}.only", v) if "only" in spec else None
    added = _port_list(spec["ports"], f"{KEY}.ports", v) if "ports" in spec else None
    ports = set(only) if only is not None else ports | set(added or ())
    ttl = spec.get("ttl", DEFAULT_TTL)
    if type(ttl) is not int or not 1 <= ttl <= MAX_TTL:
        v.report(f"{KEY}.ttl", f"expected seconds from 1 to {MAX_TTL}, got {describe(ttl)}")
        ttl = DEFAULT_TTL
    fragments = spec.get("fragments", "track")
    fragments = "off" if fragments is False else fragments  # YAML 1.1 reads `off` so
    if fragments not in FRAGMENT_MODES:
        v.report(f"{KEY}.fragments", f"expected track or off, got {describe(fragments)}")
        fragments = "track"
    allow: tuple[AddrValue, ...] = ()
    if "allow" in spec:
        items = v.check(f"{KEY}.allow", parse_items, spec["allow"], v.address)
        if items is not None:
            if items.negated:
                v.report(f"{KEY}.allow", "addresses, prefixes and @sets only (no negation)")
            else:
                allow = tuple(items.plain)
    pps, burst = None, 0
    if "limit" in spec:
        lim = v.mapping(spec["limit"], f"{KEY}.limit", ("pps", "burst"), required=("pps",))
        if lim is not None and "pps" in lim:
            pps = lim["pps"]
            if type(pps) is not int or not 1 <= pps <= 10**9:
                v.report(f"{KEY}.limit.pps", f"expected packets a second from 1 to 10^9, got {describe(pps)}")
                pps = None
            burst = lim.get("burst", pps or 1)
            if type(burst) is not int or not 1 <= burst <= 10**9:
                v.report(f"{KEY}.limit.burst", f"expected packets from 1 to 10^9, got {describe(burst)}")
                burst = 1
    return Reflection(frozenset(ports), ttl, allow, pps, burst, fragments)


# -- the reference model -------------------------------------------------------------

QueryKey = tuple  # conntrack's flow key (local, remote, lport, rport, proto, family) + qid


def _qid(frame: bytes, pkt: ParsedPacket) -> int | None:
    at = pkt.l4_off + 8
    return int.from_bytes(frame[at:at + 2], "big") if len(frame) >= at + 2 else None


def frag_key(frame: bytes, pkt: ParsedPacket) -> tuple | None:
    """The datagram a fragment belongs to (the stage's sw_refl_frag_key): IPv4 by its
    identification; IPv6 only with the fragment header right after the fixed one."""
    if pkt.family == abi.SW_FAMILY_IPV4:
        ident = frame[pkt.l3_off + 4:pkt.l3_off + 6]
    elif frame[pkt.l3_off + 6:pkt.l3_off + 7] == b"\x2c":
        ident = frame[pkt.l3_off + 44:pkt.l3_off + 48]
    else:
        return None
    return (pkt.src, pkt.dst, int.from_bytes(ident, "big"), pkt.family)


@dataclass
class ReflectionModel:
    """The stage's tables in pure Python (times in ns): the host's outgoing frames go in
    through outgoing(), inbound ones are judged by inbound() as the data plane would."""

    section: Reflection
    queries: dict[QueryKey, int] = field(default_factory=dict)
    frag_replies: dict[tuple, int] = field(default_factory=dict)
    frag_other: dict[tuple, int] = field(default_factory=dict)
    buckets: LimiterModel | None = None
    newcomers: LimiterModel | None = None

    def __post_init__(self) -> None:
        limit = self.section.limit
        if limit is not None:
            self.buckets = LimiterModel(Limits({"r": limit}, ((1, "r"),)))
            self.newcomers = LimiterModel(Limits({"r": Limit("r", per="rule", pps=limit.pps,
                                                             burst=limit.burst)}, ((1, "r"),)))

    def outgoing(self, frame: bytes, now: int = 0) -> None:
        pkt, _ = parse(frame)
        if pkt.frag_off:
            return
        key = flow_key(frame, pkt, outgoing=True)
        if key is None or key[4] != IPPROTO_UDP or key[3] not in self.section.ports:
            return
        qid = 0
        if key[3] == DNS_PORT:
            qid = _qid(frame, pkt)
            if qid is None:
                return
        self.queries[(*key, qid)] = now + self.section.ttl * NS

    def answers(self, frame: bytes, pkt: ParsedPacket, now: int) -> bool:
        key = flow_key(frame, pkt, outgoing=False)
        qid = _qid(frame, pkt) if pkt.sport == DNS_PORT else 0
        return key is not None and qid is not None and self.queries.get((*key, qid), 0) > now

    def first(self, frame: bytes, pkt: ParsedPacket, table: dict, now: int) -> None:
        if self.section.fragments == "track" and pkt.frag & abi.SW_FRAG_IS:
            key = frag_key(frame, pkt)
            if key is not None:
                table[key] = now + FRAG_S * NS

    def within_limit(self, pkt: ParsedPacket, now: int) -> bool:
        """The source's bucket; a source without one first takes from the newcomers'."""
        assert self.buckets is not None and self.newcomers is not None
        key = ("r", "source", self.section.limit.prefix(pkt.src_ip))
        if key not in self.buckets.tat and not self.newcomers.offer(1, pkt, now):
            return False
        return self.buckets.offer(1, pkt, now)

    def inbound(self, frame: bytes, now: int = 0) -> Decision | None:
        """The stage's decision on an inbound frame (None: handed on)."""
        pkt, root = parse(frame)
        if root is not None or pkt.family == abi.SW_FAMILY_NONE or pkt.l4_proto != IPPROTO_UDP:
            return None
        s = self.section
        if pkt.frag_off:
            if s.fragments != "track":
                return None
            key = frag_key(frame, pkt)
            if key is not None and max(self.frag_replies.get(key, 0), self.frag_other.get(key, 0)) > now:
                return None
            return Decision("drop", "reflection_fragment")
        if not has_l4(pkt):
            return None
        if pkt.sport not in s.ports:
            self.first(frame, pkt, self.frag_other, now)
            return None
        if self.answers(frame, pkt, now):
            self.first(frame, pkt, self.frag_replies, now)
            return None
        if pkt.src_ip in s.allow_table:
            self.first(frame, pkt, self.frag_other, now)
            return None
        if s.pps is None:
            return Decision("drop", "reflection")
        if self.within_limit(pkt, now):
            self.first(frame, pkt, self.frag_other, now)
            return None
        return Decision("drop", "reflector_limited")


class ReflectionStage(Stage):
    name = "reflection"
    reasons = ("reflection", "reflector_limited", "reflection_fragment")
    keys = (KEY,)
    order = 17  # after the lists and the protect filters, before the limit stage's blocks
    config_maps = {TABLE: ("__u32", "__u32"), CLOCK: ("__u32", "__u64[3]")}
    state_maps = {
        QUERIES: ("struct sw_refl_key", "__u64"),
        FRAG_REPLIES: ("struct sw_refl_frag_key", "__u64"),
        FRAG_OTHER: ("struct sw_refl_frag_key", "__u64"),
        BUCKETS: ("struct sw_addr_key", "__u64"),
        NEWCOMERS: ("__u32", "__u64"),
        STATS: ("__u32", "struct sw_refl_stat"),
    }
    egress = EGRESS_PROGRAM

    # -- the policy file ----------------------------------------------------------------
    def section(self, doc: dict, v: Validator) -> Reflection | None:
        return parse_section(doc[KEY] if doc[KEY] is not None else {}, v) if KEY in doc else None

    def busy(self, section: Reflection | None) -> bool:
        return section is not None and bool(section.ports)

    def sets_used(self, section: Reflection | None) -> set[str]:
        return {x.name for x in section.allow if isinstance(x, PrefixSet)} if section else set()

    def summary(self, section: Reflection | None) -> list[str]:
        if section is None:
            return []
        named = ", ".join(f"{p} ({REFLECTORS[p]})" if p in REFLECTORS else str(p)
                          for p in sorted(section.ports))
        unsolicited = (f"limited to {section.pps} pps (burst {section.burst}) per reflector"
                       if section.pps else "dropped")
        lines = [f"reflection: UDP from ports {named} passes when it answers this host's own "
                 f"query (within {section.ttl} s); unsolicited {unsolicited}; "
                 f"later fragments {'need their first' if section.fragments == 'track' else 'not checked'}"]
        if section.allow:
            lines.append("reflection: allowed sources: " + ", ".join(map(str, section.allow)))
        return lines

    # -- the reference model ------------------------------------------------------------
    def decide(self, section: Reflection, pkt: ParsedPacket) -> Decision | None:
        # With its tables empty (no query pending, no first fragment seen): what an
        # attacker's flood meets. ReflectionModel follows the tables over time.
        if pkt.family == abi.SW_FAMILY_NONE or pkt.l4_proto != IPPROTO_UDP:
            return None
        if pkt.frag_off:
            return Decision("drop", "reflection_fragment") if section.fragments == "track" else None
        if not has_l4(pkt) or pkt.sport not in section.ports or pkt.src_ip in section.allow_table:
            return None
        return Decision("drop", "reflection") if section.pps is None else None

    # -- the data plane -----------------------------------------------------------------
    def sources(self, image: Reflection) -> SourceMap | None:
        if not image.allow:
            return None
        nodes: dict[int, list[tuple[int, int, int]]] = {4: [(0, 0, 0)], 6: [(0, 0, 0)]}
        for net in expand(image.allow):
            nodes[net.version].append((int(net.network_address), net.prefixlen, 1))
        return SourceMap({ver: list({(a, p): (a, p, c) for a, p, c in found}.values())
                          for ver, found in nodes.items()})

    def build(self, image: Reflection, column: list[int] | None) -> StageBuild:
        words = [0] * abi.SW_REFL_PORT_WORDS
        for port in image.ports:
            words[port >> 5] |= 1 << (port & 31)
        limit = image.limit
        d = bucket_consts(limit) if limit else {"pkt_ns": 0, "pkt_tol": 0}
        consts = {"ttl_ns": image.ttl * NS, "frag_ns": FRAG_S * NS, "pkt_ns": d["pkt_ns"],
                  "pkt_tol": d["pkt_tol"], "fragments": FRAGMENT_MODES[image.fragments],
                  "allow": int(bool(image.allow)), "word": words}
        values = array("I", column or [0])
        return StageBuild(rodata={CONSTS: pack("struct sw_refl_consts", consts)},
                          table=(TABLE, values.tobytes()), memory=4 * len(values))

    def describe(self, image: Reflection) -> list[str]:
        return [f"reflection: a bit test per UDP packet; a reflector's reply costs one hash "
                f"lookup ({abi.SW_REFL_QUERIES:,} pending queries at most), a later UDP "
                f"fragment two"]

    # -- status ------------------------------------------------------------------------
    def status(self, maps: dict[str, Any]) -> dict:
        if STATS not in maps:
            return {}
        per_cpu = maps[STATS].lookup(0)
        counts = {name: sum(int(getattr(c, name)) for c in per_cpu) for name in STAT_FIELDS}
        return {**counts, "pending": sum(1 for _ in maps[QUERIES].keys()),
                "pending_max": abi.SW_REFL_QUERIES}

    def status_lines(self, report: dict) -> list[str]:
        if "matched" not in report:
            return []
        r = report
        return [f"reflection: {r['matched']:,} replies matched this host's {r['queries']:,} queries, "
                f"{r['dropped']:,} unsolicited dropped, {r['allowed']:,} allowed, "
                f"{r['passed_limit']:,} within the limit, {r['limited']:,} over it; fragments "
                f"{r['frags_passed']:,} passed, {r['frags_dropped']:,} dropped; "
                f"{r['pending']:,} queries pending (at most {r['pending_max']:,})"]


register(ReflectionStage())
