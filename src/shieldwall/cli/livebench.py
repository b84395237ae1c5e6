"""`shieldwall bench --live`: what a live set entry costs (docs/results.md).

A lab of its own, shieldwall attached in native mode with a policy whose blocklist
holds SET_SIZE single IPv6 addresses (as a big feed's list would), revisions kept in
a directory of this run. Measured in one run:
- one `set add` through the command line: the time it reports for its change (lock,
  records, the data plane), the command's whole wall time and its peak memory, and
  whether the address is dropped when it returns; next to a full reload of the same
  policy (what one more address cost before live entries);
- a feed: FEED_LINES decisions streamed into `set apply -`, decisions per second;
- the per-packet cost, repeated packets in BPF_PROG_TEST_RUN through the running root:
  a source the compiled set holds, a source under a trie entry with no live entry, a
  live entry without a TTL and one with a TTL (the only case that reads the clock).
"""

from __future__ import annotations

import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scapy.layers.inet import TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from .. import abi
from ..config import load_config
from ..engine import lifecycle
from ..engine.transaction import Layout
from ..kernel import libbpf
from ..kernel.netns import enter_netns
from ..kernel.testrun import prog_test_run
from ..lab import topology

SET_SIZE = 1_000_000
ADDS = 20
FEED_LINES = 100_000
REPEAT = 1_000_000
ROUNDS = 5
BASE = int(ipaddress.IPv6Address("2001:db8:b10c::"))
FEED_BASE = int(ipaddress.IPv6Address("2001:db8:feed::"))


def _policy(directory: Path, size: int) -> Path:
    (directory / "blocklist.txt").write_text("".join(
        f"{ipaddress.IPv6Address(BASE + i * 7)}\n" for i in range(size)))
    fillers = "".join(f"  - {{name: f{i}, match: {{proto: udp, dport: {1000 + i}}}, action: drop}}\n"
                      for i in range(20))
    path = directory / "policy.yaml"
    path.write_text("version: 1\ndefault_action: pass\n"
                    "sets:\n  blocklist: {type: prefix, files: [blocklist.txt]}\n"
                    "rules:\n  - {name: blocklist, match: {src: '@blocklist'}, action: drop}\n" + fillers)
    return path


