"""A shieldwall policy as iptables/ip6tables rules with ipset, at the earliest hook
iptables has: the raw table's PREROUTING, for packets from the protected device.

- One chain per family, entered from PREROUTING with `-i DEVICE`; each rule is one
  iptables rule when its fields are a conjunction iptables can say in one line, or a few
  rules (alternatives) or a chain of its own (values to exclude RETURN, then the verdict)
  when not. Prefix lists are `hash:net` sets.
- The fastpath is two `hash:net` sets per family, each holding the other list's prefixes
  as `nomatch` entries: ipset tries the most specific prefix first and a `nomatch` hit
  ends the lookup, so "in the allow set" is exactly "the longest listed prefix is an
  allow one", and an allowed /32 inside a denied /24 stays allowed.
- Consecutive rules that only match source (or destination) prefixes with one verdict
  become one `hash:net` lookup; rules matching an address, TCP/UDP and one port list
  become one `hash:net,port` lookup. A rule joins an earlier group only when it is
  disjoint from every rule in between.
- `count` and `monitor` rules are left out unless counters are asked for; then each rule
  is an iptables rule with a `comment` naming it and nothing is merged.
- default_action: `drop` ends each chain with DROP (after accepting IPv6 neighbor
  discovery); `pass` returns to PREROUTING.

What PREROUTING sees: only packets the IP stack took. Non-IP frames never get there, and
pass, as in shieldwall. A frame with a VLAN tag whose id is not 0 is dropped by the core
before the IP stack when no VLAN device takes it: iptables cannot see or match tags, so
rules with `vlan` are not expressible, and tagged frames are dropped whatever the policy
says (DIFFERENCES). Priority tags (id 0) are removed and the inner packet filtered.
"""

from __future__ import annotations

import json
import shlex
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from ...policy.model import Fragment, Network, Policy, TCP_FLAG_BITS
from ...nft import ir
from .common import Installed, NotExpressible, NotExpressibleError, grouped, run_in
from ...nft.ir import Clause, Group, Span

PEER = "iptables"
DEFAULT_CHAIN = "SWPEER"
DEFAULT_SET_PREFIX = "swpeer"
MAX_RULES_PER_CLAUSE = 256
MULTIPORT_SLOTS = 15  # xt_multiport: a range takes two
U32_RANGES = 10  # xt_u32: value ranges per test
MAX_PORT_ELEMENTS = 65536  # hash:net,port entries one merged lookup may have
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp"}
VERDICT_TARGET = {"pass": "ACCEPT", "drop": "DROP"}
IPTABLES_TCP_FLAGS = 0x3F  # FIN SYN RST PSH ACK URG

DIFFERENCES = {
    "vlan": "frames with a VLAN tag whose id is not 0 never reach PREROUTING (the kernel "
            "drops them for want of a VLAN device): they are dropped whatever the policy",
    "ipv6_fragment_headers": "IPv6 packets with more than one fragment header: `fragment` "
                             "is read from the first one (shieldwall: the last one)",
    "nft_backend_fragments": "with the nft backend, IPv6 packets whose first fragment "
                             "header has offset 0 and a later one not: ports, TCP flags and "
                             "ICMP types may be read from the later fragment's payload "
                             "(iptables-nft compiles them to nftables payload loads)",
}

Alt = tuple[tuple[str, ...], tuple[str, ...]]  # (matches, exclusions that RETURN)


class _Refused(Exception):
    """A rule iptables cannot say (within bounds); the message is the note's reason."""


class _Dead(Exception):
    """A rule that can match no packet of this family: it is left out."""


def _ranges(parts) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in parts)


def _chunks(parts, limit, weight=lambda p: 1):
    out, cur, used = [], [], 0
    for p in parts:
        w = weight(p)
        if cur and used + w > limit:
            out.append(cur)
            cur, used = [], 0
        cur.append(p)
        used += w
    if cur:
        out.append(cur)
    return out


class _TooMany(Exception):
    pass


def _product(a: list[Alt], b: list[Alt]) -> list[Alt]:
    """Every alternative of a with every one of b (a conjunction of two disjunctions)."""
    if len(a) * len(b) > MAX_RULES_PER_CLAUSE:
        raise _TooMany(len(a) * len(b))
    return [(m1 + m2, e1 + e2) for m1, e1 in a for m2, e2 in b]


