"""Checks of a valid policy for things that are legal but almost certainly mistakes.

- A rule that can never match: it contradicts itself (a port on a non-TCP/UDP protocol,
  a field whose list excludes every value, ...), or an earlier deciding rule matches
  every packet it would match.
- A set that is empty, or holds prefixes inside other prefixes, or is never used.

The checks are sound but incomplete: a warning is always right, but not every dead
rule is found. Shadowing is judged field by field: an earlier rule covers a later one
when each of its fields also appears in the later rule and allows a superset of the
values there. Field values are compared exactly, as sets of intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable
from weakref import WeakKeyDictionary

from .errors import Issue
from .model import DOMAINS, PROTOCOLS
from .model import (
    AddrValue,
    Family,
    Fragment,
    Items,
    Match,
    Network,
    Policy,
    PrefixSet,
    Range,
    TcpFlags,
)

# Inclusive (lo, hi) pairs, sorted, disjoint and not adjacent: a set of integers.
Intervals = tuple[tuple[int, int], ...]

# Addresses of both families on one line: IPv4 first, then IPv6, so no IPv6 prefix
# (not even ::/0) covers an IPv4 address.
_V6_BASE = 1 << 32
_ADDRESS_SPACE: Intervals = ((0, _V6_BASE + (1 << 128) - 1),)
_IPV4_PART: Intervals = ((0, _V6_BASE - 1),)
_IPV6_PART: Intervals = ((_V6_BASE, _ADDRESS_SPACE[0][1]),)


@dataclass(frozen=True)
class SetSummary:
    ipv4: int
    ipv6: int
    files: tuple[str, ...]


@dataclass(frozen=True)
class Summary:
    rules: int
    rules_by_action: dict[str, int]
    sets: dict[str, SetSummary]
    stages: dict[str, list[str]]  # each stage's own summary lines


@dataclass(frozen=True)
class Report:
    warnings: tuple[Issue, ...]
    summary: Summary


def analyze(policy: Policy) -> Report:
    """Warnings (each stage's, then the sets') and a summary."""
    from ..stages import stages  # the stages are built on this module
    warnings = [w for s in stages().values() for w in s.warnings(policy)]
    warnings += _set_warnings(policy)
    return Report(tuple(w for w in warnings if not _filled_at_run_time(policy, w)),
                  _summary(policy))


def _filled_at_run_time(policy: Policy, issue: Issue) -> bool:
    """An empty set that automatic mitigation fills (and the rules that read it) is as
    it should be when the policy goes in."""
    m = policy.sections.get("mitigation")
    if m is None:
        return False
    return ((issue.path, issue.problem) == (f"sets.{m.set}", "the set is empty: nothing matches it")
            or (issue.problem == "never matches: src matches no value"
                and issue.path in {f"rules[{rule_id - 1}]" for rule_id in m.rules}))


# --- interval sets ------------------------------------------------------------------


def normalize(pairs: Iterable[tuple[int, int]]) -> Intervals:
    merged: list[list[int]] = []
    for lo, hi in sorted(pairs):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple((lo, hi) for lo, hi in merged)


def subtract(a: Intervals, b: Intervals) -> Intervals:
    result = []
    j = 0
    for lo, hi in a:
        while j < len(b) and b[j][1] < lo:
            j += 1
        k = j
        while k < len(b) and b[k][0] <= hi:
            if b[k][0] > lo:
                result.append((lo, b[k][0] - 1))
            lo = max(lo, b[k][1] + 1)
            k += 1
        if lo <= hi:
            result.append((lo, hi))
    return tuple(result)


def within(a: Intervals, b: Intervals) -> bool:
    """a is a subset of b."""
    if len(b) == 1:  # the common case, and the hot path of the pairwise check
        lo, hi = b[0]
        return all(lo <= a_lo and a_hi <= hi for a_lo, a_hi in a)
    return not subtract(a, b)


def _overlaps(a: Intervals, b: Intervals) -> bool:
    return subtract(a, b) != a


def _bounds(net: Network) -> tuple[int, int]:
    """First and last address as integers (broadcast_address is slow on a million)."""
    first = int(net.network_address)
    return first, first | ((1 << (net.max_prefixlen - net.prefixlen)) - 1)


def _network_interval(net: Network) -> tuple[int, int]:
    base = 0 if net.version == 4 else _V6_BASE
    first, last = _bounds(net)
    return base + first, base + last


# Sets can hold a million prefixes and are compared once per rule pair: convert each
# once, and forget it with the set.
_SET_SPACES: WeakKeyDictionary[PrefixSet, Intervals] = WeakKeyDictionary()


def _set_space(prefix_set: PrefixSet) -> Intervals:
    space = _SET_SPACES.get(prefix_set)
    if space is None:
        space = normalize(_network_interval(net) for net in prefix_set.prefixes)
        _SET_SPACES[prefix_set] = space
    return space


def _value_space(value: AddrValue | Range) -> Intervals:
    if isinstance(value, Range):
        return ((value.lo, value.hi),)
    if isinstance(value, PrefixSet):
        return _set_space(value)
    return (_network_interval(value),)


def field_space(name: str, items: Items) -> Intervals:
    """The values a list field accepts, by the list rule of Items.holds."""
    if name in DOMAINS:
        full: Intervals = ((DOMAINS[name].lo, DOMAINS[name].hi),)
    else:
        full = _ADDRESS_SPACE

    def union(values: tuple) -> Intervals:
        if len(values) == 1:
            return _value_space(values[0])  # already normalized; a set may be large
        return normalize(pair for value in values for pair in _value_space(value))

    plain = union(items.plain) if items.plain else full
    return subtract(plain, union(items.negated))


# --- rules --------------------------------------------------------------------------

# A match as the checks compare it: list fields as the intervals they accept, the other
# fields as they are. Addresses come last: most pairs of rules already differ in a
# cheaper field.
Profile = dict[str, object]
_COMPARE_LAST = ("src", "dst")


def profile(match: Match) -> Profile:
    fields = {
        name: field_space(name, value) if isinstance(value, Items) else value
        for name, value in match.fields().items()
    }
    return dict(sorted(fields.items(), key=lambda item: item[0] in _COMPARE_LAST))


def _describe(policy: Policy, index: int) -> str:
    return f"rules[{index}] ({policy.rules[index].name})"


def rule_warnings(policy: Policy, max_comparisons: int = 2_000_000) -> Iterable[Issue]:
    """Rules that never match. The shadowing check compares pairs of rules, so it stops
    after max_comparisons of them (and says so) to stay quick on very large policies."""
    deciding: list[tuple[int, Profile]] = []
    budget = max_comparisons
    for index, rule in enumerate(policy.rules):
        path = f"rules[{index}]"
        fields = profile(rule.match)
        reason = _contradiction(fields)
        if reason is not None:
            yield Issue(policy.source, path, f"never matches: {reason}")
        elif budget > 0:
            for earlier, earlier_fields in deciding:
                budget -= 1
                if _profile_covers(earlier_fields, fields):
                    by = _describe(policy, earlier)
                    problem = f"never matches: {by} decides every packet it would match"
                    yield Issue(policy.source, path, problem)
                    break
                if budget == 0:
                    problem = (
                        f"rules after rules[{index}] were not checked for shadowing "
                        f"(stopped after {max_comparisons} comparisons)"
                    )
                    yield Issue(policy.source, "rules", problem)
                    break
        if rule.action.decides:
            deciding.append((index, fields))


def covers(outer: Match, inner: Match) -> bool:
    """Every packet that inner matches, outer matches too (sound, not complete)."""
    return _profile_covers(profile(outer), profile(inner))


def _profile_covers(outer: Profile, inner: Profile) -> bool:
    # A field outer has and inner lacks restricts outer alone: inner may match more.
    if not outer.keys() <= inner.keys():
        return False
    return all(_field_covers(value, inner[name]) for name, value in outer.items())


def _field_covers(outer: object, inner: object) -> bool:
    if isinstance(outer, tuple):
        return within(inner, outer)  # type: ignore[arg-type]
    if isinstance(outer, TcpFlags):
        assert isinstance(inner, TcpFlags)
        # inner must pin every flag outer pins, to the same value.
        return outer.mask & ~inner.mask == 0 and inner.value & outer.mask == outer.value
    if outer is Fragment.ANY:
        return True
    return outer == inner


# Fields that only hold for some protocols, with the protocols (as `proto` names them).
_NEEDS_PROTO = {
    "sport": ("tcp", "udp"),
    "dport": ("tcp", "udp"),
    "tcp_flags": ("tcp",),
    "icmp_type": ("icmp", "icmpv6"),
    "icmp_code": ("icmp", "icmpv6"),
}


def contradiction(match: Match) -> str | None:
    """Why no packet can satisfy match, or None when one might."""
    return _contradiction(profile(match))


def _contradiction(fields: Profile) -> str | None:
    for name, value in fields.items():
        if isinstance(value, tuple) and not value:
            return f"{name} matches no value"
    proto = fields.get("proto")
    for name, needs in _NEEDS_PROTO.items():
        if name not in fields:
            continue
        needed = normalize((PROTOCOLS[p], PROTOCOLS[p]) for p in needs)
        if proto is not None and not _overlaps(proto, needed):  # type: ignore[arg-type]
            return f"{name} needs proto {' or '.join(needs)}"
        if fields.get("fragment") is Fragment.NON_FIRST:
            return f"{name} needs a layer-4 header, which non-first fragments lack"
    family = fields.get("family")
    if isinstance(family, Family):
        part = _IPV4_PART if family is Family.IPV4 else _IPV6_PART
        for name in ("src", "dst"):
            if name in fields and not _overlaps(fields[name], part):  # type: ignore[arg-type]
                return f"{name} has no {family.value} address"
    return None


# --- sets ---------------------------------------------------------------------------


def _used_sets(policy: Policy) -> set[str]:
    from ..stages import stages
    return {name for n, s in stages().items() for name in s.sets_used(policy.sections[n])}


def nested_prefixes(prefixes: Iterable[Network]) -> list[tuple[Network, Network]]:
    """(inner, outer) for each prefix inside another; prefixes sorted as PrefixSet keeps them."""
    found = []
    outer: Network | None = None
    outer_last = 0
    for net in prefixes:
        inside = outer is not None and outer.version == net.version
        if inside and int(net.network_address) <= outer_last:
            found.append((net, outer))
        else:
            outer, outer_last = net, _bounds(net)[1]
    return found


def _set_warnings(policy: Policy) -> Iterable[Issue]:
    used = _used_sets(policy)
    for name, prefix_set in policy.sets.items():
        path = f"sets.{name}"
        if not prefix_set.prefixes:
            yield Issue(policy.source, path, "the set is empty: nothing matches it")
        nested = nested_prefixes(prefix_set.prefixes)
        if nested:
            examples = ", ".join(f"{inner} in {outer}" for inner, outer in nested[:3])
            more = f" and {len(nested) - 3} more" if len(nested) > 3 else ""
            yield Issue(
                policy.source,
                path,
                f"{len(nested)} prefixes lie inside other prefixes of the set: {examples}{more}",
            )
        if name not in used:
            yield Issue(policy.source, path, "the set is not used by any rule or stage")


# --- summary ------------------------------------------------------------------------


def _summary(policy: Policy) -> Summary:
    by_action: dict[str, int] = {}
    for rule in policy.rules:
        by_action[rule.action.name] = by_action.get(rule.action.name, 0) + 1
    sets = {
        name: SetSummary(
            ipv4=sum(1 for net in s.prefixes if net.version == 4),
            ipv6=sum(1 for net in s.prefixes if net.version == 6),
            files=s.files,
        )
        for name, s in policy.sets.items()
    }
    from ..stages import stages
    return Summary(
        rules=len(policy.rules),
        rules_by_action=by_action,
        sets=sets,
        stages={**{n: s.summary(policy.sections[n]) for n, s in stages().items()},
                **({"mitigation": policy.mitigation.summary()}
                   if policy.sections.get("mitigation") else {})},
    )
