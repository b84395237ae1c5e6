"""The default lab: a client/attacker namespace wired to a protected server by one veth.

    sw-outside                                sw-server
    sw-out0  192.0.2.2   (client)    <-->     sw-srv0  192.0.2.1        (XDP here)
             192.0.2.66  (attacker)                    2001:db8:0:1::1
             2001:db8:0:1::2 / ::66

LabTopology holds these facts (and the MACs and ifindexes read back after creation) so
tests, the traffic generator and the CLI agree on them. The probes at the end of the
module send real traffic from sw-outside to prove it passes or is dropped.
"""

from __future__ import annotations

import atexit
import ipaddress
import itertools
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..dataplane.bpffs import remove_netns_pins
from . import netns as ns
from .netns import LabError

LAB_PREFIX = "sw-"


@dataclass(frozen=True)
class LabTopology:
    outside_ns: str = "sw-outside"
    server_ns: str = "sw-server"
    outside_if: str = "sw-out0"
    server_if: str = "sw-srv0"
    server_v4: str = "192.0.2.1"
    client_v4: str = "192.0.2.2"
    attacker_v4: str = "192.0.2.66"
    server_v6: str = "2001:db8:0:1::1"
    client_v6: str = "2001:db8:0:1::2"
    attacker_v6: str = "2001:db8:0:1::66"
    v4_prefix: int = 24
    v6_prefix: int = 64
    mtu: int = 1500
    # Known only once the lab exists (see lab_up); ifindexes are per namespace.
    server_mac: str = ""
    outside_mac: str = ""
    server_ifindex: int = 0
    outside_ifindex: int = 0

    @property
    def namespaces(self) -> tuple[str, str]:
        return (self.outside_ns, self.server_ns)

    def server_cidrs(self) -> list[str]:
        return [f"{self.server_v4}/{self.v4_prefix}", f"{self.server_v6}/{self.v6_prefix}"]

    def outside_cidrs(self) -> list[str]:
        # The client comes first, so its IPv4 address is the primary one and the default
        # source; the IPv6 attacker address is kept out of source selection in _build.
        return [
            f"{self.client_v4}/{self.v4_prefix}",
            f"{self.attacker_v4}/{self.v4_prefix}",
            f"{self.client_v6}/{self.v6_prefix}",
            f"{self.attacker_v6}/{self.v6_prefix}",
        ]

    def attacker_cidrs(self) -> list[str]:
        return [f"{self.attacker_v4}/{self.v4_prefix}", f"{self.attacker_v6}/{self.v6_prefix}"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_TOPOLOGY = LabTopology()


# --- building and tearing down ----------------------------------------------------


def _ends(topo: LabTopology) -> list[tuple[str, str, list[str]]]:
    """(namespace, interface, addresses) for each end of the veth."""
    return [
        (topo.outside_ns, topo.outside_if, topo.outside_cidrs()),
        (topo.server_ns, topo.server_if, topo.server_cidrs()),
    ]


def _problems(topo: LabTopology) -> list[str]:
    """What keeps the lab from being usable; empty when it is healthy."""
    problems = []
    for netns, ifname, cidrs in _ends(topo):
        if not ns.netns_exists(netns):
            problems.append(f"namespace {netns} missing")
            continue
        link = ns.link_show(netns, ifname)
        if link is None:
            problems.append(f"{ifname} missing in {netns}")
            continue
        if link.get("operstate") != "UP":
            problems.append(f"{ifname} is {link.get('operstate')}, not UP")
        if link.get("mtu") != topo.mtu:
            problems.append(f"{ifname} has MTU {link.get('mtu')}, not {topo.mtu}")
        addrs = ns.link_addresses(netns, ifname)
        have = {_cidr(a) for a in addrs}
        problems += [f"{cidr} missing on {ifname}" for cidr in cidrs if cidr not in have]
        problems += [f"{_cidr(a)} tentative on {ifname}" for a in addrs if a.get("tentative")]
    return problems


def _cidr(addr_info: dict[str, Any]) -> str:
    return str(ipaddress.ip_interface(f"{addr_info['local']}/{addr_info['prefixlen']}"))


def _build(topo: LabTopology) -> None:
    for netns in topo.namespaces:
        ns.create_netns(netns)
        # Before the veth exists, so its ends inherit "default" and never run DAD/RS.
        for scope in ("all", "default"):
            ns.disable_ipv6_dad_ra(netns, scope)
    ns.create_veth_pair(topo.outside_if, topo.outside_ns, topo.server_if, topo.server_ns, topo.mtu)
    for netns, ifname, cidrs in _ends(topo):
        ns.disable_ipv6_dad_ra(netns, ifname)
        # GRO turns on the veth's NAPI path, which is what lets it receive XDP frames
        # (XDP_TX from the peer, bpf_redirect from the traffic generator) even when no
        # XDP program is attached to it. Without tx checksum offload / TSO the XDP
        # program sees finished, MTU-sized packets as from a real wire. Best effort.
        ns.set_offloads(netns, ifname, gro=True, tx=False, tso=False, gso=False)
        for cidr in cidrs:
            # Traffic from the attacker addresses is always asked for explicitly.
            ns.add_address(netns, ifname, cidr, preferred=cidr not in topo.attacker_cidrs())
    for netns, ifname, _ in _ends(topo):
        ns.set_link_up(netns, ifname)


def _wait_healthy(topo: LabTopology, timeout: float = 5.0) -> None:
    # Carrier/operstate changes are applied asynchronously by the kernel's linkwatch.
    deadline = time.monotonic() + timeout
    while problems := _problems(topo):
        if time.monotonic() > deadline:
            raise LabError("lab did not come up: " + "; ".join(problems))
        time.sleep(0.05)


def _read_back(topo: LabTopology) -> LabTopology:
    """The topology with the MACs and ifindexes the kernel assigned."""
    server = ns.link_show(topo.server_ns, topo.server_if) or {}
    outside = ns.link_show(topo.outside_ns, topo.outside_if) or {}
    return replace(
        topo,
        server_mac=server.get("address", ""),
        outside_mac=outside.get("address", ""),
        server_ifindex=server.get("ifindex", 0),
        outside_ifindex=outside.get("ifindex", 0),
    )


def lab_up(topo: LabTopology = DEFAULT_TOPOLOGY) -> LabTopology:
    """Create the lab, or return the existing one if it is healthy.

    A partial or broken lab (e.g. left by a crash) is torn down and rebuilt; anything
    attached to the old interfaces, XDP programs included, goes with it.
    """
    if not _problems(topo):
        return _read_back(topo)
    lab_down(topo)
    try:
        _build(topo)
        _wait_healthy(topo)
    except BaseException:
        lab_down(topo)
        raise
    return _read_back(topo)


def lab_down(topo: LabTopology = DEFAULT_TOPOLOGY) -> None:
    """Remove the topology's own namespaces; never fails if they are gone, and never
    touches any other namespace (another lab, a test run, the user's own).

    Deleting a namespace destroys the veth end inside it and so the whole pair.
    Processes left inside (servers from a crashed run) are killed, so the namespaces
    are really freed instead of lingering unnamed.
    """
    errors = []
    for name in sorted(set(topo.namespaces)):
        try:
            ns.delete_netns(name)
            # The interfaces went with the namespace; their pinned pipelines must too.
            remove_netns_pins(name)
        except LabError as exc:
            errors.append(str(exc))
    if errors:
        raise LabError("; ".join(errors))


def lab_status(topo: LabTopology = DEFAULT_TOPOLOGY) -> dict[str, Any]:
    """What exists: namespaces, links (state, MAC, addresses, offloads) and XDP on the
    server interface. JSON-serialisable."""
    links: dict[str, Any] = {}
    for netns, ifname, _ in _ends(topo):
        link = ns.link_show(netns, ifname) if ns.netns_exists(netns) else None
        if link is None:
            links[ifname] = {"netns": netns, "present": False}
            continue
        links[ifname] = {
            "netns": netns,
            "present": True,
            "state": link.get("operstate"),
            "mtu": link.get("mtu"),
            "mac": link.get("address"),
            "ifindex": link.get("ifindex"),
            "addresses": [_cidr(a) for a in ns.link_addresses(netns, ifname)
                          if a.get("scope") == "global"],
            "offloads": ns.get_offloads(netns, ifname),
            "xdp": ns.xdp_attachment(link),
        }
    server_xdp = links[topo.server_if].get("xdp")
    problems = _problems(topo)
    return {
        "healthy": not problems,
        "problems": problems,
        "namespaces": {name: ns.netns_exists(name) for name in topo.namespaces},
        "stray_namespaces": [n for n in ns.list_netns(LAB_PREFIX) if n not in topo.namespaces],
        "links": links,
        "xdp_attached": server_xdp is not None,
        "xdp": server_xdp,
    }


@contextmanager
def lab(topo: LabTopology = DEFAULT_TOPOLOGY) -> Iterator[LabTopology]:
    """The lab for the duration of a block, torn down afterwards whatever happens."""
    try:
        yield lab_up(topo)
    finally:
        lab_down(topo)


# --- servers inside sw-server -----------------------------------------------------

# Each server binds the given addresses, prints "ready" once listening, and exits by
# itself after `lifetime` seconds even if nobody stops it.
_TCP_SERVER = """
import selectors, socket, sys, time
lifetime, port, addrs = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
deadline = time.monotonic() + lifetime
sel = selectors.DefaultSelector()
for addr in addrs:
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(128)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while (left := deadline - time.monotonic()) > 0:
    for key, _ in sel.select(min(left, 1.0)):
        try:
            conn, peer = key.fileobj.accept()
        except OSError:
            continue
        with conn:
            conn.settimeout(1.0)
            try:
                conn.sendall(b"sw-lab " + peer[0].encode() + b"\\n")
            except OSError:
                pass
"""

_UDP_ECHO = """
import selectors, socket, sys, time
lifetime, port, addrs = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
deadline = time.monotonic() + lifetime
sel = selectors.DefaultSelector()
for addr in addrs:
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while (left := deadline - time.monotonic()) > 0:
    for key, _ in sel.select(min(left, 1.0)):
        try:
            data, peer = key.fileobj.recvfrom(65535)
            key.fileobj.sendto(data, peer)
        except OSError:
            pass
"""

_live_servers: set[LabServer] = set()


class LabServer:
    """A server process in a lab namespace; stop() (or leaving the with-block) kills it."""

    def __init__(self, proc: subprocess.Popen[str], description: str) -> None:
        self.proc = proc
        self.description = description
        _live_servers.add(self)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self._kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()

    def _kill(self) -> None:
        _live_servers.discard(self)
        if self.alive:
            try:
                # Its own session: the group holds `ip netns exec` and the interpreter.
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self) -> LabServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<LabServer {self.description} pid={self.proc.pid} alive={self.alive}>"


