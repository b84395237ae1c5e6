"""A policy reduced to what every peer's translator needs: per address family, each rule
as value intervals per field, the fastpath as disjoint address ranges with their verdict,
and the tests that say when rules may be merged or reordered without changing which rule
decides first.

Values keep shieldwall's meaning (docs/policy.md): `length` is the layer-3 length of both
families, `proto` the upper-layer protocol. Translators convert where their tool differs.
"""

from __future__ import annotations

import bisect
import heapq
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable, Iterator, Mapping, Sequence

from ..policy import reference
from ..policy.model import (DOMAINS, Fragment, Items, Network, Policy, Range, Rule,
                             TcpFlags, expand)

FAMILIES = (4, 6)
ADDR_MAX = {4: (1 << 32) - 1, 6: (1 << 128) - 1}
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6 = 1, 6, 17, 58
ICMP_PROTO = {4: IPPROTO_ICMP, 6: IPPROTO_ICMPV6}
ND_TYPES = (133, 137)  # router/neighbor solicitation and advertisement, redirect
IPV6_HLEN = 40

# Fields that hold for every IP packet: a span covering their whole domain is no condition.
# The others also need a header (ports, ICMP) or a tag, so they stay even when full.
ALWAYS_APPLIES = frozenset({"src", "dst", "proto", "length", "ttl"})
# The order of fields in a clause and so in concatenated keys.
KEY_ORDER = ("src", "dst", "proto", "sport", "dport", "icmp_type", "icmp_code", "length", "ttl",
             "vlan")

Interval = tuple[int, int]


class Span:
    """A set of integers as sorted, disjoint, non-adjacent closed intervals."""

    __slots__ = ("parts",)

    def __init__(self, parts: Iterable[Interval] = ()) -> None:
        merged: list[list[int]] = []
        for lo, hi in sorted(parts):
            if lo > hi:
                continue
            if merged and lo <= merged[-1][1] + 1:
                if hi > merged[-1][1]:
                    merged[-1][1] = hi
            else:
                merged.append([lo, hi])
        self.parts: tuple[Interval, ...] = tuple((lo, hi) for lo, hi in merged)

    @classmethod
    def of(cls, lo: int, hi: int) -> Span:
        return cls(((lo, hi),))

    def __bool__(self) -> bool:
        return bool(self.parts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Span) and self.parts == other.parts

    def __hash__(self) -> int:
        return hash(self.parts)

    def __repr__(self) -> str:
        return f"Span({list(self.parts)})"

    def __contains__(self, value: int) -> bool:
        lo_i, hi_i = 0, len(self.parts)
        while lo_i < hi_i:
            mid = (lo_i + hi_i) // 2
            lo, hi = self.parts[mid]
            if value < lo:
                hi_i = mid
            elif value > hi:
                lo_i = mid + 1
            else:
                return True
        return False

    def __or__(self, other: Span) -> Span:
        return Span(self.parts + other.parts)

    def __and__(self, other: Span) -> Span:
        out, i, j = [], 0, 0
        a, b = self.parts, other.parts
        while i < len(a) and j < len(b):
            lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
            if lo <= hi:
                out.append((lo, hi))
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return Span(out)

    def complement(self, lo: int, hi: int) -> Span:
        out, at = [], lo
        for a, b in self.parts:
            if a > at:
                out.append((at, min(a - 1, hi)))
            at = max(at, b + 1)
        if at <= hi:
            out.append((at, hi))
        return Span(out)

    def __sub__(self, other: Span) -> Span:
        if not self.parts or not other.parts:
            return self
        return self & other.complement(self.parts[0][0], self.parts[-1][1])

    def isdisjoint(self, other: Span) -> bool:
        return not (self & other)

    def size(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.parts)

    def values(self) -> Iterator[int]:
        for lo, hi in self.parts:
            yield from range(lo, hi + 1)

    def is_full(self, lo: int, hi: int) -> bool:
        return self.parts == ((lo, hi),)

    def shifted(self, delta: int, lo: int, hi: int) -> Span:
        """Every value plus delta, clipped to lo..hi."""
        return Span((a + delta, b + delta) for a, b in self.parts) & Span.of(lo, hi)


