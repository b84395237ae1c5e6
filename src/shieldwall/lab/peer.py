"""The lab's outside end as a receiver of XDP_TX: veth hands a frame its peer sends
back with XDP_TX to the other end's stack only when an XDP program runs there (it is
what schedules that end's NAPI); GRO alone lets such frames wait in the ring. A
physical NIC has no such need: this is the lab's wiring, not the product's, so every
lab's outside end runs an XDP_PASS program from the start (topology.py)."""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from typing import Iterator

from ..kernel import xdp
from ..kernel.libbpf import BpfObject
from ..kernel.netns import enter_netns
from ..paths import object_path
from .topology import LabTopology

SINK = "sw_lab_sink"


def attach_pass(netns: str, ifname: str) -> None:
    """The XDP_PASS program on that end, attached by netlink: it stays with the
    interface (and goes with its namespace), whichever process built the lab."""
    with BpfObject(object_path("peer_pass")) as obj:
        obj.load()
        with enter_netns(netns):
            xdp.attach(xdp.ifindex(ifname), obj.program("sw_peer_pass").fd, "native")


@contextmanager
def sink(topo: LabTopology) -> Iterator[None]:
    """What arrives at the outside end dropped at its ingress hook (an nftables netdev
    table of the block's own) instead of going up its stack: a benchmark's far end that
    costs the machine as little as it can. (XDP_DROP there would not do: a dropped frame
    goes straight back to the generator's page pool still marked with the SYN-ACK's
    length, and the generator would send it that short.)"""
    _nft(topo, f"table netdev {SINK} {{\n  chain in {{\n    type filter hook ingress "
               f'device "{topo.outside_if}" priority 0; policy drop;\n  }}\n}}\n')
    try:
        yield
    finally:
        _nft(topo, f"delete table netdev {SINK}\n")


def _nft(topo: LabTopology, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", topo.outside_ns, "nft", "-f", "-"], input=script,
                   text=True, capture_output=True, check=True)
