"""Namespace tier: the daemon's control API on a lab. The command line goes through it
when it answers (a command that could not work directly works through it), `set add`
with a TTL drops real traffic and the expiry sweep takes the entry away (a compiled
one through a new generation), status through the API is status read directly, a
change of the policy file goes in by itself, a broken one leaves the revision in force
and is reported, and the socket is root's alone, or its group's."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP
from scapy.utils import rdpcap

import shieldwall as shieldwall_package
from shieldwall.engine.transaction import Layout
from shieldwall.kernel.libbpf import Map
from shieldwall.kernel.netns import enter_netns
from shieldwall.lab.probes import ping
from shieldwall.ops.api import default_path
from shieldwall.ops.client import ApiFailure, Client
from shieldwall.stages.limit import BLOCKS, LimitStage, block_network

from ..helpers import shieldwall, silence_outside
from .test_events import FLOOD_SRC, _flooding
from .test_events import POLICY as EVENTS_POLICY
from .test_limits import _flood, _policy
from .test_live_sets import policy, verdicts

pytestmark = pytest.mark.netns

GROUP = 4242      # a group number nobody has, given to a test user only
NOBODY = 65534
SWEEP = "1"       # seconds between expiry sweeps, for the test


class Daemon:
    """`shieldwall daemon --api` in the lab's server namespace; its log lines as they come."""

    def __init__(self, topo, path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shieldwall", "daemon", "--netns", topo.server_ns,
             "--iface", topo.server_if, "--config", str(path), "--mode", "native", "--api", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "SHIELDWALL_SWEEP_SECONDS": SWEEP})
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for("control API at")

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, seconds: float = 20.0) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, self.proc.stderr.read()
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} in the daemon's log: {self.seen}")

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0 and "Traceback" not in err, err
        return err


def timeless(report):
    """A status report without its one moving part: how long ago each rule was hit."""
    if isinstance(report, str):
        return re.sub(r"\d+(\.\d+)? s ago", "_ s ago", report)
    if isinstance(report, dict):
        return {k: timeless(v) for k, v in report.items() if k != "last_hit_seconds_ago"}
    if isinstance(report, list):
        return [timeless(v) for v in report]
    return report


