"""Namespace tier: shieldwall attached in native mode on a lab veth, real traffic, counters
read back from a new process, and nothing left behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shieldwall.dataplane import bpffs
from shieldwall.kernel import xdp
from shieldwall.kernel.libbpf import BpfObject
from shieldwall.lab import topology
from shieldwall.lab.probes import tcp_connect
from shieldwall.lab.servers import start_tcp_server
from shieldwall.kernel.netns import enter_netns
from shieldwall.lab.traffic import IPV4_SRC_OFFSET, syn_flood_v4
from shieldwall.lab.trafgen import TrafficGenerator
from shieldwall.paths import object_path

from ..helpers import counter, server_status, shieldwall

pytestmark = pytest.mark.netns

PORT = 8081
POLICY = """\
version: 1
default_action: pass
fastpath:
  deny: [198.51.100.0/24, 192.0.2.66]
"""


@pytest.fixture()
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def test_native_attach_filters_real_traffic_and_detaches_cleanly(lab, policy):
    topo = lab
    up = shieldwall("up", "--netns", topo.server_ns, "--iface", topo.server_if,
                    "--mode", "native", "--config", str(policy))
    assert up.returncode == 0, up.stderr
    assert "native mode" in up.stdout

    with start_tcp_server(topo, PORT):
        assert tcp_connect(topo, PORT)
        assert tcp_connect(topo, PORT, dst=topo.server_v6)
        assert not tcp_connect(topo, PORT, src=topo.attacker_v4, timeout=0.5)

    template = syn_flood_v4(topo.server_mac, topo.outside_mac, topo.server_v4)
    with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
        gen.send(template, 100_000, spread_sources=200, src_offset=IPV4_SRC_OFFSET)

    # A new process reads the pinned state back.
    report = server_status(topo)
    assert report["attached"] and report["mode"] == "native"
    assert [c["stage"] for c in report["chain"]][0] == "fastpath"
    assert counter(report, "drop", "blocklisted") >= 100_000
    assert counter(report, "pass", "default") > 0  # the policy has no rules

    down = shieldwall("down", "--netns", topo.server_ns, "--iface", topo.server_if)
    assert down.returncode == 0, down.stderr
    assert topology.lab_status(topo)["xdp"] is None
    with enter_netns(topo.server_ns):
        assert not bpffs.pin_dir(topo.server_if).exists()
    with start_tcp_server(topo, PORT):
        assert tcp_connect(topo, PORT, src=topo.attacker_v4)


def test_reload_keeps_counters_and_swaps_programs(lab, policy):
    topo = lab
    assert shieldwall("up", "--allow-empty", "--netns", topo.server_ns,
                     "--iface", topo.server_if).returncode == 0
    first = server_status(topo)
    with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
        gen.send(syn_flood_v4(topo.server_mac, topo.outside_mac, topo.server_v4), 1000)
    reload = shieldwall("reload", "--netns", topo.server_ns, "--iface", topo.server_if,
                        "--config", str(policy))
    assert reload.returncode == 0, reload.stderr
    second = server_status(topo)
    assert second["prog_id"] != first["prog_id"]
    assert counter(second, "pass", "end_of_chain") >= 1000  # kept across the reload
    with start_tcp_server(topo, PORT):
        assert not tcp_connect(topo, PORT, src=topo.attacker_v4, timeout=0.5)


def test_lab_down_removes_attached_pipeline_and_pins(topo, policy):
    topo = topology.lab_up(topo)
    try:
        assert shieldwall("up", "--netns", topo.server_ns, "--iface", topo.server_if,
                          "--config", str(policy)).returncode == 0
        assert bpffs.netns_pin_scope(topo.server_ns).is_dir()
    finally:
        topology.lab_down(topo)
    assert not bpffs.netns_pin_scope(topo.server_ns).exists()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    assert not set(topo.namespaces) & set(listed)


def test_foreign_program_is_refused_without_force(lab):
    topo = lab
    with BpfObject(object_path("bare_drop")) as foreign, enter_netns(topo.server_ns):
        foreign.load()
        xdp.attach(topo.server_ifindex, foreign.program("sw_bare_drop").fd, "native")
        foreign_id = xdp.query(topo.server_ifindex).prog_id
    refused = shieldwall("up", "--allow-empty", "--netns", topo.server_ns, "--iface", topo.server_if)
    assert refused.returncode == 2
    assert "foreign XDP program" in refused.stderr and "--force" in refused.stderr
    with enter_netns(topo.server_ns):
        assert xdp.query(topo.server_ifindex).prog_id == foreign_id  # untouched
        assert not bpffs.pin_dir(topo.server_if).exists()
    forced = shieldwall("up", "--allow-empty", "--netns", topo.server_ns, "--iface", topo.server_if,
                        "--force")
    assert forced.returncode == 0, forced.stderr
    assert server_status(topo)["attached"]
    assert shieldwall("down", "--netns", topo.server_ns, "--iface", topo.server_if).returncode == 0


def test_netlink_replace_checks_the_program_it_replaces(lab):
    topo = lab
    with BpfObject(object_path("bare_drop")) as a, BpfObject(object_path("bare_drop")) as b, \
            enter_netns(topo.server_ns):
        a.load()
        b.load()
        fd_a, fd_b = a.program("sw_bare_drop").fd, b.program("sw_bare_drop").fd
        xdp.attach(topo.server_ifindex, fd_a, "native")
        with pytest.raises(Exception) as busy:
            xdp.attach(topo.server_ifindex, fd_b, "native")  # no displacing without REPLACE
        assert busy.value.errno == 16
        xdp.attach(topo.server_ifindex, fd_b, "native", replace_fd=fd_a)
        with pytest.raises(Exception) as stale:
            xdp.attach(topo.server_ifindex, fd_a, "native", replace_fd=fd_a)  # a is gone
        assert stale.value.errno == 17
        xdp.detach(topo.server_ifindex, "native", expected_fd=fd_b)
        assert xdp.query(topo.server_ifindex).mode is None
