"""`shieldwall bench --scenarios`: every attack scenario (lab/scenarios.py) three ways,
without protection, with shieldwall's default protection and with the peers that can
express one, while the lab's legitimate client keeps using the server.

Each run measures, over the attack's seconds:
- the client's success rate and the p50/p99 latency of its successful requests, next
  to its p99 with no attack and no defense (idle, measured once at the start);
- the attack's offered rate (frames the generator sent a second);
- what the defense dropped, by reason (shieldwall's verdict counters, as `status
  --json` shows them) or by rule (the peers' counters; nftables' SYNPROXY counts what
  it took: SYNs it answered, ACKs it checked, and what it dropped as invalid);
- how many IP packets reached the server namespace's stack, and what reached its TCP
  listen path: handshakes it answered with its own SYN cookies, SYNs it dropped at a
  full queue, connections it accepted (lab/probes.py, TCP_COUNTERS);
- for the reflected floods, the protected host's own DNS resolutions (against dnsmasq
  outside) and NTP queries: their success rate and p99 latency;
- CPU: the busy and softirq shares of all CPUs (/proc/stat) during the attack. The
  receive side of a veth (its NAPI poll, XDP, the stack) runs in softirq; "busy" also
  holds the generator and the client, which share the machine.
Everything runs inside a lab built for this run, never on the host's interfaces.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager, nullcontext
from typing import Callable, Iterator

from ..config import Config, configure
from ..engine import lifecycle
from ..kernel.netns import enter_netns
from ..lab import topology
from ..lab.attacks import HTTP_PORT, UDP_PORT, check_run, run_attack
from ..lab.client import HostQueries, LegitClient, LegitResult
from ..lab.peers import iptables as iptables_peer
from ..lab.probes import tcp_counters
from ..lab.peers import nftables as nftables_peer
from ..lab.peers.written import (SYNPROXY_SYSCTLS, iptables_config, nft_ruleset,
                                 synproxy_ruleset, sysctls)
from ..lab.scenarios import PEER_RULES, SCENARIOS, Scenario, shieldwall_policy
from ..lab.servers import (LAB_NAMES, NTP_V4, RESOLVER_V4, start_http_server,
                           start_ntp_server, start_resolver, start_udp_echo)
from ..policy import parse_policy

PORTS = {"http": HTTP_PORT, "tcp": HTTP_PORT, "udp": UDP_PORT}
DEFENSES = ("unprotected", "shieldwall", "nftables", "iptables")
RUN_OVERHEAD = 15  # seconds a run may take beyond its attack: set-up, the client's start

Drops = Callable[[], dict[str, int]]


# --- the defenses: each installed for one run, yielding its drop counts -------------


@contextmanager
def _unprotected(topo: topology.LabTopology, s: Scenario) -> Iterator[Drops]:
    yield dict


@contextmanager
def _shieldwall(topo: topology.LabTopology, s: Scenario) -> Iterator[Drops]:
    policy = parse_policy(shieldwall_policy(s), f"scenario {s.name}", ".")
    change = lifecycle.proposal(Config(policy, configure(policy)), None, "up")
    with enter_netns(topo.server_ns):
        lifecycle.up(topo.server_if, change, mode="native")
    try:
        yield lambda: _shieldwall_drops(topo)
    finally:
        with enter_netns(topo.server_ns):
            lifecycle.down(topo.server_if, forget=True)


def _shieldwall_drops(topo: topology.LabTopology) -> dict[str, int]:
    """Packets dropped by reason; those answered from XDP (SYN cookies) as
    "answered:<reason>" beside them."""
    with enter_netns(topo.server_ns):
        report = lifecycle.status(topo.server_if)[0]
    return {c["reason"] if c["action"] == "drop" else f"answered:{c['reason']}": c["packets"]
            for c in report.get("counters", ()) if c["action"] in ("drop", "tx")}


@contextmanager
def _nftables(topo: topology.LabTopology, s: Scenario) -> Iterator[Drops]:
    if s.synproxy:
        with sysctls(topo.server_ns, SYNPROXY_SYSCTLS), nftables_peer.installed(
                topo.server_ns, synproxy_ruleset(topo.server_if, s.synproxy)) as handle:
            yield handle.counters
        return
    rules = {name: PEER_RULES[name] for name in s.peers}
    with nftables_peer.installed(topo.server_ns, nft_ruleset(rules, topo.server_if)) as handle:
        yield handle.counters


@contextmanager
def _iptables(topo: topology.LabTopology, s: Scenario) -> Iterator[Drops]:
    rules = {name: PEER_RULES[name] for name in s.peers}
    with iptables_peer.installed(topo.server_ns, iptables_config(rules, topo.server_if)) as handle:
        yield handle.counters


INSTALL = {"unprotected": _unprotected, "shieldwall": _shieldwall,
           "nftables": _nftables, "iptables": _iptables}


# --- what a run reads around the attack ---------------------------------------------


def cpu_times() -> tuple[int, int, int]:
    """(total, idle, softirq) jiffies of all CPUs together, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(n) for n in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    return sum(fields[:8]), fields[3] + fields[4], fields[6]


def cpu_share(before: tuple[int, int, int], after: tuple[int, int, int]) -> dict[str, float]:
    total = after[0] - before[0]
    if total <= 0:
        return {"busy": 0.0, "softirq": 0.0}
    return {"busy": round(1 - (after[1] - before[1]) / total, 3),
            "softirq": round((after[2] - before[2]) / total, 3)}