def cli(topo, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    out = shieldwall(*args, "--netns", topo.server_ns, "--iface", topo.server_if, env=env)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def test_the_cli_through_the_daemons_api(lab, tmp_path):
    topo = lab
    path = policy(tmp_path)
    daemon = Daemon(topo, path)
    try:
        socket_path = default_path(topo.server_if, f"netns-{topo.server_ns}")
        st = os.lstat(socket_path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
        assert f"control API at {socket_path} (0600)" in daemon.seen[-1]

        # Through the API, whatever the command could reach directly: with a bpffs it
        # cannot use (a file), status works only through the daemon.
        nowhere = {"SHIELDWALL_BPFFS": str(path)}
        routed = cli(topo, "status", "--json", env=nowhere)
        assert routed.returncode == 0, routed.stderr
        assert cli(topo, "status", "--json", env={**nowhere, "SHIELDWALL_DIRECT": "1"}).returncode != 0
        # ... and it is status read directly (no traffic in between: the counters too).
        silence_outside(topo)
        routed = cli(topo, "status", "--json", env=nowhere)
        direct = cli(topo, "status", "--json", env={"SHIELDWALL_DIRECT": "1"})
        assert timeless(json.loads(routed.stdout)) == timeless(json.loads(direct.stdout))
        text = cli(topo, "status", "--rules", env=nowhere).stdout
        assert timeless(text) == timeless(cli(topo, "status", "--rules", env={"SHIELDWALL_DIRECT": "1"}).stdout)
        assert "rule" in text and "attached, native mode" in text
        subprocess.run(["ip", "netns", "exec", topo.outside_ns, "nft", "delete", "table", "netdev",
                        "quiet"], check=True)
        revision = json.loads(routed.stdout)[0]["revision"]["revision"]

        # set add with a TTL, through the daemon: real traffic from the address is
        # dropped, then the TTL runs out and the sweep takes it off the records.
        assert ping(topo, src=topo.attacker_v4)
        out = cli(topo, "set", "add", "blocklist", topo.attacker_v4, "--ttl", "3s", "--json", env=nowhere)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["in_place"]
        assert not ping(topo, src=topo.attacker_v4) and ping(topo, src=topo.client_v4)
        listed = json.loads(cli(topo, "set", "list", "--json", env=nowhere).stdout)
        assert [e["prefix"] for e in listed] == [f"{topo.attacker_v4}/32"]
        # A prefix is compiled in: only a new generation takes it away when it expires.
        out = cli(topo, "set", "add", "blocklist", "198.51.100.64/26", "--ttl", "6s", "--json")
        assert out.returncode == 0 and not json.loads(out.stdout)["in_place"], out.stderr
        assert verdicts(topo, ["198.51.100.70"]) == {"198.51.100.70": "drop"}
        swept = daemon.wait_for("live set entries expired", seconds=15)  # the address
        assert swept == f"expiries: 1 live set entries expired on {topo.server_if}, removed in place"
        assert verdicts(topo, ["198.51.100.70"]) == {"198.51.100.70": "drop"}  # not yet
        swept = daemon.wait_for("live set entries expired", seconds=15)  # the prefix
        assert swept.startswith(f"expiries: 1 live set entries expired on {topo.server_if}, "
                                "removed through revision"), swept
        assert verdicts(topo, ["198.51.100.70"]) == {"198.51.100.70": "pass"}
        assert ping(topo, src=topo.attacker_v4)
        live = json.loads(cli(topo, "set", "list", "--json", env={"SHIELDWALL_DIRECT": "1"}).stdout)
        assert live == []
        report = json.loads(cli(topo, "status", "--json").stdout)[0]
        assert "live_entries" not in report, report
        revision = report["revision"]["revision"]  # the sweep's generation

        # The file changes: it goes in by itself.
        path.write_text(path.read_text().replace("198.51.100.0/28", "198.51.100.0/27"))
        daemon.wait_for(f"reloaded {topo.server_if}: revision {revision + 1} in force ({path} changed)")
        assert verdicts(topo, ["198.51.100.20"]) == {"198.51.100.20": "drop"}

        # A broken file: refused, reported by status, the revision in force stays.
        good = path.read_text()
        path.write_text(good + "  - {name: bad, match: {dport: 70000}, action: drop}\n")
        refused = daemon.wait_for("reload refused, the policy in force stays")
        assert "dport" in refused
        answer = cli(topo, "status", "--json")
        assert json.loads(answer.stdout)[0]["revision"]["revision"] == revision + 1
        text = cli(topo, "status").stdout
        assert f"daemon: {path} was refused, revision {revision + 1} stays in force" in text, text
        assert verdicts(topo, ["198.51.100.20"]) == {"198.51.100.20": "drop"}

        # reload through the API: the daemon's answer printed as the command prints it.
        path.write_text(good)
        daemon.wait_for(f"revision {revision + 2} in force")
        out = cli(topo, "reload", "--config", str(path), env=nowhere)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"shieldwall reloaded on {topo.server_if} (native mode, program id ")
        assert f"revision {revision + 3} in force" in out.stdout
        bad = tmp_path / "bad.yaml"
        bad.write_text("version: 1\nrules: [{name: x, match: {dport: 70000}, action: drop}]\n")
        out = cli(topo, "reload", "--config", str(bad), env=nowhere)
        assert out.returncode == 2 and out.stderr.startswith("shieldwall: ") and "dport" in out.stderr
    finally:
        daemon.stop()
    assert not socket_path.exists()  # its own socket goes with it
    assert cli(topo, "down").returncode == 0


def cli_as_user(topo, groups: list[int], *args: str) -> subprocess.CompletedProcess:
    """The command line as an unprivileged user (nobody) in these groups, run by a
    Python that user can read (the system's, with this tree's packages on its path)."""
    which = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    site = Path(shieldwall_package.__file__).parent.parent
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{site}:{sysconfig.get_paths()['purelib']}",
           **{k: v for k, v in os.environ.items() if k.startswith("SHIELDWALL_")}}
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", *which,
                           "/usr/bin/python3", "-m", "shieldwall", *args, "--netns", topo.server_ns,
                           "--iface", topo.server_if], capture_output=True, text=True, timeout=60,
                          env=env, cwd="/")