def _cli(topo, *args: str, stdin: bytes | None = None) -> tuple[dict, float]:
    """A shieldwall command in the lab's server namespace: its JSON, and wall seconds."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "shieldwall", *args, "--netns", topo.server_ns,
                           "--iface", topo.server_if, "--json"], input=stdin, capture_output=True)
    wall = time.monotonic() - start
    if done.returncode:
        raise RuntimeError(f"shieldwall {' '.join(args)}: {done.stderr.decode(errors='replace').strip()}")
    return json.loads(done.stdout), wall


def run_live(size: int = SET_SIZE) -> dict:
    with tempfile.TemporaryDirectory() as tmp, topology.lab() as topo:
        os.environ["SHIELDWALL_STATE"] = str(Path(tmp) / "state")  # this run's records
        policy = _policy(Path(tmp), size)
        with enter_netns(topo.server_ns):
            start = time.monotonic()
            lifecycle.up(topo.server_if, lifecycle.proposal(load_config(policy), policy, "up"), mode="native")
            up_seconds = time.monotonic() - start
            start = time.monotonic()
            lifecycle.reload(topo.server_if, lifecycle.proposal(load_config(policy), policy))
            reload_seconds = time.monotonic() - start
        try:
            adds, walls, peaks, dropped = [], [], [], 0
            for i in range(ADDS):
                addr = str(ipaddress.IPv6Address(FEED_BASE - 1 - i))
                report, wall = _cli(topo, "set", "add", "blocklist", addr)
                adds.append(report["seconds"])
                walls.append(wall)
                dropped += _verdict(topo, addr) == abi.SW_ACT_DROP
            peaks.append(_peak(topo))
            lines = "".join(f"add {ipaddress.IPv6Address(FEED_BASE + i)} ttl=1h\n"
                            for i in range(FEED_LINES)).encode()
            feed, feed_wall = _cli(topo, "set", "apply", "--set", "blocklist", "-", stdin=lines)
            ttl_addr = str(ipaddress.IPv6Address(FEED_BASE + 1))
            plain_addr = str(ipaddress.IPv6Address(FEED_BASE - 1))
            costs = _costs(topo, {
                "compiled set entry": str(ipaddress.IPv6Address(BASE + 7 * (size // 2))),
                "no entry, unflagged trie entry": "2001:db8:ffff::1",
                "no entry, flagged trie entry": str(ipaddress.IPv6Address(BASE + 7 * (size // 2) + 1)),
                "live entry": plain_addr,
                "live entry with a TTL": ttl_addr})
        finally:
            with enter_netns(topo.server_ns):
                lifecycle.down(topo.server_if, forget=True)
    report = {
        "set_size": size, "kernel": os.uname().release, "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "up_seconds": round(up_seconds, 2), "full_reload_seconds": round(reload_seconds, 2),
        "set_add_ms": {"median": round(statistics.median(adds) * 1000, 1),
                       "max": round(max(adds) * 1000, 1)},
        "set_add_command_ms": {"median": round(statistics.median(walls) * 1000, 1)},
        "set_add_peak_rss_mib": round(max(peaks) / 1024, 1) if peaks else None,
        "dropped_on_return": f"{dropped}/{ADDS}",
        "feed": {"lines": FEED_LINES, "seconds": round(feed["seconds"], 2),
                 "per_second": round(FEED_LINES / feed["seconds"]), "command_seconds": round(feed_wall, 2),
                 "in_place": feed["in_place"]},
        "ns_per_packet": costs,
    }
    report["summary"] = _summary(report)
    return report


def _peak(topo) -> int:
    """Peak memory (KiB) of one `set add` command. Measured from a small process of its
    own: a child forked from this one (which holds the policy) would count our pages."""
    argv = [sys.executable, "-m", "shieldwall", "set", "add", "--netns", topo.server_ns,
            "--iface", topo.server_if, "blocklist", "2001:db8:b10c:ffff::1"]
    probe = ("import resource, subprocess, sys\n"
             f"done = subprocess.run({argv!r}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if not done.returncode else -1)")
    found = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout)
    if found < 0:
        raise RuntimeError("shieldwall set add failed")
    return found


def _frame(topo, src: str) -> bytes:
    return bytes(Ether(src=topo.outside_mac, dst=topo.server_mac)
                 / IPv6(src=src, dst=topo.server_v6) / TCP(sport=40000, dport=80, flags="S"))


def _root_fd(topo) -> int:
    layout = Layout.of(topo.server_if)
    return libbpf.obj_get(layout.gen(layout.live_generation()) / "prog_root")


def _verdict(topo, src: str) -> int:
    with enter_netns(topo.server_ns):
        fd = _root_fd(topo)
        try:
            return prog_test_run(fd, _frame(topo, src)).retval
        finally:
            os.close(fd)


def _costs(topo, sources: dict[str, str]) -> dict[str, float]:
    with enter_netns(topo.server_ns):
        fd = _root_fd(topo)
        try:
            best = {name: float("inf") for name in sources}
            for _ in range(ROUNDS):
                for name, src in sources.items():
                    best[name] = min(best[name], prog_test_run(fd, _frame(topo, src), REPEAT).duration_ns)
            return {name: round(ns, 1) for name, ns in best.items()}
        finally:
            os.close(fd)


def _summary(r: dict) -> str:
    lines = [f"live set entries on a {r['set_size']:,}-address set (native mode, lab veth)",
             f"  up {r['up_seconds']} s; a full reload of the same policy {r['full_reload_seconds']} s",
             f"  set add (in place): {r['set_add_ms']['median']} ms median, {r['set_add_ms']['max']} ms max "
             f"(the command's own measure); whole command {r['set_add_command_ms']['median']} ms "
             f"with Python's start, peak {r['set_add_peak_rss_mib']} MiB; dropped on return: "
             f"{r['dropped_on_return']}",
             f"  feed: {r['feed']['lines']:,} decisions in {r['feed']['seconds']} s = "
             f"{r['feed']['per_second']:,}/s ({'in place' if r['feed']['in_place'] else 'new generation'})",
             "  per packet, repeated (programs only, through the running root):"]
    lines += [f"    {name}: {ns} ns" for name, ns in r["ns_per_packet"].items()]
    return "\n".join(lines)
