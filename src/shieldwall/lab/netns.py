"""Network-namespace plumbing for the lab: commands, setns, veth pairs, addresses.

Everything here works on named namespaces (the /run/netns/NAME files that `ip netns`
manages) and only ever on interfaces created inside them, never in the caller's own.
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..kernel.netns import NETNS_RUN_DIR, NamespaceError, enter_netns

DEFAULT_TIMEOUT = 30.0


class LabError(RuntimeError):
    """A lab operation failed; the message names the command and what it printed."""


__all__ = ["LabError", "NamespaceError", "enter_netns"]


# --- commands ---------------------------------------------------------------------


def run(
    cmd: Sequence[str],
    netns: str | None = None,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run a command, inside `netns` (via `ip netns exec`) when given.

    Raises LabError with the full command line and its stderr when it cannot be
    started, times out, or (with check) exits non-zero.
    """
    argv = ["ip", "netns", "exec", netns, *cmd] if netns else list(cmd)
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise LabError(f"{shlex.join(argv)}: {exc.strerror}: {exc.filename}") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{shlex.join(argv)}: timed out after {timeout:g}s") from None
    if check and proc.returncode != 0:
        detail = proc.stderr.strip() or proc.stdout.strip() or "(no output)"
        raise LabError(f"{shlex.join(argv)}: exit status {proc.returncode}: {detail}")
    return proc


