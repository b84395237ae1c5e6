"""Kernel-speed traffic generator: BPF_PROG_TEST_RUN in live-frames mode with a program
that redirects a packet template out of a veth end (bpf/trafgen.bpf.c).

The frames reach the peer's XDP program as if a NIC had received them, at millions of
packets per second, with no tool outside this project. Every run is bounded by its
packet count.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass

from ..kernel.libbpf import BpfObject
from ..kernel.testrun import prog_test_run_live
from ..kernel.xdp import ifindex
from ..paths import object_path
from .netns import enter_netns

MAX_PACKETS = 50_000_000  # a hard bound on any one run


@dataclass(frozen=True)
class SendResult:
    sent: int
    seconds: float

    @property
    def mpps(self) -> float:
        return self.sent / self.seconds / 1e6 if self.seconds else 0.0


class TrafficGenerator:
    """Sends templates out of `iface` in namespace `netns`."""

    def __init__(self, netns: str, iface: str):
        self.netns = netns
        self.iface = iface
        self.obj = BpfObject(object_path("trafgen"))
        self.obj.declare("sw_gen_config", "__u32", "struct sw_gen_config")
        self.obj.declare("sw_gen_sent", "__u32", "__u64")
        self.obj.load()
        with enter_netns(netns):
            self.ifindex = ifindex(iface)

    def close(self) -> None:
        self.obj.close()

    def __enter__(self) -> "TrafficGenerator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, template: bytes, count: int, spread_sources: int = 0,
             src_offset: int = 0) -> SendResult:
        """Sends `count` copies of the template; with spread_sources, the source address
        (whose last 4 bytes start at src_offset) counts up from the template's through
        that many values in its low 16 bits: a spoofed flood."""
        if not 0 < count <= MAX_PACKETS:
            raise ValueError(f"count must be between 1 and {MAX_PACKETS}")
        self.obj.map("sw_gen_config").update(0, {"ifindex": self.ifindex,
                                                 "src_spread": spread_sources,
                                                 "src_offset": src_offset,
                                                 "src_base": int.from_bytes(
                                                     template[src_offset + 2:src_offset + 4], "big")})
        prog = self.obj.program("sw_trafgen")
        # Live frames are injected in the caller's network namespace: the redirect target
        # is looked up there.
        with enter_netns(self.netns):
            start = time.perf_counter()
            prog_test_run_live(prog.fd, template, repeat=count, batch_size=64)
            seconds = time.perf_counter() - start
        return SendResult(count, seconds)


def xdp_rx_packets(netns: str, iface: str) -> int:
    """Frames that reached the XDP program of a veth end (its driver statistics)."""
    out = subprocess.run(["ip", "netns", "exec", netns, "ethtool", "-S", iface],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(n) for n in re.findall(r"rx_queue_\d+_xdp_packets:\s*(\d+)", out))
