"""The conntrack stage: which inbound packets reply to flows this host opened
(bpf/stages/conntrack.bpf.c, docs/defenses.md "Connection state").

A rule matches them with `state: established`:

    default_action: drop
    rules:
      - {name: replies, match: {state: established}, action: pass}

The stage runs when some rule reads `state`; it never decides, it marks a reply
(SW_PKT_ESTABLISHED) for the policy stage. Its TC egress program records the host's own
flows; the lifecycle attaches it beside the XDP root while the chain holds the stage.
Timeouts can be set, in seconds:

    conntrack:
      timeouts: {tcp: 86400, closing: 10, udp: 60, icmp: 30}
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from .. import abi
from ..dataplane.images import pack
from ..model.parse import ICMP_PROTO, IPPROTO_TCP, IPPROTO_UDP, ParsedPacket, parse
from ..policy.reference import Decision, has_l4
from ..policy.validator import Validator
from ..policy.values import describe
from . import register
from .base import Stage, StageBuild

FLOWS, CLOCK, CONSTS = "sw_ct_flows", "sw_ct_clock", ".rodata.ct"
EGRESS_PROGRAM = "sw_ct_egress"
# Seconds after the host's last packet of a flow. TCP idles long between keepalives;
# after the host's FIN or RST only the last segments of the close are due.
DEFAULT_TIMEOUTS = {"tcp": 86400, "closing": 10, "udp": 60, "icmp": 30}
MAX_TIMEOUT = 7 * 86400
ECHO_REQUEST = {abi.SW_FAMILY_IPV4: 8, abi.SW_FAMILY_IPV6: 128}
ECHO_REPLY = {abi.SW_FAMILY_IPV4: 0, abi.SW_FAMILY_IPV6: 129}
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
NS = 1_000_000_000


@dataclass(frozen=True)
class Conntrack:
    """The stage's section: the timeouts, and whether any rule reads `state` (the
    stage is in the default chain only then)."""

    timeouts: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    used: bool = False


def uses_state(policy_rules: Iterable[Any]) -> bool:
    return any(rule.match.state is not None for rule in policy_rules)


# -- the reference model of the table -------------------------------------------------

Key = tuple[bytes, bytes, int, int, int, int]  # local, remote, lport, rport, proto, family


def flow_key(frame: bytes, pkt: ParsedPacket, outgoing: bool) -> Key | None:
    """The table key of a packet (the C programs' sw_ct_outgoing / sw_ct_reply_key): an
    outgoing packet keys by its source as the local end, a reply by its destination.
    Outgoing ICMP counts as an echo request, inbound as an echo reply, by identifier."""
    if pkt.family == abi.SW_FAMILY_NONE or not has_l4(pkt):
        return None
    local, remote = (pkt.src, pkt.dst) if outgoing else (pkt.dst, pkt.src)
    if pkt.l4_proto in (IPPROTO_TCP, IPPROTO_UDP):
        ports = (pkt.sport, pkt.dport) if outgoing else (pkt.dport, pkt.sport)
        return (local, remote, *ports, pkt.l4_proto, pkt.family)
    if pkt.l4_proto == ICMP_PROTO[pkt.family]:
        want = (ECHO_REQUEST if outgoing else ECHO_REPLY)[pkt.family]
        ident = frame[pkt.l4_off + 4:pkt.l4_off + 6]
        if pkt.icmp_type == want and len(ident) == 2:
            return (local, remote, int.from_bytes(ident, "big"), 0, pkt.l4_proto, pkt.family)
    return None


@dataclass
class FlowTable:
    """What sw_ct_flows holds, in pure Python: the host's outgoing frames go in, and an
    inbound frame is a reply while its flow's expiry lies ahead (times in seconds).
    The data plane rewrites an expiry only when it moves by a second or more."""

    timeouts: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    flows: dict[Key, tuple[float, bool]] = field(default_factory=dict)  # expiry, closing

    def outgoing(self, frame: bytes, now: float = 0.0) -> None:
        pkt, _ = parse(frame)
        key = flow_key(frame, pkt, outgoing=True)
        if key is None:
            return
        life = self.timeouts["udp" if key[4] == IPPROTO_UDP else "icmp"]
        closing = False
        if key[4] == IPPROTO_TCP:
            opens = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
            if key not in self.flows and not opens:
                return  # the host's answers to connections others opened
            closing = not opens and self.flows[key][1]
            closing |= bool(pkt.tcp_flags & (TCP_FIN | TCP_RST))
            life = self.timeouts["closing" if closing else "tcp"]
        self.flows[key] = (now + life, closing)

    def established(self, frame: bytes, pkt: ParsedPacket, now: float = 0.0) -> bool:
        key = flow_key(frame, pkt, outgoing=False)
        return key is not None and key in self.flows and self.flows[key][0] > now

    def mark(self, frame: bytes, pkt: ParsedPacket, now: float = 0.0) -> ParsedPacket:
        """The packet as the conntrack stage hands it on: a reply carries the flag."""
        if self.established(frame, pkt, now):
            return replace(pkt, flags=pkt.flags | abi.SW_PKT_ESTABLISHED)
        return pkt


class ConntrackStage(Stage):
    name = "conntrack"
    keys = ("conntrack",)
    order = 19  # after the lists, the protect filters and the limit stage's blocks (what
                # they decide costs no lookup), before the rules that read its mark
    state_maps = {FLOWS: ("struct sw_ct_key", "struct sw_ct_flow")}
    # lib/clock.h: a timer and a time, never read from here; pinned so it ticks.
    config_maps = {CLOCK: ("__u32", "__u64[3]")}
    egress = EGRESS_PROGRAM

    # -- the policy file ----------------------------------------------------------------
    def section(self, doc: dict, v: Validator) -> Conntrack:
        timeouts = dict(DEFAULT_TIMEOUTS)
        if "conntrack" in doc:
            spec = v.mapping(doc["conntrack"], "conntrack", ("timeouts",))
            given = v.mapping(spec["timeouts"], "conntrack.timeouts", tuple(DEFAULT_TIMEOUTS)) \
                if spec and "timeouts" in spec else None
            for name, value in (given or {}).items():
                if type(value) is not int or not 0 < value <= MAX_TIMEOUT:
                    v.report(f"conntrack.timeouts.{name}",
                             f"expected seconds from 1 to {MAX_TIMEOUT}, got {describe(value)}")
                else:
                    timeouts[name] = value
        return Conntrack(timeouts)

    def link(self, section: Conntrack, sections: dict[str, Any], v: Validator) -> Conntrack:
        ruleset = sections.get("policy")
        used = ruleset is not None and uses_state(ruleset.rules)
        return Conntrack(section.timeouts, used)

    def busy(self, section: Conntrack) -> bool:
        return section.used

    def summary(self, section: Conntrack) -> list[str]:
        if not section.used:
            return []
        t = section.timeouts
        return [f"conntrack: replies to this host's own flows (timeouts: tcp {t['tcp']} s, "
                f"after close {t['closing']} s, udp {t['udp']} s, icmp echo {t['icmp']} s)"]

    # -- the reference model ------------------------------------------------------------
    def decide(self, section: Conntrack, pkt: ParsedPacket) -> Decision | None:
        # It only marks replies (FlowTable.mark): the policy stage decides on them.
        return None

    # -- the data plane -----------------------------------------------------------------
    def build(self, image: Conntrack, column: list[int] | None) -> StageBuild:
        consts = {f"{name}_ns": seconds * NS for name, seconds in image.timeouts.items()}
        return StageBuild(rodata={CONSTS: pack("struct sw_ct_consts", consts)})

    def describe(self, image: Conntrack) -> list[str]:
        return [f"conntrack: one hash lookup per TCP/UDP/echo reply; the table holds "
                f"{abi.SW_CT_MAX_FLOWS:,} flows at most (least recently used go first)"]

    # -- status ------------------------------------------------------------------------
    def status(self, maps: dict[str, Any]) -> dict:
        if FLOWS not in maps:
            return {}
        return {"flows": sum(1 for _ in maps[FLOWS].keys())}

    def status_lines(self, report: dict) -> list[str]:
        if "flows" not in report:
            return []
        return [f"conntrack: {report['flows']:,} flows of this host in the table "
                f"(at most {abi.SW_CT_MAX_FLOWS:,})"]


register(ConntrackStage())

