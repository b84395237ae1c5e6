"""A policy as the one nftables table `up --mode nft` runs on an interface: the peers'
writer (ruleset.py) with a counter on every rule, plus what the stages before the
rules do where nftables can say it:

- fastpath: two interval sets (allowlisted, blocklisted), each with its counter;
- protect filters: one rule each (bogons as an interval set of the ranges the
  longest-prefix decision leaves bogon), counted, dropping or only counting;
- limits: a named limit becomes a dynamic set per family, keyed by the source's (or
  destination's) prefix, whose elements carry `limit rate over`: `update @set { key
  limit rate over ... }` drops what is over and the next rule accepts the rest. `per:
  rule` is a named limit object shared by both families; `per: flow` keys by addresses,
  protocol and ports. `block:` adds the prefix, with its own timeout, to a dynamic set
  per family and prefix length that is dropped before the rules;
- protect.syn (cookie mode): the kernel's SYNPROXY, through the syn stage's own inet
  table and sysctls (engine/host.py sets them up, as in the other modes);
- `state`: conntrack's reply direction of an established connection; since conntrack
  runs after netdev ingress, such a policy's table is inet, at prerouting after it.

What nftables cannot do is listed (`Unexpressed`: the field and why), never left out
silently; where it does nearly the same, the difference is listed too.

Every counter's comment says what it counts (`meaning`): a rule's name for its hits,
"NAME (rate_limited)" for what its limit dropped, "(default)", "(allowlisted)", ...;
rule names never hold parentheses or spaces, so the two never meet.
"""

from __future__ import annotations

import ipaddress
import math
import zlib
import re
from dataclasses import dataclass, field

from ..policy import reference
from ..policy.model import Policy
from ..stages.limit import Limit
from ..stages.protect import FILTERS, REASON, Protect
from . import ir
from .ir import Span
from .ruleset import (DIFFERENCES, EXPR, ND_ACCEPT, VERDICT_WORD, LookupStep, RuleStep, Writer,
                      interval, plan)

PRIORITY = -500
# After connection tracking (-200) and SYNPROXY's raw chain (-300): where `ct state`
# is known. A policy that reads `state` runs here, in an inet table.
CT_PRIORITY = -150
# Dynamic sets are bounded: a key past this many live ones is not added, so its packets
# are not limited (they go on to the rule's accept).
METER_SIZE = 65536
BLOCK_SIZE = 65536
# A bucket idle this long is forgotten (a full bucket again); at least twice the time
# its burst takes to refill, so forgetting it changes nothing.
METER_IDLE_S = 60
# Packets with a transport header: later fragments carry none, and nftables' fast
# transport loads would read their payload (see ruleset.TRANSPORT_DISPATCH).
HAS_L4 = {4: "ip frag-off & 0x1fff == 0", 6: "@th,0,24 >= 0x0"}
MASK_ALL = {4: 32, 6: 128}


def table_name(iface: str) -> str:
    """The interface's table: nft names are letters, digits and _."""
    return "shieldwall_" + "".join(c if c.isalnum() or c == "_" else "_" for c in iface)


@dataclass(frozen=True)
class Unexpressed:
    """A part of the policy the ruleset does not enforce: its field, and why."""

    field: str
    why: str

    def __str__(self) -> str:
        return f"{self.field}: {self.why}"


@dataclass(frozen=True)
class Counted:
    """What a counter counts: its verdict and reason as `status` reports them for XDP
    (action None: it only counts, a count or monitor rule), and the rule it belongs to."""

    action: str | None
    reason: str
    rule: str | None = None


@dataclass(frozen=True)
class Compiled:
    table: str
    text: str                          # the `table netdev ... { }` definition
    state: tuple[str, ...]             # dynamic sets and limit objects: kept across reloads
    meaning: dict[str, Counted]        # counter comment -> what it counts
    rules: tuple[tuple[int, str], ...]  # (rule id, name), in order
    unexpressed: tuple[Unexpressed, ...] = ()
    differences: tuple[str, ...] = ()
    chain: tuple[str, ...] = ()        # the stages it stands for, in order
    counters: dict[str, str] = field(default_factory=dict)  # comment -> named counter
    family: str = "netdev"             # the table's: inet when the rules read `state`

    @property
    def base(self) -> str:
        """The base chain's hook line."""
        return re.search(r"^\t\t(type filter hook .*)$", self.text, re.M).group(1)

    @property
    def names(self) -> set[tuple[str, str]]:
        """(kind, name) of every chain, set, map, limit and counter it declares."""
        return set(re.findall(r"^\t(chain|set|map|limit|counter) (\S+) ", self.text, re.M))


