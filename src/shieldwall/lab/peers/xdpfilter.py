"""A shieldwall policy as xdp-filter (Debian's xdp-tools) configuration, where it can be.

What xdp-filter does with a frame (xdpfilt_prog.h, xdp-tools 1.3): it skips up to four
VLAN tags; for IPv4 and IPv6 it looks the destination, then the source address up in a
hash of exact addresses; for TCP and UDP (after IPv6 extension headers) it looks the
destination, then the source port up in a per-port array of flags. Any hit is one
verdict, a miss the other: `-p allow` (the default) drops hits and passes the rest,
`-p deny` passes hits and drops the rest, non-IP frames included.

So a policy is expressible when its deciding rules are alternatives of one verdict, the
opposite of default_action, each of them a single field: `src` addresses, `dst`
addresses, or `sport`/`dport` under TCP and/or UDP; rules of the other verdict must be
disjoint from every later rule of that verdict (they then change nothing); prefixes are
listed address by address, port ranges port by port, within a bound. Everything else is
refused with a note saying which rule or list, and why.

Some differences cannot be avoided and are never hidden (DIFFERENCES): with `strict`
they make the policy not expressible; without, the configuration lists them.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from ...policy.model import Fragment, Policy
from ...nft import ir
from .common import Installed, NotExpressible, NotExpressibleError, grouped, run_in

PEER = "xdp-filter"
# Each entry is one xdp-filter invocation; xdp-filter's address maps hold 10,000.
DEFAULT_MAX_ENTRIES = 1024
ADDRESS_MAP_SIZE = 10_000
PORT_FIELDS = ("sport", "dport")

DIFFERENCES = {
    "deny_non_ip": "deny mode drops non-IP frames (ARP, ...), which shieldwall passes",
    "deny_nd": "deny mode drops IPv6 neighbor discovery (ICMPv6 133-137), which shieldwall "
               "passes when default_action is drop",
    "port_fragments": "ports are read from non-first fragments too: xdp-filter reads the "
                      "bytes after the IP headers as a TCP/UDP header whatever the fragment "
                      "offset (shieldwall: non-first fragments have no ports)",
    "port_mobility": "IPv6 mobility headers (135) are skipped as extension headers before "
                     "the ports are read (shieldwall: 135 is the upper-layer protocol)",
}


@dataclass(frozen=True)
class XdpFilterConfig:
    """xdp-filter commands, `load` first; `differences` are the DIFFERENCES that apply
    (empty unless strict=False); `ignored` names rules that change no verdict here."""

    mode: str  # "allow" or "deny": xdp-filter's policy for frames no entry matches
    features: tuple[str, ...]
    commands: tuple[tuple[str, ...], ...]
    device: str
    differences: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    @property
    def entries(self) -> int:
        return len(self.commands) - 1


def xdp_filter_config(policy: Policy, device: str, *, xdp_mode: str = "native",
                      strict: bool = True, max_entries: int = DEFAULT_MAX_ENTRIES
                      ) -> XdpFilterConfig | NotExpressible:
    """The policy as xdp-filter commands for `device`, or why it cannot be."""
    hit = "drop" if ir.end_verdict(policy) == "pass" else "pass"
    mode = "allow" if hit == "drop" else "deny"
    reasons: list[str] = ir.stage_reasons(policy, "xdp-filter")
    ignored: list[str] = []
    src: dict[int, ir.Span] = {4: ir.Span(), 6: ir.Span()}
    dst: dict[int, ir.Span] = {4: ir.Span(), 6: ir.Span()}
    ports: dict[tuple[str, str], ir.Span] = {}  # (proto, "src"/"dst") -> ports
    sizes: dict[str, int] = {}  # entries each rule or fastpath list asks for

    rules = list(policy.rules) if ir.runs_rules(policy) else []
    harmless = _harmless(rules, hit)
    for index, rule in enumerate(rules):
        verdict = rule.action.verdict
        if verdict is None:
            ignored.append(f"rule {rule.name}: {rule.action.name} (xdp-filter has no "
                           "per-rule counters)")
            continue
        if verdict != hit:
            if index in harmless:
                ignored.append(f"rule {rule.name}: {verdict}, as default_action, and "
                               f"disjoint from every later {hit} rule")
            else:
                reasons.append(f"rule {rule.name}: a {verdict} rule before {hit} rules it "
                               "overlaps: xdp-filter has no rule order")
            continue
        fields = set(rule.match.fields()) - {"family"}
        negated = [name for name, value in rule.match.fields().items()
                   if name in ("src", "dst") and value.negated]
        if fields in ({"src"}, {"dst"}):
            name = fields.pop()
            if negated:
                reasons.append(f"rule {rule.name}: {name} negation (xdp-filter lists "
                               "exact addresses)")
                continue
            target = src if name == "src" else dst
            for family in ir.FAMILIES:
                c = ir.clause(rule, family)
                if c is None:
                    continue
                if name not in c.spans:
                    reasons.append(f"rule {rule.name}: matches every IPv{family} packet "
                                   "(xdp-filter has no such entry)")
                    continue
                target[family] = target[family] | c.spans[name]
                sizes[f"rule {rule.name}"] = sizes.get(f"rule {rule.name}", 0) + c.spans[name].size()
        elif fields and fields <= {"proto", *PORT_FIELDS} and len(fields & set(PORT_FIELDS)) == 1:
            if rule.match.family is not None:
                reasons.append(f"rule {rule.name}: family with ports (xdp-filter's ports "
                               "apply to IPv4 and IPv6 alike)")
                continue
            c = ir.clause(rule, 4)
            if c is None:
                continue
            name = next(iter(fields & set(PORT_FIELDS)))
            size = c.spans[name].size()
            if size > max_entries:
                how = "port negation" if getattr(rule.match, name).negated else "port ranges"
                reasons.append(f"rule {rule.name}: {how} needs {size} port entries "
                               f"(at most {max_entries})")
                continue
            protos = {"tcp": ir.IPPROTO_TCP in c.spans["proto"],
                      "udp": ir.IPPROTO_UDP in c.spans["proto"]}
            for proto, present in protos.items():
                if present:
                    key = (proto, "dst" if name == "dport" else "src")
                    ports[key] = ports.get(key, ir.Span()) | c.spans[name]
            sizes[f"rule {rule.name}"] = size
        elif not fields:
            reasons.append(f"rule {rule.name}: matches every packet (xdp-filter has no "
                           "such entry)")
        else:
            reasons.append(f"rule {rule.name}: {', '.join(sorted(fields))}: xdp-filter "
                           "matches one source address, destination address or TCP/UDP "
                           "port per entry (ports under tcp and/or udp), no other field "
                           "and no two together")

    # The fastpath decides before the rules: its ranges are source entries of their own
    # verdict, and they shadow the rules' source entries.
    shadow: dict[int, ir.Span] = {}
    for family in ir.FAMILIES:
        ranges = ir.fastpath_ranges(ir.chain_fastpath(policy), family)
        own = ir.Span((lo, hi) for lo, hi, v in ranges if v == hit)
        if own:
            side = f"fastpath.{'deny' if hit == 'drop' else 'allow'}"
            sizes[side] = sizes.get(side, 0) + own.size()
        other = ir.Span((lo, hi) for lo, hi, v in ranges if v != hit)
        src[family] = (src[family] - other) | own
        shadow[family] = other
    if any(shadow.values()) and (any(dst.values()) or ports):
        side = "allow" if hit == "drop" else "deny"
        reasons.append(f"fastpath.{side}: xdp-filter cannot exempt these sources from its "
                       "destination and port entries")

    port_flags: dict[int, set[tuple[str, str]]] = {}
    for key, span in ports.items():
        for port in span.values():
            port_flags.setdefault(port, set()).add(key)
    for port, wanted in sorted(port_flags.items()):
        protos = {p for p, _ in wanted}
        dirs = {d for _, d in wanted}
        if len(wanted) != len(protos) * len(dirs):
            extra = sorted({(p, d) for p in protos for d in dirs} - wanted)
            reasons.append(f"port {port}: xdp-filter keeps one set of flags per port, so "
                           f"{_ports_text(wanted)} would also match {_ports_text(extra)}")

    count = sum(s.size() for s in src.values()) + sum(s.size() for s in dst.values())
    count += len(port_flags)
    if count > max_entries:
        biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
        reasons.append(f"{_amount(count)} entries needed, at most {max_entries} (xdp-filter "
                       "lists addresses one by one): "
                       + ", ".join(f"{where} {_amount(n)}" for where, n in biggest))
    for family in ir.FAMILIES:
        if (src[family] | dst[family]).size() > ADDRESS_MAP_SIZE:
            reasons.append(f"more than {ADDRESS_MAP_SIZE} IPv{family} addresses (the size "
                           "of xdp-filter's address maps)")

    differences = []
    if mode == "deny":
        differences += [DIFFERENCES["deny_non_ip"], DIFFERENCES["deny_nd"]]
    if port_flags:
        differences += [DIFFERENCES["port_fragments"], DIFFERENCES["port_mobility"]]
    if strict:
        reasons += differences
    if reasons:
        return NotExpressible(PEER, grouped(reasons))

    features = []
    if port_flags:
        features += sorted({p for flags in port_flags.values() for p, _ in flags},
                           key=("tcp", "udp").index)
    for family in ir.FAMILIES:
        if src[family] or dst[family]:
            features.append(f"ipv{family}")
    if not features:
        features = ["ipv4"]  # nothing listed: the mode alone decides
    commands = [("xdp-filter", "load", "-m", xdp_mode, "-p", mode, "-f", ",".join(features),
                 device)]
    for family in ir.FAMILIES:
        cls = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
        for value in (src[family] | dst[family]).values():
            where = [w for w, spans in (("src", src), ("dst", dst)) if value in spans[family]]
            commands.append(("xdp-filter", "ip", str(cls(value)), "-m", ",".join(where)))
    for port, wanted in sorted(port_flags.items()):
        protos = ",".join(sorted({p for p, _ in wanted}, key=("tcp", "udp").index))
        dirs = ",".join(sorted({d for _, d in wanted}, key=("src", "dst").index))
        commands.append(("xdp-filter", "port", str(port), "-m", dirs, "-p", protos))
    return XdpFilterConfig(mode, tuple(features), tuple(commands), device,
                           tuple(differences), tuple(ignored))


def _amount(n: int) -> str:
    return str(n) if n < 1_000_000 else f"about 2^{n.bit_length() - 1}"


def _ports_text(flags) -> str:
    return ", ".join(f"{proto} {'dport' if d == 'dst' else 'sport'}" for proto, d in sorted(flags))


# Past this many later rules, a rule is only checked against all of them at once.
PAIR_CHECKS = 256


def _harmless(rules, hit: str) -> set[int]:
    """Positions of the rules of the other verdict that no later `hit` rule overlaps:
    they decide as default_action would, so leaving them out changes nothing. Proven
    with the later rules' hull (ir.Group), then pair by pair within a bound; what cannot
    be proven counts as overlapping."""
    later = {family: ir.Group(None, []) for family in ir.FAMILIES}
    without_l4 = {family: 0 for family in ir.FAMILIES}  # later rules reading no header

    def proven(c: ir.Clause) -> bool:
        g = later[c.family]
        if not g.members or g.disjoint_on(c, c.spans):
            return True
        if c.fragment is Fragment.NON_FIRST and not without_l4[c.family]:
            return True  # a later fragment has no header for them to read
        return len(g.members) <= PAIR_CHECKS and all(ir.disjoint(c, m) for m in g.members)

    out = set()
    for index in range(len(rules) - 1, -1, -1):
        rule = rules[index]
        clauses = [c for f in ir.FAMILIES if (c := ir.clause(rule, f)) is not None]
        if rule.action.verdict == hit:
            for c in clauses:
                later[c.family].add(c)
                without_l4[c.family] += not c.needs_l4
        elif rule.action.verdict is not None and all(proven(c) for c in clauses):
            out.add(index)
    return out


# --- installing it ----------------------------------------------------------------


class _PrivateBpffs:
    """A mount namespace of our own with a fresh bpffs on /sys/fs/bpf, kept alive by a
    sleeping process. xdp-filter pins its maps by name in the first bpffs it finds and
    shares them across every interface it runs on: in the host's bpffs, two installs
    (or anyone else's xdp-filter) would share one filter list."""

    LIFETIME_S = 6 * 3600  # outlives any install, yet bounded

    def __init__(self) -> None:
        # Killed with us too, should we die without cleaning up.
        orphan_guard = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        self.proc = subprocess.Popen(
            [*orphan_guard, "unshare", "--mount", "--propagation", "private", "sh", "-c",
             f"mount -t bpf bpf /sys/fs/bpf && echo ready && exec sleep {self.LIFETIME_S}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            err = self.proc.stderr.read().strip()
            self.close()
            raise RuntimeError(f"cannot make a private bpffs for xdp-filter: {err or line}")

    def run(self, netns: str, argv: tuple[str, ...], check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        return run_in(netns, argv, check=check, timeout=120,
                      enter=["nsenter", f"--target={self.proc.pid}", "--mount",
                             f"--net=/run/netns/{netns}"])

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


class XdpFilterInstalled(Installed):
    """xdp-filter loaded on a device, its entries in place."""

    def __init__(self, netns: str, config: XdpFilterConfig, bpffs: _PrivateBpffs) -> None:
        super().__init__(netns, config.device)
        self.config = config
        self._bpffs = bpffs

    def status(self) -> str:
        """`xdp-filter status`: its entries with their hit counters."""
        return self._bpffs.run(self.netns, ("xdp-filter", "status")).stdout


@contextmanager
def installed(netns: str, config: XdpFilterConfig | NotExpressible
              ) -> Iterator[XdpFilterInstalled]:
    """Run the configuration's commands in `netns` (its device must be there), and
    unload xdp-filter from the device afterwards; its pins go with the private bpffs."""
    if isinstance(config, NotExpressible):
        raise NotExpressibleError(config)
    if not shutil.which("xdp-filter"):
        raise RuntimeError("xdp-filter is not installed (Debian package xdp-tools)")
    bpffs = _PrivateBpffs()
    try:
        try:
            for argv in config.commands:
                bpffs.run(netns, argv)
            yield XdpFilterInstalled(netns, config, bpffs)
        finally:
            # Even after a failed load: xdp-filter only unloads a program it pinned in
            # this bpffs, so nothing of anyone else's is touched.
            bpffs.run(netns, ("xdp-filter", "unload", config.device), check=False)
    finally:
        bpffs.close()
