"""The lab's legitimate client: a process in the outside namespace that keeps using the
server's services while an attack runs, and says how it went.

Each round it makes one HTTP request, one TCP connect (handshake and close) and one UDP
query (to the echo server), each with a timeout, then waits for the next round. It
prints "ready" once it can start, and at the end one JSON line:
{"requests": {kind: n}, "ok": {kind: n}, "latencies_ms": [...]} with the latency of
every successful request. It stops by itself after --seconds.

Run by LegitClient (below) through `ip netns exec`, so its sockets are in the client's
namespace and its CPU time is its own, not the caller's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

from .netns import LabError
from .topology import LabTopology

TIMEOUT = 1.0       # seconds a request may take before it counts as failed
INTERVAL = 0.02     # seconds between rounds
KINDS = ("http", "tcp", "udp")


def _http(server: str, port: int) -> bool:
    conn = http.client.HTTPConnection(server, port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/")
        reply = conn.getresponse()
        return reply.status == 200 and reply.read() == b"sw-lab\n"
    finally:
        conn.close()


def _tcp(server: str, port: int) -> bool:
    with socket.create_connection((server, port), timeout=TIMEOUT):
        return True


def _udp(server: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendto(b"sw-lab query", (server, port))
        data, _ = sock.recvfrom(2048)
        return data == b"sw-lab query"


def _loop(server: str, ports: dict[str, int], seconds: float) -> dict:
    checks = {"http": _http, "tcp": _tcp, "udp": _udp}
    requests = dict.fromkeys(KINDS, 0)
    ok = dict.fromkeys(KINDS, 0)
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for kind in KINDS:
            start = time.monotonic()
            try:
                good = checks[kind](server, ports[kind])
            except OSError:  # refused, reset, timed out: the request failed
                good = False
            requests[kind] += 1
            if good:
                ok[kind] += 1
                latencies.append(round((time.monotonic() - start) * 1000, 3))
        time.sleep(INTERVAL)
    return {"requests": requests, "ok": ok, "latencies_ms": latencies}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["host"]:
        return host_main(argv[1:])
    p = argparse.ArgumentParser(prog="shieldwall.lab.client")
    p.add_argument("--server", required=True)
    p.add_argument("--seconds", type=float, required=True)
    for kind in KINDS:
        p.add_argument(f"--{kind}-port", type=int, required=True)
    args = p.parse_args(argv)
    print("ready", flush=True)
    ports = {kind: getattr(args, f"{kind}_port") for kind in KINDS}
    print(json.dumps(_loop(args.server, ports, args.seconds)), flush=True)
    return 0


# --- the caller's side ---------------------------------------------------------------


@dataclass(frozen=True)
class LegitResult:
    requests: int
    ok: int
    latencies_ms: tuple[float, ...]

    @property
    def success(self) -> float:
        return self.ok / self.requests if self.requests else 0.0

    def percentile(self, p: float) -> float | None:
        """Nearest-rank percentile of the successful requests' latencies."""
        if not self.latencies_ms:
            return None
        ranked = sorted(self.latencies_ms)
        return ranked[max(0, math.ceil(p / 100 * len(ranked)) - 1)]