def ip(
    *args: str, netns: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`ip [-n NETNS] ARGS`; -n avoids the mount-namespace setup of `ip netns exec`."""
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    return run([*prefix, *args], check=check)


def ip_json(*args: str, netns: str | None = None) -> list[dict[str, Any]]:
    """`ip -j ...` parsed; an empty answer (iproute2 prints nothing at all) is []."""
    out = ip("-j", *args, netns=netns).stdout.strip()
    return json.loads(out) if out else []


# --- namespaces -------------------------------------------------------------------


def netns_exists(name: str) -> bool:
    return (NETNS_RUN_DIR / name).exists()


def list_netns(prefix: str = "") -> list[str]:
    try:
        names = os.listdir(NETNS_RUN_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def create_netns(name: str) -> None:
    """Create a namespace with its loopback up (servers may bind to 127.0.0.1).

    Fails if the name is taken. Either the namespace exists and is ready when this
    returns, or it was not created (a failure after creating it removes it again)."""
    ip("netns", "add", name)
    try:
        ip("link", "set", "dev", "lo", "up", netns=name)
    except BaseException:
        delete_netns(name)
        raise


def netns_pids(name: str) -> list[int]:
    if not netns_exists(name):
        return []
    out = ip("netns", "pids", name, check=False).stdout
    return [int(tok) for tok in out.split() if tok.isdigit()]


def delete_netns(name: str, kill_processes: bool = True) -> None:
    """Delete a namespace; a missing one is not an error.

    Processes still inside would keep the namespace (and its veth ends) alive after
    the name is gone, so they are killed first unless told otherwise.
    """
    if not netns_exists(name):
        return
    if kill_processes:
        for pid in netns_pids(name):
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    proc = ip("netns", "delete", name, check=False)
    if netns_exists(name):
        raise LabError(f"could not delete network namespace {name!r}: {proc.stderr.strip()}")


# --- links and addresses ----------------------------------------------------------


def create_veth_pair(
    name: str, netns: str, peer: str, peer_netns: str, mtu: int | None = None
) -> None:
    """Create a veth pair with each end born in its namespace.

    Creating the ends in place (rather than moving them) means they never appear in
    the caller's namespace and pick up that namespace's sysctl defaults.
    """
    mtu_args = ["mtu", str(mtu)] if mtu else []
    ip(
        "link", "add", "name", name, *mtu_args, "type", "veth",
        "peer", "name", peer, *mtu_args, "netns", peer_netns,
        netns=netns,
    )


def set_link_up(netns: str, ifname: str) -> None:
    ip("link", "set", "dev", ifname, "up", netns=netns)


def set_mtu(netns: str, ifname: str, mtu: int) -> None:
    ip("link", "set", "dev", ifname, "mtu", str(mtu), netns=netns)


def add_address(netns: str, ifname: str, cidr: str, preferred: bool = True) -> None:
    """Add an address; IPv6 ones skip DAD so they are usable immediately.

    preferred=False keeps an IPv6 address from being picked as a default source (it is
    deprecated, RFC 6724 rule 3) while it still works when bound explicitly. IPv4 needs
    no such flag: a second address in the same subnet is secondary anyway.
    """
    iface = ipaddress.ip_interface(cidr)
    extra = []
    if iface.version == 6:
        extra.append("nodad")
        if not preferred:
            extra += ["preferred_lft", "0"]
    ip("addr", "add", str(iface), "dev", ifname, *extra, netns=netns)


def link_show(netns: str, ifname: str) -> dict[str, Any] | None:
    """`ip -j -d link show` for one device, or None if it does not exist."""
    proc = ip("-j", "-d", "link", "show", "dev", ifname, netns=netns, check=False)
    if proc.returncode != 0:
        return None
    links = json.loads(proc.stdout or "[]")
    return links[0] if links else None


def link_addresses(netns: str, ifname: str) -> list[dict[str, Any]]:
    """The device's address entries (`addr_info` of `ip -j addr show`); [] if it is gone.

    A missing device is not an error: a veth end disappears asynchronously once its
    peer's namespace is deleted, so it may vanish between two queries.
    """
    proc = ip("-j", "addr", "show", "dev", ifname, netns=netns, check=False)
    if proc.returncode != 0:
        return []
    entries = json.loads(proc.stdout or "[]")
    return entries[0].get("addr_info", []) if entries else []


# --- sysctl -----------------------------------------------------------------------


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def set_sysctl(netns: str, key: str, value: str | int) -> None:
    """Write a net.* sysctl as seen from inside `netns`.

    /proc/sys/net resolves against the opening thread's network namespace, so opening
    the file after setns reaches the namespace's copy without a subprocess. Keys with
    dots in an interface name are not supported (lab names have none).
    """
    path = _sysctl_path(key)
    try:
        with enter_netns(netns):
            path.write_text(f"{value}\n")
    except OSError as exc:
        raise LabError(f"sysctl {key}={value} in {netns}: {exc.strerror}") from None


def get_sysctl(netns: str, key: str) -> str:
    with enter_netns(netns):
        return _sysctl_path(key).read_text().strip()


def disable_ipv6_dad_ra(netns: str, ifname: str = "default") -> None:
    """No DAD, router advertisements or solicitations on `ifname` ("all"/"default" ok).

    DAD would leave fresh addresses tentative for about a second, and RA/RS traffic
    would show up in filter counters as noise the tests did not send.
    """
    for knob, value in (
        ("accept_dad", 0),
        ("dad_transmits", 0),
        ("accept_ra", 0),
        ("router_solicitations", 0),
    ):
        set_sysctl(netns, f"net.ipv6.conf.{ifname}.{knob}", value)


# --- offloads (legacy ethtool ioctls: the ethtool binary may be missing) ----------

SIOCETHTOOL = 0x8946
# Feature name -> (get command, set command), from linux/ethtool.h.
_ETHTOOL_CMDS = {
    "rx": (0x14, 0x15),  # rx checksumming
    "tx": (0x16, 0x17),  # tx checksumming
    "sg": (0x18, 0x19),
    "tso": (0x1E, 0x1F),
    "gso": (0x23, 0x24),
    "gro": (0x2B, 0x2C),
}
OFFLOAD_FEATURES = tuple(_ETHTOOL_CMDS)


def _ethtool(sock: socket.socket, ifname: str, cmd: int, data: int = 0) -> int:
    value = ctypes.create_string_buffer(struct.pack("=II", cmd, data), 8)
    # struct ifreq: 16-byte name, then a union whose ifr_data points at `value`.
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    return struct.unpack("=II", value.raw)[1]


def _netns_socket(netns: str) -> socket.socket:
    with enter_netns(netns):
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def get_offloads(netns: str, ifname: str) -> dict[str, bool]:
    """Current offload switches; features the device cannot report are left out."""
    result: dict[str, bool] = {}
    with _netns_socket(netns) as sock:
        for name, (get_cmd, _) in _ETHTOOL_CMDS.items():
            try:
                result[name] = bool(_ethtool(sock, ifname, get_cmd))
            except OSError:
                pass
    return result


def set_offloads(netns: str, ifname: str, **features: bool) -> dict[str, bool]:
    """Switch offloads (names from OFFLOAD_FEATURES); returns which settings took.

    Best effort: a refused setting is reported as False instead of raising, because
    the lab works without it, only less like a real wire.
    """
    unknown = set(features) - set(_ETHTOOL_CMDS)
    if unknown:
        raise ValueError(f"unknown offload feature(s): {', '.join(sorted(unknown))}")
    applied: dict[str, bool] = {}
    with _netns_socket(netns) as sock:
        for name, enabled in features.items():
            get_cmd, set_cmd = _ETHTOOL_CMDS[name]
            try:
                _ethtool(sock, ifname, set_cmd, int(enabled))
                applied[name] = bool(_ethtool(sock, ifname, get_cmd)) == enabled
            except OSError:
                applied[name] = False
    return applied


# --- XDP --------------------------------------------------------------------------

# IFLA_XDP_ATTACHED values as printed by `ip -j link`.
XDP_MODES = {1: "native", 2: "generic", 3: "offload", 4: "multi"}


def xdp_attachment(link: dict[str, Any]) -> dict[str, Any] | None:
    """Summarise the `xdp` key of one `ip -j link show` entry; None if nothing attached.

    Returns {"mode": "native"|"generic"|"offload"|"multi", "programs": [{"mode": ...,
    "id": ..., "name": ...}]}.
    """
    xdp = link.get("xdp")
    if not xdp:
        return None
    programs = []
    for entry in xdp.get("attached") or [xdp]:
        prog = entry.get("prog") or {}
        programs.append(
            {
                "mode": XDP_MODES.get(entry.get("mode", 0), str(entry.get("mode"))),
                "id": prog.get("id"),
                "name": prog.get("name"),
            }
        )
    mode = xdp.get("mode", 0)
    return {"mode": XDP_MODES.get(mode, str(mode)), "programs": programs}
