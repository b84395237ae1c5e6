"""Equivalence classes of each match field: the first step of the classifier
(docs/classifier.md).

Rule i of the policy is bit i of a vector. A field splits the values it can see into
classes: values that admit the same rules share a class, and the class's vector holds
those rules plus every rule that does not use the field. A packet's class in a field is
found by one lookup (an array indexed by the value for scalar fields, a longest-prefix
walk for addresses); the rest of the classifier works on class ids only.

Pure Python: reference.matches() is the semantics every class must reproduce.
"""

from __future__ import annotations

from array import array
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable

from .. import abi
from ..model.parse import IPPROTO_TCP, ParsedPacket
from .analysis import Intervals, field_space, normalize
from .model import DOMAINS, AddrValue, Items, Match, PrefixSet, Rule
from .reference import has_icmp, has_ports, has_tcp, matches, state_key

# Field ids are the data plane's (SW_POL_F_*), in the header's order.
FIELDS: dict[str, int] = {
    name[len("SW_POL_F_"):].lower(): value
    for name, value in sorted(abi.defines().items(), key=lambda kv: kv[1])
    if name.startswith("SW_POL_F_")
}
ADDRESS_FIELDS = ("src", "dst")
SCALAR_FIELDS = tuple(name for name in FIELDS if name not in ADDRESS_FIELDS)

# Keys a scalar field takes in the data plane (sw_pol_key in bpf/stages/policy.bpf.c):
# a range field's whole domain, counted from 0.
KEY_COUNTS: dict[str, int] = {
    **{name: domain.hi + 1 for name, domain in DOMAINS.items()},
    "tcp_flags": 256, "fragment": abi.SW_POL_FRAG_KEYS, "family": 2, "state": 2,
}


def fragment_key(pkt: ParsedPacket) -> int:
    if not pkt.frag & abi.SW_FRAG_IS:
        return abi.SW_POL_FRAG_NONE
    if pkt.frag_off:
        return abi.SW_POL_FRAG_LATER
    return abi.SW_POL_FRAG_FIRST if pkt.frag & abi.SW_FRAG_MORE else abi.SW_POL_FRAG_OTHER


# The value a scalar field keys its class by, or None when the field does not apply to
# the packet (no ports without TCP/UDP, ...): exactly sw_pol_key() of the data plane.
KEYS: dict[str, Callable[[ParsedPacket], int | None]] = {
    "proto": lambda p: p.l4_proto,
    "sport": lambda p: p.sport if has_ports(p) else None,
    "dport": lambda p: p.dport if has_ports(p) else None,
    "tcp_flags": lambda p: p.tcp_flags if has_tcp(p) else None,
    "icmp_type": lambda p: p.icmp_type if has_icmp(p) else None,
    "icmp_code": lambda p: p.icmp_code if has_icmp(p) else None,
    "length": lambda p: p.l3_len,
    "ttl": lambda p: p.ttl,
    "vlan": lambda p: p.vlan_id if p.vlan_depth > 0 else None,
    "fragment": fragment_key,
    "family": lambda p: int(p.family == abi.SW_FAMILY_IPV6),
    "state": state_key,
}
assert set(KEYS) == set(SCALAR_FIELDS), "every scalar field of the header has a key"

# For fields with few keys: a packet that has each key, so that the reference model
# itself says which keys a rule's value admits.
_FRAG_PACKETS = {
    abi.SW_POL_FRAG_NONE: ParsedPacket(),
    abi.SW_POL_FRAG_FIRST: ParsedPacket(frag=abi.SW_FRAG_IS | abi.SW_FRAG_MORE),
    abi.SW_POL_FRAG_LATER: ParsedPacket(frag=abi.SW_FRAG_IS, frag_off=1),
    abi.SW_POL_FRAG_OTHER: ParsedPacket(frag=abi.SW_FRAG_IS),
}
_KEY_PACKETS: dict[str, Callable[[int], ParsedPacket]] = {
    "tcp_flags": lambda key: ParsedPacket(flags=abi.SW_PKT_HAS_L4, l4_proto=IPPROTO_TCP, tcp_flags=key),
    "fragment": _FRAG_PACKETS.__getitem__,
    "family": lambda key: ParsedPacket(family=(abi.SW_FAMILY_IPV4, abi.SW_FAMILY_IPV6)[key]),
    "state": lambda key: ParsedPacket(flags=abi.SW_PKT_ESTABLISHED if key else 0),
}