def domain(name: str, family: int) -> tuple[int, int]:
    if name in ("src", "dst"):
        return 0, ADDR_MAX[family]
    dom = DOMAINS[name]
    return dom.lo, dom.hi


def net_interval(net: Network) -> Interval:
    lo = int(net.network_address)
    return lo, lo | ((1 << (net.max_prefixlen - net.prefixlen)) - 1)


def networks_span(nets: Iterable[Network]) -> Span:
    return Span(net_interval(net) for net in nets)


def _range_span(items: Items[Range], lo: int, hi: int) -> Span:
    """The values a numeric list holds for (docs/policy.md, the list rule)."""
    plain = Span((r.lo, r.hi) for r in items.plain) if items.plain else Span.of(lo, hi)
    return plain - Span((r.lo, r.hi) for r in items.negated)


@dataclass(frozen=True)
class Addresses:
    """An address list seen from one family: its plain and negated networks (collapsed),
    and the addresses it holds for. `plain` is None when the list has no plain item, so
    it holds for every address its negations leave."""

    plain: tuple[Network, ...] | None
    negated: tuple[Network, ...]
    span: Span


def family_networks(nets: Iterable[Network], family: int) -> tuple[Network, ...]:
    """The networks of one family, each once. Nested ones stay: set types that take
    prefixes of several lengths hold them, and merging a million in Python is slow."""
    return tuple(dict.fromkeys(n for n in nets if n.version == family))


def addresses(items: Items, family: int) -> Addresses:
    def family_nets(values) -> tuple[Network, ...]:
        return family_networks(expand(values), family)

    negated = family_nets(items.negated)
    top = ADDR_MAX[family]
    if items.plain:
        plain = family_nets(items.plain)
        span = networks_span(plain)
    else:
        plain, span = None, Span.of(0, top)
    span = span - networks_span(negated)
    return Addresses(plain, negated, span)


@dataclass(frozen=True)
class Clause:
    """One rule restricted to one family: it matches a packet of that family when every
    span holds its field's value and the other conditions hold.

    `spans` has the fields in KEY_ORDER. `proto` is narrowed to what the other fields
    need (ports: TCP or UDP, tcp_flags: TCP, icmp_*: the family's ICMP). `needs_l4` says
    the clause reads a TCP, UDP or ICMP header, which a non-first fragment never has.
    """

    rule: Rule
    family: int
    spans: Mapping[str, Span]
    addrs: Mapping[str, Addresses]
    tcp_flags: TcpFlags | None
    fragment: Fragment | None
    needs_l4: bool

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def verdict(self) -> str | None:
        return self.rule.action.verdict



def clause(rule: Rule, family: int) -> Clause | None:
    """The rule for packets of one family; None when it can match none of them."""
    match = rule.match
    if match.family is not None and match.family.value != f"ipv{family}":
        return None
    spans: dict[str, Span] = {}
    addrs: dict[str, Addresses] = {}
    for name in ("src", "dst"):
        items = getattr(match, name)
        if items is not None:
            addrs[name] = addresses(items, family)
            spans[name] = addrs[name].span
    for name in ("proto", "sport", "dport", "icmp_type", "icmp_code", "length", "ttl", "vlan"):
        items = getattr(match, name)
        if items is not None:
            spans[name] = _range_span(items, *domain(name, family))

    needs: Span | None = None
    if "sport" in spans or "dport" in spans:
        needs = Span([(IPPROTO_TCP, IPPROTO_TCP), (IPPROTO_UDP, IPPROTO_UDP)])
    if match.tcp_flags is not None:
        tcp = Span.of(IPPROTO_TCP, IPPROTO_TCP)
        needs = tcp if needs is None else needs & tcp
    if "icmp_type" in spans or "icmp_code" in spans:
        icmp = Span.of(ICMP_PROTO[family], ICMP_PROTO[family])
        needs = icmp if needs is None else needs & icmp
    if needs is not None:
        spans["proto"] = spans.get("proto", Span.of(0, 255)) & needs
    if match.fragment is Fragment.NON_FIRST and needs is not None:
        return None
    if family == 6 and "length" in spans:
        # An IPv6 packet is at least its fixed header long, and its length fits 16 bits.
        spans["length"] = spans["length"] & Span.of(IPV6_HLEN, 0xFFFF)
    if any(not span for span in spans.values()):
        return None
    for name in list(spans):
        if name in ALWAYS_APPLIES and spans[name].is_full(*domain(name, family)):
            if not (name == "proto" and needs is not None):
                del spans[name]
                addrs.pop(name, None)
    ordered = {name: spans[name] for name in KEY_ORDER if name in spans}
    return Clause(rule, family, ordered, addrs, match.tcp_flags, match.fragment,
                  needs is not None)