class LegitClient:
    """The client process for one measurement: start() returns once it is ready,
    result() waits for its report (it ends by itself after `seconds`)."""

    def __init__(self, topo: LabTopology, seconds: float, ports: dict[str, int]) -> None:
        self.argv = ["ip", "netns", "exec", topo.outside_ns, sys.executable, "-m",
                     "shieldwall.lab.client", "--server", topo.server_v4,
                     "--seconds", str(seconds)]
        self.argv += [arg for kind in KINDS for arg in (f"--{kind}-port", str(ports[kind]))]
        self.seconds = seconds
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> LegitClient:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self._fail("did not start")
        return self

    def result(self) -> LegitResult:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            # Its last round may start just before the end and wait out its timeouts.
            out, _ = self.proc.communicate(timeout=self.seconds + len(KINDS) * TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise LabError("the lab client did not finish in time") from None
        if self.proc.returncode != 0 or not out.strip():
            self._fail(f"exit status {self.proc.returncode}")
        report = json.loads(out.strip().splitlines()[-1])
        return LegitResult(sum(report["requests"].values()), sum(report["ok"].values()),
                           tuple(report["latencies_ms"]))

    def _fail(self, what: str) -> None:
        assert self.proc is not None
        self.proc.kill()
        _, err = self.proc.communicate()
        raise LabError(f"the lab client {what}: {err.strip() or 'no output'}")

    def __enter__(self) -> LegitClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


# --- the protected host's own queries ------------------------------------------------
# Run in the server namespace: the host resolves names against the lab's resolver and
# asks the lab's NTP server the time, as a host under a reflected flood still must.

HOST_KINDS = ("dns", "ntp")
NTP_EPOCH = 2208988800


def resolve(resolver: str, name: str, timeout: float = TIMEOUT) -> str | None:
    """The IPv4 address `name` has at `resolver` (one A query from a fresh socket, so a
    fresh source port, and a random id the reply must carry), or None."""
    qid = int.from_bytes(os.urandom(2), "big")
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query, (resolver, 53))
        deadline = time.monotonic() + timeout
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data, peer = sock.recvfrom(4096)
            rid, flags, _, answers = struct.unpack("!HHHH", data[:8])
            if peer[0] == resolver and rid == qid:
                break
    if flags & 0x8000 == 0 or flags & 0xF or answers < 1 or len(data) < len(query) + 16:
        return None
    return socket.inet_ntoa(data[-4:])  # one answer, an A record: its address ends it


def ntp_time(server: str, timeout: float = TIMEOUT) -> float | None:
    """The server's time from one client request (48 bytes, mode 3), or None when its
    reply is not a server reply (mode 4) to this very request."""
    sent = int((time.time() + NTP_EPOCH) * 2**32).to_bytes(8, "big")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(bytes([0x23]) + bytes(39) + sent, (server, 123))
        data, _ = sock.recvfrom(2048)
    if len(data) < 48 or data[0] & 7 != 4 or data[24:32] != sent:
        return None
    return int.from_bytes(data[40:48], "big") / 2**32 - NTP_EPOCH


def _host_loop(resolver: str, ntp: str, names: list[str], seconds: float,
               kinds: tuple[str, ...] = HOST_KINDS) -> dict:
    requests = dict.fromkeys(kinds, 0)
    ok = dict.fromkeys(kinds, 0)
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        for kind in kinds:
            start = time.monotonic()
            try:
                good = (resolve(resolver, names[n % len(names)]) is not None if kind == "dns"
                        else ntp_time(ntp) is not None)
            except OSError:
                good = False
            requests[kind] += 1
            if good:
                ok[kind] += 1
                latencies.append(round((time.monotonic() - start) * 1000, 3))
        n += 1
        time.sleep(INTERVAL)
    return {"requests": requests, "ok": ok, "latencies_ms": latencies}


def host_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="shieldwall.lab.client host")
    p.add_argument("--resolver", required=True)
    p.add_argument("--ntp", required=True)
    p.add_argument("--name", action="append", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--kinds", default=",".join(HOST_KINDS))
    args = p.parse_args(argv)
    print("ready", flush=True)
    kinds = tuple(k for k in args.kinds.split(",") if k in HOST_KINDS)
    print(json.dumps(_host_loop(args.resolver, args.ntp, args.name, args.seconds, kinds)), flush=True)
    return 0


class HostQueries(LegitClient):
    """The protected host's own DNS resolutions and NTP queries, from the server
    namespace, for one measurement (the same report as the client's)."""

    def __init__(self, topo: LabTopology, seconds: float, resolver: str, ntp: str,
                 names: list[str], kinds: tuple[str, ...] = HOST_KINDS) -> None:
        self.argv = ["ip", "netns", "exec", topo.server_ns, sys.executable, "-m",
                     "shieldwall.lab.client", "host", "--resolver", resolver, "--ntp", ntp,
                     "--seconds", str(seconds), "--kinds", ",".join(kinds),
                     *(a for name in names for a in ("--name", name))]
        self.seconds = seconds
        self.proc = None


if __name__ == "__main__":
    sys.exit(main())
