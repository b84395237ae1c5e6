"""Namespace tier: the protect stage on the lab with real traffic. Frames that trip
each filter cross the veth from the outside; each is dropped with its own reason and
counted by its filter, a monitored filter counts without dropping, and the real client
keeps reaching the server."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrRouting
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from shieldwall.lab.probes import tcp_connect
from shieldwall.lab.servers import start_tcp_server
from shieldwall.lab.trafgen import TrafficGenerator

from ..helpers import counter, server_status, shieldwall, silence_outside

pytestmark = pytest.mark.netns

PORT = 8080
ROUNDS = 1000


def test_each_filter_on_real_traffic(lab, tmp_path):
    topo = lab
    policy = tmp_path / "protect.yaml"
    policy.write_text("version: 1\ndefault_action: pass\nprotect:\n"
                      "  ipv4_options: drop\n"
                      "  bogons: {mode: monitor, except: [192.0.2.0/24, '2001:db8::/32']}\n")
    up = shieldwall("up", "--mode", "native", "--netns", topo.server_ns, "--iface", topo.server_if,
                    "--config", str(policy))
    assert up.returncode == 0, up.stderr
    eth = Ether(src=topo.outside_mac, dst=topo.server_mac)
    v4 = IP(src=topo.attacker_v4, dst=topo.server_v4)
    v6 = IPv6(src=topo.attacker_v6, dst=topo.server_v6)
    frames = {
        "bad_tcp_flags": eth / v4 / TCP(sport=4000, dport=PORT, flags="FPU"),
        "land": eth / IP(src=topo.server_v4, dst=topo.server_v4) / TCP(sport=4000, dport=PORT, flags="S"),
        "fragment_overlap": eth / IP(src=topo.attacker_v4, dst=topo.server_v4, frag=1, proto=6) / Raw(b"\0" * 24),
        "ipv4_options": eth / IP(src=topo.attacker_v4, dst=topo.server_v4, options=[IPOption_NOP()] * 4)
                        / TCP(sport=4000, dport=PORT, flags="S"),
        "ipv6_rh0": eth / v6 / IPv6ExtHdrRouting(type=0, addresses=["2001:db8::5"])
                    / TCP(sport=4000, dport=PORT, flags="S"),
        "zero_port": eth / v4 / UDP(sport=0, dport=53),
    }
    monitored = eth / IP(src="10.9.9.9", dst=topo.server_v4) / TCP(sport=4000, dport=9, flags="S")
    fine = eth / v6 / IPv6ExtHdrFragment(offset=0, m=0) / TCP(sport=4000, dport=9, flags="S")
    # The real client first: then the outside's own stack goes quiet, so that every frame
    # the server end sees from there on is the generator's, and the counts are exact.
    with start_tcp_server(topo, PORT):
        assert tcp_connect(topo, PORT)
        assert tcp_connect(topo, PORT, dst=topo.server_v6)
    silence_outside(topo)
    base = server_status(topo)
    with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
        gen.replay([bytes(f) for f in [*frames.values(), monitored, fine]])
        gen.send(None, ROUNDS * (len(frames) + 2))
    report = server_status(topo)
    for reason in frames:
        assert counter(report, "drop", reason) - counter(base, "drop", reason) == ROUNDS, \
            (reason, report["counters"])
    before = base["stages"]["protect"]["filters"]
    seen = {k: n - before[k] for k, n in report["stages"]["protect"]["filters"].items()}
    assert seen["bogons"] == ROUNDS  # counted, not dropped
    assert counter(report, "pass", "default") - counter(base, "pass", "default") == 2 * ROUNDS
    assert seen["tcp_flags"] == seen["land"] == seen["ipv6_rh0"] == ROUNDS
    out = shieldwall("status", "--netns", topo.server_ns, "--iface", topo.server_if)
    assert "protect: tcp_flags 1,000, land 1,000" in out.stdout, out.stdout
    assert shieldwall("down", "--netns", topo.server_ns, "--iface", topo.server_if).returncode == 0


def test_bogons_of_the_hosts_own_network_are_excepted(lab, tmp_path):
    """The lab's server sits on documentation ranges, which are bogons: with the bogon
    filter at drop, its neighbours keep reaching it (their range is the host's own),
    other bogons are dropped; with `own: keep`, the neighbours are cut off too."""
    topo = lab
    where = ("--netns", topo.server_ns, "--iface", topo.server_if)
    policy = tmp_path / "bogons.yaml"
    policy.write_text("version: 1\ndefault_action: pass\nprotect: {bogons: drop}\n")
    up = shieldwall("up", "--mode", "native", *where, "--config", str(policy))
    assert up.returncode == 0, up.stderr
    eth = Ether(src=topo.outside_mac, dst=topo.server_mac)
    private = eth / IP(src="10.9.9.9", dst=topo.server_v4) / TCP(sport=4000, dport=9, flags="S")
    with start_tcp_server(topo, PORT):
        assert tcp_connect(topo, PORT) and tcp_connect(topo, PORT, dst=topo.server_v6)
        base = server_status(topo)
        with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
            gen.send(bytes(private), ROUNDS)
        report = server_status(topo)
        assert counter(report, "drop", "bogon_source") - counter(base, "drop", "bogon_source") >= ROUNDS
        policy.write_text("version: 1\ndefault_action: pass\n"
                          "protect: {bogons: {mode: drop, own: keep}}\n")
        assert shieldwall("reload", *where, "--config", str(policy)).returncode == 0
        assert not tcp_connect(topo, PORT)
    assert shieldwall("down", *where).returncode == 0
