"""A shieldwall policy as an nftables ruleset at the earliest hook nftables has: the
`netdev` family's `ingress` hook on the protected device.

The ruleset is written for speed:

- one `meta protocol` verdict map sends IPv4 and IPv6 to a chain each; everything else
  (ARP, LLDP, ...) is accepted by the base chain's policy, as shieldwall passes non-IP;
- the fastpath is one interval verdict map per family: the longest-prefix decision is
  flattened into disjoint ranges, so an allowed /32 inside a denied /24 stays allowed;
- consecutive rules of the same shape (the same fields, the same extra conditions)
  become one lookup: a set when they share a verdict (`ip saddr . meta l4proto . th
  dport @g1 drop`), a verdict map when they do not. With one key field the ranges are
  flattened first-wins, so any run merges; with several, only rules whose keys are
  provably disjoint do. A rule may also join an earlier group when it is disjoint from
  every rule in between, so the rule that decides first never changes;
- `count` and `monitor` rules decide nothing: they are left out unless counters are
  asked for, and then every rule gets its own counter and nothing is merged;
- `default_action` is each family chain's last verdict; with `drop`, IPv6 neighbor
  discovery (ICMPv6 133-137) is accepted just before it.

What the hook sees of VLAN tags on a veth: the core strips the outer tag into skb
metadata before the ingress hook, whatever the device's offload settings. nftables
rebuilds it for link-layer payload expressions (`@ll,112,16`, `vlan id`), and with one
tag `meta protocol`, `ip ...` and `th ...` see the inner packet as if untagged: rules
apply as in shieldwall, and `vlan` matches the tag's id (802.1Q and 802.1ad). With two
tags the second one is still in the packet: `meta protocol` is 8021q/8021ad and nftables
parses no further, so default_action decides such frames (see DIFFERENCES).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..policy.model import Fragment, Policy
from . import ir
from .ir import Clause, Group, Span

VERDICT_WORD = {"pass": "accept", "drop": "drop"}
DEFAULT_PRIORITY = -500
# A clause joins a concatenated lookup only if its own elements (the product of its
# fields' interval counts) stay this few.
MAX_ELEMENTS_PER_RULE = 4096
# Longer inline address lists get a named set of their own.
INLINE_MAX = 64

DIFFERENCES = {
    "qinq": "frames with two VLAN tags: nftables does not parse past the second tag, so "
            "default_action decides them (shieldwall classifies the inner packet)",
    "ipv6_fragment_headers": "IPv6 packets with more than one fragment header: `fragment` "
                             "is read from the first one (shieldwall: the last one)",
}

# nftables expressions per (field, family).
EXPR = {
    ("src", 4): "ip saddr", ("src", 6): "ip6 saddr",
    ("dst", 4): "ip daddr", ("dst", 6): "ip6 daddr",
    ("proto", 4): "meta l4proto", ("proto", 6): "meta l4proto",
    ("sport", 4): "th sport", ("sport", 6): "th sport",
    ("dport", 4): "th dport", ("dport", 6): "th dport",
    ("icmp_type", 4): "icmp type", ("icmp_type", 6): "icmpv6 type",
    ("icmp_code", 4): "icmp code", ("icmp_code", 6): "icmpv6 code",
    ("length", 4): "ip length", ("length", 6): "ip6 length",
    ("ttl", 4): "ip ttl", ("ttl", 6): "ip6 hoplimit",
    ("vlan", 4): "@ll,112,16 & 0xfff", ("vlan", 6): "@ll,112,16 & 0xfff",
}
# The tag is only there when the rebuilt link-layer header says so. A raw load, not
# `ether type { 8021q, 8021ad }`: nft (1.0.6) takes each element of that set as one more
# stacked tag, and an IPv4/IPv6 header expression later in the rule (`ip frag-off`,
# `frag frag-off`) then gets the dependency `@ll,160,16 0x800` (or 0x86dd), the type
# field behind a second tag, which a frame with one tag never matches. A raw payload
# changes nothing in nft's protocol context, so later dependencies stay `meta protocol`.
VLAN_GUARD = "@ll,96,16 { 0x8100, 0x88a8 }"
ND_ACCEPT = "icmpv6 type 133-137 accept"
# Transport-header expressions that nftables evaluates on its fast path (aligned loads of
# 1, 2 or 4 bytes: `th dport`, `tcp flags`, `icmp type`) do not check the fragment
# offset: on a later fragment they read payload as if it were a header. So packets
# without a transport header are sent to a chain of their own first. IPv4: the fragment
# offset says it. IPv6: the offset can sit in any of several fragment headers, and a
# 3-byte transport load (never on the fast path) fails exactly when the kernel found a
# later fragment, or nothing to read.
TRANSPORT_DISPATCH = {4: "ip frag-off & 0x1fff == 0 goto {chain}",
                      6: "@th,0,24 >= 0x0 goto {chain}"}
TCP = Span.of(ir.IPPROTO_TCP, ir.IPPROTO_TCP)
UDP = Span.of(ir.IPPROTO_UDP, ir.IPPROTO_UDP)


# --- the plan: what each family chain does, before it is written out ---------------


@dataclass(frozen=True)
class Cond:
    """A condition that is not a key field: tcp_flags or fragment."""

    kind: str  # "tcp_flags" | "frag_any" | "frag_first" | "frag_non_first"
    mask: int = 0
    value: int = 0


@dataclass
class RuleStep:
    """One nftables rule: every field's span and every condition must hold."""

    clause: Clause
    spans: dict[str, Span]  # in the tool's own values (IPv6 length is the payload's)
    conds: tuple[Cond, ...]
    verdict: str | None
    counter: bool = False