def test_a_group_may_use_the_api_and_nobody_else(lab, tmp_path):
    topo = lab
    path = policy(tmp_path)
    daemon = Daemon(topo, path, "--api-group", str(GROUP))
    try:
        socket_path = default_path(topo.server_if, f"netns-{topo.server_ns}")
        st = os.lstat(socket_path)
        assert (stat.S_IMODE(st.st_mode), st.st_gid, st.st_uid) == (0o660, GROUP, 0)
        ask = ("import json, socket, sys\n"
               "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
               "s.sendall(b'GET /ping HTTP/1.0\\r\\n\\r\\n')\n"
               "print(json.loads(b''.join(iter(lambda: s.recv(4096), b'')).split(b'\\r\\n\\r\\n')[1])['iface'])\n")

        def as_user(*groups: int) -> subprocess.CompletedProcess:
            which = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
            return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", *which,
                                   "/usr/bin/python3", "-c", ask, str(socket_path)],
                                  capture_output=True, text=True, timeout=30)
        # A second daemon on the interface is refused before it touches anything.
        second = subprocess.run(
            [sys.executable, "-m", "shieldwall", "daemon", "--netns", topo.server_ns, "--iface",
             topo.server_if, "--config", str(path), "--api"], capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and second.stdout == "", second
        assert second.stderr == f"shieldwall: {socket_path}: another daemon answers there (one " \
            "daemon per interface); stop it first\n"
        member = as_user(GROUP)
        assert member.returncode == 0 and member.stdout.strip() == topo.server_if, member.stderr
        stranger = as_user()
        assert stranger.returncode != 0 and "PermissionError" in stranger.stderr

        # The command line of a group member who is not root: through the daemon.
        status = cli_as_user(topo, [GROUP], "status", "--json")
        assert status.returncode == 0 and json.loads(status.stdout)[0]["attached"], status.stderr
        out = cli_as_user(topo, [GROUP], "set", "add", "blocklist", topo.attacker_v4, "--ttl", "1h")
        assert out.returncode == 0 and "1 added" in out.stdout, out.stderr
        assert not ping(topo, src=topo.attacker_v4)
        shared = Path(tempfile.mkdtemp())  # a policy file the member can read
        try:
            os.chmod(shared, 0o755)
            (shared / "p.yaml").write_text(path.read_text().replace("198.51.100.0/28", "198.51.100.0/27"))
            out = cli_as_user(topo, [GROUP], "reload", "--config", str(shared / "p.yaml"))
            assert out.returncode == 0 and "in force" in out.stdout, out.stderr
        finally:
            shutil.rmtree(shared)
        assert verdicts(topo, ["198.51.100.20"]) == {"198.51.100.20": "drop"}
        # Without the group, the command works directly, which needs root.
        out = cli_as_user(topo, [], "status", "--json")
        assert out.returncode == 2 and "needs root" in out.stderr and "Traceback" not in out.stderr
    finally:
        daemon.stop()
    daemon = Daemon(topo, path)  # without --api-group: root's again
    try:
        assert stat.S_IMODE(os.lstat(socket_path).st_mode) == 0o600
        assert as_user(GROUP).returncode != 0
    finally:
        daemon.stop()
    assert cli(topo, "down").returncode == 0


def blocks_table(topo) -> list[str]:
    """Every entry of the blocks table, run out or not (what a sweep is for)."""
    with enter_netns(topo.server_ns):
        layout = Layout.of(topo.server_if)
        k, v = LimitStage.state_maps[BLOCKS]
        table = Map.open_pinned(layout.state / BLOCKS, k, v)
        try:
            return [str(block_network(key)) for key, _ in table.lookup_batch()]
        finally:
            table.close()


def test_blocks_through_the_api_and_their_sweep(lab, tmp_path):
    topo = lab
    path = _policy(tmp_path, block="3s")
    daemon = Daemon(topo, path)
    nowhere = {"SHIELDWALL_BPFFS": str(path)}  # only the daemon can answer
    try:
        _flood(topo, topo.attacker_v4, 100_000)
        listed = json.loads(cli(topo, "blocks", "list", "--json", env=nowhere).stdout)
        assert [b["prefix"] for b in listed] == [f"{topo.attacker_v4}/32"], listed
        assert listed[0]["limit"] == "udp-per-source"
        out = cli(topo, "blocks", "del", topo.attacker_v4, env=nowhere)
        assert out.returncode == 0 and f"1 lifted ({topo.attacker_v4}/32)" in out.stdout, out
        assert blocks_table(topo) == []
        out = cli(topo, "blocks", "del", topo.attacker_v4, env=nowhere)
        assert out.returncode == 2 and "is not blocked" in out.stdout

        # Blocked again; it runs out in the data plane, and the sweep empties its slot.
        _flood(topo, topo.attacker_v4, 100_000)
        assert blocks_table(topo) == [f"{topo.attacker_v4}/32"]
        swept = daemon.wait_for("expired blocks removed", seconds=15)
        assert swept == f"expiries: 1 expired blocks removed on {topo.server_if} ({topo.attacker_v4}/32)"
        assert blocks_table(topo) == []
    finally:
        daemon.stop()
    assert cli(topo, "down").returncode == 0


def test_a_canary_through_the_api(lab, tmp_path):
    topo = lab
    path = policy(tmp_path)
    daemon = Daemon(topo, path)
    nowhere = {"SHIELDWALL_BPFFS": str(path)}
    try:
        new = tmp_path / "new.yaml"
        new.write_text(path.read_text().replace("198.51.100.0/28", "198.51.100.0/27"))
        out = cli(topo, "canary", "start", "--config", str(new), "--src", "198.51.100.16/28", env=nowhere)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"canary on {topo.server_if}: revision ")
        assert "runs for sources in 198.51.100.16/28" in out.stdout
        assert verdicts(topo, ["198.51.100.20", "198.51.100.40"]) == {
            "198.51.100.20": "drop", "198.51.100.40": "pass"}
        report = json.loads(cli(topo, "canary", "status", "--json", env=nowhere).stdout)
        assert report["arm"] == "sources in 198.51.100.16/28" and set(report["arms"]) == {"in force", "canary"}
        # A reload while the canary runs is refused, by the daemon, as it is directly.
        out = cli(topo, "reload", "--config", str(path), env=nowhere)
        assert out.returncode == 2 and "a canary runs" in out.stderr, out.stderr
        out = cli(topo, "canary", "abort", env=nowhere)
        assert out.returncode == 0 and "aborted: revision" in out.stdout, out.stderr
        out = cli(topo, "canary", "status", env=nowhere)
        assert out.returncode == 2 and "no canary runs" in out.stderr

        # A policy sent as its text (what a caller who is not root can send).
        api = Client(default_path(topo.server_if, f"netns-{topo.server_ns}"))
        answer = api.call("POST", "/reload", {"policy": new.read_text()})
        assert verdicts(topo, ["198.51.100.20"]) == {"198.51.100.20": "drop"}
        report = json.loads(cli(topo, "status", "--json").stdout)[0]["revision"]
        assert (report["revision"], report["source"].endswith("/api-policy.yaml")) == (answer["revision"], True)
        with pytest.raises(ApiFailure) as refused:
            api.call("POST", "/reload", {"policy": "version: 1\nrules: [{name: x, match: {dport: 70000}, action: drop}]\n"})
        assert "dport" in str(refused.value)
        assert json.loads(cli(topo, "status", "--json").stdout)[0]["revision"]["revision"] == answer["revision"]
    finally:
        daemon.stop()
    assert cli(topo, "down").returncode == 0


