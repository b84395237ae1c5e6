"""`shieldwall gc` and `down --purge`: the pins of namespaces and interfaces that are gone
are removed, and said; a pipeline whose interface still exists is never touched."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from shieldwall.dataplane import bpffs
from shieldwall.engine.records import state_root
from shieldwall.dataplane.pipeline import Pipeline, PipelineConfig
from shieldwall.lab import LabTopology, lab_down, lab_up
from shieldwall.lab import netns as ns
from shieldwall.kernel.netns import enter_netns

from ..helpers import server_status, shieldwall

pytestmark = pytest.mark.netns


def up(topo: LabTopology) -> None:
    out = shieldwall("up", "--allow-empty", "--netns", topo.server_ns, "--iface", topo.server_if)
    assert out.returncode == 0, out.stderr


def pin_dir(topo: LabTopology):
    with enter_netns(topo.server_ns):
        return bpffs.pin_dir(topo.server_if)


@pytest.fixture()
def other() -> Iterator[LabTopology]:
    """A second lab, attached: what gc must leave alone."""
    topo = lab_up(LabTopology.unique())
    try:
        up(topo)
        yield topo
    finally:
        lab_down(topo)


def test_the_pins_of_a_deleted_namespace(lab, other):
    up(lab)
    scope = bpffs.netns_pin_scope(lab.server_ns)
    ns.delete_netns(lab.server_ns)  # as `ip netns delete` does: the pins stay
    assert scope.is_dir()
    records = state_root() / f"netns-{lab.server_ns}"
    assert records.is_dir()
    out = shieldwall("gc")
    assert out.returncode == 0, out.stderr
    # (Records of namespaces that earlier tests of this run deleted go too.)
    lines = out.stdout.splitlines()
    assert f"removed {scope}: network namespace '{lab.server_ns}' no longer exists" in lines
    assert (f"removed {records}: records of network namespace '{lab.server_ns}', which no "
            "longer exists") in lines
    assert not [line for line in lines if other.server_ns in line]
    assert not scope.exists() and not records.exists()
    assert server_status(other)["attached"]  # untouched
    assert (state_root() / f"netns-{other.server_ns}").is_dir()


def test_the_pins_of_a_deleted_interface(lab, other):
    up(lab)
    directory = pin_dir(lab)
    ns.ip("link", "del", lab.server_if, netns=lab.server_ns)
    out = shieldwall("gc")
    assert out.returncode == 0, out.stderr
    assert f"removed {directory}: interface '{lab.server_if}' no longer exists" in out.stdout
    assert not directory.exists() and not directory.parent.exists()  # no empty scope left
    assert server_status(other)["attached"]
    assert shieldwall("gc").stdout.strip() == "no stale pins"


def test_the_host_scope_is_judged_from_the_host_namespace_only(lab):
    absent = LabTopology.unique().server_if
    directory = bpffs.tree() / "host" / absent
    with Pipeline.load(PipelineConfig()) as pipeline:
        pipeline.pin(directory / "gen-1", directory / "state")
    try:
        inside = subprocess.run(["ip", "netns", "exec", lab.server_ns, sys.executable, "-m",
                                 "shieldwall", "gc"], capture_output=True, text=True, timeout=120)
        assert inside.returncode == 0, inside.stderr
        assert f"kept {directory.parent}: only gc run in the host's own" in inside.stdout
        assert (directory / "gen-1" / "prog_root").exists()
        out = shieldwall("gc")
        assert out.returncode == 0, out.stderr
        assert f"removed {directory}: interface '{absent}' no longer exists" in out.stdout
    finally:
        bpffs.remove_pins(directory)


def test_down_purge(lab, other, topo):
    gone = lab_up(LabTopology.unique())
    try:
        up(gone)
        ns.delete_netns(gone.server_ns)
        up(lab)
        out = shieldwall("down", "--purge", "--netns", lab.server_ns, "--iface", lab.server_if)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == f"shieldwall detached from {lab.server_if}"
        assert (f"removed {bpffs.netns_pin_scope(gone.server_ns)}: network namespace "
                f"'{gone.server_ns}' no longer exists") in lines
        assert (f"removed {state_root() / ('netns-' + gone.server_ns)}: records of network "
                f"namespace '{gone.server_ns}', which no longer exists") in lines
        assert not [line for line in lines if other.server_ns in line or lab.server_ns in line]
        assert server_status(other)["attached"]
    finally:
        lab_down(gone)