@dataclass
class LookupStep:
    """One set or verdict-map lookup standing for several rules."""

    name: str
    fields: tuple[str, ...]
    conds: tuple[Cond, ...]
    # (one interval per field, verdict); disjoint where verdicts differ.
    elements: list[tuple[tuple[ir.Interval, ...], str]]
    clauses: list[Clause]

    @property
    def verdicts(self) -> set[str]:
        return {v for _, v in self.elements}


@dataclass
class ChainPlan:
    """One family's chains. With `l3_steps`, packets without a transport header (later
    fragments) are sent apart first and get only the rules that need none (l3_steps);
    the others get every rule (steps) and the neighbor discovery exception."""

    family: int
    fastpath: list[tuple[int, int, str]]
    steps: list[RuleStep | LookupStep]
    l3_steps: list[RuleStep | LookupStep] | None
    nd_accept: bool
    default: str

    @property
    def trivial(self) -> bool:
        return not self.fastpath and not self.steps and self.default == "pass"


@dataclass
class NftPlan:
    chains: dict[int, ChainPlan]
    default: str
    counters: bool


def _tool_spans(c: Clause) -> dict[str, Span]:
    spans = dict(c.spans)
    if c.family == 6 and "length" in spans:
        spans["length"] = spans["length"].shifted(-ir.IPV6_HLEN, 0, 0xFFFF - ir.IPV6_HLEN)
    # nftables adds `meta l4proto` itself for `icmp type` and `tcp flags`: a key field
    # saying the same again would only cost a comparison.
    implied = None
    if "icmp_type" in spans or "icmp_code" in spans:
        implied = ir.ICMP_PROTO[c.family]
    elif c.tcp_flags is not None:
        implied = ir.IPPROTO_TCP
    if implied is not None and spans.get("proto") == Span.of(implied, implied):
        del spans["proto"]
    return spans


def _cond_alternatives(c: Clause) -> list[tuple[Cond, ...]]:
    conds: list[Cond] = []
    if c.tcp_flags is not None:
        conds.append(Cond("tcp_flags", c.tcp_flags.mask, c.tcp_flags.value))
    alternatives = [tuple(conds)]
    if c.fragment is Fragment.FIRST:
        alternatives = [alt + (Cond("frag_first"),) for alt in alternatives]
    elif c.fragment is Fragment.NON_FIRST:
        alternatives = [alt + (Cond("frag_non_first"),) for alt in alternatives]
    elif c.fragment is Fragment.ANY:
        if c.family == 4:
            alternatives = [alt + (Cond("frag_any"),) for alt in alternatives]
        else:  # offset > 0, or offset 0 with more to follow: two rules
            alternatives = [alt + (Cond(kind),) for alt in alternatives
                            for kind in ("frag_non_first", "frag_first")]
    return alternatives


