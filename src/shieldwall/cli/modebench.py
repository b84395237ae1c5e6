"""`shieldwall bench --modes`: what each fallback mode costs, side by side (docs/results.md).

The same policy is attached through the real `up --mode M` on a lab of this run, for
each mode in turn (native, generic, tc, nft), and the generator floods it with the same
traffic as `bench` (the default SYN flood, --adversarial, or a --pcap). A mode's rate
is the packets it decided (its own verdict counters, read back by `status`) per second
of the generator's run: what the host can filter in that mode before the generator,
not the filter, is the limit. Bare XDP_DROP on the same path, measured in the same
rounds, is the ceiling every mode is given as a ratio of.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from ..config import Config
from ..engine import lifecycle
from ..kernel import libbpf, xdp
from ..kernel.libbpf import BpfObject
from ..kernel.netns import enter_netns
from ..lab import topology
from ..lab.trafgen import TrafficGenerator, xdp_rx_packets
from ..modes import LOSES, MODES
from ..paths import object_path
from .bench import _aim, _setup

ROUNDS = 3


def _decided(iface: str) -> int:
    """Every packet the mode in force has given a verdict, from `status`."""
    report = lifecycle.status(iface)[0]
    return sum(c["packets"] for c in report.get("counters", ()))


def run_modes(config: Config | None, pcap: Path | None, adversarial: bool = False,
              packets: int = 1_000_000, rounds: int = ROUNDS) -> dict:
    setup, frames = _setup(config, pcap, adversarial)
    change = lifecycle.proposal(Config(setup.policy, setup.config), None, "bench")
    rates: dict[str, dict] = {}
    with topology.lab() as topo, TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
        _aim(gen, topo, frames, adversarial)
        with enter_netns(topo.server_ns), BpfObject(object_path("bare_drop")) as bare:
            bare.load()
            rates["bare XDP_DROP"] = {"mpps": _bare(topo, gen, bare.program("sw_bare_drop").fd,
                                                    packets, rounds)}
            for mode in MODES:
                rates[mode] = _mode(topo, gen, change, mode, packets, rounds)
    ceiling = rates["bare XDP_DROP"]["mpps"]
    native = rates.get("native", {}).get("mpps")
    for name, r in rates.items():
        if r.get("mpps"):
            r["of_bare"] = round(r["mpps"] / ceiling, 3) if ceiling else None
            r["of_native"] = round(r["mpps"] / native, 3) if native else None
    report = {"traffic": setup.traffic, "policy": setup.policy.source,
              "generator_packets": packets, "rounds": rounds, "modes": rates,
              "kernel": platform.release(), "cpus": os.cpu_count(),
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    report["summary"] = _summary(report)
    return report


def _bare(topo, gen: TrafficGenerator, fd: int, packets: int, rounds: int) -> float:
    link = libbpf.xdp_link_create(fd, topo.server_ifindex, xdp.MODE_FLAGS["native"])
    try:
        best = 0.0
        for _ in range(rounds):
            before = xdp_rx_packets(topo.server_ns, topo.server_if)
            sent = gen.send(None, packets)
            best = max(best, (xdp_rx_packets(topo.server_ns, topo.server_if) - before) / sent.seconds / 1e6)
        return round(best, 3)
    finally:
        os.close(link)


def _mode(topo, gen: TrafficGenerator, change: lifecycle.Proposal, mode: str, packets: int,
          rounds: int) -> dict:
    try:
        result = lifecycle.up(topo.server_if, change, mode=mode)
    except (OSError, ValueError) as exc:
        return {"error": str(exc)}
    try:
        if result.mode != mode:
            return {"error": f"attached in {result.mode} mode instead"}
        best = 0.0
        for _ in range(rounds):
            before = _decided(topo.server_if)
            sent = gen.send(None, packets)
            best = max(best, (_decided(topo.server_if) - before) / sent.seconds / 1e6)
        return {"mpps": round(best, 3), "loses": LOSES[mode]}
    finally:
        lifecycle.down(topo.server_if, forget=True)


def _summary(report: dict) -> str:
    lines = [f"traffic: {report['traffic']}", f"policy: {report['policy']}",
             f"{'mode':<14} {'Mpps':>7} {'of bare':>8} {'of native':>10}"]
    for name, r in report["modes"].items():
        if "mpps" in r:
            lines.append(f"{name:<14} {r['mpps']:>7.3f} {r.get('of_bare') or 0:>8.3f} "
                         f"{r.get('of_native') or 0:>10.3f}")
        else:
            lines.append(f"{name:<14} {'-':>7}  {r.get('error', '')}")
    return "\n".join(lines)