def test_events_come_from_the_daemon_when_it_runs(lab, tmp_path):
    """The ring has one consumer: with a daemon, `events` and `capture` read its hub
    through the API (with a bpffs they cannot use, they could not read the ring)."""
    topo = lab
    path = tmp_path / "events.yaml"
    path.write_text(EVENTS_POLICY)
    daemon = Daemon(topo, path)
    nowhere = {"SHIELDWALL_BPFFS": str(path)}
    try:
        with _flooding(topo):
            out = cli(topo, "events", "--follow", "--json", "--rule", "spoofed", "--count", "5",
                      "--seconds", "20", env=nowhere)
        assert out.returncode == 0, out.stderr
        events = [json.loads(line) for line in out.stdout.splitlines()]
        assert len(events) == 5 and all(
            (e["action"], e["rule_name"], e["src"]) == ("drop", "spoofed", FLOOD_SRC) for e in events), events
        recent = cli(topo, "events", "--json", "--count", "3", env=nowhere)  # the daemon's window
        assert [json.loads(line)["src"] for line in recent.stdout.splitlines()] == [FLOOD_SRC] * 3
        out = cli(topo, "events", "--json", "--reason", "fastpath_deny", env=nowhere)
        assert out.returncode == 0 and out.stdout == ""
        pcap = tmp_path / "drops.pcap"
        with _flooding(topo):
            out = cli(topo, "capture", "--pcap", str(pcap), "--count", "4", "--seconds", "20", env=nowhere)
        assert out.returncode == 0 and out.stdout.startswith(f"wrote 4 sampled frames to {pcap}"), out
        frames = rdpcap(str(pcap))
        assert len(frames) == 4 and all(f[IP].src == FLOOD_SRC for f in frames)
    finally:
        daemon.stop()
    assert cli(topo, "down").returncode == 0


