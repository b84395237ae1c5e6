"""A real policy attached in native mode on the lab: real traffic is passed or dropped
exactly as the policy says."""

from __future__ import annotations

from pathlib import Path

import pytest

from shieldwall.lab.probes import tcp_connect
from shieldwall.lab.servers import start_tcp_server

from ..helpers import counter, server_status, shieldwall

pytestmark = pytest.mark.netns

WEB, OTHER = 8082, 8083
POLICY = f"""\
version: 1
default_action: drop
rules:
  - name: web-from-client
    match: {{src: [192.0.2.2, "2001:db8:0:1::2"], proto: tcp, dport: {WEB}}}
    action: pass
  - name: watch-attacker
    match: {{src: [192.0.2.66]}}
    action: count
"""


def test_policy_decides_real_traffic(lab, tmp_path: Path):
    topo = lab
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    up = shieldwall("up", "--netns", topo.server_ns, "--iface", topo.server_if,
                    "--mode", "native", "--config", str(policy))
    assert up.returncode == 0, up.stderr
    try:
        with start_tcp_server(topo, WEB), start_tcp_server(topo, OTHER):
            assert tcp_connect(topo, WEB)
            assert tcp_connect(topo, WEB, dst=topo.server_v6)
            assert not tcp_connect(topo, OTHER, timeout=0.5)
            assert not tcp_connect(topo, WEB, src=topo.attacker_v4, timeout=0.5)
        report = server_status(topo)
        assert counter(report, "pass", "rule") > 0
        assert counter(report, "drop", "default") > 0
        rules = {r["name"]: r for r in report["rules"]}
        assert rules["web-from-client"]["packets"] > 0
        assert rules["watch-attacker"]["packets"] > 0
        assert rules["web-from-client"]["last_hit_seconds_ago"] < 60

        # A changed policy from a new process: the rule that keeps its name keeps its counts.
        policy.write_text(POLICY.replace("rules:\n", "rules:\n  - name: new-first\n"
                                         "    match: {proto: udp, dport: 9}\n    action: drop\n"))
        reload = shieldwall("reload", "--netns", topo.server_ns, "--iface", topo.server_if,
                            "--config", str(policy))
        assert reload.returncode == 0, reload.stderr
        after = {r["name"]: r for r in server_status(topo)["rules"]}
        assert after["web-from-client"]["packets"] == rules["web-from-client"]["packets"]
        assert after["web-from-client"]["id"] == rules["web-from-client"]["id"] + 1
        assert after["new-first"]["packets"] == 0
        text = shieldwall("status", "--netns", topo.server_ns, "--iface", topo.server_if, "--rules")
        assert "web-from-client" in text.stdout and "(default action)" in text.stdout
    finally:
        assert shieldwall("down", "--netns", topo.server_ns, "--iface", topo.server_if).returncode == 0


def test_an_invalid_policy_changes_nothing_that_runs(lab, tmp_path: Path):
    topo = lab
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(POLICY)
    bad.write_text(POLICY.replace(f"dport: {WEB}", "dport: 70000"))
    assert shieldwall("up", "--netns", topo.server_ns, "--iface", topo.server_if,
                      "--config", str(good)).returncode == 0
    try:
        before = server_status(topo)
        out = shieldwall("reload", "--netns", topo.server_ns, "--iface", topo.server_if,
                         "--config", str(bad))
        assert out.returncode == 2
        assert "bad.yaml: rules[0].match.dport" in out.stderr and "70000" in out.stderr
        after = server_status(topo)
        assert after["prog_id"] == before["prog_id"]
        assert [r["name"] for r in after["rules"]] == [r["name"] for r in before["rules"]]
        with start_tcp_server(topo, WEB):
            assert tcp_connect(topo, WEB)
            assert not tcp_connect(topo, WEB, src=topo.attacker_v4, timeout=0.5)
    finally:
        shieldwall("down", "--netns", topo.server_ns, "--iface", topo.server_if)
