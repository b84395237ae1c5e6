"""Namespace tier: the icmp stage on the lab with real traffic. Pings from the client
are answered within the echo limit while a spoofed echo flood is dropped; a real path
MTU case (a "fragmentation needed" / "packet too big" about the server's real TCP
connection) lowers the route's MTU, while the same error about no socket is dropped;
neighbor discovery keeps working under an ICMPv6 flood."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from shieldwall.lab import netns as ns
from shieldwall.lab.probes import ping
from shieldwall.lab.trafgen import TrafficGenerator

from ..helpers import counter, server_status, shieldwall

pytestmark = pytest.mark.netns

PORT = 8080


def up(topo, tmp_path, icmp: str) -> None:
    policy = tmp_path / "icmp.yaml"
    policy.write_text(f"version: 1\ndefault_action: pass\nprotect:\n  icmp: {icmp}\n")
    done = shieldwall("up", "--mode", "native", "--netns", topo.server_ns, "--iface", topo.server_if,
                      "--config", str(policy))
    assert done.returncode == 0, done.stderr


def down(topo) -> None:
    assert shieldwall("down", "--netns", topo.server_ns, "--iface", topo.server_if).returncode == 0


def icmp_report(topo) -> dict:
    return server_status(topo)["stages"]["icmp"]


def test_pings_answered_within_the_limit_while_a_spoofed_flood_is_dropped(lab, tmp_path):
    topo = lab
    up(topo, tmp_path, "{rates: {echo_request: {pps: 20, burst: 20}}}")
    assert all(ping(topo) for _ in range(5))
    assert all(ping(topo, dst=topo.server_v6) for _ in range(5))
    base = server_status(topo)
    flood = {4: Ether(src=topo.outside_mac, dst=topo.server_mac) / IP(src="198.51.100.1", dst=topo.server_v4)
             / ICMP(type=8, id=1) / Raw(b"x" * 32),
             6: Ether(src=topo.outside_mac, dst=topo.server_mac) / IPv6(src="2001:db8:ff::1", dst=topo.server_v6)
             / ICMPv6EchoRequest(id=1) / Raw(b"x" * 32)}
    start = time.monotonic()
    with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
        for family, frame in flood.items():
            gen.send(bytes(frame), 20000, spread_sources=4096)
    elapsed = time.monotonic() - start
    report = server_status(topo)
    limited = counter(report, "drop", "icmp_limited") - counter(base, "drop", "icmp_limited")
    types, was = report["stages"]["icmp"]["types"], base["stages"]["icmp"]["types"]
    passed = sum(types[k]["passed"] - was.get(k, {}).get("passed", 0)
                 for k in ("icmp/echo_request", "icmpv6/echo_request"))
    # Each family's bucket lets through its burst and 20 a second: the rest is dropped.
    allowed = 2 * (20 + 20 * (elapsed + 1))
    assert passed <= allowed, (passed, elapsed)
    assert limited >= 40000 - allowed
    # Once the flood stops the bucket refills: the client is answered again.
    time.sleep(1.0)
    assert ping(topo) and ping(topo, dst=topo.server_v6)
    out = shieldwall("status", "--netns", topo.server_ns, "--iface", topo.server_if)
    assert "icmp icmp/echo_request:" in out.stdout and "limited" in out.stdout, out.stdout
    down(topo)


def _syn_ack_seq(capture: socket.socket, server_port: int, client_port: int) -> int:
    """The server's initial sequence number, from its SYN-ACK seen leaving its end."""
    capture.settimeout(2.0)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        frame = capture.recv(65535)
        pkt = Ether(frame)
        if TCP in pkt and pkt[TCP].sport == server_port and pkt[TCP].dport == client_port \
                and pkt[TCP].flags & 0x12 == 0x12:
            return pkt[TCP].seq
    raise AssertionError("no SYN-ACK seen")


def _route_mtu(topo, dst: str) -> int | None:
    out = ns.run(["ip", "route", "get", dst], netns=topo.server_ns).stdout
    words = out.split()
    return int(words[words.index("mtu") + 1]) if "mtu" in words else None


