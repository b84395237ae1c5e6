"""Compiles a Policy into the policy stage's classifier maps (docs/classifier.md).

Rule i of the policy is bit i of every bitvector. Each match field splits its values
into classes: values that admit the same rules share a class, and the class's vector
holds those rules plus every rule that does not use the field. The data plane looks up
a packet's class per field and ANDs the vectors; reference.evaluate() is the semantics
it must reproduce. Pure Python: the result is plain arrays and bytes that
dataplane.pipeline writes into the maps.
"""

from __future__ import annotations

import sys
from array import array
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable

from .. import abi
from ..model.parse import IPPROTO_TCP, ParsedPacket
from .analysis import Intervals, field_space, normalize
from .model import DOMAINS
from .model import AddrValue, Items, Match, Policy, PrefixSet
from .reference import matches

FIELDS: dict[str, int] = {
    name[len("SW_POL_F_"):].lower(): value
    for name, value in abi.defines().items()
    if name.startswith("SW_POL_F_")
}
BLOCK_RULES = abi.SW_POL_BLOCK_WORDS * 64
ADDRESS_FIELDS = ("src", "dst")

# IPv4 sits in the address tries as ::ffff:a.b.c.d (dataplane.addresses).
_V4_MAPPED = 0xFFFF << 32


@dataclass(eq=False)
class FieldImage:
    """One field's part of sw_pol_meta."""

    used: bool = False
    key_base: int = 0
    na_class: int = 0
    vec_base: int = 0
    classes: int = 0  # how many vectors it has


@dataclass(eq=False)
class TrieImage:
    """An address trie: keys packed as struct sw_lpm_key (native prefixlen, then the 16
    address bytes), one class per key."""

    keys: bytes = b""
    classes: array = field(default_factory=lambda: array("I"))

    def extend(self, nodes: Iterable[tuple[int, int, int]]) -> None:
        """Adds (prefix length, address as an int, class) nodes."""
        nodes = list(nodes)
        order = sys.byteorder
        self.keys += b"".join(plen.to_bytes(4, order) + addr.to_bytes(16, "big")
                              for plen, addr, _ in nodes)
        self.classes.extend(cls for _, _, cls in nodes)

    def __len__(self) -> int:
        return len(self.classes)


@dataclass(eq=False)
class PolicyImage:
    """Everything the policy stage's maps hold for one ruleset. Compared by identity."""

    rules: int
    rule_names: tuple[str, ...]  # by rule id - 1
    nblocks: int
    default_action: int  # SW_ACT_*
    fields: list[FieldImage]  # by SW_POL_F_* id
    kinds_base: int
    keys: array  # scalar fields' classes, at key_base + value
    tries: dict[str, TrieImage]  # src and dst
    blocks: array  # u64 words, SW_POL_BLOCK_WORDS per block

    def meta(self) -> dict:
        """The struct sw_pol_meta of this ruleset."""
        return {
            "enabled": 1,
            "nrules": self.rules,
            "nblocks": self.nblocks,
            "default_action": self.default_action,
            "kinds_base": self.kinds_base,
            "field": [
                {"used": int(f.used), "key_base": f.key_base, "na_class": f.na_class,
                 "vec_base": f.vec_base}
                for f in self.fields
            ],
        }

    @property
    def array_bytes(self) -> int:
        """What the array maps take in the kernel (it stores a u32 in 8 bytes); the trie
        nodes come on top."""
        return 8 * len(self.blocks) + 8 * len(self.keys)


class _Classes:
    """A field's distinct rule vectors, numbered in order of appearance."""

    def __init__(self) -> None:
        self.ids: dict[int, int] = {}

    def __call__(self, vector: int) -> int:
        return self.ids.setdefault(vector, len(self.ids))


