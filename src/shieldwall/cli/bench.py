"""`shieldwall bench`: what the pipeline costs, as ratios to the bare XDP_DROP limit and to
peers given the equivalent policy, all measured in the same run on the same traffic.

Two paths (docs/results.md):
(a) BPF_PROG_TEST_RUN on the programs themselves. The lab's generator rewrites each
    frame and hands it to the program under test in the same run (a tail call), so
    "live" (live-frames mode: verdicts carried out, a passed frame goes up the lab's
    stack) and "program" (the programs alone) both see exactly the generator's traffic;
    bare XDP_DROP pays the same generator cost.
(b) generator -> veth -> the server end's XDP program: Mpps that reach the filter.

Traffic:
- the default: one spoofed SYN template whose source cycles through 250 addresses (a
  classic flood, and what xdp-filter, which matches exact addresses, can be given);
- --adversarial: every frame rewritten (source inside the documentation ranges, ports,
  TTL, length, protocol, TCP flags; IPv4, IPv6 and VLAN-tagged): nothing repeats, so
  nothing cached can help;
- --pcap: the capture's frames taken round-robin, each once per round.
Everything runs inside a lab built for this run, never on the host's interfaces.
"""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .. import abi
from ..config import Config, configure
from ..dataplane.pipeline import Pipeline, PipelineConfig
from ..kernel import libbpf, xdp
from ..kernel.libbpf import BpfObject
from ..kernel.netns import enter_netns
from ..lab import peers, topology
from ..lab.policies import realistic
from ..lab.traffic import (FLOOD_SOURCES, IPV4_SRC_OFFSET, SPOOFED_V4, adversarial_templates,
                           syn_flood_v4)
from ..lab.trafgen import TrafficGenerator, xdp_rx_packets
from ..paths import object_path
from ..pcapio import read_frames
from ..policy import parse_policy
from ..policy.model import Policy

ROUNDS = 5                # interleaved rounds; each program's best one is reported
PROGRAM_PACKETS = 1_000_000
ADVERSARIAL_RULES = 1000  # the built-in adversarial policy's size

Counter = Callable[[], int]


def default_policy(adversarial: bool) -> Policy:
    """Without --config: a flood from blocklisted ranges for the default traffic (every
    packet walks the chain and the fastpath drops it), the realistic default-drop policy
    for adversarial traffic."""
    if adversarial:
        return realistic(ADVERSARIAL_RULES)
    # IPv4 only: xdp-filter, which matches exact addresses, can be given the /24 as its
    # 256 addresses, so it gets the same policy.
    return parse_policy({"version": 1, "default_action": "pass",
                         "fastpath": {"deny": [SPOOFED_V4]}},
                        f"built-in benchmark policy (fastpath deny {SPOOFED_V4})", ".")


@dataclass(frozen=True)
class Setup:
    traffic: str
    policy: Policy
    config: PipelineConfig


def _setup(config: Config | None, pcap: Path | None, adversarial: bool) -> tuple[Setup, list[bytes]]:
    policy = config.policy if config and config.policy else default_policy(adversarial)
    pipeline = config.pipeline if config and config.policy else configure(policy)
    frames = []
    if pcap:
        frames = [f.data for f in read_frames(pcap) if 14 <= len(f.data) <= abi.SW_GEN_FRAME_MAX]
        if not frames:
            raise ValueError(f"{pcap}: no frame between 14 and {abi.SW_GEN_FRAME_MAX} bytes to replay")
        traffic = f"{pcap.name}: {len(frames)} frames, round-robin"
    elif adversarial:
        traffic = "random: every frame rewritten (IPv4, IPv6, VLAN-tagged)"
    else:
        traffic = f"SYN flood template, {FLOOD_SOURCES} spoofed sources from {SPOOFED_V4}"
    return Setup(traffic, policy, pipeline), frames


def _aim(gen: TrafficGenerator, topo: topology.LabTopology, frames: list[bytes],
         adversarial: bool) -> None:
    if frames:
        gen.replay(frames)
    elif adversarial:
        gen.random(adversarial_templates(topo.server_mac, topo.outside_mac, topo.server_v4,
                                         topo.server_v6))
    else:
        gen.fixed(syn_flood_v4(topo.server_mac, topo.outside_mac, topo.server_v4),
                  FLOOD_SOURCES, IPV4_SRC_OFFSET)


def run_bench(config: Config | None, pcap: Path | None, adversarial: bool = False,
              packets: int = 2_000_000, rounds: int = ROUNDS,
              program_packets: int = PROGRAM_PACKETS) -> dict:
    setup, frames = _setup(config, pcap, adversarial)
    with topology.lab() as topo:
        with enter_netns(topo.server_ns), Pipeline.load(setup.config) as pipeline, \
                BpfObject(object_path("bare_drop")) as bare, \
                TrafficGenerator(None, None) as chained, \
                TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
            bare.load()
            bare_fd = bare.program("sw_bare_drop").fd
            _aim(chained, topo, frames, adversarial)
            _aim(gen, topo, frames, adversarial)
            measure = _Measure(topo, chained, gen, rounds, program_packets, packets)
            result = measure.many({"pipeline": (pipeline.root_program.fd, pipeline),
                                   "bare": (bare_fd, None)})
            result["peers"] = _peers(topo, setup.policy, measure, result["pipeline"]["mpps"])
    return _report(setup, result, adversarial, packets, rounds)