def clauses(policy: Policy, family: int) -> list[Clause]:
    return [c for rule in policy.rules if (c := clause(rule, family)) is not None]


def disjoint(a: Clause, b: Clause) -> bool:
    """True when no packet can match both (sound, not complete: False may be wrong)."""
    if a.family != b.family:
        return True
    for name, span in a.spans.items():
        other = b.spans.get(name)
        if other is not None and span.isdisjoint(other):
            return True
    if a.tcp_flags is not None and b.tcp_flags is not None:
        both = a.tcp_flags.mask & b.tcp_flags.mask
        if (a.tcp_flags.value ^ b.tcp_flags.value) & both:
            return True
    frags = {a.fragment, b.fragment}
    if frags == {Fragment.FIRST, Fragment.NON_FIRST}:
        return True
    if (a.fragment is Fragment.NON_FIRST and b.needs_l4) or (
            b.fragment is Fragment.NON_FIRST and a.needs_l4):
        return True
    return False


# --- grouping ---------------------------------------------------------------------



class IntervalIndex:
    """A growing union of intervals that answers "does this overlap?" by bisection."""

    __slots__ = ("los", "his")

    def __init__(self, span: Span) -> None:
        self.los = [lo for lo, _ in span.parts]
        self.his = [hi for _, hi in span.parts]

    def overlaps(self, lo: int, hi: int) -> bool:
        i = bisect.bisect_right(self.los, hi)  # the intervals starting at or before hi
        return i > 0 and self.his[i - 1] >= lo

    def isdisjoint(self, span: Span) -> bool:
        return not any(self.overlaps(lo, hi) for lo, hi in span.parts)

    def add(self, span: Span) -> None:
        for lo, hi in span.parts:
            j = bisect.bisect_left(self.his, lo - 1)  # first that ends at or after lo - 1
            k = bisect.bisect_right(self.los, hi + 1)  # past the last that starts by hi + 1
            if j < k:
                lo, hi = min(lo, self.los[j]), max(hi, self.his[k - 1])
            self.los[j:k] = [lo]
            self.his[j:k] = [hi]


@dataclass
class Group:
    """Clauses one lookup decides, in policy order. `hull` holds, for each field every
    member has, the union of their values; `state` is the translator's bookkeeping."""

    shape: Hashable
    members: list[Clause]
    hull: dict[str, IntervalIndex] = field(default_factory=dict)
    state: dict = field(default_factory=dict)

    def add(self, c: Clause) -> None:
        if not self.members:
            self.hull = {name: IntervalIndex(span) for name, span in c.spans.items()}
        else:
            for name in list(self.hull):
                if name in c.spans:
                    self.hull[name].add(c.spans[name])
                else:
                    del self.hull[name]
        self.members.append(c)

    def disjoint_on(self, c: Clause, names) -> bool:
        """Whether c shares no value with any member on one of these fields."""
        return any(name in self.hull and name in c.spans and
                   self.hull[name].isdisjoint(c.spans[name]) for name in names)