def compile_policy(policy: Policy) -> PolicyImage:
    """The maps' contents for the policy's rules and default_action (the fastpath lists
    are the fastpath stage's). ValueError when the stage cannot hold the rules."""
    rules = policy.rules
    if len(rules) > abi.SW_POL_MAX_RULES:
        raise ValueError(f"{len(rules)} rules: the policy stage holds at most {abi.SW_POL_MAX_RULES}")
    nblocks = max(1, -(-len(rules) // BLOCK_RULES))
    fields = [FieldImage() for _ in FIELDS]
    keys = array("I")
    tries: dict[str, TrieImage] = {}
    vectors: list[int] = []
    matched = [rule.match.fields() for rule in rules]
    for name, fid in FIELDS.items():
        uses = [(i, m[name]) for i, m in enumerate(matched) if name in m]
        if not uses:
            continue
        others = _mask(i for i, m in enumerate(matched) if name not in m)
        classes = _Classes()
        image = fields[fid]
        image.used = True
        image.vec_base = len(vectors) * nblocks
        if name in ADDRESS_FIELDS:
            tries[name], image.na_class = _address_field(uses, others, classes)
        else:
            image.key_base = len(keys)
            image.na_class = classes(others)
            keys.extend(_scalar_field(name, uses, others, classes))
        image.classes = len(classes.ids)
        vectors.extend(classes.ids)
    kinds_base = len(vectors) * nblocks
    vectors += [
        _mask(i for i, r in enumerate(rules) if r.action.decides),
        _mask(i for i, r in enumerate(rules) if r.action.verdict == "drop"),
        _mask(i for i, r in enumerate(rules) if r.action.would == "drop"),
    ]
    return PolicyImage(
        rules=len(rules),
        rule_names=tuple(r.name for r in rules),
        nblocks=nblocks,
        default_action=abi.ACTION_CODES[policy.default_action],
        fields=fields,
        kinds_base=kinds_base,
        keys=keys,
        tries={name: tries.get(name, TrieImage()) for name in ADDRESS_FIELDS},
        blocks=_blocks(vectors, nblocks),
    )


def _mask(indexes: Iterable[int]) -> int:
    mask = 0
    for i in indexes:
        mask |= 1 << i
    return mask


def _blocks(vectors: list[int], nblocks: int) -> array:
    words = array("Q")
    for vector in vectors:
        words.frombytes(vector.to_bytes(nblocks * BLOCK_RULES // 8, "little"))
    if sys.byteorder == "big":
        words.byteswap()
    return words


def _grouped(uses: list[tuple[int, Hashable]]) -> dict[Hashable, int]:
    """Rules with the same value for the field, as one mask: sets of rules often share
    a port or a prefix list, and each distinct value is compiled once."""
    groups: dict[Hashable, int] = defaultdict(int)
    for i, value in uses:
        groups[value] |= 1 << i
    return groups


# --- scalar fields -----------------------------------------------------------------

# Values each scalar field's key takes in the data plane (sw_pol_key in policy.bpf.c):
# a range field's whole domain, counted from 0.
_KEY_COUNTS = {
    **{name: domain.hi + 1 for name, domain in DOMAINS.items()},
    "tcp_flags": 256, "fragment": abi.SW_POL_FRAG_KEYS, "family": 2,
}

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
}


def _admitted(name: str, value: object) -> Intervals:
    """The keys a rule's value for the field admits (when the field applies at all)."""
    if isinstance(value, Items):
        return field_space(name, value)
    rule = Match(**{name: value})
    return normalize((k, k) for k in range(_KEY_COUNTS[name]) if matches(rule, _KEY_PACKETS[name](k)))


def _scalar_field(name: str, uses: list[tuple[int, Hashable]], others: int,
                  classes: _Classes) -> array:
    """The class of every key. A sweep over the keys where some value's admitted
    intervals start or end: XOR toggles a group's rules in and out (groups are disjoint,
    so toggles never cancel another group's)."""
    toggles: dict[int, int] = defaultdict(int)
    toggles[0] = 0
    for value, mask in _grouped(uses).items():
        for lo, hi in _admitted(name, value):
            toggles[lo] ^= mask
            toggles[hi + 1] ^= mask
    size = _KEY_COUNTS[name]
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
        for items, mask in _grouped(uses).items():
            if not items.plain:
                self.negated_only |= mask
            for item in items.items:
                n = number.setdefault(id(item.value), len(self.values))
                if n == len(self.values):
                    self.values.append(item.value)
                (self.negated if item.negated else self.plain)[n] |= mask

    def vector(self, inside: frozenset[int]) -> int:
        """The rules that admit an address inside exactly these values (Items.holds)."""
        hit, out = self.negated_only, 0
        for n in inside:
            hit |= self.plain.get(n, 0)
            out |= self.negated.get(n, 0)
        return self.others | (hit & ~out)

    def prefixes(self) -> dict[int, list[tuple[int, int, int]]]:
        """(address, length, value number) of every prefix of every value, by version."""
        found: dict[int, list[tuple[int, int, int]]] = {4: [], 6: []}
        for n, value in enumerate(self.values):
            for net in value.prefixes if isinstance(value, PrefixSet) else (value,):
                found[net.version].append(
                    (int(net.network_address), net.prefixlen, n))
        return found


_ROOT = -1  # the value number of the nodes every walk adds: it holds no rule


def _address_field(uses: list[tuple[int, Items[AddrValue]]], others: int,
                   classes: _Classes) -> tuple[TrieImage, int]:
    """The trie of one address field, and the class of an IPv4-mapped IPv6 address.

    Every prefix of every value used becomes a node. An address's longest match is the
    node whose ancestors (itself included) are exactly the prefixes holding it, so each
    node's class comes from the values of its ancestors. A node with its parent's class
    is left out: the parent answers for it.
    """
    rules = _AddressRules(uses, others)
    walk = _Walk(lambda inside: classes(rules.vector(inside)))
    prefixes = rules.prefixes()
    v4 = walk.nodes(prefixes[4] + [(0, 0, _ROOT)], 32)
    # IPv4-mapped addresses of IPv6 packets fall under whatever IPv6 prefixes hold
    # ::ffff:0:0/96: a node the data plane never looks up (the loader refuses prefixes
    # inside it), whose class it takes from sw_pol_field.na_class instead.
    mapped = (_V4_MAPPED, 96)
    v6 = walk.nodes(prefixes[6] + [(0, 0, _ROOT), (*mapped, _ROOT)], 128, keep=mapped)
    trie = TrieImage()
    trie.extend((plen + 96, _V4_MAPPED | addr, cls) for addr, plen, cls in v4)
    trie.extend((plen, addr, cls) for addr, plen, cls in v6 if (addr, plen) != mapped)
    return trie, next(cls for addr, plen, cls in v6 if (addr, plen) == mapped)


class _Walk:
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
            inside = self.states[state] | frozenset(own)
            number = self.numbers.setdefault(inside, len(self.states))
            if number == len(self.states):
                self.states.append(inside)
            found = self.steps[key] = (number, self.class_of(inside))
        return found

    def nodes(self, prefixes: list[tuple[int, int, int]], bits: int,
              keep: tuple[int, int] | None = None) -> list[tuple[int, int, int]]:
        """(address, length, class) of the nodes the trie needs: the root, every node
        whose class differs from its parent's, and `keep`.

        Sorted by address then length, parents come before their children; a stack holds
        the current node's ancestors. A prefix in several values appears once per value.
        """
        prefixes.sort()
        prefixes.append((-1, -1, _ROOT))  # ends the last group
        out = []
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
            if cls != parent_class or (addr, plen) == keep:
                out.append((addr, plen, cls))
            stack.append((addr, plen, state, cls))
        return out
