"""`shieldwall bench`: what the pipeline costs, as ratios to the bare XDP_DROP limit.

Two paths, measured in one run:
(a) BPF_PROG_TEST_RUN in live-frames mode on the programs themselves: ns per packet;
(b) the lab's generator -> veth -> native XDP on the server end: Mpps that reach XDP.
Live frames that pass are handed to a network stack, so both paths run inside the lab's
server namespace, never the host's.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from statistics import mean, median

from .config import Config
from .dataplane.pipeline import Pipeline, PipelineConfig
from .engine import lifecycle
from .kernel import libbpf, xdp
from .kernel.libbpf import BpfObject
from .kernel.testrun import prog_test_run, prog_test_run_live
from .lab import topology
from .lab.netns import enter_netns
from .lab.traffic import IPV4_SRC_OFFSET, SPOOFED_V4, SPOOFED_V6, builtin_mix, syn_flood_v4
from .lab.trafgen import TrafficGenerator, xdp_rx_packets
from .paths import object_path
from .pcapio import read_frames

LIVE_REPEAT = 200_000
PROGRAM_REPEAT = 200_000
ROUNDS = 3  # the veth path shares two CPUs with everything else: report the median


def default_bench_config() -> PipelineConfig:
    """The built-in mix is a flood from blocklisted ranges: every packet walks the whole
    chain (parse, fastpath lookup) and is dropped by its last stage."""
    from .dataplane.pipeline import parse_networks
    return PipelineConfig(fastpath_deny=parse_networks([SPOOFED_V4, SPOOFED_V6]))


def _per_packet_ns(prog_fd: int, packets: list[bytes], live: bool) -> float:
    runs = []
    for pkt in packets:
        if live:
            runs.append(prog_test_run_live(prog_fd, pkt, repeat=LIVE_REPEAT, batch_size=64).duration_ns)
        else:
            runs.append(prog_test_run(prog_fd, pkt, repeat=PROGRAM_REPEAT).duration_ns)
    return mean(runs)


def _through_veth(topo: topology.LabTopology, gen: TrafficGenerator, template: bytes,
                  packets: int) -> float:
    before = xdp_rx_packets(topo.server_ns, topo.server_if)
    result = gen.send(template, packets, spread_sources=250, src_offset=IPV4_SRC_OFFSET)
    arrived = xdp_rx_packets(topo.server_ns, topo.server_if) - before
    return arrived / result.seconds / 1e6


def run_bench(config: Config, pcap: Path | None, packets: int = 2_000_000) -> dict:
    pipeline_config = config.pipeline if config.policy else default_bench_config()
    with topology.lab() as topo:
        mix = ([f.data for f in read_frames(pcap) if len(f.data) >= 14] if pcap else
               builtin_mix(topo.server_mac, topo.outside_mac, topo.server_v4, topo.server_v6))
        if not mix:
            raise ValueError(f"{pcap}: no frame long enough to run")
        with enter_netns(topo.server_ns), Pipeline.load(pipeline_config) as pipeline, \
                BpfObject(object_path("bare_drop")) as bare:
            bare.load()
            bare_fd = bare.program("sw_bare_drop").fd
            root_fd = pipeline.root_program.fd
            ns = _per_packet_ns(root_fd, mix, live=True)
            bare_ns = _per_packet_ns(bare_fd, mix, live=True)
            prog_ns = _per_packet_ns(root_fd, mix, live=False)
            bare_prog_ns = _per_packet_ns(bare_fd, mix, live=False)

            template = syn_flood_v4(topo.server_mac, topo.outside_mac, topo.server_v4)
            rates: dict[int, list[float]] = {bare_fd: [], root_fd: []}
            with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
                for _ in range(ROUNDS):
                    for fd in rates:  # alternate, so drift hits both alike
                        link = libbpf.xdp_link_create(fd, topo.server_ifindex, xdp.MODE_FLAGS["native"])
                        try:
                            rates[fd].append(_through_veth(topo, gen, template, packets))
                        finally:
                            os.close(link)
            bare_mpps, mpps = median(rates[bare_fd]), median(rates[root_fd])
    report = {
        "ns_per_packet": round(ns, 1),
        "bare_ns_per_packet": round(bare_ns, 1),
        "ratio": round(ns / bare_ns, 3) if bare_ns else None,
        "program_ns_per_packet": round(prog_ns, 1),
        "bare_program_ns_per_packet": round(bare_prog_ns, 1),
        "mpps": round(mpps, 3),
        "bare_mpps": round(bare_mpps, 3),
        "mpps_ratio": round(mpps / bare_mpps, 3) if bare_mpps else None,
        "packets_in_mix": len(mix),
        "generator_packets": packets,
        "rounds": ROUNDS,
        "chain": list(pipeline_config.chain),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    report["summary"] = (
        f"test run, live frames: {report['ns_per_packet']} ns/packet vs bare XDP_DROP "
        f"{report['bare_ns_per_packet']} ns (x{report['ratio']})\n"
        f"test run, program only: {report['program_ns_per_packet']} ns vs "
        f"{report['bare_program_ns_per_packet']} ns\n"
        f"generator -> veth -> native XDP: {report['mpps']} Mpps vs bare {report['bare_mpps']} Mpps "
        f"(x{report['mpps_ratio']})")
    return report