@dataclass
class _Sets:
    prefix: str
    lines: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    by_content: dict = field(default_factory=dict)

    def create(self, family: int, kind: str, entries: list[str], tag: str = "",
               count: int | None = None) -> str:
        """A set of these entries (count: how many they expand to), or the same one."""
        key = (family, kind, tuple(entries))
        if key in self.by_content:
            return self.by_content[key]
        name = f"{self.prefix}-{tag or len(self.names) + 1}-{family}"
        count = len(entries) if count is None else count
        size = max(65536, 2 * count)
        hashsize = 1024
        while hashsize < count // 4 and hashsize < (1 << 20):
            hashsize *= 2
        inet = "inet" if family == 4 else "inet6"
        self.lines.append(f"create {name} {kind} family {inet} hashsize {hashsize} "
                          f"maxelem {size}")
        self.lines += [f"add {name} {entry}" for entry in entries]
        self.names.append(name)
        self.by_content[key] = name
        return name

    def nets(self, family: int, nets, nomatch=(), tag: str = "") -> str:
        entries = [str(n) for n in _no_zero(nets)]
        entries += [f"{n} nomatch" for n in _no_zero(nomatch)]
        return self.create(family, "hash:net", entries, tag)


def _proto(value: int) -> str:
    return PROTO_NAMES.get(value, str(value))


def _no_zero(nets) -> list[Network]:
    """hash:net takes no /0: the two halves say the same."""
    out = []
    for net in nets:
        out += list(net.subnets(prefixlen_diff=1)) if net.prefixlen == 0 else [net]
    return out