# -- limits ------------------------------------------------------------------------------


def _rate(limit: Limit, packets: bool) -> str:
    if packets:
        return f"rate over {limit.pps}/second burst {limit.burst} packets"
    return f"rate over {max(limit.bps // 8, 1)} bytes/second burst {limit.burst_bytes} bytes"


def _state_name(kind: str, *parts: object) -> str:
    """A state object's name: the same limit (name and every parameter) keeps the same
    name, so its buckets survive a reload; a changed one starts afresh."""
    return f"{kind}_{zlib.crc32(repr(parts).encode()):08x}"


def _masked(expr: str, family: int, prefix: int) -> str:
    if prefix >= MASK_ALL[family]:
        return expr
    net = ipaddress.ip_network((0, prefix)) if family == 4 else ipaddress.IPv6Network((0, prefix))
    return f"{expr} & {net.netmask}"


def _meter_timeout(limit: Limit) -> int:
    refill = []
    if limit.pps:
        refill.append(limit.burst / limit.pps)
    if limit.bps:
        refill.append(limit.burst_bytes * 8 / limit.bps)
    return max(METER_IDLE_S, math.ceil(2 * max(refill)))


class RuntimeWriter(Writer):
    """The peers' writer, with the stages before the rules, limits and counted names."""

    def __init__(self, policy: Policy, table: str, device: str, suffix: str = "",
                 conntrack: bool = False) -> None:
        super().__init__(policy, table, device, PRIORITY)
        self.suffix = suffix
        self.conntrack = conntrack
        if conntrack:
            self.family = "inet"
            self.dispatch_guard = f'iifname "{device}" '
        self.counters: dict[str, str] = {}  # comment -> named counter
        self.value_sets: dict[tuple, str] = {}
        self.meaning: dict[str, Counted] = {}
        self.state: list[str] = []
        self.unexpressed: list[Unexpressed] = []
        self.stages = reference.chain(policy)
        self.limits = (policy.sections.get("limit").limits
                       if "limit" in self.stages and policy.sections.get("limit") else {})
        self.protect: Protect | None = (policy.sections.get("protect")
                                        if "protect" in self.stages else None)
        self.blocks: dict[tuple[int, int], str] = {}  # (family, prefix) -> set name
        self.objects: list[str] = []
        self.declared: set[str] = set()

    def count(self, comment: str, action: str | None, reason: str, rule: str | None = None) -> str:
        self.meaning[comment] = Counted(action, reason, rule)
        verdict = f"{VERDICT_WORD[action]} " if action in VERDICT_WORD else ""
        return f'{self.counter(comment)} {verdict}comment "{comment}"'

    def counter(self, name: str) -> str:
        """A named counter object: the rules that share a name (both families, both
        chains of a family) add up in it, and it outlives the rules, so a reload keeps
        what was counted, as the XDP modes do."""
        if name not in self.counters:
            self.counters[name] = _state_name("c", name)
            self.objects.append(f"\tcounter {self.counters[name]} {{ }}")
            self.state.append(self.counters[name])
        return f'counter name "{self.counters[name]}"'

    def dispatch(self, pairs: list[str]) -> list[str]:
        """Plain comparisons, no verdict map: an anonymous set is replaced with its rule,
        and a packet that began on the old rules may look it up after the switch, find
        nothing and be accepted by the base chain. Rules alone switch whole."""
        lines = []
        for pair in pairs:
            proto, verdict = pair.split(" : ")
            if verdict == "drop":
                verdict = f"{self.counter('(default)')} drop comment \"(default)\""
            lines.append(f"{self.dispatch_guard}meta protocol {proto} {verdict}")
        return lines + [self.dispatch_guard + self.count("(non_ip)", "pass", "non_ip")]

    def base_chain(self) -> list[str]:
        if not self.conntrack:
            return super().base_chain()
        return [f"type filter hook prerouting priority {CT_PRIORITY}; policy accept;"]

    # -- the stages before the rules -----------------------------------------------------
    def fastpath(self, chain) -> str:
        family = chain.family
        lines = []
        for verdict, reason in (("pass", "allowlisted"), ("drop", "blocklisted")):
            ranges = [(lo, hi) for lo, hi, v in chain.fastpath if v == verdict]
            if not ranges:
                continue
            name = f"{reason}_v{family}{self.suffix}"
            elements = ", ".join(self.interval(family, lo, hi) for lo, hi in ranges)
            self.sets.append(f"\tset {name} {{ typeof {EXPR['src', family]}; flags interval; "
                             f"elements = {{ {elements} }} }}")
            lines.append(f"{EXPR['src', family]} @{name} {self.count(f'({reason})', verdict, reason)}")
        return "\n\t\t".join(lines)

    @staticmethod
    def interval(family: int, lo: int, hi: int) -> str:
        return interval("src", family, lo, hi)

    def before_rules(self, family: int) -> list[str]:
        lines = self.protect_lines(family) if self.protect is not None else []
        for (fam, prefix), name in sorted(self.blocks.items()):
            if fam == family:
                key = _masked(EXPR["src", family], family, prefix)
                lines.append(f"{key} @{name} {self.count('(blocked)', 'drop', 'blocked')}")
        return lines

    def protect_lines(self, family: int) -> list[str]:
        lines = []
        for name in FILTERS:
            mode = self.protect.modes.get(name, "off")
            if mode == "off":
                continue
            exprs = self.protect_exprs(name, family)
            if exprs is None:
                continue
            reason = REASON[name]
            action = "drop" if mode == "drop" else None
            comment = f"(protect {name})" if action else f"(protect {name}: monitor)"
            lines += [f"{expr} {self.count(comment, action, reason)}" for expr in exprs]
        return lines

    def protect_exprs(self, name: str, family: int) -> list[str] | None:
        """The filter's conditions (any one trips it); None: not expressible, listed."""
        l4 = HAS_L4[family]
        if name == "tcp_flags":
            return [f"{l4} tcp flags & {mask:#x} == {value:#x}" for mask, value in (
                (0xFF, 0), (0x29, 0x29), (0x03, 0x03), (0x06, 0x06), (0x11, 0x01))]
        if name == "land":
            if family == 4:
                self.unexpressed.append(Unexpressed(
                    "protect.land", "nftables compares a field with values, never with "
                                    "another field of the packet (source = destination)"))
            return None
        if name == "bogons":
            ranges = self.bogon_ranges(family)
            if not ranges:
                return []
            set_name = f"bogons_v{family}{self.suffix}"
            elements = ", ".join(self.interval(family, lo, hi) for lo, hi in ranges)
            self.sets.append(f"\tset {set_name} {{ typeof {EXPR['src', family]}; flags interval; "
                             f"elements = {{ {elements} }} }}")
            return [f"{EXPR['src', family]} @{set_name}"]
        if name == "fragments":
            return ["ip frag-off & 0x1fff == 1" if family == 4 else "frag frag-off 1"]
        if name == "ipv4_options":
            return ["ip hdrlength > 5"] if family == 4 else []
        if name == "ipv6_rh0":
            return ["rt type 0"] if family == 6 else []
        if name == "zero_ports":
            return [f"{l4} meta l4proto {proto} th {end} 0" for proto in ("tcp", "udp")
                    for end in ("sport", "dport")]
        raise KeyError(name)

    def bogon_ranges(self, family: int) -> list[tuple[int, int]]:
        """Where the longest listed prefix is a bogon, not an exception (an exception
        wins a tie, as Protect.is_bogon has it)."""
        nets = [(n, "keep") for n in self.protect.not_bogons if n.version == family]
        nets += [(n, "bogon") for n in self.protect.bogons if n.version == family]
        nets.sort(key=lambda kv: (-kv[0].prefixlen, kv[1] == "bogon"))
        flat = ir.first_wins([(Span((ir.net_interval(n),)), what) for n, what in nets])
        return [(lo, hi) for lo, hi, what in flat if what == "bogon"]

    def inline_set(self, name: str, family: int, parts) -> str:
        """A named set, not an anonymous one: it is declared, filled and committed
        before the rules that use it go in (engine/nftmode.py), so no packet ever looks
        it up half made."""
        if name == "vlan":  # a raw link-layer load has no type a set could take
            return super().inline_set(name, family, parts)
        key = (name, family, tuple(parts))
        if key not in self.value_sets:
            set_name = f"v{len(self.value_sets) + 1}_{name}_v{family}{self.suffix}"
            flags = "; flags interval" if any(lo != hi for lo, hi in parts) else ""
            expr = "th dport" if name in ("sport", "dport") else EXPR[name, family]
            self.sets.append(f"\tset {set_name} {{ typeof {expr}{flags}; "
                             f"elements = {{ {', '.join(interval(name, family, lo, hi) for lo, hi in parts)} }} }}")
            self.value_sets[key] = set_name
        return "@" + self.value_sets[key]

    def nd_accept(self, counters: bool) -> str:
        return ND_ACCEPT.replace("accept", self.count("(nd_protected)", "pass", "nd_protected"))

    # -- rules ----------------------------------------------------------------------------
    def step_lines(self, step: RuleStep | LookupStep, family: int) -> list[str]:
        assert isinstance(step, RuleStep)  # with counters, every rule is one step
        rule = step.clause.rule
        name = rule.name
        if rule.action.verdict is not None:
            self.meaning[name] = Counted(rule.action.verdict, "rule", name)
        else:
            self.meaning[name] = Counted(None, rule.action.name, name)
        limit = self.limits.get(rule.action.limit) if rule.action.limit else None
        if limit is None:
            lines = [self.step(step, family)]
        else:
            match = self.rule(RuleStep(step.clause, step.spans, step.conds, None, False), family)
            lines = [" ".join(filter(None, (match, over, self.block_stmt(limit, family),
                                            self.count(f"{name} (rate_limited)", "drop",
                                                       "rate_limited", name))))
                     for over in self.over(limit, step, family)]
            lines.append(self.step(step, family))
        if rule.match.state is None:
            return lines
        return [f"{ct} {line}" for ct in STATE_CT[rule.match.state.value] for line in lines]

    def over(self, limit: Limit, step: RuleStep, family: int) -> list[str]:
        """The statements that hold when the packet is over its limit: one per rate (a
        packet over either is dropped)."""
        out = []
        for packets in (True, False):
            if not (limit.pps if packets else limit.bps):
                continue
            if limit.per == "rule":
                obj = _state_name("rule", limit, packets)
                if obj not in self.declared:
                    self.declared.add(obj)
                    self.objects.append(f"\tlimit {obj} {{ {_rate(limit, packets)} }}")
                    self.state.append(obj)
                out.append(f'limit name "{obj}"')
                continue
            key = self.meter_key(limit, step, family)
            if key is None:
                return []
            set_name = _state_name("meter", limit, packets, family)
            if set_name not in self.declared:
                self.declared.add(set_name)
                typeof = key.split(" & ")[0]  # the masked key has the field's type
                self.sets.append(f"\tset {set_name} {{ typeof {typeof}; size {METER_SIZE}; "
                                 f"flags dynamic,timeout; timeout {_meter_timeout(limit)}s; }}")
                self.state.append(set_name)
            out.append(f"update @{set_name} {{ {key} limit {_rate(limit, packets)} }}")
        return out

    def meter_key(self, limit: Limit, step: RuleStep, family: int) -> str | None:
        if limit.per in ("source", "destination"):
            end = "src" if limit.per == "source" else "dst"
            return _masked(EXPR[end, family], family, limit.prefix4 if family == 4 else limit.prefix6)
        # per flow: addresses, protocol and ports; only where the rule's packets have ports.
        proto = step.clause.spans.get("proto")
        ports = Span([(ir.IPPROTO_TCP, ir.IPPROTO_TCP), (ir.IPPROTO_UDP, ir.IPPROTO_UDP)])
        if proto is None or not (proto - ports).size() == 0:
            self.unexpressed.append(Unexpressed(
                f"limits.{limit.name}.per", f"rule {step.clause.name}: a flow limit on packets "
                "without ports (not only tcp or udp): nftables keys a flow by its ports, which "
                "these packets lack; the rule passes them unlimited"))
            return None
        return (f"{EXPR['src', family]} . {EXPR['dst', family]} . meta l4proto . "
                "th sport . th dport")

    def block_stmt(self, limit: Limit, family: int) -> str:
        if not limit.block_s:
            return ""
        prefix = limit.prefix4 if family == 4 else limit.prefix6
        name = self.blocks.setdefault((family, prefix), f"blocked_v{family}_{prefix}")
        if name not in self.declared:
            self.declared.add(name)
            self.sets.append(f"\tset {name} {{ typeof {EXPR['src', family]}; size {BLOCK_SIZE}; "
                             "flags dynamic,timeout; }")
            self.state.append(name)
        key = _masked(EXPR["src", family], family, prefix)
        return f"add @{name} {{ {key} timeout {math.ceil(limit.block_s)}s }}"

    def write(self, p) -> str:
        # Block sets are declared while the rules are written, and dropped before them:
        # the rules go first, then the chains are written again with the sets known.
        for chain in p.chains.values():
            for step in chain.steps:
                rule = step.clause.rule
                limit = self.limits.get(rule.action.limit) if rule.action.limit else None
                if limit is not None:
                    self.block_stmt(limit, chain.family)
        text = super().write(p)
        if self.objects:
            head, rest = text.split("\n", 1)
            text = "\n".join([head, *self.objects, rest])
        return text