def _shape(c: Clause):
    alternatives = _cond_alternatives(c)
    spans = _tool_spans(c)
    keys = tuple(name for name in spans if name != "vlan")
    if len(alternatives) != 1 or not keys or "vlan" in spans:
        return None
    return keys, alternatives[0]


def _product(spans: list[Span]) -> int:
    n = 1
    for span in spans:
        n *= len(span.parts)
    return n


def _can_join(group: Group, c: Clause) -> bool:
    keys = group.shape[0]
    if len(keys) == 1:
        return True  # flattened first-wins when written out
    spans = _tool_spans(c)
    if _product([spans[k] for k in keys]) > MAX_ELEMENTS_PER_RULE:
        return False
    # The kernel's set of concatenated intervals refuses an element that starts or ends
    # inside another, and would pick either of two overlapping ones: elements are kept
    # disjoint (or equal, with one verdict, and then written once). The group's hull
    # settles it at once in the usual case, distinct values in one field.
    if group.disjoint_on(c, keys):
        return True
    if len(group.members) > ir.MEMBER_CHECKS:
        return False
    for member in group.members:
        mspans = _tool_spans(member)
        if all(mspans[k] == spans[k] for k in keys) and member.verdict == c.verdict:
            continue
        if not any(mspans[k].isdisjoint(spans[k]) for k in keys):
            return False
    return True


def plan(policy: Policy, counters: bool = False,
         where: Callable[[Clause], bool] | None = None) -> NftPlan:
    """The chains; `where`: only the clauses it keeps (the others are the caller's to
    report)."""
    chains = {}
    lookup_ids = iter(range(1, 1 << 30))

    def steps_for(items: list[Clause], family: int) -> list[RuleStep | LookupStep]:
        if counters:
            groups = [Group(None, [c]) for c in items]
        else:
            groups = ir.group_clauses(items, _shape, _can_join)
        steps: list[RuleStep | LookupStep] = []
        for g in groups:
            if len(g.members) == 1:
                c = g.members[0]
                for alt in _cond_alternatives(c):
                    steps.append(RuleStep(c, _tool_spans(c), alt, c.verdict, counters))
            else:
                steps.append(_lookup(f"g{next(lookup_ids)}_v{family}", g))
        return steps

    default = ir.end_verdict(policy)
    for family in ir.FAMILIES:
        items = ir.chain_clauses(policy, family)
        if where is not None:
            items = [c for c in items if where(c)]
        if not counters:
            items = [c for c in items if c.verdict is not None]
        nd_accept = family == 6 and ir.nd_protected(policy)
        l3_steps = None
        if nd_accept or any(c.needs_l4 for c in items):
            # A rule that never matches a packet without a transport header changes
            # nothing there: leaving it out is exact.
            l3_steps = steps_for([c for c in items if not c.needs_l4], family)
        chains[family] = ChainPlan(family,
                                   ir.fastpath_ranges(ir.chain_fastpath(policy), family),
                                   steps_for(items, family), l3_steps, nd_accept, default)
    return NftPlan(chains, default, counters)


def _lookup(name: str, g: Group) -> LookupStep:
    keys, conds = g.shape
    if len(keys) == 1:
        key = keys[0]
        flat = ir.first_wins([(_tool_spans(c)[key], c.verdict) for c in g.members])
        elements = [(((lo, hi),), verdict) for lo, hi, verdict in flat]
    else:
        seen: dict[tuple, str] = {}
        for c in g.members:
            spans = _tool_spans(c)
            for combo in _combinations([spans[k].parts for k in keys]):
                seen.setdefault(combo, c.verdict)
        elements = list(seen.items())
    return LookupStep(name, keys, conds, elements, list(g.members))


