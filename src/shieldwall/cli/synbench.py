"""`shieldwall bench --syn`: what answering SYNs in XDP costs, and whether forged ACKs
get through (docs/results.md, "SYN cookies").

In one run, on a lab of its own:
- rate: a spoofed SYN flood (random sources and ports, IPv4 and IPv6) from the
  generator through the veth to the server end, where the syn stage answers each SYN
  with a SYN-ACK (XDP_TX) in cookie and in auth mode, next to the bare XDP_DROP program
  and a bare XDP_TX one (every frame sent back as it came: the limit for answering)
  on the same path, in interleaved rounds; also in live-frames mode (ns per frame).
  The outside end runs an XDP_PASS program (lab/peer.py), so veth delivers the SYN-ACKs
  there, and drops them at its ingress hook: that work (an sk_buff per SYN-ACK) shares
  the machine's two CPUs with the measured path, as a real peer's would not, so the
  ratio is a floor.
- forged ACKs: FORGED ACKs, each from a new tuple with its own ACK number, through the
  cookie mode's program: the kernel's cookie check must refuse every one.
"""

from __future__ import annotations

import random
from dataclasses import replace

from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether

from ..config import configure
from ..dataplane.pipeline import Pipeline
from ..kernel.libbpf import BpfObject
from ..kernel.netns import enter_netns
from ..lab import topology
from ..lab.attacks import attack, templates
from ..lab.peer import sink
from ..lab.trafgen import Template, TrafficGenerator
from ..paths import object_path
from ..policy import parse_policy
from .bench import ROUNDS, _Measure

PACKETS = 1_000_000
FORGED = 1_000_000
PORT = 80


def _policy(mode: str) -> object:
    return parse_policy({"version": 1, "default_action": "pass",
                         "protect": {"syn": {"ports": [PORT], "mode": mode}}},
                        "built-in SYN benchmark", ".")


def _forged_templates(topo: topology.LabTopology) -> list[Template]:
    """The ACK flood's templates, each with an ACK number of its own (the generator
    draws the sources and source ports)."""
    base = templates(attack("ack"), topo)
    out = []
    for t in base + base:
        frame = Ether(t.frame)
        frame[TCP].ack = random.getrandbits(32)
        frame[TCP].seq = random.getrandbits(32)
        del frame[TCP].chksum
        out.append(replace(t, frame=bytes(frame)))
    return out


def run_syn(rounds: int = ROUNDS) -> dict:
    with topology.lab() as topo:
        with enter_netns(topo.server_ns), \
                BpfObject(object_path("bare_drop")) as bare, \
                BpfObject(object_path("bare_tx")) as bare_tx, \
                TrafficGenerator(None, None) as chained, \
                TrafficGenerator(topo.outside_ns, topo.outside_if) as gen, \
                sink(topo):
            bare.load()
            bare_tx.load()
            pipelines = {mode: Pipeline.load(configure(_policy(mode))) for mode in ("cookie", "auth")}
            try:
                syns = templates(attack("syn"), topo)
                chained.random(syns)
                gen.random(syns)
                measure = _Measure(topo, chained, gen, rounds, PACKETS, PACKETS)
                result = measure.many({"bare_drop": (bare.program("sw_bare_drop").fd, None),
                                       "bare_tx": (bare_tx.program("sw_bare_tx").fd, None),
                                       **{f"syn_{m}": (p.root_program.fd, p) for m, p in pipelines.items()}})
                answered = {m: _answered_on_veth(measure, p) for m, p in pipelines.items()}
                forged = _forged(pipelines["cookie"], chained, topo)
            finally:
                for p in pipelines.values():
                    p.close()
    bare_mpps, tx_mpps = result["bare_drop"]["mpps"], result["bare_tx"]["mpps"]
    ratios = {m: round(result[f"syn_{m}"]["mpps"] / bare_mpps, 3) if bare_mpps else 0.0
              for m in pipelines}
    to_tx = {m: round(result[f"syn_{m}"]["mpps"] / tx_mpps, 3) if tx_mpps else 0.0
             for m in pipelines}
    # The programs alone (not live) run on one buffer the generator rewrites; a stage
    # that turns it into a shorter SYN-ACK leaves the generator a frame it cannot
    # rewrite, so those numbers say nothing here: the live ones carry each SYN-ACK out.
    for name in result:
        result[name].pop("program_ns_per_packet", None)
    summary = (f"SYN-ACKs from XDP on the veth path: cookie {result['syn_cookie']['mpps']:.2f} Mpps "
               f"({ratios['cookie']:.0%} of bare XDP_DROP's {bare_mpps:.2f} Mpps, "
               f"{to_tx['cookie']:.0%} of bare XDP_TX's {tx_mpps:.2f}), auth "
               f"{result['syn_auth']['mpps']:.2f} Mpps ({ratios['auth']:.0%}, {to_tx['auth']:.0%}); "
               f"{answered['cookie']:.1%} and {answered['auth']:.1%} of the SYNs that reached XDP "
               f"answered; live frames: cookie {result['syn_cookie']['ns_per_packet']:.0f} ns, auth "
               f"{result['syn_auth']['ns_per_packet']:.0f} ns, bare {result['bare_drop']['ns_per_packet']:.0f} "
               f"ns per SYN; forged ACKs: {forged['false_accepts']} of {forged['frames']:,} accepted "
               f"({forged['refused']:,} refused as bad_cookie)")
    return {"rate": result, "ratio_to_bare": ratios, "ratio_to_bare_tx": to_tx, "answered_fraction": answered,
            "forged_acks": forged, "summary": summary}


def _answered_on_veth(measure: _Measure, pipeline: Pipeline) -> float:
    """The share of the flood's frames that reached XDP and left as SYN-ACKs."""
    with measure.attached(pipeline.root_program.fd):
        before = pipeline.counters()
        measure.gen.send(None, PACKETS)
        after = pipeline.counters()
    delta = {k: after[k][0] - before.get(k, (0, 0))[0] for k in after}
    total = sum(delta.values())
    tx = sum(n for (action, _), n in delta.items() if action == "tx")
    return round(tx / total, 4) if total else 0.0


def _forged(pipeline: Pipeline, chained: TrafficGenerator, topo: topology.LabTopology) -> dict:
    """FORGED ACKs through the cookie mode's programs (not live: the verdicts are only
    counted); every one must end as bad_cookie."""
    chained.random(_forged_templates(topo))
    before = pipeline.counters()
    sent = chained.run_chained(pipeline.root_program.fd, FORGED, live=False)
    after = pipeline.counters()
    delta = {k: after[k][0] - before.get(k, (0, 0))[0] for k in after}
    # What the stage did not refuse is either accepted (passed on) or dropped before it
    # by the protect stage's filters (a drawn source port of 0).
    return {"frames": FORGED, "seconds": round(sent.seconds, 3),
            "refused": delta.get(("drop", "bad_cookie"), 0),
            "false_accepts": sum(n for (action, _), n in delta.items() if action == "pass"),
            "dropped_before": {reason: n for (action, reason), n in delta.items()
                               if action == "drop" and reason != "bad_cookie" and n}}