class _Measure:
    """Measures several programs in interleaved rounds — each round runs every one in
    turn — and keeps each one's best round: on shared CPUs interference only ever slows
    a run down, and what is compared is measured side by side, not minutes apart."""

    def __init__(self, topo: topology.LabTopology, chained: TrafficGenerator,
                 gen: TrafficGenerator, rounds: int, program_packets: int, packets: int) -> None:
        self.topo, self.chained, self.gen = topo, chained, gen
        self.rounds, self.program_packets, self.packets = rounds, program_packets, packets

    def all(self, fd: int, pipeline: Pipeline | None = None) -> dict:
        return self.many({"it": (fd, pipeline)})["it"]

    def many(self, programs: dict[str, tuple[int, Pipeline | None]]) -> dict[str, dict]:
        out: dict[str, dict] = {name: {"ns_per_packet": float("inf"), "program_ns_per_packet": float("inf"),
                                       "mpps": 0.0} for name in programs}
        before = {name: p.counters() for name, (_, p) in programs.items() if p}
        for _ in range(self.rounds):
            for name, (fd, _) in programs.items():
                found = out[name]
                found["ns_per_packet"] = min(found["ns_per_packet"], self.ns(fd, live=True))
                found["program_ns_per_packet"] = min(found["program_ns_per_packet"], self.ns(fd, live=False))
                with self.attached(fd) as arrivals:
                    found["mpps"] = max(found["mpps"], self.mpps_once(arrivals))
        for name, (_, p) in programs.items():
            if p:
                out[name]["passed_fraction"] = _passed(before[name], p.counters())
        return out

    def ns(self, fd: int, live: bool) -> float:
        return self.chained.run_chained(fd, self.program_packets, live=live).ns_per_packet

    def mpps_once(self, arrivals: Counter) -> float:
        before = arrivals()
        sent = self.gen.send(None, self.packets)
        return (arrivals() - before) / sent.seconds / 1e6

    def mpps(self, arrivals: Counter) -> float:
        return max(self.mpps_once(arrivals) for _ in range(self.rounds))

    @contextmanager
    def attached(self, prog_fd: int) -> Iterator[Counter]:
        """A program on the server end for one measurement; arrivals are the driver's
        count of frames its XDP program saw."""
        link = libbpf.xdp_link_create(prog_fd, self.topo.server_ifindex, xdp.MODE_FLAGS["native"])
        try:
            yield lambda: xdp_rx_packets(self.topo.server_ns, self.topo.server_if)
        finally:
            os.close(link)


def _passed(before: dict, after: dict) -> float:
    delta = {k: after[k][0] - before.get(k, (0, 0))[0] for k in after}
    total = sum(delta.values())
    return round(sum(n for (action, _), n in delta.items() if action == "pass") / total, 4) if total else 0.0


def _peers(topo: topology.LabTopology, policy: Policy, measure: _Measure, mpps: float) -> dict:
    """Each peer given the equivalent policy, on the same path and traffic; a peer that
    cannot express the policy says what it cannot, instead of a number."""
    setups = {
        "xdp-filter": lambda: peers.xdp_filter_policy(topo, policy),
        "nftables": lambda: peers.nftables_policy(topo, policy),
        "iptables+ipset": lambda: peers.iptables_policy(topo, policy),
    }
    out: dict[str, dict] = {}
    for name, setup in setups.items():
        try:
            with setup() as counted:
                arrivals = counted or (lambda: xdp_rx_packets(topo.server_ns, topo.server_if))
                rate = measure.mpps(arrivals)
            out[name] = {"mpps": round(rate, 3),
                         "shieldwall_ratio": round(mpps / rate, 3) if rate else None}
        except peers.NotExpressibleError as exc:
            out[name] = {"not_expressible": str(exc)}
        except (RuntimeError, OSError) as exc:
            out[name] = {"error": str(exc)}
    return out


def _report(setup: Setup, result: dict, adversarial: bool, packets: int, rounds: int) -> dict:
    p, b = result["pipeline"], result["bare"]
    numbers = {
        "ns_per_packet": round(p["ns_per_packet"], 1),
        "bare_ns_per_packet": round(b["ns_per_packet"], 1),
        "program_ns_per_packet": round(p["program_ns_per_packet"], 1),
        "bare_program_ns_per_packet": round(b["program_ns_per_packet"], 1),
        "ratio": round(p["ns_per_packet"] / b["ns_per_packet"], 3),
        "mpps": round(p["mpps"], 3),
        "bare_mpps": round(b["mpps"], 3),
        "mpps_ratio": round(p["mpps"] / b["mpps"], 3) if b["mpps"] else None,
        "passed_fraction": p["passed_fraction"],
    }
    report: dict = {"traffic": setup.traffic, "policy": setup.policy.source,
                    "chain": list(setup.config.chain)}
    if adversarial:
        report["adversarial"] = numbers
    else:
        report.update(numbers)
    report.update({
        "peers": result["peers"],
        "generator_packets": packets,
        "rounds": rounds,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    lines = [
        f"traffic: {setup.traffic}",
        f"policy: {setup.policy.source}; chain: root -> {' -> '.join(setup.config.chain) or '(empty)'}",
        f"(a) test run, live frames: {numbers['ns_per_packet']} ns/packet vs bare XDP_DROP "
        f"{numbers['bare_ns_per_packet']} ns (x{numbers['ratio']}); {numbers['passed_fraction']:.1%} passed",
        f"(a) programs only: {numbers['program_ns_per_packet']} ns vs "
        f"{numbers['bare_program_ns_per_packet']} ns (both with the generator's cost)",
        f"(b) generator -> veth: {numbers['mpps']} Mpps vs bare XDP_DROP {numbers['bare_mpps']} "
        f"Mpps (x{numbers['mpps_ratio']})",
    ]
    for name, r in result["peers"].items():
        if "mpps" in r:
            lines.append(f"  peer {name}: {r['mpps']} Mpps (shieldwall x{r['shieldwall_ratio']})")
        else:
            lines.append(f"  peer {name}: not measured: {r.get('not_expressible') or r.get('error')}")
    report["summary"] = "\n".join(lines)
    return report