# A prefix node of an address field: (address as an int, prefix length, class).
Node = tuple[int, int, int]


@dataclass(eq=False)
class FieldClasses:
    """One field's classes. Scalar fields have `keys` (the class of every key) and an
    `na_class`; address fields have longest-prefix `nodes` per IP version, each list
    holding its root (0, 0, class)."""

    name: str
    vectors: list[int]
    keys: array | None = None
    na_class: int = 0
    nodes: dict[int, list[Node]] = field(default_factory=dict)
    # Address fields: per set, the class an address of each class takes when it joins
    # the set as a single address (live set entries, docs/updates.md).
    live: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.vectors)

    def of(self, pkt: ParsedPacket) -> int:
        """The packet's class, as the data plane finds it (for the tests and the
        classifier's own interpreter)."""
        if self.keys is not None:
            key = KEYS[self.name](pkt)
            return self.na_class if key is None else self.keys[key]
        raw = pkt.src if self.name == "src" else pkt.dst
        if pkt.family == abi.SW_FAMILY_IPV4:
            return longest_match(self.nodes[4], int.from_bytes(raw[12:], "big"), 32)
        return longest_match(self.nodes[6], int.from_bytes(raw, "big"), 128)


def longest_match(nodes: list[Node], addr: int, bits: int) -> int:
    """The class of the longest node holding addr (a linear scan: for tests only)."""
    best = (-1, 0)
    for base, plen, cls in nodes:
        if plen > best[0] and addr >> (bits - plen) == base >> (bits - plen):
            best = (plen, cls)
    return best[1]


class _Classes:
    """A field's distinct rule vectors, numbered in order of appearance."""

    def __init__(self) -> None:
        self.ids: dict[int, int] = {}

    def __call__(self, vector: int) -> int:
        return self.ids.setdefault(vector, len(self.ids))

    def vectors(self) -> list[int]:
        return list(self.ids)


def mask(indexes: Iterable[int]) -> int:
    bits = 0
    for i in indexes:
        bits |= 1 << i
    return bits


def field_classes(rules: tuple[Rule, ...]) -> dict[str, FieldClasses]:
    """The classes of every field some rule uses."""
    matched = [rule.match.fields() for rule in rules]
    out: dict[str, FieldClasses] = {}
    for name in FIELDS:
        uses = [(i, m[name]) for i, m in enumerate(matched) if name in m]
        if not uses:
            continue
        others = mask(i for i, m in enumerate(matched) if name not in m)
        classes = _Classes()
        if name in ADDRESS_FIELDS:
            nodes, live = _address_field(uses, others, classes)
            out[name] = FieldClasses(name, classes.vectors(), nodes=nodes, live=live)
        else:
            na_class = classes(others)
            keys = _scalar_field(name, uses, others, classes)
            out[name] = FieldClasses(name, classes.vectors(), keys=keys, na_class=na_class)
    return out


def _grouped(uses: list[tuple[int, Hashable]]) -> dict[Hashable, int]:
    """Rules with the same value for the field, as one mask: sets of rules often share
    a port or a prefix list, and each distinct value is compiled once."""
    groups: dict[Hashable, int] = defaultdict(int)
    for i, value in uses:
        groups[value] |= 1 << i
    return groups


# --- scalar fields -----------------------------------------------------------------


