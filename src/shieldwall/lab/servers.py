"""Servers run inside the lab's server namespace, answering in ways the probes
(probes.py) can check."""

from __future__ import annotations

import atexit
import os
import selectors
import signal
import subprocess
import sys
import time

from .netns import LabError
from .topology import LabTopology


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

# A UDP server's loop: each datagram goes to answer(data), whose reply (None: none) is
# sent back to its peer.
_UDP_SERVER = """
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
            reply = answer(data)
            if reply is not None:
                key.fileobj.sendto(reply, peer)
        except OSError:
            pass
"""

_UDP_ECHO = "def answer(data):\n    return data\n" + _UDP_SERVER

# Answers GET with "sw-lab\n"; a thread per connection, so a slow client holds up no other.
_HTTP_SERVER = """
import http.server, socket, sys, threading, time
lifetime, port, addrs = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
class Handler(http.server.BaseHTTPRequestHandler):
    timeout = 2.0
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "7")
        self.end_headers()
        self.wfile.write(b"sw-lab\\n")
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True
class Server6(Server):
    address_family = socket.AF_INET6
for addr in addrs:
    server = (Server6 if ":" in addr else Server)((addr, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
time.sleep(lifetime)
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
    topo: LabTopology, port: int, addrs: list[str] | None = None, lifetime: float = 60.0,
    netns: str | None = None,
) -> LabServer:
    """A TCP server in the server namespace (default: on both server addresses), or in
    `netns` (the outside's, for the protected host to connect to).

    Each connection is sent one line, "sw-lab <client address>", and closed.
    """
    addrs = _server_addrs(topo, addrs)
    return _start_server(_TCP_SERVER, netns or topo.server_ns, port, addrs, lifetime,
                         f"tcp server {','.join(addrs)} port {port}")


def start_http_server(
    topo: LabTopology, port: int, addrs: list[str] | None = None, lifetime: float = 60.0
) -> LabServer:
    """An HTTP server in the server namespace (default: on both server addresses) that
    answers every GET with 200 and the body "sw-lab\\n"."""
    addrs = _server_addrs(topo, addrs)
    return _start_server(_HTTP_SERVER, topo.server_ns, port, addrs, lifetime,
                         f"http server {','.join(addrs)} port {port}")


def start_udp_echo(
    topo: LabTopology, port: int, addrs: list[str] | None = None, lifetime: float = 60.0,
    netns: str | None = None,
) -> LabServer:
    """A UDP echo server in the server namespace (default: on both server addresses), or
    in `netns`."""
    addrs = _server_addrs(topo, addrs)
    return _start_server(_UDP_ECHO, netns or topo.server_ns, port, addrs, lifetime,
                         f"udp echo {','.join(addrs)} port {port}")


# --- services outside the protected host, which it queries itself -------------------

# A resolver for the protected host: names of the lab zone and their addresses.
LAB_NAMES = {"www.lab.example": "192.0.2.80", "mail.lab.example": "192.0.2.25",
             "ns.lab.example": "192.0.2.53"}
RESOLVER_V4 = "192.0.2.53"
NTP_V4 = "192.0.2.123"

# Answers a 48-byte client request (mode 3) with a 48-byte server reply (mode 4) that
# carries the request's transmit time as its origin time, as NTP servers do.
_NTP_SERVER = """
import struct, time
def answer(data):
    if len(data) != 48 or data[0] & 7 != 3:
        return None
    now = int((time.time() + 2208988800) * 2**32)
    reply = bytes([(data[0] & 0x38) | 4, 2, data[2], 0xe9]) + bytes(8) + b"LAB\\0"
    return reply + struct.pack("!Q", now) + data[40:48] + struct.pack("!QQ", now, now)
""" + _UDP_SERVER


def _add_address(netns: str, ifname: str, addr: str, prefix: int) -> None:
    """A service's own address on the outside end (kept until the lab goes)."""
    subprocess.run(["ip", "-n", netns, "addr", "replace", f"{addr}/{prefix}", "dev", ifname],
                   check=True, capture_output=True)


def start_ntp_server(topo: LabTopology, lifetime: float = 60.0) -> LabServer:
    """An NTP responder in the outside namespace on NTP_V4, port 123."""
    _add_address(topo.outside_ns, topo.outside_if, NTP_V4, topo.v4_prefix)
    return _start_server(_NTP_SERVER, topo.outside_ns, 123, [NTP_V4], lifetime,
                         f"ntp server {NTP_V4} port 123")


def start_resolver(topo: LabTopology, lifetime: float = 60.0) -> LabServer:
    """dnsmasq in the outside namespace on RESOLVER_V4, port 53, answering for the lab's
    names (LAB_NAMES) alone: no upstream, no hosts file, no lease or pid file; it runs in
    the foreground under `timeout`, so it ends by itself and with its process group."""
    _add_address(topo.outside_ns, topo.outside_if, RESOLVER_V4, topo.v4_prefix)
    argv = ["ip", "netns", "exec", topo.outside_ns, "timeout", "-s", "KILL", str(lifetime),
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
            "--no-hosts", "--no-poll", "--pid-file=", "--port=53", "--user=root",
            f"--listen-address={RESOLVER_V4}", "--bind-interfaces", "--cache-size=0",
            *(f"--address=/{name}/{addr}" for name, addr in LAB_NAMES.items())]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    server = LabServer(proc, f"dnsmasq {RESOLVER_V4} port 53")
    deadline = time.monotonic() + 10
    from .client import resolve
    while time.monotonic() < deadline:
        if not server.alive:
            break
        if _in_netns(topo.outside_ns, resolve, RESOLVER_V4, next(iter(LAB_NAMES))):
            return server
        time.sleep(0.1)
    stderr = "" if server.alive else (proc.stderr.read().strip() if proc.stderr else "")
    server.stop()
    raise LabError(f"dnsmasq on {RESOLVER_V4} did not start: {stderr or 'no answer'}")


def _in_netns(netns: str, fn, *args) -> bool:
    from ..kernel.netns import enter_netns
    with enter_netns(netns):
        try:
            return fn(*args) is not None
        except OSError:
            return False