class _Compiler:
    def __init__(self, policy: Policy, chain: str, sets: _Sets, counters: bool) -> None:
        self.policy = policy
        self.chain = chain
        self.sets = sets
        self.counters = counters
        self.reasons: dict[str, None] = {}  # ordered, each once

    # -- fields --

    def addresses(self, c: Clause, name: str) -> list[Alt]:
        a = c.addrs[name]
        flag, direction = ("-s", "src") if name == "src" else ("-d", "dst")
        matches = []
        single_used = False
        if a.plain is not None:
            if len(a.plain) == 1:
                matches.append(f"{flag} {a.plain[0]}")
                single_used = True
            else:
                matches.append(f"-m set --match-set {self.sets.nets(c.family, a.plain)} "
                               f"{direction}")
        if a.negated:
            if len(a.negated) == 1 and not single_used:
                matches.append(f"! {flag} {a.negated[0]}")
            else:
                matches.append(f"-m set ! --match-set {self.sets.nets(c.family, a.negated)} "
                               f"{direction}")
        return [(tuple(matches), ())]

    def ports(self, name: str, span: Span) -> list[Alt]:
        opt = "sport" if name == "sport" else "dport"
        pos, neg = span.parts, span.complement(0, 65535).parts
        if len(pos) == 1:
            return [((f"--{opt} {_ranges(pos)}",), ())]
        if len(neg) == 1:
            return [((f"! --{opt} {_ranges(neg)}",), ())]
        slots = lambda p: 1 if p[0] == p[1] else 2  # noqa: E731
        if sum(map(slots, neg)) <= MULTIPORT_SLOTS and len(neg) < len(pos):
            return [((f"-m multiport ! --{opt}s {_ranges(neg)}",), ())]
        return [((f"-m multiport --{opt}s {_ranges(chunk)}",), ())
                for chunk in _chunks(pos, MULTIPORT_SLOTS, slots)]

    def icmp(self, c: Clause) -> list[Alt]:
        types, codes = c.spans.get("icmp_type"), c.spans.get("icmp_code")
        full = Span.of(0, 255)
        if codes is not None and codes == full:
            codes = None
        if c.family == 6:
            types = types or full
            n = types.size() * (codes.size() if codes else 1)
            if n > MAX_RULES_PER_CLAUSE:
                raise _Refused(f"rule {c.name}: ICMPv6 type/code: ip6tables matches exact "
                               f"types or type/code pairs: {n} rules needed")
            if codes is None:
                return [((f"-m icmp6 --icmpv6-type {t}",), ()) for t in types.values()]
            return [((f"-m icmp6 --icmpv6-type {t}/{k}",), ())
                    for t in types.values() for k in codes.values()]
        if codes is None and types is not None and types.size() == 1:
            return [((f"-m icmp --icmp-type {types.parts[0][0]}",), ())]
        if codes is not None and codes.size() == 1 and types is not None and types.size() == 1:
            return [((f"-m icmp --icmp-type {types.parts[0][0]}/{codes.parts[0][0]}",), ())]
        # The ICMP header starts after IHL words; u32 does not know fragments: `! -f`.
        alts: list[Alt] = [(("! -f",), ())]
        for span, test in ((types, "0>>22&0x3C@0>>24"), (codes, "0>>22&0x3C@0>>16&0xFF")):
            if span is not None:
                alts = _product(alts, [((f'-m u32 --u32 "{test}={_ranges(chunk)}"',), ())
                                       for chunk in _chunks(span.parts, U32_RANGES)])
        return alts

    def l4(self, c: Clause) -> list[Alt]:
        proto = c.spans["proto"]
        alts: list[Alt] = []
        for value in proto.values():
            name = PROTO_NAMES[value]
            # Options of the tcp/udp match go right after an explicit `-m tcp`: after a
            # `-m multiport`, `--sport` would be taken as multiport's `--sports`.
            own: list[str] = []
            rest: list[Alt] = [((), ())]
            for port_field in ("sport", "dport"):
                if port_field in c.spans:
                    options = self.ports(port_field, c.spans[port_field])
                    if len(options) == 1 and not options[0][0][0].startswith("-m "):
                        own.append(options[0][0][0])
                    else:
                        rest = _product(rest, options)
            if value == ir.IPPROTO_TCP and c.tcp_flags is not None:
                flags = self.tcp_flags(c)
                if flags.startswith("--"):
                    own.append(flags)
                else:
                    rest = _product(rest, [((flags,), ())])
            head = f"-p {name}" + (f" -m {name} {' '.join(own)}" if own else "")
            alts_for = _product([((head,), ())], rest)
            if value == ir.ICMP_PROTO[c.family] and ("icmp_type" in c.spans
                                                     or "icmp_code" in c.spans):
                alts_for = _product(alts_for, self.icmp(c))
            alts += alts_for
        return alts

    @staticmethod
    def tcp_flags(c: Clause) -> str:
        mask, value = c.tcp_flags.mask, c.tcp_flags.value
        if mask & ~IPTABLES_TCP_FLAGS:
            # iptables names six flags: ECE and CWR are read with u32 (after IHL words;
            # u32 does not know fragments, hence `! -f`).
            return f'! -f -m u32 --u32 "0>>22&0x3C@12>>16&{mask:#x}={value:#x}"'
        names = [name for name, bit in TCP_FLAG_BITS.items() if mask & bit]
        on = [name for name, bit in TCP_FLAG_BITS.items() if value & bit]
        return f"--tcp-flags {','.join(names)} {','.join(on) or 'NONE'}"

    def protocols(self, c: Clause, span: Span) -> list[Alt]:
        lowest = 0
        if c.family == 6:
            # IPv6 skips hop-by-hop options (0) as an extension header: never a protocol.
            span, lowest = span - Span.of(0, 0), 1
            if not span:
                raise _Dead()
        neg = span.complement(lowest, 255)
        # `-p 0` means any protocol to iptables: 0 goes through u32 (IPv4) or is absent.
        plain_ok = 0 not in span
        if plain_ok and span.size() <= 4:
            return [((f"-p {_proto(v)}",), ()) for v in span.values()]
        if neg.size() == 1 and 0 not in neg:
            return [((f"! -p {_proto(neg.parts[0][0])}",), ())]
        if c.family == 4:
            test = "6&0xFF"
            if len(neg.parts) <= U32_RANGES < len(span.parts):
                return [((f'-m u32 ! --u32 "{test}={_ranges(neg.parts)}"',), ())]
            return [((f'-m u32 --u32 "{test}={_ranges(chunk)}"',), ())
                    for chunk in _chunks(span.parts, U32_RANGES)]
        if span.size() <= 32:
            return [((f"-p {_proto(v)}",), ()) for v in span.values()]
        excluded = list(neg.values())
        if len(excluded) <= 32:
            return [((), tuple(f"-p {_proto(v)}" for v in excluded))]
        raise _Refused(f"rule {c.name}: proto: {span.size()} IPv6 protocols, {len(excluded)} "
                       "excluded: too many ip6tables rules")

    def numeric(self, c: Clause, name: str, span: Span) -> list[Alt]:
        lo, hi = ir.domain(name, c.family)
        pos, neg = span.parts, span.complement(lo, hi).parts
        if name == "length":
            if len(pos) == 1:
                return [((f"-m length --length {_ranges(pos)}",), ())]
            if len(neg) <= 8:
                return [(tuple(f"-m length ! --length {_ranges([p])}" for p in neg), ())]
            test = "0&0xFFFF" if c.family == 4 else "4>>16"
            shift = 0 if c.family == 4 else -ir.IPV6_HLEN
            parts = span.shifted(shift, 0, 0xFFFF).parts
        else:  # ttl / hop limit
            match = "-m ttl --ttl" if c.family == 4 else "-m hl --hl"
            if len(pos) == 1:
                a, b = pos[0]
                if a == b:
                    return [((f"{match}-eq {a}",), ())]
                tests = ([f"{match}-gt {a - 1}"] if a > 0 else []) + (
                    [f"{match}-lt {b + 1}"] if b < 255 else [])
                return [(tuple(tests), ())]
            test = "8>>24" if c.family == 4 else "4&0xFF"
            parts = pos
        negp = Span(parts).complement(0, 0xFFFF if name == "length" else 255).parts
        if len(negp) <= U32_RANGES < len(parts):
            return [((f'-m u32 ! --u32 "{test}={_ranges(negp)}"',), ())]
        return [((f'-m u32 --u32 "{test}={_ranges(chunk)}"',), ())
                for chunk in _chunks(parts, U32_RANGES)]

    def fragment(self, c: Clause) -> list[Alt]:
        if c.family == 4:
            match = {Fragment.ANY: '-m u32 --u32 "4&0x3FFF=0x1:0x3FFF"',
                     Fragment.FIRST: '-m u32 --u32 "4&0x3FFF=0x2000"',
                     Fragment.NON_FIRST: "-f"}[c.fragment]
            return [((match,), ())]
        first: Alt = (("-m frag --fragfirst --fragmore",), ())
        non_first: Alt = (("-m frag",), ("-m frag --fragfirst",))
        return {Fragment.ANY: [first, non_first], Fragment.FIRST: [first],
                Fragment.NON_FIRST: [non_first]}[c.fragment]

    def alternatives(self, c: Clause) -> list[Alt]:
        if "vlan" in c.spans:
            raise _Refused(f"rule {c.name}: vlan: iptables sees no VLAN tag (tagged frames "
                           "never reach PREROUTING on the parent device)")
        try:
            return self._alternatives(c)
        except _TooMany as too_many:
            raise _Refused(f"rule {c.name}: needs {too_many.args[0]} or more iptables rules "
                           f"(at most {MAX_RULES_PER_CLAUSE})") from None

    def _alternatives(self, c: Clause) -> list[Alt]:
        alts: list[Alt] = [((), ())]
        for name in ("src", "dst"):
            if name in c.addrs:
                alts = _product(alts, self.addresses(c, name))
        if c.needs_l4:
            alts = _product(alts, self.l4(c))
        elif "proto" in c.spans:
            alts = _product(alts, self.protocols(c, c.spans["proto"]))
        for name in ("length", "ttl"):
            if name in c.spans:
                alts = _product(alts, self.numeric(c, name, c.spans[name]))
        if c.fragment is not None:
            alts = _product(alts, self.fragment(c))
        return alts

    # -- merging --

    @staticmethod
    def shape(c: Clause):
        if c.tcp_flags is not None or c.fragment is not None:
            return None
        keys = set(c.spans)
        for name in ("src", "dst"):
            if name in c.addrs and (c.addrs[name].negated or c.addrs[name].plain is None):
                return None
        if keys in ({"src"}, {"dst"}):
            return ("net", keys.pop())
        if len(keys) == 3 and "proto" in keys and len(keys & {"src", "dst"}) == 1 and len(
                keys & {"sport", "dport"}) == 1 and c.needs_l4:
            return ("net,port", next(iter(keys & {"src", "dst"})),
                    next(iter(keys & {"sport", "dport"})))
        return None

    @staticmethod
    def can_join(g: Group, c: Clause) -> bool:
        if g.members[0].verdict != c.verdict:
            return False
        if g.shape[0] == "net,port":
            held = g.state.get("elements") or _port_elements(g.members[0], g.shape)
            n = held + _port_elements(c, g.shape)
            if n > MAX_PORT_ELEMENTS:
                return False
            g.state["elements"] = n  # it joins
        return True

    def merged(self, g: Group) -> str:
        family = g.members[0].family
        target = VERDICT_TARGET[g.members[0].verdict]
        if g.shape[0] == "net":
            name = g.shape[1]
            nets = ir.family_networks((n for m in g.members for n in m.addrs[name].plain), family)
            return (f"-m set --match-set {self.sets.nets(family, list(nets))} {name} "
                    f"-j {target}")
        _, addr, port = g.shape
        # ipset expands port ranges to single entries: a port twice would be refused.
        ports: dict[tuple, Span] = {}
        for m in g.members:
            for net in _no_zero(m.addrs[addr].plain):
                for proto in m.spans["proto"].values():
                    key = (net, proto)
                    ports[key] = ports.get(key, Span()) | m.spans[port]
        entries = [f"{net},{PROTO_NAMES[proto]}:{lo if lo == hi else f'{lo}-{hi}'}"
                   for (net, proto), span in ports.items() for lo, hi in span.parts]
        count = sum(span.size() for span in ports.values())
        name = self.sets.create(family, "hash:net,port", entries, count=count)
        flags = f"{addr},{'src' if port == 'sport' else 'dst'}"
        return f"-m set --match-set {name} {flags} -j {target}"

    # -- chains --

    def emit(self, chain: str, items: list[Clause], subchains: list[str]) -> list[str]:
        """-A lines for the clauses, in order, in `chain`; subchains made are added."""
        lines: list[str] = []
        if self.counters:
            groups = [Group(None, [c]) for c in items]
        else:
            groups = ir.group_clauses(items, self.shape, self.can_join)
        for g in groups:
            if len(g.members) > 1:
                lines.append(f"-A {chain} {self.merged(g)}")
                continue
            c = g.members[0]
            try:
                alts = self.alternatives(c)
            except _Refused as refused:
                self.reasons[str(refused)] = None
                continue
            except _Dead:
                continue
            comment = f' -m comment --comment "{c.name}"' if self.counters else ""
            target = f" -j {VERDICT_TARGET[c.verdict]}" if c.verdict else ""
            for matches, excl in alts:
                text = " ".join(matches)
                if not excl:
                    lines.append(f"-A {chain} {text}{comment}{target}".replace("  ", " "))
                    continue
                sub = f"{self.chain}-{len(subchains) + 1}"
                subchains.append(sub)
                lines.append(f"-A {chain} {text} -j {sub}".replace("  ", " "))
                lines += [f"-A {sub} {e} -j RETURN" for e in excl]
                if comment or target:
                    lines.append(f"-A {sub}{comment}{target}")
        return lines

    def default(self, chain: str, terminal: bool) -> list[str]:
        default = ir.end_verdict(self.policy)
        target = " -j DROP" if default == "drop" else (" -j ACCEPT" if terminal else "")
        if self.counters:
            return [f'-A {chain} -m comment --comment "(default)"{target}']
        return [f"-A {chain}{target}"] if target else []

    def family_rules(self, family: int) -> tuple[list[str], list[str]] | None:
        """The chains and -A lines of one family, None if it needs nothing."""
        chain = self.chain
        lines: list[str] = []
        subchains: list[str] = []
        allow, deny = ir.fastpath_networks(ir.chain_fastpath(self.policy), family)
        if allow:
            lines.append(f"-A {chain} -m set --match-set "
                         f"{self.sets.nets(family, allow, deny, tag='fpallow')} src -j ACCEPT")
        if deny:
            lines.append(f"-A {chain} -m set --match-set "
                         f"{self.sets.nets(family, deny, allow, tag='fpdeny')} src -j DROP")
        items = ir.chain_clauses(self.policy, family)
        if not self.counters:
            items = [c for c in items if c.verdict is not None]
        nd_accept = family == 6 and ir.nd_protected(self.policy)
        if nd_accept or any(c.needs_l4 for c in items):
            # Later fragments have no transport header and go to a chain of rules that
            # need none. Besides saving work, this is what keeps iptables-nft exact: it
            # compiles --dport, --tcp-flags and --icmp-type to nftables payload loads,
            # which read a later fragment's payload as a header.
            frag = f"{chain}-frag"
            subchains.append(frag)
            if family == 4:
                lines.append(f"-A {chain} -f -j {frag}")
                frag_lines = []
            else:  # the first fragment header says: offset 0 goes back
                lines.append(f"-A {chain} -m frag -j {frag}")
                frag_lines = [f"-A {frag} -m frag --fragfirst -j RETURN"]
            frag_lines += self.emit(frag, [c for c in items if not c.needs_l4], subchains)
            frag_lines += self.default(frag, terminal=True)
        else:
            frag_lines = []
        lines += self.emit(chain, items, subchains)
        if nd_accept:
            lines += [f"-A {chain} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT"
                      for t in range(ir.ND_TYPES[0], ir.ND_TYPES[1] + 1)]
        lines += self.default(chain, terminal=False)
        if not lines:
            return None
        return [chain] + subchains, lines + frag_lines


