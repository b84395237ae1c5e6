"""The namespace lab: build, real traffic over v4/v6, status, idempotence, teardown."""

from __future__ import annotations

import ctypes
import os
import platform
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from shieldwall.kernel.netns import NamespaceError
from shieldwall.lab import netns as ns
from shieldwall.lab import topology as topo_mod
from shieldwall.lab import (
    LabError,
    LabTopology,
    enter_netns,
    lab,
    lab_down,
    lab_status,
    lab_up,
    ping,
    run,
    start_tcp_server,
    start_udp_echo,
    tcp_banner,
    tcp_connect,
    udp_roundtrip,
)

pytestmark = pytest.mark.netns

PORT = 8080


def sw_namespaces() -> list[str]:
    return ns.list_netns(topo_mod.LAB_PREFIX)


def own_netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


@pytest.fixture(autouse=True)
def no_lab_left_behind() -> Iterator[None]:
    yield
    lab_down()
    assert sw_namespaces() == []


# --- a minimal XDP program, loaded without a compiler ------------------------------

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
_XDP_DROP, _XDP_PASS = 1, 2


def _bpf(cmd: int, attr: bytes) -> int:
    assert _NR_BPF is not None, f"bpf syscall number unknown on {platform.machine()}"
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(attr, 128)
    fd = libc.syscall(_NR_BPF, cmd, buf, len(attr))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


@contextmanager
def xdp_returning(action: int, netns: str, ifname: str) -> Iterator[None]:
    """Attach `return action;` in native mode through a BPF link for the block."""
    insns = struct.pack("<BBhi", 0xB7, 0, 0, action) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    insn_buf = ctypes.create_string_buffer(insns, len(insns))
    license_buf = ctypes.create_string_buffer(b"GPL")
    bpf_xdp = 37  # attach type BPF_XDP
    prog_fd = _bpf(5, struct.pack(  # BPF_PROG_LOAD, prog type XDP (6)
        "=IIQQIIQII16sII", 6, 2, ctypes.addressof(insn_buf), ctypes.addressof(license_buf),
        0, 0, 0, 0, 0, b"sw_lab_test", 0, bpf_xdp))
    try:
        with enter_netns(netns):  # the link resolves the ifindex in the caller's netns
            ifindex = socket.if_nametoindex(ifname)
            xdp_flags_drv_mode = 4
            link_fd = _bpf(28, struct.pack("=IIII", prog_fd, ifindex, bpf_xdp,
                                           xdp_flags_drv_mode))  # BPF_LINK_CREATE
        try:
            yield
        finally:
            os.close(link_fd)  # closing the only link fd detaches the program
    finally:
        os.close(prog_fd)



# --- tests ------------------------------------------------------------------------


def test_lab_carries_v4_and_v6_traffic_then_goes_away() -> None:
    with lab() as topo:
        assert set(sw_namespaces()) == {"sw-outside", "sw-server"}
        assert topo.server_mac and topo.outside_mac and topo.server_mac != topo.outside_mac
        assert topo.server_ifindex > 0

        for dst, attacker in ((topo.server_v4, topo.attacker_v4),
                              (topo.server_v6, topo.attacker_v6)):
            assert ping(topo, dst), dst
            assert ping(topo, dst, src=attacker), attacker

        with start_tcp_server(topo, PORT, lifetime=30), start_udp_echo(topo, PORT, lifetime=30):
            for dst, srcs in (
                (topo.server_v4, (None, topo.client_v4, topo.attacker_v4)),
                (topo.server_v6, (None, topo.client_v6, topo.attacker_v6)),
            ):
                for src in srcs:
                    assert tcp_connect(topo, PORT, dst=dst, src=src), (dst, src)
                    assert udp_roundtrip(topo, PORT, dst=dst, src=src), (dst, src)
        # Nothing listens any more: refused, not hanging.
        assert not tcp_connect(topo, PORT, timeout=0.5)
        assert not udp_roundtrip(topo, PORT, timeout=0.3)

        status = lab_status()
        assert status["healthy"], status["problems"]
        assert status["stray_namespaces"] == []
        srv = status["links"]["sw-srv0"]
        assert srv["state"] == "UP" and srv["mtu"] == 1500
        assert srv["mac"] == topo.server_mac
        assert set(srv["addresses"]) == {"192.0.2.1/24", "2001:db8:0:1::1/64"}
        assert set(status["links"]["sw-out0"]["addresses"]) == set(topo.outside_cidrs())
        assert status["xdp_attached"] is False and srv["xdp"] is None
    assert sw_namespaces() == []
    assert lab_status()["healthy"] is False


def test_default_source_is_the_client() -> None:
    with lab() as topo, start_tcp_server(topo, PORT, lifetime=30):
        assert tcp_banner(topo, PORT) == f"sw-lab {topo.client_v4}"
        assert tcp_banner(topo, PORT, dst=topo.server_v6) == f"sw-lab {topo.client_v6}"
        assert tcp_banner(topo, PORT, src=topo.attacker_v4) == f"sw-lab {topo.attacker_v4}"
        got = tcp_banner(topo, PORT, dst=topo.server_v6, src=topo.attacker_v6)
        assert got == f"sw-lab {topo.attacker_v6}"


def test_lab_up_is_idempotent() -> None:
    first = lab_up()
    inode = os.stat("/run/netns/sw-server").st_ino
    second = lab_up()
    assert second == first
    assert os.stat("/run/netns/sw-server").st_ino == inode  # not rebuilt