def _combinations(lists: list[tuple]) -> Iterator[tuple]:
    if not lists:
        yield ()
        return
    for head in lists[0]:
        for rest in _combinations(lists[1:]):
            yield (head,) + rest


# --- writing it out ---------------------------------------------------------------


PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp"}


def _value(name: str, family: int, v: int) -> str:
    if name in ("src", "dst"):  # inet_ntop: a million addresses in a second, not ten
        if family == 4:
            return socket.inet_ntop(socket.AF_INET, v.to_bytes(4, "big"))
        return socket.inet_ntop(socket.AF_INET6, v.to_bytes(16, "big"))
    if name == "proto":
        return PROTO_NAMES.get(v, str(v))
    return str(v)


def interval(name: str, family: int, lo: int, hi: int) -> str:
    if lo == hi:
        return _value(name, family, lo)
    if name == "proto":
        return f"{lo}-{hi}"  # nftables takes no protocol names in a range
    if name in ("src", "dst"):
        size = hi - lo + 1
        if size & (size - 1) == 0 and lo % size == 0:
            bits = 32 if family == 4 else 128
            return f"{_value(name, family, lo)}/{bits - size.bit_length() + 1}"
    return f"{_value(name, family, lo)}-{_value(name, family, hi)}"


def _elements(name: str, family: int, parts) -> str:
    return ", ".join(interval(name, family, lo, hi) for lo, hi in parts)