@pytest.mark.parametrize("family", [4, 6])
def test_a_real_path_mtu_error_passes_and_a_forged_one_is_dropped(lab, tmp_path, family):
    topo = lab
    up(topo, tmp_path, "{}")
    server, client = (topo.server_v4, topo.client_v4) if family == 4 else (topo.server_v6, topo.client_v6)
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with ns.enter_netns(topo.server_ns):
        listener = socket.socket(af, socket.SOCK_STREAM)
        capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    with ns.enter_netns(topo.outside_ns):
        conn = socket.socket(af, socket.SOCK_STREAM)
    try:
        capture.bind((topo.server_if, 0))
        listener.bind((server, PORT))
        listener.listen()
        conn.bind((client, 0))
        conn.connect((server, PORT))
        accepted, _ = listener.accept()
        cport = conn.getsockname()[1]
        # Nothing sent yet: the server's next sequence number is its ISN + 1, and an error
        # about its segment must carry one the connection has in flight.
        seq = _syn_ack_seq(capture, PORT, cport) + 1
        eth = Ether(src=topo.outside_mac, dst=topo.server_mac)
        if family == 4:
            def error(port: int):
                inner = bytes(IP(src=server, dst=client, flags="DF") / TCP(sport=PORT, dport=port, seq=seq))
                return eth / IP(src=topo.attacker_v4, dst=server) / ICMP(type=3, code=4, nexthopmtu=1280) / Raw(inner[:28])
        else:
            def error(port: int):
                inner = bytes(IPv6(src=server, dst=client) / TCP(sport=PORT, dport=port, seq=seq))
                return eth / IPv6(src=topo.attacker_v6, dst=server) / ICMPv6PacketTooBig(mtu=1280) / Raw(inner[:48])
        assert _route_mtu(topo, client) is None
        base = server_status(topo)
        with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
            gen.send(bytes(error(cport + 1 if cport < 65535 else cport - 1)), 1)  # no socket: forged
            time.sleep(0.2)
            after_forged = server_status(topo)
            assert _route_mtu(topo, client) is None
            gen.send(bytes(error(cport)), 1)
        deadline = time.monotonic() + 3
        while _route_mtu(topo, client) != 1280 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _route_mtu(topo, client) == 1280
        assert counter(after_forged, "drop", "icmp_unrelated") - counter(base, "drop", "icmp_unrelated") == 1
        report = server_status(topo)
        assert counter(report, "drop", "icmp_unrelated") == counter(after_forged, "drop", "icmp_unrelated")
        name = "icmp/dest_unreachable" if family == 4 else "icmpv6/packet_too_big"
        assert report["stages"]["icmp"]["types"][name]["passed"] >= 1
        accepted.close()
    finally:
        for s in (conn, listener, capture):
            s.close()
        down(topo)


def _neighbor_state(netns: str, addr: str) -> str:
    out = ns.run(["ip", "-6", "neigh", "show", addr], netns=netns).stdout.split()
    return out[-1] if out else "NONE"


def _resolves(netns: str, src: str, dst: str) -> bool:
    """Whether `netns` learns dst's link address: a datagram to it makes the stack send
    a solicitation, and the advertisement must come back."""
    with ns.enter_netns(netns):
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        s.bind((src, 0))
        s.sendto(b"x", (dst, 9))
    finally:
        s.close()
    deadline = time.monotonic() + 3
    while _neighbor_state(netns, dst) in ("NONE", "INCOMPLETE") and time.monotonic() < deadline:
        time.sleep(0.05)
    return _neighbor_state(netns, dst) in ("REACHABLE", "STALE", "DELAY", "PROBE")


def test_neighbor_discovery_works_under_an_icmpv6_flood(lab, tmp_path):
    topo = lab
    up(topo, tmp_path, "{rates: {echo_request: {pps: 10, burst: 10}}}")
    frame = bytes(Ether(src=topo.outside_mac, dst=topo.server_mac)
                  / IPv6(src="2001:db8:ff::1", dst=topo.server_v6) / ICMPv6EchoRequest(id=1))
    stop = threading.Event()

    def flood() -> None:
        with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
            for _ in range(200):  # bounded: at most 200 bursts
                if stop.is_set():
                    break
                gen.send(frame, 2000, spread_sources=4096)

    base = server_status(topo)
    worker = threading.Thread(target=flood)
    worker.start()
    try:
        for _ in range(3):
            for netns, iface in ((topo.server_ns, topo.server_if), (topo.outside_ns, topo.outside_if)):
                ns.run(["ip", "-6", "neigh", "flush", "dev", iface], netns=netns)
            # The server's solicitation out and the client's advertisement in; the
            # client's solicitation in and the server's advertisement out.
            assert _resolves(topo.server_ns, topo.server_v6, topo.client_v6)
            assert _resolves(topo.outside_ns, topo.client_v6, topo.server_v6)
    finally:
        stop.set()
        worker.join()
    report = server_status(topo)
    assert counter(report, "drop", "icmp_limited") - counter(base, "drop", "icmp_limited") > 1000
    assert not [k for k in report["stages"]["icmp"]["types"] if "neighbor" in k or "router" in k]
    down(topo)
