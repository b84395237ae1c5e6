"""The namespace lab: build, real traffic over v4/v6, status, idempotence, teardown, and
labs that coexist. Each test builds its own lab under names of its own (the `topo`
fixture) and never touches any other namespace."""

from __future__ import annotations

import ctypes
import os
import platform
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from shieldwall.dataplane import bpffs
from shieldwall.lab import netns as ns
from shieldwall.lab import topology
from shieldwall.lab import (
    DEFAULT_TOPOLOGY,
    LabError,
    LabTopology,
    enter_netns,
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

from ..helpers import shieldwall

pytestmark = pytest.mark.netns

PORT = 8080


def existing(topo: LabTopology) -> list[str]:
    return [name for name in topo.namespaces if ns.netns_exists(name)]


def own_netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


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


def test_lab_carries_v4_and_v6_traffic_then_goes_away(topo) -> None:
    with topology.lab(topo) as built:
        assert existing(topo) == list(topo.namespaces)
        assert built.server_mac and built.outside_mac and built.server_mac != built.outside_mac
        assert built.server_ifindex > 0
        topo = built

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

        status = lab_status(topo)
        assert status["healthy"], status["problems"]
        srv = status["links"][topo.server_if]
        assert srv["state"] == "UP" and srv["mtu"] == 1500
        assert srv["mac"] == topo.server_mac
        assert set(srv["addresses"]) == {"192.0.2.1/24", "2001:db8:0:1::1/64"}
        assert set(status["links"][topo.outside_if]["addresses"]) == set(topo.outside_cidrs())
        assert status["xdp_attached"] is False and srv["xdp"] is None
    assert existing(topo) == []
    assert lab_status(topo)["healthy"] is False


def test_a_throw_away_lab_has_names_of_its_own() -> None:
    with topology.lab() as first, topology.lab() as second:
        names = {*first.namespaces, *second.namespaces}
        assert len(names) == 4 and not names & set(DEFAULT_TOPOLOGY.namespaces)
        assert lab_status(first)["healthy"] and lab_status(second)["healthy"]
        assert ping(first) and ping(second)
    assert not [name for name in names if ns.netns_exists(name)]


def test_default_source_is_the_client(lab) -> None:
    topo = lab
    with start_tcp_server(topo, PORT, lifetime=30):
        assert tcp_banner(topo, PORT) == f"sw-lab {topo.client_v4}"
        assert tcp_banner(topo, PORT, dst=topo.server_v6) == f"sw-lab {topo.client_v6}"
        assert tcp_banner(topo, PORT, src=topo.attacker_v4) == f"sw-lab {topo.attacker_v4}"
        got = tcp_banner(topo, PORT, dst=topo.server_v6, src=topo.attacker_v6)
        assert got == f"sw-lab {topo.attacker_v6}"


def test_lab_up_is_idempotent(topo) -> None:
    first = lab_up(topo)
    inode = os.stat(f"/run/netns/{topo.server_ns}").st_ino
    second = lab_up(topo)
    assert second == first
    assert os.stat(f"/run/netns/{topo.server_ns}").st_ino == inode  # not rebuilt


def test_lab_up_rebuilds_a_partial_lab(topo) -> None:
    lab_up(topo)
    ns.delete_netns(topo.outside_ns)
    assert lab_status(topo)["healthy"] is False
    topo = lab_up(topo)
    assert lab_status(topo)["healthy"]
    assert ping(topo)
    lab_down(topo)
    assert existing(topo) == []


def test_a_failed_build_removes_what_it_created_and_only_that(topo, monkeypatch) -> None:
    # The server's name is taken between the check and the build (another run got there
    # first): the build fails, and the namespace that run made is left alone.
    create = ns.create_netns

    def taken_meanwhile(name: str) -> None:
        if name == topo.server_ns:
            create(name)  # the other run's
        create(name)

    monkeypatch.setattr(ns, "create_netns", taken_meanwhile)
    try:
        with pytest.raises(LabError, match="File exists"):
            lab_up(topo)
        assert existing(topo) == [topo.server_ns]
    finally:
        ns.delete_netns(topo.server_ns)


def test_lab_down_leaves_other_labs_alone(topo) -> None:
    other = LabTopology.unique()
    try:
        other = lab_up(other)
        up = shieldwall("up", "--allow-empty", "--netns", other.server_ns, "--iface", other.server_if)
        assert up.returncode == 0, up.stderr
        with start_udp_echo(other, PORT, lifetime=30) as echo:
            lab_up(topo)
            lab_down(topo)
            assert existing(topo) == []
            assert echo.alive
            assert udp_roundtrip(other, PORT)
            status = lab_status(other)
            assert status["healthy"] and status["xdp_attached"]
        assert bpffs.netns_pin_scope(other.server_ns).is_dir()
    finally:
        lab_down(other)
    assert not bpffs.netns_pin_scope(other.server_ns).exists()


def test_lab_context_tears_down_after_an_error(topo) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with topology.lab(topo):
            assert existing(topo) == list(topo.namespaces)
            raise RuntimeError("boom")
    assert existing(topo) == []


def test_enter_netns_switches_and_restores(lab) -> None:
    topo = lab
    outside = own_netns_inode()
    with pytest.raises(OSError):
        socket.if_nametoindex(topo.server_if)
    with enter_netns(topo.server_ns):
        assert own_netns_inode() != outside
        assert socket.if_nametoindex(topo.server_if) == topo.server_ifindex
        with enter_netns(topo.outside_ns):  # nesting restores to the enclosing one
            assert socket.if_nametoindex(topo.outside_if) == topo.outside_ifindex
        assert socket.if_nametoindex(topo.server_if) == topo.server_ifindex
    assert own_netns_inode() == outside
    with pytest.raises(OSError):
        socket.if_nametoindex(topo.server_if)

    with pytest.raises(KeyError):
        with enter_netns(topo.server_ns):
            raise KeyError("restored even on error")
    assert own_netns_inode() == outside
    # Only the network namespace moved: the mount namespace (and bpffs) is the host's.
    mnt = os.stat("/proc/thread-self/ns/mnt").st_ino
    with enter_netns(topo.server_ns):
        assert os.stat("/proc/thread-self/ns/mnt").st_ino == mnt


def test_status_reports_xdp_and_probes_see_drops(lab) -> None:
    topo = lab
    with start_tcp_server(topo, PORT, lifetime=30):
        with xdp_returning(_XDP_PASS, topo.server_ns, topo.server_if):
            status = lab_status(topo)
            assert status["xdp_attached"] is True
            assert status["xdp"]["mode"] == "native"
            assert status["xdp"]["programs"][0]["name"] == "sw_lab_test"
            assert tcp_connect(topo, PORT) and tcp_connect(topo, PORT, dst=topo.server_v6)
        with xdp_returning(_XDP_DROP, topo.server_ns, topo.server_if):
            assert not ping(topo, timeout=0.3)
            assert not tcp_connect(topo, PORT, timeout=0.5)
            assert not tcp_connect(topo, PORT, dst=topo.server_v6, timeout=0.5)
        assert lab_status(topo)["xdp_attached"] is False
        assert tcp_connect(topo, PORT)


def test_servers_have_a_bounded_lifetime(lab) -> None:
    topo = lab
    server = start_tcp_server(topo, PORT, lifetime=0.5)
    try:
        assert server.proc.wait(timeout=10) == 0
    finally:
        server.stop()
    with start_udp_echo(topo, PORT, lifetime=30) as echo:
        assert echo.alive
    assert not echo.alive


def test_server_start_failure_is_reported(lab) -> None:
    with pytest.raises(LabError, match="did not start"):
        start_tcp_server(lab, PORT, addrs=["203.0.113.9"])  # not an address of the server


def test_offloads_are_set_for_xdp(lab) -> None:
    for link in lab_status(lab)["links"].values():
        assert link["offloads"].get("gro") is True
        assert link["offloads"].get("tx") is False


def test_run_inside_a_namespace(lab) -> None:
    topo = lab
    out = run(["ip", "-br", "link", "show", "dev", topo.server_if], netns=topo.server_ns).stdout
    assert out.startswith(f"{topo.server_if}@")
    with pytest.raises(LabError, match=topo.server_if):
        run(["ip", "link", "show", "dev", topo.server_if], netns=topo.outside_ns)


def test_lab_down_kills_processes_left_inside(lab) -> None:
    topo = lab
    server = start_tcp_server(topo, PORT, lifetime=30)
    try:
        lab_down(topo)  # as after a crash: nobody stopped the server
        assert server.proc.wait(timeout=5) != 0
    finally:
        server.stop()