@atexit.register
def _stop_leftover_servers() -> None:
    for server in list(_live_servers):
        server.stop()


def _start_server(
    script: str, netns: str, port: int, addrs: list[str], lifetime: float, description: str
) -> LabServer:
    argv = ["ip", "netns", "exec", netns, sys.executable, "-c", script,
            str(lifetime), str(port), *addrs]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    server = LabServer(proc, description)
    if not _wait_ready(proc, timeout=10.0):
        server._kill()
        stderr = proc.stderr.read().strip() if proc.stderr else ""
        server.stop()
        raise LabError(f"{description} did not start: {stderr or 'no ready line'}")
    return server


def _wait_ready(proc: subprocess.Popen[str], timeout: float) -> bool:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return False
    return proc.stdout.readline().strip() == "ready"


def _server_addrs(topo: LabTopology, addrs: list[str] | None) -> list[str]:
    return addrs if addrs is not None else [topo.server_v4, topo.server_v6]


def start_tcp_server(
    topo: LabTopology, port: int, addrs: list[str] | None = None, lifetime: float = 60.0
) -> LabServer:
    """A TCP server in the server namespace (default: on both server addresses).

    Each connection is sent one line, "sw-lab <client address>", and closed.
    """
    addrs = _server_addrs(topo, addrs)
    return _start_server(_TCP_SERVER, topo.server_ns, port, addrs, lifetime,
                         f"tcp server {','.join(addrs)} port {port}")