# How far back a clause may look for a group to join; each step back must be proven
# harmless, so the search is bounded. Past MEMBER_CHECKS members, a group is only
# checked as a whole (its hull).
LOOKBACK = 64
MEMBER_CHECKS = 32


def _disjoint_from_group(c: Clause, group: Group) -> bool:
    if group.disjoint_on(c, c.spans):
        return True
    if len(group.members) > MEMBER_CHECKS:
        return False
    return all(disjoint(c, m) for m in group.members)


def group_clauses(
    items: Sequence[Clause],
    shape_of: Callable[[Clause], Hashable | None],
    can_join: Callable[[Group, Clause], bool],
) -> list[Group]:
    """Clauses in order, each joining an earlier group of its shape when that cannot
    change which clause decides first.

    A clause may join group G when `can_join` allows it and it is disjoint from every
    clause of the groups between G and the end: moving it up past them changes nothing,
    since no packet matches both. Within G it comes after G's members, as in the
    policy. Clauses that decide nothing (count, monitor) are groups of their own and
    never moved past, so what they count stays the same.
    """
    groups: list[Group] = []
    for c in items:
        shape = shape_of(c) if c.verdict is not None else None
        target = None
        if shape is not None:
            for back in range(len(groups) - 1, max(-1, len(groups) - 1 - LOOKBACK), -1):
                g = groups[back]
                if g.shape == shape and can_join(g, c):
                    target = g
                    break
                if g.shape is None and any(m.verdict is None for m in g.members):
                    break
                if not _disjoint_from_group(c, g):
                    break
        if target is None:
            target = Group(shape, [])
            groups.append(target)
        target.add(c)
    return groups


def first_wins(entries: Sequence[tuple[Span, str]]) -> list[tuple[int, int, str]]:
    """Disjoint intervals, each with the value of the first entry holding it; adjacent
    intervals with the same value are merged."""
    events: list[tuple[int, int, int]] = []  # (position, 0 = start / 1 = end, entry)
    for idx, (span, _) in enumerate(entries):
        for lo, hi in span.parts:
            events.append((lo, 0, idx))
            events.append((hi + 1, 1, idx))
    events.sort()
    out: list[tuple[int, int, str]] = []
    active: list[int] = []
    ended: dict[int, int] = {}
    i, pos = 0, None
    while i < len(events):
        at = events[i][0]
        if pos is not None and active:
            while active and ended.get(active[0], 0):
                ended[active[0]] -= 1
                heapq.heappop(active)
            if active and pos <= at - 1:
                value = entries[active[0]][1]
                if out and out[-1][2] == value and out[-1][1] + 1 == pos:
                    out[-1] = (out[-1][0], at - 1, value)
                else:
                    out.append((pos, at - 1, value))
        while i < len(events) and events[i][0] == at:
            _, kind, idx = events[i]
            if kind == 0:
                heapq.heappush(active, idx)
            else:
                ended[idx] = ended.get(idx, 0) + 1
            i += 1
        pos = at
    return out


# --- the chain of stages ----------------------------------------------------------

# The stages a peer can stand in for. Any other stage in a policy's chain is a note.
PEER_STAGES = ("fastpath", "policy")


class _NoFastpath:
    allow: tuple = ()
    deny: tuple = ()


def fastpath_of(policy: Policy):
    """The policy's fastpath section (allow and deny), empty when it has none."""
    return getattr(policy, "fastpath", None) or _NoFastpath()


def chain(policy: Policy) -> tuple[str, ...]:
    """The stages that decide, in order, as the reference runs them: pipeline.stages, or
    those with work to do (the fastpath when it lists anything, ...), then the policy
    stage. The policy stage always decides, so the chain stops there; without it, what
    the chain leaves passes."""
    if policy.pipeline.stages is not None:
        stages = tuple(policy.pipeline.stages)
    else:
        stages = reference.chain(policy)
        stages += () if "policy" in stages else ("policy",)
    if "policy" in stages:
        stages = stages[:stages.index("policy") + 1]
    return stages


