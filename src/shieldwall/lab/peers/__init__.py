"""Peers measured on the same veth path as shieldwall: other tools given the equivalent
rule (drop the flood's source range), so a benchmark can put them side by side."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..topology import LabTopology


def _run(args: list[str], stdin: str | None = None) -> str:
    proc = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])}…: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _in_netns(topo: LabTopology) -> list[str]:
    # Only the network namespace: the tool's pins land in this host's bpffs and survive
    # between its invocations (ip netns exec would give each a fresh, empty /sys).
    return ["nsenter", f"--net=/run/netns/{topo.server_ns}"]


@contextmanager
def xdp_filter(topo: LabTopology, sources: list[str]) -> Iterator[None]:
    """xdp-filter (xdp-tools) in native mode, denying each source address; it matches
    exact addresses only, so the flood's sources are listed one by one."""
    if not shutil.which("xdp-filter"):
        raise RuntimeError("xdp-filter is not installed (Debian package xdp-tools)")
    ns = _in_netns(topo)
    _run(ns + ["xdp-filter", "load", "-m", "native", topo.server_if])
    try:
        for src in sources:
            _run(ns + ["xdp-filter", "ip", src, "-m", "src"])
        yield None  # arrivals: the driver's XDP statistics, as for any XDP program
    finally:
        subprocess.run(ns + ["xdp-filter", "unload", topo.server_if], capture_output=True, timeout=60)
        _remove_if_empty(Path("/sys/fs/bpf/xdp"))


def _remove_if_empty(directory: Path) -> None:
    """libxdp leaves its (then empty) pin directory behind."""
    try:
        directory.rmdir()
    except OSError:
        pass


@contextmanager
def nftables_ingress(topo: LabTopology, prefix: str) -> Iterator[Callable[[], int]]:
    """nftables at the earliest hook it has (netdev ingress), dropping the prefix. It runs
    after the sk_buff exists: what XDP exists to avoid."""
    family = "ip" if ipaddress.ip_network(prefix).version == 4 else "ip6"
    rules = f"""table netdev sw_bench {{
  chain ingress {{
    type filter hook ingress device "{topo.server_if}" priority -500;
    {family} saddr {prefix} counter drop
  }}
}}"""
    nft = ["ip", "netns", "exec", topo.server_ns, "nft"]
    _run(nft + ["-f", "-"], stdin=rules)

    def dropped() -> int:
        out = _run(nft + ["list", "table", "netdev", "sw_bench"])
        return int(re.search(r"counter packets (\d+)", out).group(1))
    try:
        yield dropped
    finally:
        subprocess.run(nft + ["delete", "table", "netdev", "sw_bench"], capture_output=True, timeout=60)