def _admitted(name: str, value: object) -> Intervals:
    """The keys a rule's value for the field admits (when the field applies at all)."""
    if isinstance(value, Items):
        return field_space(name, value)
    rule = Match(**{name: value})
    return normalize((k, k) for k in range(KEY_COUNTS[name]) if matches(rule, _KEY_PACKETS[name](k)))


def _scalar_field(name: str, uses: list[tuple[int, Hashable]], others: int,
                  classes: _Classes) -> array:
    """The class of every key. A sweep over the keys where some value's admitted
    intervals start or end: XOR toggles a group's rules in and out (groups are disjoint,
    so toggles never cancel another group's)."""
    toggles: dict[int, int] = defaultdict(int)
    toggles[0] = 0
    for value, bits in _grouped(uses).items():
        for lo, hi in _admitted(name, value):
            toggles[lo] ^= bits
            toggles[hi + 1] ^= bits
    size = KEY_COUNTS[name]
    points = sorted(p for p in toggles if p < size) + [size]
    out = array("I")
    inside = 0
    for start, end in zip(points, points[1:]):
        inside ^= toggles[start]
        out.extend(array("I", [classes(others | inside)]) * (end - start))
    return out


# --- address fields ----------------------------------------------------------------


class _AddressRules:
    """Which rules each address value (a network or a set, by number) pulls in or
    pushes out."""

    def __init__(self, uses: list[tuple[int, Items[AddrValue]]], others: int) -> None:
        self.values: list[AddrValue] = []
        number: dict[int, int] = {}  # id(value) -> its number: hashing a set is not free
        self.plain: dict[int, int] = defaultdict(int)
        self.negated: dict[int, int] = defaultdict(int)
        self.others = others
        self.negated_only = 0  # rules with only negated items: they admit what none holds
        self.some_negated = 0  # rules with a negated item
        for items, bits in _grouped(uses).items():
            if not items.plain:
                self.negated_only |= bits
            if items.negated:
                self.some_negated |= bits
            for item in items.items:
                n = number.setdefault(id(item.value), len(self.values))
                if n == len(self.values):
                    self.values.append(item.value)
                (self.negated if item.negated else self.plain)[n] |= bits

    def vector(self, inside: frozenset[int]) -> int:
        """The rules that admit an address inside exactly these values (Items.holds)."""
        hit, out = self.negated_only, 0
        for n in inside:
            hit |= self.plain.get(n, 0)
            out |= self.negated.get(n, 0)
        return self.others | (hit & ~out)

    def joined(self, n: int, vector: int) -> int | None:
        """The vector of an address with `vector` once it is also inside value n, as a
        single address: the rules naming n plainly admit it and those negating n do
        not, whatever else holds it. None where the vector alone does not tell: a rule
        naming n plainly beside negated items needs to know those items too."""
        plain, negated = self.plain.get(n, 0), self.negated.get(n, 0)
        if plain & self.some_negated:
            return None
        return (vector | plain) & ~negated

    def prefixes(self) -> dict[int, list[tuple[int, int, int]]]:
        """(address, length, value number) of every prefix of every value, by version."""
        found: dict[int, list[tuple[int, int, int]]] = {4: [], 6: []}
        for n, value in enumerate(self.values):
            for net in value.prefixes if isinstance(value, PrefixSet) else (value,):
                found[net.version].append((int(net.network_address), net.prefixlen, n))
        return found


_ROOT = -1  # the value number of the root node every walk adds: it holds no rule


# Classes a field may gain so that every set's live entries have a class to take.
LIVE_CLASSES = 1024


