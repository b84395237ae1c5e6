"""A two-namespace lab of its own for the peer tests, and a way to see which frames got
past a peer's hook.

    pw-<tag>-a  pw<tag>a  02:00:00:00:00:02   -->   pw<tag>b  02:00:00:00:00:01  pw-<tag>-b
                (frames sent here, raw)                  (peer installed here)

Names are unique to the run; only these namespaces are ever created or deleted. The
sending end has IPv6 disabled so its stack says nothing on the link.

Which frames passed: each frame is sent with its own source MAC, and an nftables chain
placed after the peer's hook logs what reaches it to an NFLOG group, read here over
netlink. After XDP and nftables ingress that chain is a netdev ingress chain at a later
priority; after iptables' raw PREROUTING it is an inet prerouting chain at -150 (after
raw's -300). Frames the log does not show were dropped by the peer (or, for iptables,
by the stack before PREROUTING, which the tests account for).
"""

from __future__ import annotations

import secrets
import socket
import struct
import subprocess
import time
from dataclasses import dataclass

from shieldwall.kernel.netns import enter_netns
from shieldwall.lab.topology import LabTopology

SERVER_MAC = "02:00:00:00:00:01"
CLIENT_MAC = "02:00:00:00:00:02"

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_QTHRESH = 1, 2, 4
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_HWADDR = 8
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NFLOG_GROUP = 7

QUIET_S = 0.08  # no new log for this long: every sent frame has been through the hooks
MAX_WAIT_S = 3.0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _nft(netns: str, text: str) -> None:
    proc = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=text,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def frame_mac(index: int) -> bytes:
    return bytes([0x02, 0x5E]) + index.to_bytes(4, "big")


@dataclass
class PeerLab:
    tag: str
    ns_a: str
    ns_b: str
    if_a: str
    if_b: str

    @classmethod
    def create(cls) -> PeerLab:
        tag = secrets.token_hex(3)
        lab = cls(tag, f"pw-{tag}-a", f"pw-{tag}-b", f"pw{tag}a", f"pw{tag}b")
        created = []
        try:
            for ns in (lab.ns_a, lab.ns_b):
                _ip("netns", "add", ns)
                created.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            subprocess.run(["ip", "netns", "exec", lab.ns_a, "sysctl", "-qw",
                            "net.ipv6.conf.all.disable_ipv6=1",
                            "net.ipv6.conf.default.disable_ipv6=1"], check=True, timeout=30)
            _ip("-n", lab.ns_a, "link", "add", lab.if_a, "address", CLIENT_MAC, "type", "veth",
                "peer", "name", lab.if_b, "address", SERVER_MAC, "netns", lab.ns_b)
            _ip("-n", lab.ns_a, "link", "set", lab.if_a, "up")
            _ip("-n", lab.ns_b, "link", "set", lab.if_b, "up")
        except BaseException:
            for ns in created:
                subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
            raise
        return lab

    def destroy(self) -> None:
        for ns in (self.ns_a, self.ns_b):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)

    @property
    def topo(self) -> LabTopology:
        """The lab as the peers' context managers take it: the server end is `b`."""
        return LabTopology(outside_ns=self.ns_a, server_ns=self.ns_b, outside_if=self.if_a,
                           server_if=self.if_b, server_mac=SERVER_MAC, outside_mac=CLIENT_MAC)

    def observer(self, after: str) -> Observer:
        return Observer(self, after)


class Observer:
    """Sends frames into `a` and reports which of them reached the log chain in `b`.

    after="ingress": the log chain is at netdev ingress after every peer chain (XDP and
    nftables peers); after="prerouting": at inet prerouting, after the raw table.
    """

    TABLE = "pw_observe"

    def __init__(self, lab: PeerLab, after: str) -> None:
        self.lab = lab
        self.after = after
        self.nl = None
        self.tx = None

    def __enter__(self) -> Observer:
        if self.after == "ingress":
            chain = (f'type filter hook ingress device "{self.lab.if_b}" priority 1000; '
                     f"policy accept;\n log group {NFLOG_GROUP}")
            family = "netdev"
        else:
            chain = (f"type filter hook prerouting priority -150; policy accept; "
                     f'iifname "{self.lab.if_b}" log group {NFLOG_GROUP}')
            family = "inet"
        with enter_netns(self.lab.ns_b):
            self.nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        with enter_netns(self.lab.ns_a):
            self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self.tx.bind((self.lab.if_a, 0))
            self.nl.bind((0, 0))
            self.nl.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            self._config(_attr(NFULA_CFG_CMD, struct.pack("B", NFULNL_CFG_CMD_BIND)))
            self._config(_attr(NFULA_CFG_MODE, struct.pack("!IBB", 64, NFULNL_COPY_PACKET, 0)))
            self._config(_attr(NFULA_CFG_QTHRESH, struct.pack("!I", 1)))
            _nft(self.lab.ns_b, f"table {family} {self.TABLE} {{\n chain observe {{\n{chain}\n }}\n}}\n")
            self.family = family
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["ip", "netns", "exec", self.lab.ns_b, "nft", "delete", "table",
                        getattr(self, "family", "netdev"), self.TABLE],
                       capture_output=True, timeout=30)
        self._close()

    def _close(self) -> None:
        for sock in (self.nl, self.tx):
            if sock is not None:
                sock.close()

    def _config(self, attrs: bytes) -> None:
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(NFLOG_GROUP)) + attrs
        header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
                             NLM_F_REQUEST | NLM_F_ACK, 1, 0)
        self.nl.send(header + body)
        reply = self.nl.recv(65536)
        length, kind = struct.unpack_from("=IH", reply)
        assert kind == NLMSG_ERROR, kind
        (error,) = struct.unpack_from("=i", reply, 16)
        assert error == 0, f"NFLOG config: errno {-error}"

    def _drain(self, seen: set[int], timeout: float) -> bool:
        """Read what is queued into seen; False if nothing came within timeout."""
        self.nl.settimeout(timeout)
        try:
            data = self.nl.recv(1 << 20)
        except socket.timeout:
            return False
        off = 0
        while off + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, off)
            if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
                at = off + 20
                while at + 4 <= off + length:
                    alen, atype = struct.unpack_from("=HH", data, at)
                    if atype & 0x7FFF == NFULA_HWADDR and alen >= 14:
                        mac = data[at + 8:at + 14]
                        if mac[:2] == b"\x02\x5e":
                            seen.add(int.from_bytes(mac[2:], "big"))
                    at += (alen + 3) & ~3
            off += (length + 3) & ~3
        return True

    def passed(self, frames: list[bytes]) -> list[bool]:
        """Send each frame (with its own source MAC) and say which got past the peer."""
        seen: set[int] = set()
        while self._drain(seen, 0.0001):
            pass
        seen.clear()
        for index, frame in enumerate(frames):
            self.tx.send(frame[:6] + frame_mac(index) + frame[12:])
        deadline = time.monotonic() + MAX_WAIT_S
        while time.monotonic() < deadline and self._drain(seen, QUIET_S):
            pass
        return [index in seen for index in range(len(frames))]


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * ((4 - length % 4) % 4)
