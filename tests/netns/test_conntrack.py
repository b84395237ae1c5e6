"""Namespace tier: connection state with real traffic. The protected namespace runs a
default-drop policy; with `state: established` its own TCP connections, UDP exchanges
and pings to the outside namespace work, without that rule they fail; unsolicited
inbound and spoofed "replies" for flows it never opened stay dropped. The TC egress link
follows the policy through reloads and goes with `down`."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from shieldwall.config import configure
from shieldwall.dataplane import bpffs
from shieldwall.dataplane.pipeline import Pipeline, pinned_maps
from shieldwall.engine import transaction as tx
from shieldwall.engine.records import Records
from shieldwall.engine.transaction import Layout
from shieldwall.kernel import libbpf, xdp
from shieldwall.kernel.libbpf import BpfObject
from shieldwall.kernel import netns as kernel_netns
from shieldwall.lab.probes import ping, tcp_connect, udp_roundtrip
from shieldwall.lab.servers import start_tcp_server, start_udp_echo
from shieldwall.lab.trafgen import TrafficGenerator
from shieldwall.paths import object_path
from shieldwall.policy import parse_policy_text

from ..helpers import counter, server_status, shieldwall, silence_outside

pytestmark = pytest.mark.netns

PORT, UDP_PORT, INBOUND_PORT = 8080, 5353, 8081
HOST_PORT = 40123   # the protected host's own UDP source port, bound by the test
ROUNDS = 500

DROP_ALL = "version: 1\ndefault_action: drop\n"
REPLIES = DROP_ALL + "rules:\n  - {name: replies, match: {state: established}, action: pass}\n"


def apply(topo, command: str, policy: Path, text: str) -> None:
    policy.write_text(text)
    extra = ["--mode", "native"] if command == "up" else []
    done = shieldwall(command, *extra, "--netns", topo.server_ns, "--iface", topo.server_if,
                      "--config", str(policy))
    assert done.returncode == 0, done.stderr


def own_traffic(topo) -> dict[str, bool]:
    """The protected host's own connections to the outside namespace."""
    at_home = dict(netns=topo.server_ns)
    return {"tcp4": tcp_connect(topo, PORT, dst=topo.client_v4, **at_home),
            "tcp6": tcp_connect(topo, PORT, dst=topo.client_v6, **at_home),
            "udp4": udp_roundtrip(topo, UDP_PORT, dst=topo.client_v4, **at_home),
            "ping4": ping(topo, dst=topo.client_v4, **at_home),
            "ping6": ping(topo, dst=topo.client_v6, **at_home)}


def egress_links(topo, also: list[int] = ()) -> list[int]:
    """The programs on the server interface's tcx egress hook, as the kernel lists them,
    but for `also` (another tool's, which must be there); status must name the same."""
    with kernel_netns.enter_netns(topo.server_ns):
        found = libbpf.tcx_egress_programs(xdp.ifindex(topo.server_if))
    assert set(also) <= set(found)
    found = [prog for prog in found if prog not in also]
    report = server_status(topo) if found else {}
    assert sorted(report.get("egress", {}).values()) == sorted(found)
    return found