def start_udp_echo(
    topo: LabTopology, port: int, addrs: list[str] | None = None, lifetime: float = 60.0
) -> LabServer:
    """A UDP echo server in the server namespace (default: on both server addresses)."""
    addrs = _server_addrs(topo, addrs)
    return _start_server(_UDP_ECHO, topo.server_ns, port, addrs, lifetime,
                         f"udp echo {','.join(addrs)} port {port}")


# --- probes from sw-outside -------------------------------------------------------


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def _outside_socket(
    topo: LabTopology, dst: str, kind: socket.SocketKind, proto: int = 0, src: str | None = None
) -> socket.socket:
    # Created inside the namespace, the socket stays there after enter_netns returns.
    with ns.enter_netns(topo.outside_ns):
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
) -> str | None:
    """Connect from sw-outside and return the server's line ("sw-lab <client address>"),
    or None if the connection or the line did not make it in time.

    `dst` defaults to the server's IPv4 address, `src` to the kernel's choice (the
    client address; the attacker addresses are never picked by default).
    """
    dst = dst or topo.server_v4
    try:
        with _outside_socket(topo, dst, socket.SOCK_STREAM, src=src) as sock:
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
) -> bool:
    """True if a connection from sw-outside completes and the server's line arrives.

    Waiting for the line proves data flows both ways, not just the handshake.
    """
    return tcp_banner(topo, port, dst=dst, src=src, timeout=timeout) is not None


def udp_roundtrip(
    topo: LabTopology,
    port: int,
    dst: str | None = None,
    src: str | None = None,
    payload: bytes = b"sw-lab probe",
    timeout: float = 1.0,
) -> bool:
    """True if a datagram sent from sw-outside comes back from the echo server."""
    dst = dst or topo.server_v4
    try:
        with _outside_socket(topo, dst, socket.SOCK_DGRAM, src=src) as sock:
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
    topo: LabTopology, dst: str | None = None, src: str | None = None, timeout: float = 1.0
) -> bool:
    """One ICMP/ICMPv6 echo from sw-outside; True if the reply arrives in time.

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
        with _outside_socket(topo, dst, socket.SOCK_RAW, proto, src=src) as sock:
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
