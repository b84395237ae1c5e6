"""Namespace tier: rate limits and blocks on the lab with real traffic. A flood from
one source passes what its bucket allows (pps x seconds + burst, within 10%); with
`block`, the source is then dropped before the rules, even its real TCP connections,
until `shieldwall blocks del` lifts the block or it expires; a reload keeps buckets and
blocks."""

from __future__ import annotations

import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from shieldwall.lab.probes import tcp_connect
from shieldwall.lab.servers import start_tcp_server
from shieldwall.lab.trafgen import TrafficGenerator

from ..helpers import counter, server_status, shieldwall, silence_outside

pytestmark = pytest.mark.netns

PORT = 8080
PPS, BURST = 2000, 200


def _up(topo, policy, *extra: str, where: str = "native"):
    out = shieldwall(*extra or ("up", "--mode", where), "--netns", topo.server_ns,
                     "--iface", topo.server_if, "--config", str(policy))
    assert out.returncode == 0, out.stderr


def _policy(tmp_path, block: str | None = None, name: str = "limits.yaml"):
    path = tmp_path / name
    extra = f", block: {block}" if block else ""
    path.write_text(
        "version: 1\ndefault_action: pass\n"
        f"limits:\n  udp-per-source: {{per: source, pps: {PPS}, burst: {BURST}{extra}}}\n"
        "rules:\n  - {name: udp, match: {proto: udp}, action: {limit: udp-per-source}}\n")
    return path


def _flood(topo, src: str, count: int):
    frame = bytes(Ether(src=topo.outside_mac, dst=topo.server_mac) / IP(src=src, dst=topo.server_v4)
                  / UDP(sport=4000, dport=53))
    with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
        return gen.send(frame, count)


def test_a_flood_passes_what_its_limit_allows(lab, tmp_path):
    topo = lab
    _up(topo, _policy(tmp_path))
    silence_outside(topo)
    base = server_status(topo)
    start = time.monotonic()
    sent = _flood(topo, topo.attacker_v4, 3_000_000)
    seconds = time.monotonic() - start
    report = server_status(topo)
    passed = counter(report, "pass", "rule") - counter(base, "pass", "rule")
    limited = counter(report, "drop", "rate_limited") - counter(base, "drop", "rate_limited")
    # What XDP saw from the flood is all there is: a busy veth drops before XDP.
    assert passed + limited <= sent.sent
    # The bucket's allowance over the run, bounded from both sides: the generator's own
    # time (the flood's span) and the command's (which includes set-up).
    low, high = PPS * sent.seconds + BURST, PPS * seconds + BURST
    assert 0.9 * low <= passed <= 1.1 * high, (passed, sent, seconds)
    assert limited > 0.9 * sent.sent * 0.5, (limited, sent)  # the rest, dropped by the limit
    lines = shieldwall("status", "--netns", topo.server_ns, "--iface", topo.server_if).stdout
    assert "limit udp-per-source:" in lines and "rate-limited" in lines, lines


@pytest.mark.parametrize("where", ["native", "tc"])
def test_a_blocked_source_is_cut_off_until_lifted_or_expired(lab, tmp_path, where):
    topo = lab
    _up(topo, _policy(tmp_path, block="8s"), where=where)
    where = ("--netns", topo.server_ns, "--iface", topo.server_if)
    with start_tcp_server(topo, PORT):
        assert tcp_connect(topo, PORT, src=topo.client_v4)
        # The client's own address floods UDP: over the limit it is blocked, TCP too.
        _flood(topo, topo.client_v4, 200_000)
        listed = shieldwall("blocks", "list", *where, "--json")
        assert listed.returncode == 0, listed.stderr
        rows = __import__("json").loads(listed.stdout)
        assert [r["prefix"] for r in rows] == [f"{topo.client_v4}/32"], rows
        assert rows[0]["limit"] == "udp-per-source" and 0 < rows[0]["seconds_left"] <= 8
        assert not tcp_connect(topo, PORT, src=topo.client_v4)
        assert tcp_connect(topo, PORT, src=topo.attacker_v4)  # a /32 block: the neighbour is served
        base = server_status(topo)
        assert counter(base, "drop", "blocked") > 0
        # A reload keeps the block (state maps), then `blocks del` lifts it at once. The
        # new policy's blocks are shorter: the next one is left to expire.
        _up(topo, _policy(tmp_path, block="2s", name="again.yaml"), "reload")
        assert [r["prefix"] for r in __import__("json").loads(
            shieldwall("blocks", "list", *where, "--json").stdout)] == [f"{topo.client_v4}/32"]
        assert not tcp_connect(topo, PORT, src=topo.client_v4)  # and it still holds
        lifted = shieldwall("blocks", "del", *where, topo.client_v4)
        assert lifted.returncode == 0 and "1 lifted" in lifted.stdout, lifted.stdout + lifted.stderr
        assert tcp_connect(topo, PORT, src=topo.client_v4)
        # Blocked again, then left to expire on its own.
        _flood(topo, topo.client_v4, 200_000)
        assert not tcp_connect(topo, PORT, src=topo.client_v4)
        time.sleep(2.2)
        assert tcp_connect(topo, PORT, src=topo.client_v4, timeout=2.0)
        assert "no blocks in force" in shieldwall("blocks", "list", *where).stdout
    missing = shieldwall("blocks", "del", *where, "203.0.113.9")
    assert missing.returncode == 2 and "is not blocked" in missing.stdout