def send_once_from_the_host(topo, dst: str, port: int) -> None:
    """One datagram from the protected host's own port: its flow is recorded."""
    with kernel_netns.enter_netns(topo.server_ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.bind((topo.server_v4, HOST_PORT))
        sock.sendto(b"sw-lab", (dst, port))


def test_the_hosts_own_flows_with_a_default_drop(lab, tmp_path):
    topo = lab
    policy = tmp_path / "policy.yaml"
    outside = dict(addrs=[topo.client_v4, topo.client_v6], netns=topo.outside_ns)
    with start_tcp_server(topo, PORT, **outside), start_udp_echo(topo, UDP_PORT, **outside), \
            start_tcp_server(topo, INBOUND_PORT):
        apply(topo, "up", policy, DROP_ALL)
        assert not any(own_traffic(topo).values())  # the replies are dropped
        assert egress_links(topo) == []

        apply(topo, "reload", policy, REPLIES)
        assert len(egress_links(topo)) == 1
        assert own_traffic(topo) == dict.fromkeys(("tcp4", "tcp6", "udp4", "ping4", "ping6"), True)
        # Unsolicited inbound is still dropped.
        assert not tcp_connect(topo, INBOUND_PORT)
        assert not ping(topo)
        report = server_status(topo)
        assert report["stages"]["conntrack"]["flows"] >= 4
        shown = shieldwall("status", "--netns", topo.server_ns, "--iface", topo.server_if).stdout
        assert f"tc egress: conntrack's program id {report['egress']['conntrack']}" in shown
        assert "flows of this host in the table" in shown

        # A reload keeps the table and the link.
        apply(topo, "reload", policy, REPLIES + "  - {name: web, match: {dport: 8081}, action: pass}\n")
        assert len(egress_links(topo)) == 1
        assert tcp_connect(topo, INBOUND_PORT) and own_traffic(topo)["tcp4"]

    # Exact counts from here: replies to a flow the host opened pass, spoofed ones do not.
    send_once_from_the_host(topo, topo.client_v4, UDP_PORT)
    silence_outside(topo)
    eth = Ether(src=topo.outside_mac, dst=topo.server_mac)
    reply = eth / IP(src=topo.client_v4, dst=topo.server_v4) / UDP(sport=UDP_PORT, dport=HOST_PORT)
    spoofed = [eth / IP(src=topo.attacker_v4, dst=topo.server_v4) / UDP(sport=UDP_PORT, dport=HOST_PORT),
               eth / IP(src=topo.client_v4, dst=topo.server_v4) / UDP(sport=UDP_PORT + 1, dport=HOST_PORT),
               eth / IP(src=topo.client_v4, dst=topo.server_v4) / TCP(sport=PORT, dport=40999, flags="SA")]
    base = server_status(topo)
    with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
        gen.replay([bytes(f) for f in [reply, *spoofed]])
        gen.send(None, ROUNDS * 4)
    report = server_status(topo)
    assert counter(report, "pass", "rule") - counter(base, "pass", "rule") == ROUNDS
    assert counter(report, "drop", "default") - counter(base, "drop", "default") == 3 * ROUNDS

    # Without the rule, the link goes; `down` leaves nothing of shieldwall behind, and
    # takes nothing of anyone else's (a program another tool attached on the same hook).
    apply(topo, "reload", policy, DROP_ALL)
    assert egress_links(topo) == []
    with foreign_egress_program(topo) as foreign:
        apply(topo, "reload", policy, REPLIES)
        ours = egress_links(topo, also=[foreign])
        assert len(ours) == 1
        assert shieldwall("down", "--netns", topo.server_ns, "--iface", topo.server_if).returncode == 0
        assert egress_links(topo, also=[foreign]) == []


@contextmanager
def foreign_egress_program(topo) -> Iterator[int]:
    """Another tool's TC egress program on the server's interface, held by this test."""
    with BpfObject(object_path("conntrack")) as obj, kernel_netns.enter_netns(topo.server_ns):
        obj.load()
        prog = obj.program("sw_ct_egress")
        link = libbpf.tcx_egress_link_create(prog.fd, xdp.ifindex(topo.server_if))
        try:
            yield prog.id
        finally:
            os.close(link)


def test_a_change_cut_short_after_attaching_the_egress_program_is_undone(lab, tmp_path):
    """A change that needs the egress program attaches it before its commit; killed
    there, the next command rolls the change back, and the link with it."""
    topo = lab
    policy = tmp_path / "policy.yaml"
    apply(topo, "up", policy, DROP_ALL)
    with kernel_netns.enter_netns(topo.server_ns), bpffs.exclusive():
        layout, records = Layout.of(topo.server_if), Records(topo.server_if)
        live, number = layout.live_generation(), records.next_number()
        tx.begin(records, "reload", live, number)
        state = pinned_maps(layout.state)
        try:
            config = configure(parse_policy_text(REPLIES, "replies.yaml", "."))
            with Pipeline.load(config, reuse={name: m.fd for name, m in state.items()}) as p:
                tx.prepare(layout, number, p)  # ... and the process dies here
        finally:
            tx.close_maps(state)
    assert len(egress_links(topo)) == 1
    policy.write_text(DROP_ALL)
    nxt = shieldwall("reload", "--netns", topo.server_ns, "--iface", topo.server_if,
                     "--config", str(policy))
    assert nxt.returncode == 0 and "rolled back an interrupted reload" in nxt.stdout, nxt.stdout
    assert egress_links(topo) == []
    assert shieldwall("down", "--netns", topo.server_ns, "--iface", topo.server_if).returncode == 0