def unknown_stages(policy: Policy) -> list[str]:
    return [name for name in chain(policy) if name not in PEER_STAGES]


# Why a peer has no stand-in for a stage, where there is more to say than that.
_NO_STAND_IN = {
    "conntrack": "the rules' `state` needs the kernel's connection tracking, which runs "
                 "after the hook the peer filters at (netdev ingress, raw PREROUTING, XDP): "
                 "`ct state established` or `-m conntrack --ctstate ESTABLISHED` know no "
                 "state there",
    "icmp": "per-type limits it could say (`limit rate` / hashlimit per ICMP type), but "
            "not which errors are about the host's own flows: that needs the host's "
            "sockets, and conntrack's RELATED knows only the flows conntrack tracked, "
            "after the hook the peer filters at",
}


def stage_reasons(policy: Policy, peer: str) -> list[str]:
    """Why the peer cannot run the policy's chain: one reason per stage it lacks."""
    return [f"stage {name}: " + _NO_STAND_IN.get(name, f"{peer} has no stand-in for it")
            for name in unknown_stages(policy)]


def runs_rules(policy: Policy) -> bool:
    return "policy" in chain(policy)


def end_verdict(policy: Policy) -> str:
    """The verdict when nothing before decides: default_action, or pass at the end of a
    chain without the policy stage."""
    return policy.default_action if runs_rules(policy) else "pass"


def chain_fastpath(policy: Policy):
    """The fastpath if the chain runs it before the policy stage, else an empty one."""
    return fastpath_of(policy) if "fastpath" in chain(policy) else _NoFastpath()


# Translators ask for a policy's clauses several times; a policy never changes, and a
# big set makes each time cost seconds. Entries keep their policy, so ids stay theirs.
_CLAUSES: OrderedDict[tuple[int, int], tuple[Policy, list[Clause]]] = OrderedDict()
_CLAUSES_KEPT = 8


def chain_clauses(policy: Policy, family: int) -> list[Clause]:
    """The clauses of the rules the chain runs (none without the policy stage)."""
    if not runs_rules(policy):
        return []
    key = (id(policy), family)
    if key not in _CLAUSES:
        _CLAUSES[key] = (policy, clauses(policy, family))
        while len(_CLAUSES) > _CLAUSES_KEPT:
            _CLAUSES.popitem(last=False)
    _CLAUSES.move_to_end(key)
    return _CLAUSES[key][1]


def nd_protected(policy: Policy) -> bool:
    """Whether IPv6 neighbor discovery passes where default_action would drop it."""
    return runs_rules(policy) and policy.default_action == "drop"


# --- fastpath ---------------------------------------------------------------------


def fastpath_ranges(fastpath, family: int) -> list[tuple[int, int, str]]:
    """The fastpath's longest-prefix decision as disjoint address ranges: each range has
    the verdict of the longest listed prefix holding it (pass for allow, drop for deny)."""
    nets: dict[Network, str] = {}
    for verdict, values in (("pass", fastpath.allow), ("drop", fastpath.deny)):
        for net in expand(values):
            if net.version == family:
                nets[net] = verdict
    # Longer prefixes first: with first_wins, the longest holding prefix decides.
    ordered = sorted(nets.items(), key=lambda kv: -kv[0].prefixlen)
    return first_wins([(Span((net_interval(net),)), verdict) for net, verdict in ordered])


def fastpath_networks(fastpath, family: int) -> tuple[list[Network], list[Network]]:
    """The allow and deny prefixes of one family, duplicates removed."""
    allow = sorted({n for n in expand(fastpath.allow) if n.version == family},
                   key=lambda n: (int(n.network_address), n.prefixlen))
    deny = sorted({n for n in expand(fastpath.deny) if n.version == family},
                  key=lambda n: (int(n.network_address), n.prefixlen))
    return allow, deny


def policy_sets(policy: Policy, family: int) -> dict[str, Span]:
    return {name: networks_span(n for n in s.prefixes if n.version == family)
            for name, s in policy.sets.items()}