def test_lab_up_rebuilds_a_partial_lab_and_down_removes_strays() -> None:
    lab_up()
    ns.delete_netns("sw-outside")
    ns.create_netns("sw-stale")
    assert lab_status()["healthy"] is False
    topo = lab_up()
    assert lab_status()["healthy"]
    assert ping(topo)
    lab_down()
    assert sw_namespaces() == []


def test_lab_down_when_nothing_exists() -> None:
    lab_down()
    lab_down()
    status = lab_status()
    assert status["namespaces"] == {"sw-outside": False, "sw-server": False}
    assert status["links"]["sw-srv0"]["present"] is False


def test_lab_context_tears_down_after_an_error() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with lab():
            raise RuntimeError("boom")
    assert sw_namespaces() == []


def test_enter_netns_switches_and_restores() -> None:
    topo = lab_up()
    outside = own_netns_inode()
    with pytest.raises(OSError):
        socket.if_nametoindex("sw-srv0")
    with enter_netns("sw-server"):
        assert own_netns_inode() != outside
        assert socket.if_nametoindex("sw-srv0") == topo.server_ifindex
        with enter_netns("sw-outside"):  # nesting restores to the enclosing one
            assert socket.if_nametoindex("sw-out0") == topo.outside_ifindex
        assert socket.if_nametoindex("sw-srv0") == topo.server_ifindex
    assert own_netns_inode() == outside
    with pytest.raises(OSError):
        socket.if_nametoindex("sw-srv0")

    with pytest.raises(KeyError):
        with enter_netns("sw-server"):
            raise KeyError("restored even on error")
    assert own_netns_inode() == outside
    # Only the network namespace moved: the mount namespace (and bpffs) is the host's.
    mnt = os.stat("/proc/thread-self/ns/mnt").st_ino
    with enter_netns("sw-server"):
        assert os.stat("/proc/thread-self/ns/mnt").st_ino == mnt


def test_enter_netns_unknown_namespace() -> None:
    with pytest.raises(NamespaceError, match="sw-nonexistent"):
        with enter_netns("sw-nonexistent"):
            pass


def test_status_reports_xdp_and_probes_see_drops() -> None:
    topo = lab_up()
    with start_tcp_server(topo, PORT, lifetime=30):
        with xdp_returning(_XDP_PASS, topo.server_ns, topo.server_if):
            status = lab_status()
            assert status["xdp_attached"] is True
            assert status["xdp"]["mode"] == "native"
            assert status["xdp"]["programs"][0]["name"] == "sw_lab_test"
            assert tcp_connect(topo, PORT) and tcp_connect(topo, PORT, dst=topo.server_v6)
        with xdp_returning(_XDP_DROP, topo.server_ns, topo.server_if):
            assert not ping(topo, timeout=0.3)
            assert not tcp_connect(topo, PORT, timeout=0.5)
            assert not tcp_connect(topo, PORT, dst=topo.server_v6, timeout=0.5)
        assert lab_status()["xdp_attached"] is False
        assert tcp_connect(topo, PORT)


def test_servers_have_a_bounded_lifetime() -> None:
    topo = lab_up()
    server = start_tcp_server(topo, PORT, lifetime=0.5)
    try:
        assert server.proc.wait(timeout=10) == 0
    finally:
        server.stop()
    with start_udp_echo(topo, PORT, lifetime=30) as echo:
        assert echo.alive
    assert not echo.alive


def test_server_start_failure_is_reported() -> None:
    topo = lab_up()
    with pytest.raises(LabError, match="did not start"):
        start_tcp_server(topo, PORT, addrs=["203.0.113.9"])  # not an address of the server


def test_offloads_are_set_for_xdp() -> None:
    lab_up()
    for link in lab_status()["links"].values():
        assert link["offloads"].get("gro") is True
        assert link["offloads"].get("tx") is False


def test_run_errors_name_the_command() -> None:
    with pytest.raises(LabError, match=r"ip link show dev sw-nope.*exit status"):
        run(["ip", "link", "show", "dev", "sw-nope"])
    with pytest.raises(LabError, match="sw-no-such-binary"):
        run(["sw-no-such-binary"])
    assert run(["false"], check=False).returncode == 1


def test_run_inside_a_namespace() -> None:
    lab_up()
    out = run(["ip", "-br", "link", "show", "dev", "sw-srv0"], netns="sw-server").stdout
    assert out.startswith("sw-srv0@")
    with pytest.raises(LabError, match="sw-srv0"):
        run(["ip", "link", "show", "dev", "sw-srv0"], netns="sw-outside")


def test_xdp_attachment_parsing() -> None:
    assert ns.xdp_attachment({"ifname": "x"}) is None
    multi = {"xdp": {"mode": 4, "attached": [
        {"mode": 2, "prog": {"id": 7, "name": "a"}},
        {"mode": 1, "prog": {"id": 9, "name": "b"}},
    ]}}
    assert ns.xdp_attachment(multi) == {"mode": "multi", "programs": [
        {"mode": "generic", "id": 7, "name": "a"},
        {"mode": "native", "id": 9, "name": "b"},
    ]}


def test_topology_facts() -> None:
    topo = LabTopology()
    assert topo.namespaces == ("sw-outside", "sw-server")
    assert topo.server_cidrs() == ["192.0.2.1/24", "2001:db8:0:1::1/64"]
    assert topo.outside_cidrs()[0] == "192.0.2.2/24"


def test_lab_down_kills_processes_left_inside() -> None:
    topo = lab_up()
    server = start_tcp_server(topo, PORT, lifetime=30)
    try:
        lab_down()  # as after a crash: nobody stopped the server
        assert server.proc.wait(timeout=5) != 0
    finally:
        server.stop()