def test_a_set_file_the_policy_names_is_watched_too(lab, tmp_path):
    topo = lab
    (tmp_path / "bad-sources.txt").write_text("198.51.100.0/28\n")
    path = tmp_path / "files.yaml"
    path.write_text("version: 1\ndefault_action: pass\n"
                    "sets:\n  bad: {type: prefix, files: [bad-sources.txt]}\n"
                    "rules:\n  - {name: bad, match: {src: '@bad'}, action: drop}\n")
    daemon = Daemon(topo, path)
    try:
        revision = json.loads(cli(topo, "status", "--json").stdout)[0]["revision"]["revision"]
        assert verdicts(topo, ["198.51.100.20"]) == {"198.51.100.20": "pass"}
        (tmp_path / "bad-sources.txt").write_text("198.51.100.0/27\n")
        daemon.wait_for(f"reloaded {topo.server_if}: revision {revision + 1} in force")
        assert verdicts(topo, ["198.51.100.20"]) == {"198.51.100.20": "drop"}
        status = Client(default_path(topo.server_if, f"netns-{topo.server_ns}")).call("GET", "/status")
        watch = status["daemon"]["watch"]
        assert watch["files"] == [str(tmp_path / "bad-sources.txt")] and watch["state"] == "in force"
        assert watch["revision"] == revision + 1
        assert status["daemon"]["events"]["reading"] and status["daemon"]["expiries"]["at"]
    finally:
        daemon.stop()
    assert cli(topo, "down").returncode == 0
