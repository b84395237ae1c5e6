"""Namespace tier: changes as transactions. Revisions, rollback and dry runs; reloads
killed at random instants always leave one whole policy in force, which `status` names
and the next command finishes or undoes; counters lose nothing across reloads."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import signal
import subprocess
import sys
import threading
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
from shieldwall.lab.trafgen import TrafficGenerator, xdp_rx_packets

from ..helpers import server_status, shieldwall, silence_outside

pytestmark = pytest.mark.netns

XDP_DROP, XDP_PASS = 1, 2

# Sources whose verdicts tell the two policies apart, and two they agree on.
PROBES = {
    "198.51.100.7": ("pass", "drop"),   # A: an allow exception inside its denied /24
    "203.0.113.5": ("drop", "pass"),    # A: a rule drops it; B: its set allows it
    "192.0.2.9": ("pass", "pass"),
    "198.51.100.9": ("drop", "drop"),
}


def policy_a(directory: Path, bulk: int = 0) -> Path:
    _bulk_set(directory / "bulk-a.txt", bulk, seed=1)
    path = directory / "a.yaml"
    path.write_text(f"""\
version: 1
default_action: pass
sets:
  bulk: {{type: prefix, files: [bulk-a.txt]}}
fastpath:
  allow: [198.51.100.7]
  deny: [198.51.100.0/24]
rules:
  - name: marked
    match: {{src: [203.0.113.77]}}
    action: drop
  - name: drop-half
    match: {{src: [203.0.113.0/25]}}
    action: drop
  - name: bulk
    match: {{src: "@bulk", proto: udp}}
    action: drop
{_filler_rules(bulk)}""")
    return path


def policy_b(directory: Path, bulk: int = 0) -> Path:
    _bulk_set(directory / "bulk-b.txt", bulk, seed=2)
    path = directory / "b.yaml"
    path.write_text(f"""\
version: 1
default_action: drop
sets:
  friends: {{type: prefix, entries: [203.0.113.0/24, 192.0.2.0/24]}}
  bulk: {{type: prefix, files: [bulk-b.txt]}}
pipeline:
  stages: [policy]
rules:
  - name: marked
    match: {{src: [203.0.113.77]}}
    action: drop
  - name: drop-range
    match: {{src: [198.51.100.0/24]}}
    action: drop
  - name: bulk
    match: {{src: "@bulk", proto: udp}}
    action: drop
  - name: friends
    match: {{src: "@friends"}}
    action: pass
{_filler_rules(bulk)}""")
    return path


def _bulk_set(path: Path, count: int, seed: int) -> None:
    rng = random.Random(seed)
    base = int(ipaddress.IPv6Address("2001:db8::"))
    lines = {str(ipaddress.IPv6Address(base | rng.getrandbits(96))) for _ in range(count)}
    path.write_text("\n".join(sorted(lines)) + "\n" if lines else "# empty\n")


def _filler_rules(count: int) -> str:
    """Rules no probe matches (UDP to ports of their own): they make a load take long
    enough for a kill to land in every step of it."""
    return "".join(f"  - name: filler-{i}\n    match: {{proto: udp, dport: {1000 + i}, "
                   f"src: [\"2001:db8:{i:x}::/48\"]}}\n    action: drop\n"
                   for i in range(min(count // 50, 400)))


def frame(src: str, topo) -> bytes:
    return bytes(Ether(src=topo.outside_mac, dst=topo.server_mac)
                 / IP(src=src, dst=topo.server_v4) / TCP(sport=40000, dport=80, flags="S"))


def live_verdicts(topo) -> tuple[int | None, dict[str, str]]:
    """The generation the link runs and its verdicts on the probes, from the running
    programs themselves (a test run of the pinned root, with its maps)."""
    with enter_netns(topo.server_ns):
        layout = Layout.of(topo.server_if)
        live = layout.live_generation()
        assert live is not None, "the link runs none of the pinned generations"
        fd = libbpf.obj_get(layout.gen(live) / "prog_root")
        try:
            out = {src: {XDP_DROP: "drop", XDP_PASS: "pass"}[prog_test_run(fd, frame(src, topo)).retval]
                   for src in PROBES}
        finally:
            os.close(fd)
    return live, out


def expected(which: int) -> dict[str, str]:
    return {src: verdicts[which] for src, verdicts in PROBES.items()}


def cli(topo, *args: str) -> subprocess.CompletedProcess:
    out = shieldwall(*args, "--netns", topo.server_ns, "--iface", topo.server_if)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def test_revisions_rollback_and_dry_run(lab, tmp_path):
    topo = lab
    a, b = policy_a(tmp_path), policy_b(tmp_path)
    assert cli(topo, "up", "--mode", "native", "--config", str(a)).returncode == 0
    assert live_verdicts(topo)[1] == expected(0)

    dry = cli(topo, "reload", "--dry-run", "--config", str(b))
    assert dry.returncode == 0, dry.stderr
    assert "chain: (fastpath, policy) -> (policy)" in dry.stdout
    assert "policy.default_action: pass -> drop" in dry.stdout
    assert "fastpath.allow: +0 -1" in dry.stdout and "rules added: drop-range, friends" in dry.stdout
    assert live_verdicts(topo)[1] == expected(0), "a dry run changed what runs"

    assert cli(topo, "reload", "--config", str(b)).returncode == 0
    assert live_verdicts(topo)[1] == expected(1)
    report = server_status(topo)
    assert report["revision"]["revision"] == 2 and report["revision"]["source"] == str(b.resolve())
    assert "interrupted" not in report

    # The files change on disk: a rollback applies what was stored, not what is there now.
    a.write_text("not: [a policy")
    back = cli(topo, "rollback")
    assert back.returncode == 0, back.stderr
    assert live_verdicts(topo)[1] == expected(0)
    history = json.loads(cli(topo, "history", "--json").stdout)
    assert [(r["revision"], r["origin"], r["current"]) for r in history] == [
        (1, "up", False), (2, "reload", False), (3, "rollback to 1", True)]
    assert history[0]["sha256"] == history[2]["sha256"]

    assert cli(topo, "rollback", "--to", "2").returncode == 0
    assert live_verdicts(topo)[1] == expected(1)

    # After down, the last revision comes back without any file.
    assert cli(topo, "down").returncode == 0
    again = cli(topo, "up", "--mode", "native", "--revision", "last")
    assert again.returncode == 0, again.stderr
    assert live_verdicts(topo)[1] == expected(1)
    missing = cli(topo, "rollback", "--to", "99")
    assert missing.returncode == 2 and "no revision 99" in missing.stderr
    assert cli(topo, "down").returncode == 0


def _reload_process(topo, policy: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "shieldwall", "reload", "--netns", topo.server_ns,
                             "--iface", topo.server_if, "--config", str(policy)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _journal_appears(topo, proc: subprocess.Popen, timeout: float = 60) -> float | None:
    """When the reload's journal entry appeared (its change began), None if it ended first."""
    with enter_netns(topo.server_ns):
        journal = Records(topo.server_if).dir / "journal"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists():
            return time.monotonic()
        time.sleep(0.0005)
    return None