# -- the stages nftables stands in for, and those it cannot --------------------------------

_NOT_EXPRESSIBLE = {
    "reflection": "passing only the replies to this host's own queries needs its TC egress "
                  "program's record of them; at netdev ingress nftables knows no flows",
    "icmp": "whether an ICMP error is about a flow of this host needs the host's socket "
            "table; its per-type limits are left out with it",
}
# shieldwall's `established`: a packet of a flow this host opened, coming back. To
# conntrack that is the reply direction of an established connection; `new` is every
# other packet (two rules, either may hold: untracked packets have no direction).
STATE_CT = {"established": ("ct direction reply ct state established",),
            "new": ("ct direction original", "ct state != established")}


def _stage_notes(policy: Policy, stages: tuple[str, ...]) -> list[Unexpressed]:
    notes = []
    for stage in stages:
        if stage in _NOT_EXPRESSIBLE:
            notes.append(Unexpressed(f"protect.{stage}", _NOT_EXPRESSIBLE[stage]))
    syn = policy.sections.get("syn") if "syn" in stages else None
    if syn is not None:
        if syn.mode != "cookie":
            notes.append(Unexpressed("protect.syn.mode", "auth mode answers SYNs from XDP; "
                                     "nftables has only SYNPROXY's cookies (mode: cookie)"))
        if not syn.always:
            notes.append(Unexpressed("protect.syn.activate", "SYNPROXY cannot switch by the SYN "
                                     "rate: in nft mode it always answers"))
    return notes