def _port_elements(c: Clause, shape) -> int:
    _, addr, port = shape
    return len(c.addrs[addr].plain) * c.spans["proto"].size() * c.spans[port].size()


@dataclass(frozen=True)
class IptablesConfig:
    """Texts for `ipset restore` and for `iptables-restore --noflush` /
    `ip6tables-restore --noflush` (raw table; empty when a family needs nothing), and
    what to remove afterwards."""

    ipset: str
    ipv4: str
    ipv6: str
    device: str
    chains: dict[int, tuple[str, ...]]
    sets: tuple[str, ...]
    counters: bool
    differences: tuple[str, ...] = ()

    def removal(self, family: int) -> str:
        chains = self.chains.get(family, ())
        if not chains:
            return ""
        lines = ["*raw", f"-D PREROUTING -i {self.device} -j {chains[0]}"]
        lines += [f"-F {c}" for c in chains] + [f"-X {c}" for c in chains] + ["COMMIT"]
        return "\n".join(lines) + "\n"


def iptables_rules(policy: Policy, device: str, *, chain: str = DEFAULT_CHAIN,
                   set_prefix: str = DEFAULT_SET_PREFIX, counters: bool = False
                   ) -> IptablesConfig | NotExpressible:
    """The policy as raw-table rules for packets from `device`, or why it cannot be."""
    unknown = ir.stage_reasons(policy, "iptables")
    if unknown:
        return NotExpressible(PEER, tuple(unknown))
    sets = _Sets(set_prefix)
    compiler = _Compiler(policy, chain, sets, counters)
    texts, chains = {}, {}
    for family in ir.FAMILIES:
        result = compiler.family_rules(family)
        if result is None:
            texts[family] = ""
            continue
        names, lines = result
        chains[family] = tuple(names)
        head = ["*raw"] + [f":{name} - [0:0]" for name in names]
        head.append(f"-A PREROUTING -i {device} -j {names[0]}")
        texts[family] = "\n".join(head + lines + ["COMMIT"]) + "\n"
    if compiler.reasons:
        return NotExpressible(PEER, grouped(list(compiler.reasons)))
    differences = [DIFFERENCES["vlan"]]
    v6 = ir.chain_clauses(policy, 6)
    if any(c.fragment is not None for c in v6):
        differences.append(DIFFERENCES["ipv6_fragment_headers"])
    if ir.nd_protected(policy) or any(c.needs_l4 for c in v6):
        differences.append(DIFFERENCES["nft_backend_fragments"])
    ipset_text = "\n".join(sets.lines) + "\n" if sets.lines else ""
    return IptablesConfig(ipset_text, texts[4], texts[6], device, chains, tuple(sets.names),
                          counters, tuple(differences))