class Writer:
    def __init__(self, policy: Policy, table: str, device: str, priority: int) -> None:
        self.policy = policy
        self.table = table
        self.device = device
        self.priority = priority
        self.sets: list[str] = []
        self.named: dict[tuple[int, str, Span], str] = {}
        self.policy_sets = {f: ir.policy_sets(policy, f) for f in ir.FAMILIES}

    def address_set(self, family: int, span: Span, label: str | None = None) -> str:
        """A named set of addresses; `ip saddr` and `ip daddr` share it (same type)."""
        key = (family, span)
        if key in self.named:
            return self.named[key]
        set_name = (f"{label}_v{family}" if label else f"a{len(self.named) + 1}_v{family}") + self.suffix
        flags = "; flags interval" if any(lo != hi for lo, hi in span.parts) else ""
        elements = f"; elements = {{ {_elements('src', family, span.parts)} }}" if span else ""
        self.sets.append(f"\tset {set_name} {{ typeof {EXPR['src', family]}{flags}{elements} }}")
        self.named[key] = set_name
        return set_name

    def span_expr(self, name: str, family: int, span: Span) -> str:
        lo, hi = ir.domain(name, family)
        if name == "length" and family == 6:
            hi -= ir.IPV6_HLEN
        if name in ("src", "dst"):
            for set_name, set_span in self.policy_sets[family].items():
                label = "set_" + set_name
                if span == set_span:
                    return "@" + self.address_set(family, span, label)
                if set_span and span == set_span.complement(lo, hi):
                    return "!= @" + self.address_set(family, set_span, label)
        pos = span.parts
        neg = span.complement(lo, hi).parts
        parts, op = (neg, "!= ") if neg and len(neg) < len(pos) else (pos, "")
        if op and len(parts) == 1:
            # nft merges adjacent payload comparisons into one (`th sport != 443 th dport
            # != 1500` becomes "not both"): one value or prefix left out is written as
            # what is left in, which nft never merges (a range, or a set lookup).
            parts, op = pos, ""
        if len(parts) > INLINE_MAX and name in ("src", "dst"):
            return op + "@" + self.address_set(family, Span(parts))
        if len(parts) == 1:
            return op + interval(name, family, *parts[0])
        return op + self.inline_set(name, family, parts)

    def inline_set(self, name: str, family: int, parts) -> str:
        """Several values of a field, as an anonymous set."""
        return "{ " + _elements(name, family, parts) + " }"

    def cond(self, cond: Cond, family: int) -> str:
        if cond.kind == "tcp_flags":
            return f"tcp flags & {cond.mask:#x} == {cond.value:#x}"
        if family == 4:
            return {"frag_any": "ip frag-off & 0x3fff != 0",
                    "frag_first": "ip frag-off & 0x3fff == 0x2000",
                    "frag_non_first": "ip frag-off & 0x1fff != 0"}[cond.kind]
        return {"frag_first": "frag frag-off 0 frag more-fragments 1",
                "frag_non_first": "frag frag-off != 0"}[cond.kind]

    def rule(self, step: RuleStep, family: int) -> str:
        parts = []
        spans = dict(step.spans)
        ports = "th"
        proto = spans.get("proto")
        if ("sport" in spans or "dport" in spans) and proto in (TCP, UDP):
            # `tcp dport 22` says `meta l4proto tcp th dport 22` the way people write it.
            ports = "tcp" if proto == TCP else "udp"
            del spans["proto"]
        for name, span in spans.items():
            if name == "vlan":
                parts.append(VLAN_GUARD)
            expr = EXPR[name, family]
            if name in ("sport", "dport"):
                expr = f"{ports} {name}"
            parts.append(f"{expr} {self.span_expr(name, family, span)}")
        parts += [self.cond(c, family) for c in step.conds]
        if step.counter:
            parts.append(self.counter(step.clause.name))
        if step.verdict is not None:
            parts.append(VERDICT_WORD[step.verdict])
        if step.counter:
            parts.append(f'comment "{step.clause.name}"')
        return " ".join(parts)

    def lookup(self, step: LookupStep, family: int) -> str:
        key = " . ".join(EXPR[name, family] for name in step.fields)
        has_ranges = any(lo != hi for combo, _ in step.elements for lo, hi in combo)
        verdicts = step.verdicts
        is_map = len(verdicts) > 1
        rendered = []
        for combo, verdict in step.elements:
            text = " . ".join(interval(name, family, lo, hi)
                              for name, (lo, hi) in zip(step.fields, combo))
            rendered.append(f"{text} : {VERDICT_WORD[verdict]}" if is_map else text)
        kind = "map" if is_map else "set"
        typeof = f"typeof {key}" + (" : verdict" if is_map else "")
        flags = "; flags interval" if has_ranges else ""
        self.sets.append(f"\t{kind} {step.name} {{ {typeof}{flags}; "
                         f"elements = {{ {', '.join(rendered)} }} }}")
        conds = "".join(self.cond(c, family) + " " for c in step.conds)
        if is_map:
            return f"{conds}{key} vmap @{step.name}"
        return f"{conds}{key} @{step.name} {VERDICT_WORD[verdicts.pop()]}"

    def chain(self, chain: ChainPlan, counters: bool) -> dict[str, list[str]]:
        """The family's chains by name, its entry chain first."""
        family = chain.family
        name = f"ipv{family}{self.suffix}"
        default = (f'{self.counter("(default)")} {VERDICT_WORD[chain.default]} comment "(default)"'
                   if counters else VERDICT_WORD[chain.default])
        lines = []
        if chain.fastpath:
            lines.append(self.fastpath(chain))
        lines += self.before_rules(family)
        transport = [line for step in chain.steps for line in self.step_lines(step, family)]
        if chain.nd_accept:
            transport.append(self.nd_accept(counters))
        transport.append(default)
        if chain.l3_steps is None:
            return {name: lines + transport}
        lines.append(TRANSPORT_DISPATCH[family].format(chain=f"{name}_transport"))
        lines += [line for step in chain.l3_steps for line in self.step_lines(step, family)]
        lines.append(default)
        return {name: lines, f"{name}_transport": transport}

    def dispatch(self, pairs: list[str]) -> list[str]:
        """The base chain's lines that send each protocol ("ip : jump ipv4") on."""
        return [f"{self.dispatch_guard}meta protocol vmap {{ {', '.join(pairs)} }}"]

    def counter(self, name: str) -> str:
        """The counter of what `name` (a rule, or "(default)") counts."""
        return "counter"

    # What a writer for another use adds: its own lines after the fastpath (before any
    # rule), more than one line for a rule, a counted neighbor discovery exception.
    def before_rules(self, family: int) -> list[str]:
        return []

    def step_lines(self, step: RuleStep | LookupStep, family: int) -> list[str]:
        return [self.step(step, family)]

    def nd_accept(self, counters: bool) -> str:
        return ND_ACCEPT

    def fastpath(self, chain: ChainPlan) -> str:
        """One lookup: a verdict map, or a set when every range has one verdict."""
        family = chain.family
        name = f"fastpath_v{family}{self.suffix}"
        verdicts = {v for _, _, v in chain.fastpath}
        if len(verdicts) == 1:
            elements = ", ".join(interval("src", family, lo, hi) for lo, hi, _ in chain.fastpath)
            self.sets.append(f"\tset {name} {{ typeof {EXPR['src', family]}; flags interval; "
                             f"elements = {{ {elements} }} }}")
            return f"{EXPR['src', family]} @{name} {VERDICT_WORD[verdicts.pop()]}"
        elements = ", ".join(f"{interval('src', family, lo, hi)} : {VERDICT_WORD[v]}"
                             for lo, hi, v in chain.fastpath)
        self.sets.append(f"\tmap {name} {{ typeof {EXPR['src', family]} : verdict; "
                         f"flags interval; elements = {{ {elements} }} }}")
        return f"{EXPR['src', family]} vmap @{name}"

    def flat(self, p: NftPlan) -> list[str] | None:
        """With no rule to apply, everything fits the base chain: no dispatch, no jump
        (a fifth of the cost of a fastpath-only policy on the veth path)."""
        if p.counters or any(c.steps or c.l3_steps for c in p.chains.values()):
            return None
        lines = [self.fastpath(c) for c in p.chains.values() if c.fastpath]
        if p.default == "drop":
            # The 3-byte load fails on a later fragment, which is no neighbor discovery
            # (see TRANSPORT_DISPATCH).
            lines.append("@th,0,24 >= 0x0 " + ND_ACCEPT)
            lines.append("meta protocol { ip, ip6, 8021q, 8021ad } drop")
        return lines

    def step(self, step: RuleStep | LookupStep, family: int) -> str:
        return self.rule(step, family) if isinstance(step, RuleStep) else self.lookup(step, family)

    family = "netdev"  # the table's
    dispatch_guard = ""  # what must hold before the dispatch (an inet hook sees every device)
    suffix = ""  # after the names of chains and sets: two rulesets can then live side by side

    def base_chain(self) -> list[str]:
        """The base chain's hook line."""
        return [f'type filter hook ingress device "{self.device}" priority {self.priority}; '
                "policy accept;"]

    def write(self, p: NftPlan) -> str:
        base = self.base_chain()
        flat = self.flat(p)
        if flat is not None:
            base_text = "\n".join(f"\t\t{line}" for line in base + flat)
            body = "\n".join(self.sets + [f"\tchain ingress {{\n{base_text}\n\t}}"])
            return f"table {self.family} {self.table} {{\n{body}\n}}\n"
        chains = []
        dispatch = []
        for family, chain in p.chains.items():
            if chain.trivial and not p.counters:
                continue
            dispatch.append(f"{'ip' if family == 4 else 'ip6'} : jump ipv{family}{self.suffix}")
            for chain_name, lines in self.chain(chain, p.counters).items():
                body = "\n".join(f"\t\t{line}" for line in lines)
                chains.append(f"\tchain {chain_name} {{\n{body}\n\t}}")
        if p.default == "drop":
            dispatch += ["8021q : drop", "8021ad : drop"]
        if dispatch:
            base += self.dispatch(dispatch)
        base_text = "\n".join(f"\t\t{line}" for line in base)
        body = "\n".join(self.sets + chains + [f"\tchain ingress {{\n{base_text}\n\t}}"])
        return f"table {self.family} {self.table} {{\n{body}\n}}\n"


@dataclass(frozen=True)
class NftRuleset:
    """Text for `nft -f`, and the facts needed to install, read and remove it."""

    text: str
    table: str
    device: str
    counters: bool
    differences: tuple[str, ...] = field(default=())
    family: str = "netdev"  # the table's: a ruleset at other hooks (synproxy) is inet