def compile_policy(policy: Policy | None, device: str, suffix: str = "") -> Compiled:
    """The table for `device`: a policy's rules, stages and counters (None: no policy,
    every packet passes, and the table only counts). `suffix` follows the names of its
    chains and configuration sets, so that a new ruleset can be put beside the old."""
    table = table_name(device)
    if policy is None:
        counter = _state_name("c", "(default)")
        text = (f"table netdev {table} {{\n\tcounter {counter} {{ }}\n\tchain ingress {{\n"
                f'\t\ttype filter hook ingress device "{device}" priority {PRIORITY}; policy accept;\n'
                f'\t\tmeta protocol ip counter name "{counter}" comment "(default)"\n'
                f'\t\tmeta protocol ip6 counter name "{counter}" comment "(default)"\n\t}}\n}}\n')
        return Compiled(table, text, (counter,), {"(default)": Counted("pass", "default")}, (),
                        counters={"(default)": counter})
    runs_rules = "policy" in ir.chain(policy)
    conntrack = runs_rules and any(rule.match.state is not None for rule in policy.rules)
    writer = RuntimeWriter(policy, table, device, suffix, conntrack)
    text = writer.write(plan(policy, counters=True))
    stages = reference.chain(policy)
    unexpressed = _stage_notes(policy, stages) + writer.unexpressed
    chain_default = ir.end_verdict(policy)
    writer.meaning["(default)"] = Counted(chain_default, "default")
    differences = [DIFFERENCES["qinq"]]
    if writer.limits:
        differences.append(
            "limits: nftables' token bucket (`limit rate over`), not shieldwall's GCRA; a "
            f"limit keeps at most {METER_SIZE} keys per family, and a key past them is not "
            "limited; with both pps and bps, a packet over the bit rate still takes a packet token")
    if "syn" in stages:
        differences.append("protect.syn: SYNPROXY answers after netdev ingress and connection "
                           "tracking's raw hook, so the rules see a SYN before it is answered "
                           "(in XDP the syn stage answers first)")
    if conntrack:
        differences.append(
            "state: the rules read connection tracking, so the table is inet at prerouting "
            f"(priority {CT_PRIORITY}), not netdev ingress: packets reach it later (after GRO, "
            "the taps and conntrack), reassembled (a `fragment` match and the fragments filter "
            "find no fragment), and `established` is conntrack's reply direction of an "
            "established connection")
    expressed = tuple(s for s in stages if s not in _NOT_EXPRESSIBLE)
    return Compiled(table, text, tuple(writer.state), dict(writer.meaning),
                    tuple((r.id, r.name) for r in policy.rules), tuple(dict.fromkeys(unexpressed)),
                    tuple(differences), expressed, dict(writer.counters), writer.family)