# --- installing it ----------------------------------------------------------------

BACKENDS = {
    "legacy": ("iptables-legacy", "iptables-legacy-restore", "ip6tables-legacy-restore"),
    "nft": ("iptables-nft", "iptables-nft-restore", "ip6tables-nft-restore"),
}


class IptablesInstalled(Installed):
    """Rules and sets installed in a namespace; reads their counters while they are."""

    def __init__(self, netns: str, config: IptablesConfig, backend: str) -> None:
        super().__init__(netns, config.device)
        self.config = config
        self.backend = backend

    def counters(self) -> dict[str, int]:
        """Packets per rule name (and "(default)"), over both families; empty unless
        the rules were written with counters."""
        counts: dict[str, int] = {}
        save = {4: "iptables", 6: "ip6tables"}
        for family, chains in self.config.chains.items():
            tool = save[family] + ("-legacy" if self.backend == "legacy" else "-nft")
            out = run_in(self.netns, [f"{tool}-save", "-c", "-t", "raw"]).stdout
            for line in out.splitlines():
                if not line.startswith("[") or "--comment" not in line:
                    continue
                words = shlex.split(line)
                if len(words) < 3 or words[1] != "-A" or words[2] not in chains:
                    continue
                packets = int(words[0][1:words[0].index(":")])
                name = words[words.index("--comment") + 1]
                counts[name] = counts.get(name, 0) + packets
        return counts


