"""Helpers the test tiers share: the command line as a user runs it, its reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def shieldwall(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m shieldwall ARGS` in a new process, with this process's environment
    (so the run's own bpffs and lock) plus `env`."""
    return subprocess.run([sys.executable, "-m", "shieldwall", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def server_status(topo) -> dict:
    out = shieldwall("status", "--netns", topo.server_ns, "--iface", topo.server_if, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)[0]


def counter(report: dict, action: str, reason: str) -> int:
    return sum(c["packets"] for c in report["counters"]
               if c["action"] == action and c["reason"] == reason)


def silence_outside(topo) -> None:
    """Nothing from the outside namespace's own stack (MLD reports, ARP, ND) reaches the
    server end, so every frame there is the generator's and the counts add up exactly.
    The generator's frames are redirected by XDP into the veth and never pass this
    egress hook."""
    ruleset = (f"table netdev quiet {{\n  chain egress {{\n"
               f'    type filter hook egress device "{topo.outside_if}" priority 0; policy drop;\n'
               f"  }}\n}}\n")
    done = subprocess.run(["ip", "netns", "exec", topo.outside_ns, "nft", "-f", "-"],
                          input=ruleset, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr + ruleset


def closed_stdout(*args: str) -> subprocess.CompletedProcess:
    """The command with its stdout a pipe nobody reads any more (`| head -1` that has
    exited), and buffered as for any user (the test environment may turn that off)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "shieldwall", *args], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120, env=env)
    finally:
        os.close(write)


def checksums_right(frame) -> bool:
    """Whether a scapy frame's IPv4, TCP, UDP, ICMP and ICMPv6 echo checksums are the
    ones scapy computes afresh."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6EchoRequest
    from scapy.layers.l2 import Ether
    fields = {IP: "chksum", TCP: "chksum", UDP: "chksum", ICMP: "chksum",
              ICMPv6EchoRequest: "cksum"}
    layers = [layer for layer in fields if layer in frame]
    fresh = frame.copy()
    for layer in layers:
        delattr(fresh[layer], fields[layer])
    fresh = Ether(bytes(fresh))
    return all(getattr(frame[layer], fields[layer]) == getattr(fresh[layer], fields[layer])
               for layer in layers)


@contextmanager
def attached(topo, policy_text: str, mode: str, where_to: Path) -> Iterator[tuple[str, ...]]:
    """shieldwall up on the lab's server end with this policy, down afterwards; yields the
    arguments that name the interface."""
    policy = where_to / "policy.yaml"
    policy.write_text(policy_text)
    where = ("--netns", topo.server_ns, "--iface", topo.server_if)
    up = shieldwall("up", "--mode", mode, *where, "--config", str(policy))
    assert up.returncode == 0, up.stderr
    try:
        yield where
    finally:
        assert shieldwall("down", *where).returncode == 0
