"""Namespace tier: the metrics a scraper gets are what `status` reports, to the packet,
printed once and served over HTTP (curled from inside the lab's server namespace), in
native and in nft mode."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shieldwall.kernel.netns import enter_netns
from shieldwall.lab.probes import tcp_connect
from shieldwall.lab.servers import start_tcp_server

from ..helpers import attached, server_status, shieldwall

pytestmark = pytest.mark.netns

WEB = 8091
POLICY = f"""\
version: 1
default_action: drop
rules:
  - name: watch-attacker
    match: {{src: [192.0.2.66]}}
    action: monitor
  - name: web
    match: {{proto: tcp, dport: {WEB}}}
    action: pass
"""


def _scraped(text: str) -> tuple[dict, dict]:
    """(action, reason) -> packets, and rule -> packets, from an exposition."""
    verdicts, rules = {}, {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "shieldwall_packets_total":
                verdicts[(s.labels["action"], s.labels["reason"])] = int(s.value)
            elif s.name == "shieldwall_rule_packets_total":
                rules[s.labels["rule"]] = int(s.value)
    return verdicts, rules


def _reported(report: dict) -> tuple[dict, dict]:
    verdicts = {(c["action"], c["reason"]): c["packets"] for c in report["counters"]}
    rules = {r["name"] or "(default)": r["packets"] for r in report.get("rules", ())}
    return verdicts, rules


def _same_as_status(topo, scrape) -> None:
    """A scrape between two equal status reads equals them (the lab's own chatter may
    move a counter between reads: then it is tried again)."""
    for _ in range(5):
        before = server_status(topo)
        text = scrape()
        if _reported(server_status(topo)) == _reported(before):
            assert _scraped(text) == _reported(before), text
            return
    pytest.fail("the counters never held still for a scrape")


def _free_port(netns: str) -> int:
    with enter_netns(netns):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def _get(netns: str, url: str) -> str:
    with enter_netns(netns):  # the socket is made inside the server's namespace
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.read().decode()


@pytest.mark.parametrize("mode", ["native", "nft"])
def test_metrics_match_status_printed_and_served(lab, tmp_path, mode):
    topo = lab
    with attached(topo, POLICY, mode, tmp_path) as where:
        with start_tcp_server(topo, WEB):
            assert tcp_connect(topo, WEB)
            assert not tcp_connect(topo, WEB + 1, timeout=0.3)
            assert tcp_connect(topo, WEB, src=topo.attacker_v4)

        def printed() -> str:
            out = shieldwall("metrics", *where)
            assert out.returncode == 0, out.stderr
            return out.stdout
        _same_as_status(topo, printed)
        verdicts, rules = _scraped(printed())
        assert rules["web"] > 0 and rules["watch-attacker"] > 0 and rules["(default)"] > 0
        assert 'shieldwall_attached{iface="%s",mode="%s"} 1.0' % (topo.server_if, mode) in printed()

        port = _free_port(topo.server_ns)
        server = subprocess.Popen([sys.executable, "-m", "shieldwall", "metrics", *where,
                                   "--listen", f"127.0.0.1:{port}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            deadline = time.monotonic() + 10
            while True:
                try:
                    _get(topo.server_ns, url)
                    break
                except OSError:
                    assert server.poll() is None, server.communicate()
                    assert time.monotonic() < deadline, "the metrics server never answered"
                    time.sleep(0.1)
            _same_as_status(topo, lambda: _get(topo.server_ns, url))
        finally:
            server.send_signal(signal.SIGTERM)
            out, err = server.communicate(timeout=10)
        assert server.returncode == 0, err
        assert "Traceback" not in err


def test_a_bad_listen_address_is_named(lab):
    topo = lab
    out = shieldwall("metrics", "--netns", topo.server_ns, "--listen", "localhost")
    assert out.returncode == 2 and "--listen: 'localhost' is not ADDR:PORT" in out.stderr, out.stderr
