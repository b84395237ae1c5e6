"""The validated policy: immutable, typed, with every reference resolved.

The loader (load.py) builds these from YAML; the reference model (reference.py), the
checks (analysis.py) and the compiler for the kernel maps read them. Nothing here can hold
an invalid value: ranges are ordered and inside their field's domain, prefixes have no
host bits, set references point at a PrefixSet.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Callable, Generic, Iterable, Iterator, Literal, Mapping, TypeVar, Union

from .. import abi

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Verdict = Literal["pass", "drop"]
# What a packet gets: a verdict, or tx when a stage answers it in place (the syn stage).
Outcome = Literal["pass", "drop", "tx"]
VERDICTS: tuple[Verdict, ...] = ("pass", "drop")

T = TypeVar("T")


@dataclass(frozen=True)
class Capacity:
    """How much a policy may hold: the sizes the kernel maps are created with."""

    rules: int = 10_000
    set_entries: int = 1_000_000  # per set, after duplicates are merged
    fastpath_entries: int = abi.SW_FASTPATH_MAX  # allow and deny together: the trie's size


# --- numeric fields ---------------------------------------------------------------

# IANA protocol numbers for the names `proto` accepts.
PROTOCOLS: Mapping[str, int] = MappingProxyType({
    "icmp": 1,
    "tcp": 6,
    "udp": 17,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "ipv6-icmp": 58,
    "sctp": 132,
})

@dataclass(frozen=True)
class Domain:
    """The values a numeric field takes: its noun in errors, bounds and any names."""

    noun: str
    lo: int
    hi: int
    names: Mapping[str, int] = field(default_factory=dict)


PORT = Domain("port", 0, 65535)
DOMAINS: Mapping[str, Domain] = MappingProxyType({
    "proto": Domain("protocol number", 0, 255, PROTOCOLS),
    "sport": PORT,
    "dport": PORT,
    "icmp_type": Domain("ICMP type", 0, 255),
    "icmp_code": Domain("ICMP code", 0, 255),
    "length": Domain("length", 0, 65535),
    "ttl": Domain("TTL", 0, 255),
    "vlan": Domain("VLAN id", 0, 4095),
})



# --- actions -----------------------------------------------------------------------


@dataclass(frozen=True)
class ActionKind:
    """What a rule does when it matches.

    `verdict` set: the rule decides and evaluation stops. None: evaluation goes on with
    the next rule. `counts`: the hit is recorded in Decision.counted. `would`: shadow
    mode, the verdict the rule reports without applying it. `limit`: the named rate
    limit (the `limits` section) that has the last word on what the rule passes.
    """

    name: str
    verdict: Verdict | None = None
    counts: bool = False
    would: Verdict | None = None
    limit: str | None = None

    @property
    def decides(self) -> bool:
        return self.verdict is not None


ACTIONS: dict[str, ActionKind] = {}


def register_action(kind: ActionKind) -> ActionKind:
    """Add an action to the set the policy language accepts."""
    if kind.name in ACTIONS:
        raise ValueError(f"action {kind.name!r} is already registered")
    ACTIONS[kind.name] = kind
    return kind


PASS = register_action(ActionKind("pass", verdict="pass"))
DROP = register_action(ActionKind("drop", verdict="drop"))
COUNT = register_action(ActionKind("count", counts=True))
MONITOR = register_action(ActionKind("monitor", counts=True, would="drop"))


# --- values ------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """lo..hi, both inclusive. A single number is the range n..n."""

    lo: int
    hi: int

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.lo <= value <= self.hi

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


class PrefixTable:
    """Longest-prefix lookup over IPv4 and IPv6 networks, as the kernel's LPM tries do it.

    An IPv4 network only ever matches IPv4 addresses and an IPv6 network IPv6 addresses.
    """

    __slots__ = ("_levels",)

    def __init__(self, networks: Iterable[Network]) -> None:
        by_len: dict[tuple[int, int], set[int]] = {}
        for net in networks:
            shift = net.max_prefixlen - net.prefixlen
            by_len.setdefault((net.version, net.prefixlen), set()).add(
                int(net.network_address) >> shift
            )
        # Per version, longest prefixes first, so the first hit is the longest match.
        self._levels: dict[int, list[tuple[int, int, frozenset[int]]]] = {4: [], 6: []}
        for (version, plen), keys in sorted(by_len.items(), key=lambda kv: -kv[0][1]):
            bits = 32 if version == 4 else 128
            self._levels[version].append((plen, bits - plen, frozenset(keys)))

    def longest_match(self, addr: Address) -> int | None:
        """The prefix length of the longest network holding addr, None if there is none."""
        value = int(addr)
        for plen, shift, keys in self._levels[addr.version]:
            if value >> shift in keys:
                return plen
        return None

    def __contains__(self, addr: Address) -> bool:
        return self.longest_match(addr) is not None

    def overlaps(self, net: Network) -> bool:
        """Whether any network of the table shares an address with net."""
        if self.longest_match(net.network_address) is not None:
            return True
        top = int(net.network_address) >> (net.max_prefixlen - net.prefixlen)
        return any(any(key >> (plen - net.prefixlen) == top for key in keys)
                   for plen, _, keys in self._levels[net.version] if plen > net.prefixlen)


@dataclass(frozen=True)
class PrefixSet:
    """A named set of prefixes (`sets:` in the policy), duplicates merged, sorted."""

    name: str
    type: str
    prefixes: tuple[Network, ...]
    files: tuple[str, ...] = ()
    table: PrefixTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "table", PrefixTable(self.prefixes))

    def __hash__(self) -> int:
        # Hashing a million prefixes on every dictionary lookup would be slow.
        return hash((self.name, len(self.prefixes)))

    def __contains__(self, addr: Address) -> bool:
        return addr in self.table

    def __str__(self) -> str:
        return f"@{self.name}"


SET_TYPES = ("prefix",)

# An item of src, dst or a fastpath list: a literal network or a set. `addr in value`
# works for both and is False across IP versions.
AddrValue = Union[ipaddress.IPv4Network, ipaddress.IPv6Network, PrefixSet]


def expand(values: Iterable[AddrValue]) -> Iterator[Network]:
    """The networks of literal items and sets."""
    for value in values:
        if isinstance(value, PrefixSet):
            yield from value.prefixes
        else:
            yield value


@dataclass(frozen=True)
class Item(Generic[T]):
    """One item of a list field; `negated` for items written with a leading `!`."""

    value: T
    negated: bool = False

    def __str__(self) -> str:
        return f"{'!' if self.negated else ''}{self.value}"


@dataclass(frozen=True)
class Items(Generic[T]):
    """A list field.

    It holds for a value that matches at least one plain item, or when every item is
    negated, and matches none of the negated items. It is never empty.
    """

    items: tuple[Item[T], ...]

    @property
    def plain(self) -> tuple[T, ...]:
        return tuple(item.value for item in self.items if not item.negated)

    @property
    def negated(self) -> tuple[T, ...]:
        return tuple(item.value for item in self.items if item.negated)

    def holds(self, test: Callable[[T], bool]) -> bool:
        plain = self.plain
        if plain and not any(test(value) for value in plain):
            return False
        return not any(test(value) for value in self.negated)

    def __str__(self) -> str:
        return ", ".join(str(item) for item in self.items)


PortItem = Item[Range]
AddrItems = Items[AddrValue]
RangeItems = Items[Range]


@dataclass(frozen=True)
class TcpFlags:
    """Flags that must be set (in value) and flags that must be clear (in mask, not value)."""

    mask: int
    value: int

    def __str__(self) -> str:
        names = []
        for name, bit in TCP_FLAG_BITS.items():
            if self.mask & bit:
                names.append(name if self.value & bit else f"!{name}")
        return ",".join(names)


# FIN, SYN, ... with their wire bits, from the shared header.
TCP_FLAG_BITS: dict[str, int] = {
    name[len("SW_TCP_"):]: bit
    for name, bit in sorted(abi.defines().items(), key=lambda kv: kv[1])
    if name.startswith("SW_TCP_")
}


class Family(Enum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"

    @property
    def code(self) -> int:
        """The value of sw_pkt.family."""
        return abi.SW_FAMILY_IPV4 if self is Family.IPV4 else abi.SW_FAMILY_IPV6

    @property
    def key(self) -> int:
        """The policy stage's key for it (sw_pol_key)."""
        return int(self is Family.IPV6)