def stack_packets(netns: str) -> int:
    """IP packets that have reached the namespace's stack (IPv4 and IPv6 InReceives)."""
    with enter_netns(netns):
        with open("/proc/thread-self/net/snmp") as f:
            lines = [line.split() for line in f if line.startswith("Ip:")]
        v4 = int(lines[1][lines[0].index("InReceives")])
        with open("/proc/thread-self/net/snmp6") as f:
            v6 = next(int(line.split()[1]) for line in f if line.startswith("Ip6InReceives"))
    return v4 + v6


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    out = {k: n - before.get(k, 0) for k, n in after.items()}
    return {k: n for k, n in sorted(out.items()) if n}


def _ms(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


# --- runs -----------------------------------------------------------------------------


def idle(topo: topology.LabTopology, seconds: float) -> LegitResult:
    with LegitClient(topo, seconds, PORTS) as client:
        return client.result()


def run_once(topo: topology.LabTopology, s: Scenario, defense: str, seconds: float,
             rate: int | None, idle_result: LegitResult) -> dict:
    """One scenario under one defense: the attack for `seconds`, the client throughout."""
    host_queries = (HostQueries(topo, seconds, RESOLVER_V4, NTP_V4, list(LAB_NAMES))
                    if s.host_queries else nullcontext())
    with INSTALL[defense](topo, s) as drops:
        before, stack = drops(), stack_packets(topo.server_ns)
        tcp = tcp_counters(topo.server_ns)
        with LegitClient(topo, seconds, PORTS) as client, host_queries as host:
            cpu = cpu_times()
            sent = run_attack(s.attack, topo, seconds, rate)
            cpu = cpu_share(cpu, cpu_times())
            legit = client.result()
            own = host.result() if host is not None else None
        dropped = _delta(before, drops())
        stack = stack_packets(topo.server_ns) - stack
        tcp = _delta(tcp, tcp_counters(topo.server_ns))
    run = {"legit_success": round(legit.success, 4),
           "legit_p50_ms": _ms(legit.percentile(50)), "legit_p99_ms": _ms(legit.percentile(99)),
           "idle_p99_ms": _ms(idle_result.percentile(99)),
           "attack_mpps": round(sent.mpps, 3), "attack_frames": sent.sent,
           "dropped": dropped, "server_stack_packets": stack, "server_tcp": tcp, "cpu": cpu}
    if own is not None:
        run["host_success"] = round(own.success, 4)
        run["host_queries"] = own.requests
        run["host_p99_ms"] = _ms(own.percentile(99))
    return run


def defenses_of(s: Scenario) -> tuple[str, ...]:
    return DEFENSES if s.peers else DEFENSES[:2]


def run_scenarios(seconds: float = 5.0, rate: int | None = None,
                  scenarios: tuple[Scenario, ...] = SCENARIOS,
                  defenses: tuple[str, ...] = DEFENSES) -> dict:
    check_run(rate, seconds)
    runs = sum(len([d for d in defenses_of(s) if d in defenses]) for s in scenarios)
    lifetime = seconds + runs * (seconds + RUN_OVERHEAD) + 60
    out = []
    with topology.lab() as topo, start_http_server(topo, HTTP_PORT, lifetime=lifetime), \
            start_udp_echo(topo, UDP_PORT, lifetime=lifetime), ExitStack() as services:
        if any(s.host_queries for s in scenarios):
            services.enter_context(start_resolver(topo, lifetime))
            services.enter_context(start_ntp_server(topo, lifetime))
        idle_result = idle(topo, seconds)
        for s in scenarios:
            entry: dict = {"name": s.name, "distinguishable": s.distinguishable}
            if not s.distinguishable:
                entry["why"] = s.why
            for defense in defenses_of(s):
                if defense in defenses:
                    entry[defense] = run_once(topo, s, defense, seconds, rate, idle_result)
            out.append(entry)
    return {"scenarios": out}


def summary(report: dict) -> str:
    lines = [f"{'scenario':<10} {'defense':<12} {'legit':>6} {'p50 ms':>8} {'p99 ms':>8} "
             f"{'idle p99':>8} {'Mpps':>6} {'stack pkts':>11} {'softirq':>7}  dropped"]
    for entry in report["scenarios"]:
        for defense in DEFENSES:
            run = entry.get(defense)
            if run is None:
                continue
            dropped = ", ".join(f"{k} {n:,}" for k, n in run["dropped"].items()) or "-"
            lines.append(
                f"{entry['name']:<10} {defense:<12} {run['legit_success']:>6.1%} "
                f"{_text(run['legit_p50_ms']):>8} {_text(run['legit_p99_ms']):>8} "
                f"{_text(run['idle_p99_ms']):>8} {run['attack_mpps']:>6.3f} "
                f"{run['server_stack_packets']:>11,} {run['cpu']['softirq']:>7.1%}  {dropped}")
            handshakes = {k: n for k, n in run.get("server_tcp", {}).items() if k != "PassiveOpens"}
            if handshakes:
                lines.append(f"{'':<23} server TCP: " + ", ".join(
                    f"{k} {n:,}" for k, n in handshakes.items()))
            if "host_success" in run:
                lines.append(f"{'':<10} {defense:<12} the host's own DNS and NTP queries: "
                             f"{run['host_success']:.1%} of {run['host_queries']:,}, p99 "
                             f"{_text(run['host_p99_ms'])} ms")
        if not entry["distinguishable"]:
            lines.append(f"{'':<10} not distinguishable: {entry['why']}")
    return "\n".join(lines)


def _text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
