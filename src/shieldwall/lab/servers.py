"""Servers run inside the lab's server namespace, answering in ways the probes
(probes.py) can check."""

from __future__ import annotations

import atexit
import os
import selectors
import signal
import subprocess
import sys

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