class State(Enum):
    """Whether a packet replies to a flow this host opened (the conntrack stage's
    table, docs/defenses.md "Connection state"); `new` is every other packet."""

    NEW = "new"
    ESTABLISHED = "established"

    @property
    def key(self) -> int:
        """The policy stage's key for it (sw_pol_key): SW_PKT_ESTABLISHED set or not."""
        return int(self is State.ESTABLISHED)


class Fragment(Enum):
    ANY = "any"  # any fragment
    FIRST = "first"  # offset 0, more fragments follow
    NON_FIRST = "non_first"  # offset > 0


@dataclass(frozen=True)
class Match:
    """What a rule matches: every field that is set must hold; none set matches all IP."""

    src: AddrItems | None = None
    dst: AddrItems | None = None
    proto: RangeItems | None = None
    sport: RangeItems | None = None
    dport: RangeItems | None = None
    tcp_flags: TcpFlags | None = None
    icmp_type: RangeItems | None = None
    icmp_code: RangeItems | None = None
    length: RangeItems | None = None
    ttl: RangeItems | None = None
    vlan: RangeItems | None = None
    fragment: Fragment | None = None
    family: Family | None = None
    state: State | None = None

    def fields(self) -> dict[str, object]:
        """The fields that are set, in declaration order."""
        return {name: value for name, value in vars(self).items() if value is not None}


