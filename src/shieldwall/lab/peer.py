"""The lab's outside end as a receiver of XDP_TX: veth hands a frame its peer sends
back with XDP_TX to the other end's stack only when an XDP program runs there (it is
what schedules that end's NAPI); GRO alone lets such frames wait in the ring. A
physical NIC has no such need: this is the lab's wiring, not the product's."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from typing import Iterator

from ..kernel import libbpf, xdp
from ..kernel.libbpf import BpfObject
from ..kernel.netns import enter_netns
from ..paths import object_path
from .topology import LabTopology


@contextmanager
def receives_xdp_tx(topo: LabTopology, drop: bool = False) -> Iterator[None]:
    """An XDP_PASS program on the outside end for the block (its link is this
    process's alone: it goes with the block, or with the process). With `drop`, what
    arrives there is dropped at its ingress hook (an nftables netdev table of the
    block's own) instead of going up its stack: a benchmark's far end that costs the
    machine as little as it can. (XDP_DROP there would not do: a dropped frame goes
    straight back to the generator's page pool still marked with the SYN-ACK's length,
    and the generator would send it that short.)"""
    obj = BpfObject(object_path("peer_pass"))
    obj.load()
    try:
        with enter_netns(topo.outside_ns):
            index = xdp.ifindex(topo.outside_if)
            link = libbpf.xdp_link_create(obj.program("sw_peer_pass").fd, index,
                                          xdp.MODE_FLAGS["native"])
        try:
            if drop:
                _nft(topo, f"table netdev {SINK} {{\n  chain in {{\n    type filter hook ingress "
                           f'device "{topo.outside_if}" priority 0; policy drop;\n  }}\n}}\n')
            try:
                yield
            finally:
                if drop:
                    _nft(topo, f"delete table netdev {SINK}\n")
        finally:
            libbpf.link_detach(link)
            os.close(link)
    finally:
        obj.close()


SINK = "sw_lab_sink"


def _nft(topo: LabTopology, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", topo.outside_ns, "nft", "-f", "-"], input=script,
                   text=True, capture_output=True, check=True)
