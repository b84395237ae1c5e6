"""Namespace tier: the A/B canary on a lab. A share of a many-flow flood goes to the
canary within 2 percentage points, each flow always to the same arm, a source prefix
takes exactly its sources; abort returns to the policy in force and promote makes the
canary the whole, all through the transaction engine."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from shieldwall.engine.records import Records
from shieldwall.engine.transaction import Layout
from shieldwall.kernel import libbpf
from shieldwall.kernel.netns import enter_netns
from shieldwall.kernel.testrun import prog_test_run
from shieldwall.lab.traffic import adversarial_templates
from shieldwall.lab.trafgen import TrafficGenerator

from ..helpers import server_status, shieldwall, silence_outside

pytestmark = pytest.mark.netns

XDP_DROP, XDP_PASS = 1, 2
FLOOD = 2_000_000   # random flows, every frame drawn afresh
SHARE = 0.10
TOLERANCE = 0.02


def cli(topo, *args: str) -> subprocess.CompletedProcess:
    out = shieldwall(*args, "--netns", topo.server_ns, "--iface", topo.server_if)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def policies(directory):
    """In force: everything passes. Canary: everything is dropped by a rule. Which arm
    a packet took shows in its verdict."""
    keep = directory / "keep.yaml"
    keep.write_text("version: 1\ndefault_action: pass\nrules:\n"
                    "  - {name: nothing, match: {proto: gre}, action: drop}\n")
    new = directory / "new.yaml"
    new.write_text("version: 1\ndefault_action: pass\nrules:\n"
                   "  - {name: all, match: {src: [0.0.0.0/0, '::/0']}, action: drop}\n")
    return keep, new


def verdict(topo, src: str, sport: int) -> str:
    with enter_netns(topo.server_ns):
        layout = Layout.of(topo.server_if)
        fd = libbpf.obj_get(layout.gen(layout.live_generation()) / "prog_root")
        try:
            frame = bytes(Ether(src=topo.outside_mac, dst=topo.server_mac)
                          / IP(src=src, dst=topo.server_v4) / TCP(sport=sport, dport=80, flags="S"))
            return {XDP_DROP: "drop", XDP_PASS: "pass"}[prog_test_run(fd, frame).retval]
        finally:
            os.close(fd)


def test_share_of_flows(lab, tmp_path):
    topo = lab
    keep, new = policies(tmp_path)
    silence_outside(topo)
    assert cli(topo, "up", "--mode", "native", "--config", str(keep)).returncode == 0
    start = cli(topo, "canary", "start", "--config", str(new), "--share", f"{SHARE * 100:g}%")
    assert start.returncode == 0, start.stderr
    report = server_status(topo)
    arms = report["canary"].pop("arms")  # both arms' counts, as `canary status` gives them
    assert report["canary"] == {"arm": "10% of flows", "against": 1}
    assert set(arms) == {"in force", "canary"} and arms["canary"]["revision"] == 2
    busy = cli(topo, "reload", "--config", str(keep))
    assert busy.returncode == 2 and "a canary runs" in busy.stderr

    # Each flow keeps its arm: the same 5-tuple, again and again.
    rng = random.Random(7)
    flows = [(f"198.51.100.{rng.randrange(256)}", rng.randrange(1024, 65536)) for _ in range(200)]
    arms = [{verdict(topo, src, sport) for _ in range(3)} for src, sport in flows]
    assert all(len(a) == 1 for a in arms)
    canary_flows = sum(a == {"drop"} for a in arms)
    assert 5 <= canary_flows <= 40, canary_flows

    with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
        gen.random(adversarial_templates(topo.server_mac, topo.outside_mac, topo.server_v4, topo.server_v6))
        gen.send(None, FLOOD)
    out = cli(topo, "canary", "status", "--json")
    assert out.returncode == 0, out.stderr
    arms_report = json.loads(out.stdout)["arms"]
    canary, kept = arms_report["canary"], arms_report["in force"]
    # What no policy sees (malformed frames the flood draws) stays with the root in force.
    assert set(canary["verdicts"]) == {"drop/rule"} and canary["rules"]["all"] == canary["packets"]
    assert kept["verdicts"].get("drop/rule", 0) == kept["rules"]["nothing"]  # its GRE rule
    decided = kept["verdicts"].get("pass/default", 0) + kept["rules"]["nothing"] + canary["packets"]
    # status counts both arms.
    counted = sum(c["packets"] for c in server_status(topo)["counters"])
    assert counted >= kept["packets"] + canary["packets"]
    assert kept["packets"] + canary["packets"] >= FLOOD * 0.9, arms_report  # a busy veth may drop a few
    share = canary["packets"] / decided
    print(f"canary share {share:.4f} of {decided} packets a policy decided (asked {SHARE})")
    assert abs(share - SHARE) <= TOLERANCE, share

    back = cli(topo, "canary", "abort")
    assert back.returncode == 0 and "revision 1 in force" in back.stdout
    assert "canary" not in server_status(topo)
    assert {verdict(topo, src, sport) for src, sport in flows} == {"pass"}
    assert cli(topo, "down").returncode == 0


def test_source_prefix_and_promote(lab, tmp_path):
    topo = lab
    keep, new = policies(tmp_path)
    assert cli(topo, "up", "--mode", "native", "--config", str(keep)).returncode == 0
    assert cli(topo, "canary", "start", "--config", str(new), "--src", "198.51.100.0/25").returncode == 0
    for last in (0, 1, 64, 127):
        assert verdict(topo, f"198.51.100.{last}", 40000) == "drop"
    for src in ("198.51.100.128", "198.51.100.255", "203.0.113.9", topo.client_v4):
        assert verdict(topo, src, 40000) == "pass"
    promoted = cli(topo, "canary", "promote")
    assert promoted.returncode == 0, promoted.stderr
    assert verdict(topo, "203.0.113.9", 40000) == "drop"
    history = json.loads(cli(topo, "history", "--json").stdout)
    assert [r["origin"] for r in history] == ["up", "canary (sources in 198.51.100.0/25)", "canary promote"]
    none = cli(topo, "canary", "status")
    assert none.returncode == 2 and "no canary runs" in none.stderr
    both = cli(topo, "canary", "start", "--config", str(new), "--share", "10%", "--src", "192.0.2.0/24")
    assert both.returncode == 2 and "either --share" in both.stderr
    assert cli(topo, "down").returncode == 0


def _canary_process(topo, policy) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "shieldwall", "canary", "start", "--netns",
                             topo.server_ns, "--iface", topo.server_if, "--config", str(policy),
                             "--share", "50%"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _journal(topo) -> Path:
    with enter_netns(topo.server_ns):
        return Records(topo.server_if).dir / "journal"


def test_canary_starts_killed_at_random_instants(lab, tmp_path):
    """Whatever instant a kill lands on, the link runs a whole generation (the one in
    force, or the canary handing the other flows to it), and the next command completes
    the start or undoes it and says which."""
    topo = lab
    keep, new = policies(tmp_path)
    assert cli(topo, "up", "--mode", "native", "--config", str(keep)).returncode == 0
    rng = random.Random(11)
    flows = [(f"198.51.100.{rng.randrange(256)}", rng.randrange(1024, 65536)) for _ in range(40)]
    journal = _journal(topo)
    outcomes = {"completed": 0, "rolled back": 0, "finished": 0, "not begun": 0}
    for attempt in range(10):
        proc = _canary_process(topo, new)
        deadline = time.monotonic() + 60
        while not journal.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.0005)
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        seen = [verdict(topo, src, sport) for src, sport in flows]
        running = "drop" in seen
        if running:
            assert "pass" in seen, "the canary took every flow: the root in force is not reached"
        report = server_status(topo)
        assert report["attached"]
        interrupted = report.get("interrupted")
        status = cli(topo, "canary", "status")  # reads only: finishing is for changes
        after = cli(topo, "canary", "abort")
        if interrupted:
            said = ("completed" if "completed an interrupted canary start" in after.stdout else
                    "rolled back" if "rolled back an interrupted canary start" in after.stderr else None)
            assert said == ("completed" if running else "rolled back"), (after.stdout, after.stderr)
            outcomes[said] += 1
        else:
            outcomes["finished" if running else "not begun"] += 1
        assert after.returncode == (0 if running else 2), (after.stdout, after.stderr, status.stdout)
        assert {verdict(topo, src, sport) for src, sport in flows} == {"pass"}
        with enter_netns(topo.server_ns):
            assert len(Layout.of(topo.server_if).generations()) == 1
            assert Records(topo.server_if).canary() is None
    print(f"canary start kills: {outcomes}")
    assert outcomes["completed"] + outcomes["rolled back"] >= 1, outcomes
    assert cli(topo, "down").returncode == 0