@dataclass(frozen=True)
class Rule:
    """A rule; `id` is its 1-based position, the id the data plane reports (sw_pkt.rule)."""

    id: int
    name: str
    match: Match
    action: ActionKind
    description: str | None = None


@dataclass(frozen=True)
class Pipeline:
    """What the chain does when a stage is missing: fail open (pass) or closed (drop);
    and which stages run, in order (None: those with work to do, in the usual order)."""

    on_missing_stage: Verdict = "pass"
    stages: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Events:
    """Sampled packet events (docs/operations.md, "Events"): at most `rate` a second per
    CPU, each of drops and passes (0: none), from 1 in `drops` dropped packets and 1 in
    `passes` passed ones (0: passes are not sampled)."""

    rate: int = 1000
    drops: int = 1
    passes: int = 0


@dataclass(frozen=True)
class Segment:
    """A named part of the rules that owns some destinations: its rules come from a file
    of their own, match only packets to those destinations, and a reload applies each
    segment's file as a change of its own (docs/updates.md, "Segments")."""

    name: str
    dst: tuple[Network, ...]
    file: str
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class RuleSet:
    """The rules and what happens when none decides: the policy stage's section.
    `rules` holds every rule, the segments' first, in segment order."""

    default_action: Verdict = "pass"
    rules: tuple[Rule, ...] = ()
    segments: tuple[Segment, ...] = ()


@dataclass(frozen=True)
class Policy:
    """A validated policy: the document's own parts, and each stage's section by stage
    name (the stage modules define and validate them).

    `rules` and `default_action` are the policy stage's, named here because they are
    what a policy is mostly about; any other section is `policy.<stage name>`.
    """

    source: str
    version: int
    sets: Mapping[str, PrefixSet] = field(default_factory=lambda: MappingProxyType({}))
    pipeline: Pipeline = Pipeline()
    events: Events = Events()
    sections: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def ruleset(self) -> RuleSet:
        found = self.sections.get("policy")
        return found if isinstance(found, RuleSet) else RuleSet()

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.ruleset.rules

    @property
    def default_action(self) -> Verdict:
        return self.ruleset.default_action

    def __getattr__(self, name: str) -> object:
        # Sections of the stages, by stage name (policy.fastpath, ...).
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(name)

    def rule(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)
