"""Probes: real traffic sent from the lab's outside namespace to the server, to prove
that it passes or is dropped. Each answers True/False (or the server's line) within a
timeout and never raises for a lost packet."""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket
import struct
import time

from . import netns as ns
from .topology import LabTopology


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def _outside_socket(
    topo: LabTopology, dst: str, kind: socket.SocketKind, proto: int = 0, src: str | None = None,
    netns: str | None = None,
) -> socket.socket:
    """A socket in the outside namespace, or in `netns` (the server's, for the protected
    host's own connections)."""
    # Created inside the namespace, the socket stays there after enter_netns returns.
    with ns.enter_netns(netns or topo.outside_ns):
        sock = socket.socket(_family(dst), kind, proto)
    try:
        if src is not None:
            sock.bind((src, 0))
    except OSError:
        sock.close()
        raise
    return sock


def tcp_banner(
    topo: LabTopology,
    port: int,
    dst: str | None = None,
    src: str | None = None,
    timeout: float = 1.0,
    netns: str | None = None,
) -> str | None:
    """Connect from the outside namespace and return the server's line ("sw-lab <client
    address>"), or None if the connection or the line did not make it in time.

    `dst` defaults to the server's IPv4 address, `src` to the kernel's choice (the
    client address; the attacker addresses are never picked by default).
    """
    dst = dst or topo.server_v4
    try:
        with _outside_socket(topo, dst, socket.SOCK_STREAM, src=src, netns=netns) as sock:
            sock.settimeout(timeout)
            sock.connect((dst, port))
            line = sock.recv(256).decode(errors="replace").strip()
    except OSError:  # includes timeouts and refusals
        return None
    return line if line.startswith("sw-lab ") else None


def tcp_connect(
    topo: LabTopology,
    port: int,
    dst: str | None = None,
    src: str | None = None,
    timeout: float = 1.0,
    netns: str | None = None,
) -> bool:
    """True if a connection from the outside namespace (or `netns`) completes and the
    server's line arrives.

    Waiting for the line proves data flows both ways, not just the handshake.
    """
    return tcp_banner(topo, port, dst=dst, src=src, timeout=timeout, netns=netns) is not None


def udp_roundtrip(
    topo: LabTopology,
    port: int,
    dst: str | None = None,
    src: str | None = None,
    payload: bytes = b"sw-lab probe",
    timeout: float = 1.0,
    netns: str | None = None,
) -> bool:
    """True if a datagram sent from the outside namespace (or `netns`) comes back from
    the echo server."""
    dst = dst or topo.server_v4
    try:
        with _outside_socket(topo, dst, socket.SOCK_DGRAM, src=src, netns=netns) as sock:
            sock.settimeout(timeout)
            sock.sendto(payload, (dst, port))
            data, _ = sock.recvfrom(65535)
            return data == payload
    except OSError:
        return False


_ping_seq = itertools.count(1)


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ping(
    topo: LabTopology, dst: str | None = None, src: str | None = None, timeout: float = 1.0,
    netns: str | None = None,
) -> bool:
    """One ICMP/ICMPv6 echo from the outside namespace (or `netns`); True if the reply
    arrives in time.

    Raw sockets rather than the ping binary, which need not be installed.
    """
    dst = dst or topo.server_v4
    v6 = _family(dst) == socket.AF_INET6
    proto, request, reply = (
        (socket.IPPROTO_ICMPV6, 128, 129) if v6 else (socket.IPPROTO_ICMP, 8, 0)
    )
    ident, seq = os.getpid() & 0xFFFF, next(_ping_seq) & 0xFFFF
    body = b"sw-lab ping"
    header = struct.pack("!BBHHH", request, 0, 0, ident, seq)
    if not v6:  # the kernel fills in the ICMPv6 checksum itself
        header = struct.pack("!BBHHH", request, 0, _icmp_checksum(header + body), ident, seq)
    deadline = time.monotonic() + timeout
    try:
        with _outside_socket(topo, dst, socket.SOCK_RAW, proto, src=src, netns=netns) as sock:
            sock.sendto(header + body, (dst, 0))
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                packet, peer = sock.recvfrom(65535)
                # IPv4 raw sockets deliver the IP header too, IPv6 ones do not.
                icmp = packet if v6 else packet[(packet[0] & 0x0F) * 4:]
                if len(icmp) < 8 or ipaddress.ip_address(peer[0]) != ipaddress.ip_address(dst):
                    continue
                rtype, _, _, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
                if rtype == reply and rid == ident and rseq == seq:
                    return True
    except OSError:
        return False
    return False


# What a SYN flood does to the server's TCP: handshakes answered with the kernel's
# own cookies, SYNs dropped at a full listen queue, and connections accepted.
TCP_COUNTERS = ("SyncookiesSent", "SyncookiesRecv", "ListenOverflows", "ListenDrops",
                "TCPReqQFullDrop", "PassiveOpens")


def tcp_counters(netns: str) -> dict[str, int]:
    """TCP_COUNTERS of the namespace's stack (/proc/net/netstat TcpExt, snmp Tcp)."""
    found: dict[str, int] = {}
    with ns.enter_netns(netns):
        for path in ("/proc/thread-self/net/netstat", "/proc/thread-self/net/snmp"):
            with open(path) as f:
                lines = f.read().splitlines()
            for names, values in zip(lines[::2], lines[1::2]):
                if names.startswith(("TcpExt:", "Tcp:")):
                    found.update(zip(names.split()[1:], map(int, values.split()[1:])))
    return {name: found.get(name, 0) for name in TCP_COUNTERS}