@contextmanager
def installed(netns: str, config: IptablesConfig | NotExpressible, backend: str = "legacy"
              ) -> Iterator[IptablesInstalled]:
    """Create the sets and chains in `netns`, and remove exactly those afterwards. The
    chains and sets must not exist yet."""
    if isinstance(config, NotExpressible):
        raise NotExpressibleError(config)
    tool, restore4, restore6 = BACKENDS[backend]
    restore = {4: restore4, 6: restore6}
    for family, chains in config.chains.items():
        listing = tool if family == 4 else tool.replace("iptables", "ip6tables")
        if run_in(netns, [listing, "-t", "raw", "-n", "-L", chains[0]], check=False).returncode == 0:
            raise RuntimeError(f"chain {chains[0]} already exists in {netns}")
    if config.sets:
        existing = set(run_in(netns, ["ipset", "list", "-n"]).stdout.split())
        taken = sorted(existing & set(config.sets))
        if taken:
            raise RuntimeError(f"ipset sets already exist in {netns}: {', '.join(taken)}")
    # iptables-nft makes the nftables table `raw` (and its base chains) when it first
    # needs it, and leaves it behind: one that was not there before goes again.
    raw_tables = {4: "ip", 6: "ip6"}
    had_raw = {family: backend != "nft" or run_in(
        netns, ["nft", "list", "table", raw_tables[family], "raw"], check=False).returncode == 0
        for family in config.chains}
    done: list[int] = []
    try:
        if config.ipset:
            run_in(netns, ["ipset", "restore"], stdin=config.ipset)
        for family, text in ((4, config.ipv4), (6, config.ipv6)):
            if text:
                done.append(family)
                run_in(netns, [restore[family], "--noflush"], stdin=text)
        yield IptablesInstalled(netns, config, backend)
    finally:
        for family in done:
            run_in(netns, [restore[family], "--noflush"], stdin=config.removal(family), check=False)
            if not had_raw[family]:
                _delete_if_empty(netns, raw_tables[family], "raw")
        # None of these existed before: whatever of them exists now is ours.
        for name in config.sets:
            run_in(netns, ["ipset", "destroy", name], check=False)


def _delete_if_empty(netns: str, family: str, table: str) -> None:
    listing = run_in(netns, ["nft", "-j", "list", "table", family, table], check=False)
    if listing.returncode != 0:
        return
    if not any("rule" in item for item in json.loads(listing.stdout)["nftables"]):
        run_in(netns, ["nft", "delete", "table", family, table], check=False)
