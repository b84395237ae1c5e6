"""`shieldwall bench --icmp`: what the icmp stage costs per packet (docs/results.md,
"ICMP").

The programs alone (the generator tail-calls the root, no veth), on two floods from
random spoofed sources: echo requests (IPv4 and IPv6; the stage takes from the echo
bucket and drops nearly all of them), and forged errors (destination unreachable and
fragmentation needed in IPv4, packet too big in IPv6) whose embedded header claims the
server sent a UDP datagram from a port no socket holds: each costs the embedded
header's read and one kernel socket lookup, the stage's worst case. Each flood runs
through the same policy without the stage (`protect: {}`) and with its defaults
(`protect: {icmp: {}}`), interleaved, the best round of each kept.
"""

from __future__ import annotations

from ..config import configure
from ..dataplane.pipeline import Pipeline
from ..kernel.netns import enter_netns
from ..lab import topology
from ..lab.attacks import SPOOF_V4_A, SPOOF_V4_B, SPOOF_V6, Part, template
from ..lab.trafgen import TrafficGenerator
from ..policy import parse_policy
from .bench import ROUNDS, _Measure
from .limitbench import _interleaved

PACKETS = 1_000_000
FLOODS = {
    "echo": (Part("icmp", SPOOF_V4_A), Part("icmp", SPOOF_V6)),
    "forged_errors": (Part("icmp-forged-unreach", SPOOF_V4_A), Part("icmp-forged-frag", SPOOF_V4_B),
                      Part("icmp-forged-too-big", SPOOF_V6)),
}
POLICIES = {"without": {}, "icmp": {"icmp": {}}}


def run_icmp(rounds: int = ROUNDS) -> dict:
    with topology.lab() as topo:
        with enter_netns(topo.server_ns), TrafficGenerator(None, None) as chained:
            pipelines = {name: Pipeline.load(configure(parse_policy(
                {"version": 1, "default_action": "pass", "protect": protect},
                "built-in icmp benchmark", "."))) for name, protect in POLICIES.items()}
            try:
                measure = _Measure(topo, chained, chained, rounds, PACKETS, PACKETS)
                costs = {}
                for flood, parts in FLOODS.items():
                    chained.random([template(p, topo) for p in parts])
                    costs[flood] = _interleaved(measure, pipelines, rounds)
                drops = {name: {f"{a}/{r}": n for (a, r), (n, _) in p.counters().items()
                                if a == "drop" and n} for name, p in pipelines.items()}
            finally:
                for p in pipelines.values():
                    p.close()
    added = {flood: round(c["icmp"] - c["without"], 1) for flood, c in costs.items()}
    summary = "icmp stage cost (programs only): " + "; ".join(
        f"{flood} flood {c['without']:.0f} ns without the stage, {c['icmp']:.0f} ns with "
        f"({added[flood]:+} ns)" for flood, c in costs.items())
    return {"programs_ns_per_packet": costs, "added_ns": added, "drops": drops, "summary": summary}