def test_reloads_killed_at_random_instants_leave_one_whole_policy(lab, tmp_path):
    topo = lab
    policies = [policy_a(tmp_path, bulk=5_000), policy_b(tmp_path, bulk=5_000)]
    assert cli(topo, "up", "--mode", "native", "--config", str(policies[0])).returncode == 0
    timed = _reload_process(topo, policies[1])
    began = _journal_appears(topo, timed)
    assert timed.wait(timeout=120) == 0, timed.stderr.read()
    assert began is not None
    change = time.monotonic() - began  # from the journal entry to the end: the window
    in_force = 1
    rng = random.Random(7)
    outcomes = {"finished": 0, "completed": 0, "rolled back": 0, "clean": 0}
    for attempt in range(20):
        target = 1 - in_force
        proc = _reload_process(topo, policies[target])
        # Kill inside the change: at a random instant of its window.
        if _journal_appears(topo, proc) is not None:
            time.sleep(rng.uniform(0.0, change))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

        live, verdicts = live_verdicts(topo)
        whole = [i for i in (0, 1) if verdicts == expected(i)]
        assert whole, f"a mix of the two policies is in force: {verdicts}"
        report = server_status(topo)
        assert report["attached"] and report["revision"]["revision"] == live
        interrupted = report.get("interrupted")
        if interrupted:
            assert interrupted["in_force"] == live
        # The next command finishes or undoes the change, and says which.
        nxt = cli(topo, "reload", "--config", str(policies[whole[0]]))
        assert nxt.returncode == 0, nxt.stderr
        if interrupted:
            said = "completed" if "completed an interrupted" in nxt.stdout else (
                "rolled back" if "rolled back an interrupted" in nxt.stdout else None)
            assert said, f"the next command did not say what it did: {nxt.stdout}"
            assert (said == "completed") == (interrupted["in_force"] == interrupted["to"])
            outcomes[said] += 1
        else:
            outcomes["finished" if whole[0] == target else "clean"] += 1
        assert "interrupted" not in server_status(topo)
        assert live_verdicts(topo)[1] == expected(whole[0])
        with enter_netns(topo.server_ns):
            assert len(Layout.of(topo.server_if).generations()) == 1
        in_force = whole[0]
    print(f"kills: {outcomes}, window {change * 1000:.0f} ms")
    # Both ends of the window were hit: changes undone and changes finished.
    assert outcomes["completed"] >= 1 and outcomes["rolled back"] >= 1, outcomes
    assert cli(topo, "down").returncode == 0


def test_reloads_under_traffic_lose_no_count(lab, tmp_path):
    """The verdict counters are state every generation shares; a rule's counter lives in
    its generation and moves, by name, to the next once the old one stopped counting."""
    topo = lab
    policies = policy_a(tmp_path), policy_b(tmp_path)
    assert cli(topo, "up", "--mode", "native", "--config", str(policies[0])).returncode == 0
    template = frame("203.0.113.77", topo)  # dropped by rule "marked" in both policies
    silence_outside(topo)  # every frame the server end sees from now on is the flood's
    # What came before (the outside's own frames while the lab settled) is left out of
    # both sides: the kernel's count and the counters, read with nothing arriving.
    before = xdp_rx_packets(topo.server_ns, topo.server_if)
    counted_before = sum(c["packets"] for c in server_status(topo)["counters"])
    sent: list[int] = []

    def flood() -> None:
        with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
            for _ in range(16):
                sent.append(gen.send(template, 1_000_000).sent)

    sender = threading.Thread(target=flood)
    sender.start()
    reloads = 0
    while sender.is_alive() and reloads < 40:
        assert cli(topo, "reload", "--config", str(policies[reloads % 2 == 0])).returncode == 0
        reloads += 1
    sender.join()
    seen = xdp_rx_packets(topo.server_ns, topo.server_if) - before
    report = server_status(topo)
    assert reloads >= 5, "the flood ended before the reloads could overlap it"
    # Every frame the programs ran on is counted once, by its verdict and by its rule
    # (a veth under load may drop frames before XDP: those no program saw).
    assert sum(c["packets"] for c in report["counters"]) - counted_before == seen
    rules = {r["name"]: r["packets"] for r in report["rules"]}
    assert rules["marked"] == seen and seen <= sum(sent), (rules["marked"], sent, seen)
    assert cli(topo, "down").returncode == 0