def _address_field(uses: list[tuple[int, Items[AddrValue]]], others: int,
                   classes: _Classes) -> tuple[dict[int, list[Node]], dict[str, dict[int, int]]]:
    """The longest-prefix nodes of one address field, per IP version.

    Every prefix of every value used becomes a node. An address's longest match is the
    node whose ancestors (itself included) are exactly the prefixes holding it, so each
    node's class comes from the values of its ancestors. A node with its parent's class
    is left out: the parent answers for it. The two versions are separate trees, so no
    IPv6 prefix (not even ::/0) answers for an IPv4 address, and an IPv4-mapped IPv6
    address is classed by the IPv6 prefixes holding it, as the reference does.
    """
    rules = _AddressRules(uses, others)
    walk = PrefixWalk(lambda inside: classes(rules.vector(inside)))
    prefixes = rules.prefixes()
    nodes = {4: walk.nodes(prefixes[4] + [(0, 0, _ROOT)], 32),
             6: walk.nodes(prefixes[6] + [(0, 0, _ROOT)], 128)}
    return nodes, _live_classes(rules, classes)


def _live_classes(rules: _AddressRules, classes: _Classes) -> dict[str, dict[int, int]]:
    """For each set, every class's class once inside the set too, closed under joining
    any of the sets (an address may be live in several), within LIVE_CLASSES new
    classes; a set that would need more, or that a vector cannot tell (joined()), has
    no entry and its live entries are compiled into the set instead."""
    sets = sorted((value.name, n) for n, value in enumerate(rules.values)
                  if isinstance(value, PrefixSet))
    budget = len(classes.ids) + LIVE_CLASSES
    out: dict[str, dict[int, int]] = {}
    for name, n in sets:
        if rules.joined(n, 0) is None:
            continue
        out[name] = {}
    done = 0
    while done < len(classes.ids):
        vectors = classes.vectors()
        for cls in range(done, len(vectors)):
            for name, n in sets:
                if name not in out:
                    continue
                joined = rules.joined(n, vectors[cls])
                if joined not in classes.ids and len(classes.ids) >= budget:
                    del out[name]  # over budget: this set's entries are compiled
                    continue
                out[name][cls] = classes(joined)
        done = len(vectors)
    return out


class PrefixWalk:
    """Classes prefixes by the values of their ancestors. States are the sets of values
    met so far, numbered; a step from a state by a node's own values is remembered, so
    a million prefixes of one set cost one set operation."""

    def __init__(self, class_of: Callable[[frozenset[int]], int]) -> None:
        self.class_of = class_of
        self.states: list[frozenset[int]] = [frozenset()]
        self.numbers: dict[frozenset[int], int] = {frozenset(): 0}
        self.steps: dict[tuple[int, object], tuple[int, int]] = {}

    def step(self, state: int, own: list[int]) -> tuple[int, int]:
        """The state and class of a node with these own values, below a node in state."""
        key = (state, own[0] if len(own) == 1 else tuple(sorted(own)))
        found = self.steps.get(key)
        if found is None:
            inside = self.states[state] | frozenset(v for v in own if v != _ROOT)
            number = self.numbers.setdefault(inside, len(self.states))
            if number == len(self.states):
                self.states.append(inside)
            found = self.steps[key] = (number, self.class_of(inside))
        return found

    def nodes(self, prefixes: list[tuple[int, int, int]], bits: int) -> list[Node]:
        """(address, length, class) of the nodes a lookup needs: the root, and every
        node whose class differs from its parent's.

        Sorted by address then length, parents come before their children; a stack holds
        the current node's ancestors. A prefix in several values appears once per value.
        """
        prefixes.sort()
        prefixes.append((-1, -1, _ROOT))  # ends the last group
        out: list[Node] = []
        stack: list[tuple[int, int, int, int]] = []  # address, length, state, class
        own: list[int] = []
        for i, (addr, plen, value) in enumerate(prefixes[:-1]):
            own.append(value)
            following = prefixes[i + 1]
            if following[0] == addr and following[1] == plen:
                continue  # the same prefix in another value
            while stack and addr >> (bits - stack[-1][1]) != stack[-1][0] >> (bits - stack[-1][1]):
                stack.pop()
            parent, parent_class = (stack[-1][2], stack[-1][3]) if stack else (0, -1)
            state, cls = self.step(parent, own)
            own = []
            if cls != parent_class:
                out.append((addr, plen, cls))
            stack.append((addr, plen, state, cls))
        return out

