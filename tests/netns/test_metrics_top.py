"""Namespace tier: the metrics of issue 11 and `shieldwall top` on a lab with real
traffic. A UDP flood from one source goes over its limit and gets blocked while TCP to
the web rule flows: the scrape labels every verdict with its stage, a rule's last hit
moves, the block and the limit's tables show in the blocks count and the map fill,
changes show as update durations and failures, the doctor's verdict is there, and
`top --once` names the blocked flood as the top reason and web as the top rule."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from shieldwall.lab.probes import tcp_connect
from shieldwall.lab.servers import start_tcp_server
from shieldwall.lab.trafgen import TrafficGenerator

from ..helpers import server_status, shieldwall, silence_outside
from .test_metrics import _same_as_status

pytestmark = pytest.mark.netns

WEB = 8092
POLICY = f"""\
version: 1
default_action: drop
limits:
  udp-per-source: {{per: source, pps: 1000, burst: 100, block: 60s}}
rules:
  - name: web
    match: {{proto: tcp, dport: {WEB}}}
    action: pass
  - name: udp
    match: {{proto: udp}}
    action: {{limit: udp-per-source}}
"""


def _samples(text: str) -> dict:
    """(name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def _find(samples: dict, name: str, **labels: str) -> list[float]:
    return [v for (n, ls), v in samples.items()
            if n == name and all(dict(ls).get(k) == want for k, want in labels.items())]


def _flood(topo, seconds: float, rate: int) -> None:
    """Four UDP frames from the attacker to each TCP SYN from the client to the web port,
    `rate` frames a second."""
    udp = bytes(Ether(src=topo.outside_mac, dst=topo.server_mac) / IP(src=topo.attacker_v4, dst=topo.server_v4)
                / UDP(sport=4000, dport=53))
    syn = bytes(Ether(src=topo.outside_mac, dst=topo.server_mac) / IP(src=topo.client_v4, dst=topo.server_v4)
                / TCP(sport=40000, dport=WEB, flags="S"))
    with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
        gen.replay([udp, udp, udp, udp, syn])
        gen.send_for(seconds, rate)


def test_new_metrics_and_top_under_a_flood(lab, tmp_path):
    topo = lab
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    where = ("--netns", topo.server_ns, "--iface", topo.server_if)

    def scrape() -> str:
        out = shieldwall("metrics", *where)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        return out.stdout

    assert shieldwall("up", "--mode", "native", *where, "--config", str(policy)).returncode == 0
    try:
        with start_tcp_server(topo, WEB):
            assert tcp_connect(topo, WEB)
            first = _find(_samples(scrape()), "shieldwall_rule_last_hit_timestamp_seconds", rule="web")
            assert len(first) == 1 and abs(first[0] - time.time()) < 30, first
            time.sleep(0.5)  # the data plane's clock ticks every 0.1 s
            assert tcp_connect(topo, WEB)
            second = _find(_samples(scrape()), "shieldwall_rule_last_hit_timestamp_seconds", rule="web")
            assert second[0] >= first[0] + 0.3, (first, second)

        flood = threading.Thread(target=_flood, args=(topo, 5.0, 25_000))
        flood.start()
        try:
            time.sleep(1.5)  # the source went over its limit and is blocked by now
            out = shieldwall("top", "--once", *where)
        finally:
            flood.join()
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        lines = out.stdout.splitlines()
        verdicts = lines.index("verdicts (pps, bps):")
        assert lines[verdicts + 1].split()[:3] == ["drop", "blocked", "limit"], out.stdout
        rules = lines.index("top rules:")
        assert lines[rules + 1].split()[0] == "web", out.stdout
        assert "blocks in force: 1" in out.stdout and f"{topo.attacker_v4}/32 for" in out.stdout, out.stdout
        # The top dropped source, from the sampled drop events the ring carried.
        sources = lines.index("top dropped sources (sampled, from the ring):")
        top_source = lines[sources + 1].split()
        assert top_source[0] == topo.attacker_v4 and top_source[-1] == "blocked", out.stdout
        assert all(line.split()[0] != topo.client_v4 for line in lines[sources + 1:lines.index("limits and blocks:")])
        assert "new block" in out.stdout or "blocked sources still sending" in out.stdout, out.stdout

        # Changes: a reload that goes in, a rollback to a revision that does not exist.
        assert shieldwall("reload", *where, "--config", str(policy)).returncode == 0
        assert shieldwall("rollback", *where, "--to", "99").returncode != 0

        report = server_status(topo)
        got = _samples(scrape())
        # Every verdict carries its stage.
        assert _find(got, "shieldwall_packets_total", action="drop", reason="blocked", stage="limit")[0] > 10_000
        assert _find(got, "shieldwall_packets_total", action="drop", reason="rate_limited", stage="limit")[0] > 0
        assert _find(got, "shieldwall_packets_total", action="pass", reason="rule", stage="policy")[0] > 0
        stages = {dict(ls)["stage"] for (n, ls) in got if n == "shieldwall_packets_total"}
        assert "unknown" not in stages, stages
        # Blocks and the limit: one source prefix blocked, as status says.
        assert _find(got, "shieldwall_blocks_active") == [1.0]
        assert report["stages"]["limit"]["blocks"] == 1
        assert _find(got, "shieldwall_limit_blocks_total", limit="udp-per-source")[0] >= 1
        assert _find(got, "shieldwall_limit_packets_total", limit="udp-per-source", outcome="limited")[0] > 0
        # Fill levels: the block and the buckets, against the maps' capacity, as status reads them.
        assert _find(got, "shieldwall_map_entries", map="sw_lim_blocks") == [1.0]
        assert _find(got, "shieldwall_map_max_entries", map="sw_lim_blocks") == [65536.0]
        assert _find(got, "shieldwall_map_entries", map="sw_lim_buckets")[0] >= 1
        for name, m in report["maps"].items():
            assert _find(got, "shieldwall_map_max_entries", map=name) == [m["max_entries"]], name
        # Update durations and failures, from the records every command adds to.
        assert _find(got, "shieldwall_update_duration_seconds_count", op="up") == [1.0]
        assert _find(got, "shieldwall_update_duration_seconds_count", op="reload") == [1.0]
        assert 0 < _find(got, "shieldwall_update_duration_seconds_sum", op="reload")[0] < 30
        assert _find(got, "shieldwall_update_failures_total", op="reload") == [0.0]
        assert _find(got, "shieldwall_update_failures_total", op="rollback") == [1.0]
        assert _find(got, "shieldwall_update_last_success", op="rollback") == [0.0]
        assert report["updates"]["rollback"]["last"]["error"].startswith("no revision 99")
        # The mode and the doctor's verdict.
        assert _find(got, "shieldwall_attached", mode="native") == [1.0]
        doctor = [dict(ls) for (n, ls), v in got.items() if n == "shieldwall_doctor_info" and v == 1]
        assert len(doctor) == 1 and doctor[0]["mode"] == "native" and doctor[0]["best_mode"] in (
            "native", "generic", "tc", "nft"), doctor

        # With the flood over, a scrape still equals status to the packet.
        _same_as_status(topo, scrape)
    finally:
        assert shieldwall("down", *where).returncode == 0


def test_canary_arms_are_metrics(lab, tmp_path):
    """Each arm of a running canary counts what it decided; the scrape says the same as
    `canary status`, and the canary's start shows as a change."""
    topo = lab
    keep, new = tmp_path / "keep.yaml", tmp_path / "new.yaml"
    keep.write_text("version: 1\ndefault_action: pass\n")
    new.write_text("version: 1\ndefault_action: pass\nrules:\n"
                   "  - {name: all, match: {proto: udp}, action: drop}\n")
    where = ("--netns", topo.server_ns, "--iface", topo.server_if)
    assert shieldwall("up", "--mode", "native", *where, "--config", str(keep)).returncode == 0
    try:
        silence_outside(topo)
        start = shieldwall("canary", "start", *where, "--config", str(new), "--src", f"{topo.client_v4}/32")
        assert start.returncode == 0, start.stderr
        frames = [bytes(Ether(src=topo.outside_mac, dst=topo.server_mac) / IP(src=src, dst=topo.server_v4)
                        / UDP(sport=4000, dport=9999)) for src in (topo.client_v4, topo.attacker_v4)]
        with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
            gen.replay(frames)
            gen.send(None, 20_000)
        status = json.loads(shieldwall("canary", "status", *where, "--json").stdout)
        got = _samples(shieldwall("metrics", *where).stdout)
        assert _find(got, "shieldwall_canary_active", arm=f"sources in {topo.client_v4}/32") == [1.0]
        for arm, label in (("canary", "canary"), ("in force", "in_force")):
            a = status["arms"][arm]
            assert a["packets"] >= 5_000, status
            assert _find(got, "shieldwall_canary_packets_total", arm=label,
                         revision=str(a["revision"])) == [a["packets"]], (arm, status)
        assert _find(got, "shieldwall_update_duration_seconds_count", op="canary_start") == [1.0]
        assert shieldwall("canary", "abort", *where).returncode == 0
        got = _samples(shieldwall("metrics", *where).stdout)
        assert _find(got, "shieldwall_canary_active") == []
        assert _find(got, "shieldwall_update_last_success", op="canary_abort") == [1.0]
    finally:
        assert shieldwall("down", *where).returncode == 0


def _controlling_tty() -> None:
    """In the child: a session of its own whose terminal is the pty (stdin), so that
    Ctrl-C typed there is a SIGINT, as in a real terminal."""
    import fcntl
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.parametrize("ending", ["q", "ctrl-c", "sigterm"])
def test_top_full_screen_ends_cleanly(lab, tmp_path, ending):
    """On a terminal (a pty here): the full-screen view draws, and q, Ctrl-C or SIGTERM
    end it with status 0, the screen and the terminal's modes given back, no traceback."""
    topo = lab
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    where = ("--netns", topo.server_ns, "--iface", topo.server_if)
    assert shieldwall("up", "--mode", "native", *where, "--config", str(policy)).returncode == 0
    master, slave = pty.openpty()
    try:
        modes = termios.tcgetattr(slave)
        proc = subprocess.Popen([sys.executable, "-m", "shieldwall", "top", *where],
                                stdin=slave, stdout=slave, stderr=slave, preexec_fn=_controlling_tty,
                                env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "48"})
        seen = b""

        def read_for(seconds: float) -> None:
            nonlocal seen
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.1)
                if ready:
                    try:
                        seen += os.read(master, 65536)
                    except OSError:
                        return
        read_for(2.5)
        assert b"top rules" in seen and b"verdicts" in seen, seen[-2000:]
        if ending == "q":
            os.write(master, b"q")
        elif ending == "ctrl-c":
            os.write(master, b"\x03")  # the terminal turns it into SIGINT
        else:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while proc.poll() is None and time.monotonic() < deadline:
            read_for(0.2)
        assert proc.poll() == 0, (proc.poll(), seen[-2000:])
        read_for(0.3)
        assert b"\x1b[?1049h" in seen and seen.rfind(b"\x1b[?1049l") > seen.rfind(b"\x1b[?1049h")
        assert b"Traceback" not in seen
        assert termios.tcgetattr(slave) == modes
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)
        assert shieldwall("down", *where).returncode == 0


def test_top_reads_drop_events_from_the_daemon(lab, tmp_path):
    """With a daemon serving the interface, the ring is the daemon's: top takes the
    sampled drops from the daemon's /events stream, and the flood's source tops them."""
    from .test_api import Daemon
    from .test_events import FLOOD_SRC, _flooding
    from .test_events import POLICY as EVENTS_POLICY

    topo = lab
    path = tmp_path / "policy.yaml"
    path.write_text(EVENTS_POLICY)
    daemon = Daemon(topo, path)
    try:
        with _flooding(topo):
            time.sleep(0.5)
            out = shieldwall("top", "--once", "--netns", topo.server_ns, "--iface", topo.server_if)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        lines = out.stdout.splitlines()
        sources = lines.index("top dropped sources (sampled, from the daemon):")
        assert lines[sources + 1].split()[0] == FLOOD_SRC, out.stdout
        assert lines[sources + 1].split()[-1] == "rule", out.stdout
        assert lines[lines.index("top rules:") + 1].split()[0] == "spoofed", out.stdout
        assert "no drop events" not in out.stdout
    finally:
        daemon.stop()
        assert shieldwall("down", "--netns", topo.server_ns, "--iface", topo.server_if).returncode == 0
