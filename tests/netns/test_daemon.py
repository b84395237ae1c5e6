"""Namespace tier: the daemon adopts what runs. Killed with SIGKILL under a flood from a
blocked source and started again, not one of that source's frames passes; the restart
changes nothing that runs (same revision, counters going on); SIGHUP reloads; SIGTERM
ends the process and leaves the interface protected."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from shieldwall.lab.trafgen import TrafficGenerator

from ..helpers import counter, server_status, shieldwall, silence_outside

pytestmark = pytest.mark.netns

POLICY = """\
version: 1
default_action: pass
rules:
  - {name: blocked, match: {src: [198.51.100.0/24]}, action: drop}
"""


class Daemon:
    def __init__(self, topo, policy) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shieldwall", "daemon", "--netns", topo.server_ns,
             "--iface", topo.server_if, "--config", str(policy), "--mode", "native"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.first = self.proc.stdout.readline()
        assert self.first, self.proc.communicate()

    def line(self) -> str:
        return self.proc.stdout.readline()


def test_a_restart_under_a_flood_lets_nothing_of_a_blocked_source_through(lab, tmp_path):
    topo = lab
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    silence_outside(topo)  # every frame at the server is the flood's
    daemon = Daemon(topo, policy)
    try:
        assert daemon.first.startswith(f"attached {topo.server_if} in native mode"), daemon.first
        revision = server_status(topo)["revision"]["revision"]
        base = server_status(topo)
        frame = bytes(Ether(src=topo.outside_mac, dst=topo.server_mac)
                      / IP(src="198.51.100.9", dst=topo.server_v4) / UDP(dport=53))
        done = threading.Event()

        def flood() -> None:
            with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
                while not done.is_set():
                    gen.send(frame, 200_000)
        flooding = threading.Thread(target=flood)
        flooding.start()
        try:
            time.sleep(0.3)
            daemon.proc.send_signal(signal.SIGKILL)
            daemon.proc.wait(timeout=10)
            time.sleep(0.3)  # nothing runs shieldwall's process now
            daemon = Daemon(topo, policy)
            time.sleep(0.3)
        finally:
            done.set()
            flooding.join()
        assert daemon.first.startswith(f"adopted {topo.server_if}: native mode, revision {revision}"), \
            daemon.first
        report = server_status(topo)
        assert report["revision"]["revision"] == revision  # nothing was reloaded
        dropped = counter(report, "drop", "rule") - counter(base, "drop", "rule")
        passed = sum(c["packets"] for c in report["counters"] if c["action"] == "pass") - \
            sum(c["packets"] for c in base["counters"] if c["action"] == "pass")
        assert dropped > 100_000 and passed == 0, (dropped, passed, report["counters"])

        # SIGHUP: the file again, as a new revision; a broken file changes nothing.
        policy.write_text(POLICY.replace("0/24]", "0/25]"))
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.line().startswith(f"reloaded {topo.server_if}: revision {revision + 1}")
        policy.write_text("version: 1\ndefault_action: pass\nrules: [{name: x, match: {dport: 70000}, action: drop}]\n")
        daemon.proc.send_signal(signal.SIGHUP)
        refused = daemon.line()
        assert refused.startswith("reload refused, the policy in force stays") and "dport" in refused
        assert server_status(topo)["revision"]["revision"] == revision + 1
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        out, err = daemon.proc.communicate(timeout=10)
    assert daemon.proc.returncode == 0 and "Traceback" not in err, err
    assert "stays protected" in out
    assert server_status(topo)["attached"]
    assert shieldwall("down", "--netns", topo.server_ns, "--iface", topo.server_if).returncode == 0
