"""`shieldwall bench`: what the pipeline costs, as ratios to the bare XDP_DROP limit and
to peers measured in the same run.

Two paths:
(a) BPF_PROG_TEST_RUN in live-frames mode on the programs themselves: ns per packet;
(b) the lab's generator -> veth -> the server end: Mpps that reach the filter.
Live frames that pass are handed to a network stack, so both paths run inside the lab's
server namespace, never the host's.
"""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from statistics import mean, median
from typing import Callable, Iterator

from ..config import Config
from ..dataplane.pipeline import Pipeline, PipelineConfig, parse_networks
from ..kernel import libbpf, xdp
from ..kernel.libbpf import BpfObject
from ..kernel.testrun import prog_test_run, prog_test_run_live
from ..lab import peers, topology
from ..kernel.netns import enter_netns
from ..lab.traffic import (FLOOD_SOURCES, IPV4_SRC_OFFSET, SPOOFED_V4, SPOOFED_V6, builtin_mix,
                          flood_sources, syn_flood_v4)
from ..lab.trafgen import TrafficGenerator, xdp_rx_packets
from ..model.parse import ETH_HLEN
from ..paths import object_path
from ..pcapio import read_frames

LIVE_REPEAT = 200_000
PROGRAM_REPEAT = 200_000
ROUNDS = 3  # the veth path shares two CPUs with everything else: report the median

Counter = Callable[[], int]


def default_bench_config() -> PipelineConfig:
    """The built-in mix is a flood from blocklisted ranges: every packet walks the whole
    chain (parse, fastpath lookup) and is dropped by its last stage."""
    return PipelineConfig(chain=("fastpath",), fastpath_deny=parse_networks([SPOOFED_V4, SPOOFED_V6]))


def _per_packet_ns(prog_fd: int, packets: list[bytes], live: bool) -> float:
    if live:
        return mean(prog_test_run_live(prog_fd, p, LIVE_REPEAT, batch_size=64).duration_ns
                    for p in packets)
    return mean(prog_test_run(prog_fd, p, PROGRAM_REPEAT).duration_ns for p in packets)


@contextmanager
def _xdp_attached(topo: topology.LabTopology, prog_fd: int) -> Iterator[Counter]:
    """A program on the server end for one measurement; arrivals are the driver's count
    of frames its XDP program saw."""
    link = libbpf.xdp_link_create(prog_fd, topo.server_ifindex, xdp.MODE_FLAGS["native"])
    try:
        yield lambda: xdp_rx_packets(topo.server_ns, topo.server_if)
    finally:
        os.close(link)


def _flood_mpps(gen: TrafficGenerator, template: bytes, packets: int, arrivals: Counter) -> float:
    rates = []
    for _ in range(ROUNDS):
        before = arrivals()
        sent = gen.send(template, packets, spread_sources=FLOOD_SOURCES, src_offset=IPV4_SRC_OFFSET)
        rates.append((arrivals() - before) / sent.seconds / 1e6)
    return median(rates)


def run_bench(config: Config, pcap: Path | None, packets: int = 2_000_000) -> dict:
    pipeline_config = config.pipeline if config.policy else default_bench_config()
    with topology.lab() as topo:
        mix = ([f.data for f in read_frames(pcap) if len(f.data) >= ETH_HLEN] if pcap else
               builtin_mix(topo.server_mac, topo.outside_mac, topo.server_v4, topo.server_v6))
        if not mix:
            raise ValueError(f"{pcap}: no frame long enough to run")
        template = syn_flood_v4(topo.server_mac, topo.outside_mac, topo.server_v4)
        with enter_netns(topo.server_ns), Pipeline.load(pipeline_config) as pipeline, \
                BpfObject(object_path("bare_drop")) as bare, \
                TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
            bare.load()
            bare_fd = bare.program("sw_bare_drop").fd
            root_fd = pipeline.root_program.fd
            per_packet = {
                "ns_per_packet": _per_packet_ns(root_fd, mix, live=True),
                "bare_ns_per_packet": _per_packet_ns(bare_fd, mix, live=True),
                "program_ns_per_packet": _per_packet_ns(root_fd, mix, live=False),
                "bare_program_ns_per_packet": _per_packet_ns(bare_fd, mix, live=False),
            }
            with _xdp_attached(topo, bare_fd) as arrivals:
                bare_mpps = _flood_mpps(gen, template, packets, arrivals)
            with _xdp_attached(topo, root_fd) as arrivals:
                mpps = _flood_mpps(gen, template, packets, arrivals)
            peer_setups = {
                "xdp-filter": lambda: peers.xdp_filter(topo, flood_sources()),
                "nftables-netdev-ingress": lambda: peers.nftables_ingress(topo, SPOOFED_V4),
            }
            peer_results: dict[str, dict] = {}
            for name, setup in peer_setups.items():
                try:
                    with setup() as counted:
                        arrivals = counted or (lambda: xdp_rx_packets(topo.server_ns, topo.server_if))
                        peer_mpps = _flood_mpps(gen, template, packets, arrivals)
                    peer_results[name] = {"mpps": round(peer_mpps, 3),
                                          "shieldwall_ratio": round(mpps / peer_mpps, 3) if peer_mpps else None}
                except (RuntimeError, OSError) as exc:
                    peer_results[name] = {"error": str(exc)}
    return _report(per_packet, mpps, bare_mpps, peer_results, mix, packets, pipeline_config)


def _report(per_packet: dict, mpps: float, bare_mpps: float, peer_results: dict, mix: list,
            packets: int, pipeline_config: PipelineConfig) -> dict:
    report = {k: round(v, 1) for k, v in per_packet.items()}
    report.update({
        "ratio": round(per_packet["ns_per_packet"] / per_packet["bare_ns_per_packet"], 3),
        "mpps": round(mpps, 3),
        "bare_mpps": round(bare_mpps, 3),
        "mpps_ratio": round(mpps / bare_mpps, 3) if bare_mpps else None,
        "peers": peer_results,
        "packets_in_mix": len(mix),
        "generator_packets": packets,
        "rounds": ROUNDS,
        "chain": list(pipeline_config.chain),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    lines = [
        f"test run, live frames: {report['ns_per_packet']} ns/packet vs bare XDP_DROP "
        f"{report['bare_ns_per_packet']} ns (x{report['ratio']})",
        f"test run, program only: {report['program_ns_per_packet']} ns vs "
        f"{report['bare_program_ns_per_packet']} ns",
        f"generator -> veth: shieldwall {report['mpps']} Mpps, bare XDP_DROP {report['bare_mpps']} Mpps "
        f"(x{report['mpps_ratio']})",
    ]
    for name, r in peer_results.items():
        lines.append(f"  peer {name}: " + (f"{r['mpps']} Mpps" if "mpps" in r else f"not measured: {r['error']}"))
    report["summary"] = "\n".join(lines)
    return report
