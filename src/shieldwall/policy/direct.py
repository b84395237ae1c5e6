"""Direct mode of the policy stage: a small ruleset's rules themselves, as constants of
the program, tested against the packet in order (docs/classifier.md).

Classes and chains cost a packet a table read per field; a ruleset of a few rules is
cheaper to test rule by rule, each field compared with its few items, and the verifier
prunes every field and item a rule does not use, so what runs is the ruleset compiled.
A ruleset fits when it has at most SW_POL_SMALL_RULES rules and no field of a rule
needs more than SW_POL_SMALL_ITEMS items (a set counts one item per prefix).

`decide()` mirrors the C test for test, for the tests.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .. import abi
from ..model.parse import ParsedPacket
from .analysis import normalize
from .classes import KEYS
from .model import Family, Fragment, Items, PrefixSet, RuleSet, State, TcpFlags

ITEMS = abi.SW_POL_SMALL_ITEMS
RULES = abi.SW_POL_SMALL_RULES
_V4_MAPPED = 0xFFFF << 32

# Keys of the fragment field each kind admits (classes.fragment_key).
_FRAGMENT = {Fragment.ANY: (abi.SW_POL_FRAG_FIRST, abi.SW_POL_FRAG_OTHER),
             Fragment.FIRST: (abi.SW_POL_FRAG_FIRST, abi.SW_POL_FRAG_FIRST),
             Fragment.NON_FIRST: (abi.SW_POL_FRAG_LATER, abi.SW_POL_FRAG_LATER)}


@dataclass(frozen=True)
class Test:
    """One field of one rule: its items (ranges, or for addresses (family, value,
    mask) over the 16-byte mapped address), which are negated, whether any is plain."""

    items: tuple[tuple[int, ...], ...]
    negated: int = 0
    plain: bool = True


@dataclass(frozen=True)
class DirectRule:
    rule_id: int
    verdict: str | None
    counts: bool
    would_drop: bool
    tests: dict[str, Test]


def direct_rules(ruleset: RuleSet) -> tuple[DirectRule, ...] | None:
    """The ruleset in direct form, or None when it does not fit."""
    if len(ruleset.rules) > RULES:
        return None
    out = []
    for rule in ruleset.rules:
        tests = {}
        for name, value in rule.match.fields().items():
            test = _test(name, value)
            if test is None:
                return None
            tests[name] = test
        kind = rule.action
        out.append(DirectRule(rule.id, kind.verdict, kind.counts, kind.would == "drop", tests))
    return tuple(out)


def _test(name: str, value: object) -> Test | None:
    if isinstance(value, TcpFlags):
        return Test(((value.mask, value.value),))
    if isinstance(value, Fragment):
        return Test((_FRAGMENT[value],))
    if isinstance(value, (Family, State)):
        return Test(((value.key, value.key),))
    assert isinstance(value, Items)
    if name in ("src", "dst"):
        plain = [p for v in value.plain for p in _prefixes(v)]
        negated = [p for v in value.negated for p in _prefixes(v)]
    else:
        # Only "some item of a polarity holds" matters: overlapping and adjacent ranges
        # merge into fewer items.
        plain = list(normalize((r.lo, r.hi) for r in value.plain))
        negated = list(normalize((r.lo, r.hi) for r in value.negated))
    if len(plain) + len(negated) > ITEMS:
        return None
    return Test(tuple(plain + negated), ((1 << len(negated)) - 1) << len(plain), bool(value.plain))


def _prefixes(value: object) -> list[tuple[int, int, int]]:
    """(family, value, mask) of each prefix, over the 16-byte address as the data plane
    stores it (IPv4 mapped into ::ffff:0:0/96)."""
    nets = value.prefixes if isinstance(value, PrefixSet) else (value,)
    out = []
    for net in nets:
        if net.version == 4:
            plen, addr = 96 + net.prefixlen, _V4_MAPPED | int(net.network_address)
        else:
            plen, addr = net.prefixlen, int(net.network_address)
        mask = ((1 << 128) - 1) ^ ((1 << (128 - plen)) - 1)
        out.append((abi.SW_FAMILY_IPV4 if net.version == 4 else abi.SW_FAMILY_IPV6, addr, mask))
    return out


def words(value: int) -> list[int]:
    """A 16-byte big-endian address as the two native u64 words the C compares."""
    raw = value.to_bytes(16, "big")
    return [int.from_bytes(raw[:8], sys.byteorder), int.from_bytes(raw[8:], sys.byteorder)]


# --- the C test, in Python ------------------------------------------------------------


def _holds(test: Test, hit) -> bool:
    plain_hit = negated_hit = False
    for i, item in enumerate(test.items):
        if test.negated >> i & 1:
            negated_hit |= hit(item)
        else:
            plain_hit |= hit(item)
    return (plain_hit or not test.plain) and not negated_hit


def rule_holds(rule: DirectRule, pkt: ParsedPacket) -> bool:
    for name, test in rule.tests.items():
        if name in ("src", "dst"):
            addr = int.from_bytes(pkt.src if name == "src" else pkt.dst, "big")
            if not _holds(test, lambda it: pkt.family == it[0] and addr & it[2] == it[1]):
                return False
            continue
        key = KEYS[name](pkt)
        if key is None:
            return False
        if name == "tcp_flags":
            mask, want = test.items[0]
            if key & mask != want:
                return False
        elif not _holds(test, lambda it: it[0] <= key <= it[1]):
            return False
    return True


def decide(rules: tuple[DirectRule, ...], pkt: ParsedPacket):
    """(deciding rule id or 0, verdict, counted (rule id, would drop) before it)."""
    from .classifier import Decision  # the result type both modes share
    counted = []
    for rule in rules:
        if not rule_holds(rule, pkt):
            continue
        if rule.counts:
            counted.append((rule.rule_id, rule.would_drop))
        if rule.verdict is not None:
            return Decision(rule.rule_id, rule.verdict, tuple(counted))
    return Decision(0, None, tuple(counted))
