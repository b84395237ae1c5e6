"""The reference model of policy semantics: what the data plane must decide for a packet.

It takes the parse result of the root program (shieldwall.model.parse.ParsedPacket) and
the validated policy, and is written for clarity, not speed; the kernel tests compare the
BPF stages with it.

- Non-IP frames are never subject to the policy: they pass (reason non_ip).
- Then the stages of the chain decide in turn (each stage module holds its own part
  of this model: stages/<name>.py, `decide`). The fastpath looks up the source in its
  lists; the longest matching prefix of allow and deny decides (allowlisted /
  blocklisted).
- The conntrack stage decides nothing: it marks a reply to the host's own flows
  (SW_PKT_ESTABLISHED in pkt.flags), which the `state` field reads. The mark depends on
  what the host sent before, so it is an input here: stages.conntrack.FlowTable.mark()
  sets it on a parsed packet the way the data plane's table would.
- The policy stage applies the rules, in order. pass and drop decide; count and monitor record the hit and
  go on. When no rule decides, default_action applies (reason default), except that
  default_action: drop never drops IPv6 neighbor discovery (reason nd_protected).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .. import abi
from ..model.parse import ICMP_PROTO, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, ParsedPacket
from .model import Fragment, Items, Match, Outcome, Policy, Range, RuleSet, TcpFlags

# Router/neighbor solicitation and advertisement, redirect: without them IPv6 stops
# working on the link, so a drop-by-default policy must not cut the host off.
ND_TYPES = range(133, 138)


@dataclass
class Decision:
    """The verdict for one packet.

    reason is an abi reason name: rule, default, nd_protected, allowlisted, blocklisted or
    non_ip. rule and rule_id name the deciding rule (None and 0 otherwise). counted lists
    the count and monitor rules that matched, in order; would_drop the monitor rules
    among them, which would have dropped the packet.
    """

    action: Outcome
    reason: str
    rule: str | None = None
    rule_id: int = abi.SW_RULE_NONE
    counted: list[str] = field(default_factory=list)
    would_drop: list[str] = field(default_factory=list)


def evaluate(policy: Policy, pkt: ParsedPacket) -> Decision:
    """The decision for a packet the root parsed without error: each stage of the
    policy's chain in turn, until one decides; pass at the end of the chain."""
    if pkt.family == abi.SW_FAMILY_NONE:
        return Decision("pass", "non_ip")
    from ..stages import stages  # the stages are built on this module
    for stage in chain(policy):
        decision = stages()[stage].decide(policy.sections[stage], pkt)
        if decision is not None:
            return decision
    return Decision("pass", "end_of_chain")


def chain(policy: Policy) -> tuple[str, ...]:
    """The stages the policy runs, in order: pipeline.stages, or those with work."""
    from ..stages import stages
    if policy.pipeline.stages is not None:
        return policy.pipeline.stages
    busy = [(s.place(policy.sections[name]), name) for name, s in stages().items()
            if s.busy(policy.sections[name])]
    return tuple(name for _, name in sorted(busy))


def evaluate_rules(policy: Policy | RuleSet, pkt: ParsedPacket) -> Decision:
    """The rules and default_action alone, as the policy stage applies them."""
    counted: list[str] = []
    would_drop: list[str] = []
    for rule in policy.rules:
        if not matches(rule.match, pkt):
            continue
        kind = rule.action
        if kind.counts:
            counted.append(rule.name)
        if kind.would == "drop":
            would_drop.append(rule.name)
        if kind.verdict is not None:
            return Decision(kind.verdict, "rule", rule.name, rule.id, counted, would_drop)
    if policy.default_action == "drop" and is_neighbor_discovery(pkt):
        return Decision("pass", "nd_protected", counted=counted, would_drop=would_drop)
    return Decision(policy.default_action, "default", counted=counted, would_drop=would_drop)


def is_neighbor_discovery(pkt: ParsedPacket) -> bool:
    return (
        pkt.family == abi.SW_FAMILY_IPV6
        and has_l4(pkt)
        and pkt.l4_proto == IPPROTO_ICMPV6
        and pkt.icmp_type in ND_TYPES
    )


def matches(match: Match, pkt: ParsedPacket) -> bool:
    """Every field of the match holds (an empty match holds for every IP packet)."""
    return all(_FIELD_TESTS[name](value, pkt) for name, value in match.fields().items())


def has_l4(pkt: ParsedPacket) -> bool:
    """The parser read a TCP, UDP or ICMP header (never for a non-first fragment)."""
    return bool(pkt.flags & abi.SW_PKT_HAS_L4)


def has_ports(pkt: ParsedPacket) -> bool:
    return has_l4(pkt) and pkt.l4_proto in (IPPROTO_TCP, IPPROTO_UDP)


def has_tcp(pkt: ParsedPacket) -> bool:
    return has_l4(pkt) and pkt.l4_proto == IPPROTO_TCP


def has_icmp(pkt: ParsedPacket) -> bool:
    """ICMP in IPv4 or ICMPv6 in IPv6: only then are type and code read."""
    return has_l4(pkt) and pkt.l4_proto == ICMP_PROTO[pkt.family]


def is_fragment_of(kind: Fragment, pkt: ParsedPacket) -> bool:
    if not pkt.frag & abi.SW_FRAG_IS:
        return False
    if kind is Fragment.FIRST:
        return pkt.frag_off == 0 and bool(pkt.frag & abi.SW_FRAG_MORE)
    if kind is Fragment.NON_FIRST:
        return pkt.frag_off > 0
    return True


def _numbers(applies: Callable[[ParsedPacket], bool], value: Callable[[ParsedPacket], int]):
    """The test of a numeric list field: it must apply to the packet, then hold."""

    def test(items: Items[Range], pkt: ParsedPacket) -> bool:
        if not applies(pkt):
            return False
        number = value(pkt)
        return items.holds(lambda r: number in r)

    return test


def _always(pkt: ParsedPacket) -> bool:
    return True


def state_key(pkt: ParsedPacket) -> int:
    """1 for a reply to a flow this host opened: the conntrack stage marks it (only
    that stage does, and only in a chain that has it: a rule using state brings it)."""
    return int(bool(pkt.flags & abi.SW_PKT_ESTABLISHED))


def _tcp_flags(flags: TcpFlags, pkt: ParsedPacket) -> bool:
    return has_tcp(pkt) and pkt.tcp_flags & flags.mask == flags.value


_FIELD_TESTS: dict[str, Callable[[Any, ParsedPacket], bool]] = {
    "src": lambda items, pkt: items.holds(lambda v: pkt.src_ip in v),
    "dst": lambda items, pkt: items.holds(lambda v: pkt.dst_ip in v),
    "proto": _numbers(_always, lambda pkt: pkt.l4_proto),
    "sport": _numbers(has_ports, lambda pkt: pkt.sport),
    "dport": _numbers(has_ports, lambda pkt: pkt.dport),
    "tcp_flags": _tcp_flags,
    "icmp_type": _numbers(has_icmp, lambda pkt: pkt.icmp_type),
    "icmp_code": _numbers(has_icmp, lambda pkt: pkt.icmp_code),
    "length": _numbers(_always, lambda pkt: pkt.l3_len),
    "ttl": _numbers(_always, lambda pkt: pkt.ttl),
    "vlan": _numbers(lambda pkt: pkt.vlan_depth > 0, lambda pkt: pkt.vlan_id),
    "fragment": is_fragment_of,
    "family": lambda family, pkt: pkt.family == family.code,
    "state": lambda state, pkt: state_key(pkt) == state.key,
}
