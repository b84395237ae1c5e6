"""`shieldwall bench --reflection`: what the reflection stage costs per packet on a
reflected flood (docs/results.md, "Amplification").

Programs only (BPF_PROG_TEST_RUN, the generator rewriting every frame): the lab's DNS
amplification templates, replies from port 53 to random ports of the host, against a
policy without the stage, with it at its defaults, and with a per-reflector limit.
Two floods: the IPv6 parts alone (96 random source bits: no source ever repeats, no
reply ever matches) and the whole attack (its IPv4 sources, from two /24s, repeat; it
adds first and later fragments). Each variant runs once per round, in turn, its best
round kept: interference on a shared machine only slows a run down.
"""

from __future__ import annotations

from ..config import configure
from ..dataplane.pipeline import Pipeline
from ..lab.attacks import attack, templates
from ..lab.topology import LabTopology
from ..lab.trafgen import TrafficGenerator
from ..policy import parse_policy
from .bench import ROUNDS

PACKETS = 1_000_000
# Addresses only: the frames never leave the test run.
TOPO = LabTopology(server_mac="02:00:00:00:00:01", outside_mac="02:00:00:00:00:02")
VARIANTS = {"without": None, "reflection": {}, "reflection_limit": {"limit": {"pps": 100, "burst": 200}}}


def _policy(reflection: dict | None) -> object:
    protect: dict = {"bogons": "off"}
    if reflection is not None:
        protect["reflection"] = reflection
    return parse_policy({"version": 1, "default_action": "pass", "protect": protect},
                        "built-in reflection benchmark", ".")


def run_reflection(rounds: int = ROUNDS) -> dict:
    flood = templates(attack("dns-amplification"), TOPO)
    floods = {"never_repeating": [t for t in flood if t.family == 6 and t.src_bits >= 64],
              "dns_amplification": flood}
    costs = {}
    pipelines = {name: Pipeline.load(configure(_policy(spec))) for name, spec in VARIANTS.items()}
    try:
        with TrafficGenerator(None, None) as chained:
            for traffic, chosen in floods.items():
                chained.random(chosen)
                best = {name: float("inf") for name in pipelines}
                for _ in range(rounds * 2):
                    for name, p in pipelines.items():
                        ns = chained.run_chained(p.root_program.fd, PACKETS, live=False).ns_per_packet
                        best[name] = min(best[name], ns)
                costs[traffic] = {name: round(ns, 1) for name, ns in best.items()}
    finally:
        for p in pipelines.values():
            p.close()
    added = {traffic: {name: round(ns - cost["without"], 1) for name, ns in cost.items()
                       if name != "without"} for traffic, cost in costs.items()}
    summary = "reflection stage cost (programs only): " + "; ".join(
        f"{traffic} {cost['without']:.0f} ns without, "
        + ", ".join(f"{v:+} ns {k}" for k, v in added[traffic].items())
        for traffic, cost in costs.items())
    return {"programs_ns_per_packet": costs, "added_ns": added, "summary": summary}
