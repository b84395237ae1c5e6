"""`shieldwall bench --events`: what sampled events cost on the hot path (docs/results.md,
"Events").

The default flood (every frame dropped by the fastpath) against the same policy four
ways, measured side by side in interleaved rounds with bare XDP_DROP: events off, the
default (drops sampled, at most 1,000 events a second per CPU), passes sampled too, and
the largest budget a policy may ask for (100,000 a second per CPU), which shows what the
budget protects. A reader drains every ring while the generator runs, as the daemon
would, so sent events pay for the ring's real path.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Iterator

from ..config import configure
from ..dataplane.pipeline import EventsConfig, Pipeline
from ..kernel.libbpf import BpfObject, RingBuffer
from ..kernel.netns import enter_netns
from ..lab import topology
from ..lab.trafgen import TrafficGenerator
from ..paths import object_path
from .bench import ROUNDS, _aim, _Measure, default_policy

VARIANTS = {
    "events off": EventsConfig(rate=0),
    "default: drops, 1,000/s per CPU": EventsConfig(rate=1000, drops=1),
    "drops and 1 in 64 passes, 1,000/s": EventsConfig(rate=1000, drops=1, passes=64),
    "budget 100,000/s per CPU": EventsConfig(rate=100_000, drops=1),
}


@contextmanager
def _drained(pipelines: list[Pipeline]) -> Iterator[list[int]]:
    """Every pipeline's ring read by one thread until the block ends; yields the count
    of events read, by pipeline."""
    counts = [0] * len(pipelines)
    rings = []
    for i, p in enumerate(pipelines):
        def got(_raw: bytes, i: int = i) -> None:
            counts[i] += 1
        rings.append(RingBuffer(p.maps["sw_events"].fd, got))
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            for ring in rings:
                ring.poll(20)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        yield counts
    finally:
        stop.set()
        reader.join()
        for ring in rings:
            ring.consume()
            ring.close()


def run_events_bench(packets: int = 2_000_000, rounds: int = ROUNDS,
                     program_packets: int = 1_000_000) -> dict:
    policy = default_policy(adversarial=False)
    base = configure(policy)
    with topology.lab() as topo, ExitStack() as stack:
        stack.enter_context(enter_netns(topo.server_ns))
        pipelines = {name: stack.enter_context(Pipeline.load(replace(base, events=events)))
                     for name, events in VARIANTS.items()}
        bare = stack.enter_context(BpfObject(object_path("bare_drop")))
        bare.load()
        chained = stack.enter_context(TrafficGenerator(None, None))
        gen = stack.enter_context(TrafficGenerator(topo.outside_ns, topo.outside_if))
        _aim(chained, topo, [], False)
        _aim(gen, topo, [], False)
        measure = _Measure(topo, chained, gen, rounds, program_packets, packets)
        programs = {name: (p.root_program.fd, p) for name, p in pipelines.items()}
        programs["bare XDP_DROP"] = (bare.program("sw_bare_drop").fd, None)
        started = time.monotonic()
        with _drained(list(pipelines.values())) as read:
            result = measure.many(programs)
        seconds = time.monotonic() - started
    off = result["events off"]
    out: dict = {"traffic": "SYN flood template, every frame dropped (fastpath deny)",
                 "variants": {}, "generator_packets": packets, "rounds": rounds,
                 "kernel": platform.release(), "cpus": os.cpu_count(),
                 "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    lines = [f"traffic: {out['traffic']}; a reader drains every ring"]
    for i, (name, r) in enumerate(result.items()):
        row = {"program_ns_per_packet": round(r["program_ns_per_packet"], 1),
               "ns_per_packet": round(r["ns_per_packet"], 1), "mpps": round(r["mpps"], 3)}
        if name in pipelines:
            row["events_read"] = read[list(pipelines).index(name)]
            row["events_per_second"] = round(row["events_read"] / seconds)
            row["mpps_of_off"] = round(r["mpps"] / off["mpps"], 3) if off["mpps"] else None
            row["extra_ns_programs"] = round(r["program_ns_per_packet"] - off["program_ns_per_packet"], 1)
        out["variants"][name] = row
        extra = (f", x{row['mpps_of_off']} of events off, {row['events_per_second']} events/s read"
                 if name in pipelines else "")
        lines.append(f"{name}: programs {row['program_ns_per_packet']} ns, live {row['ns_per_packet']} ns, "
                     f"veth {row['mpps']} Mpps{extra}")
    out["summary"] = "\n".join(lines)
    return out
