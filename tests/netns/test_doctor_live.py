"""The doctor on this machine, live: a veth pair in namespaces of the test's own, read
through netlink, ethtool and libbpf's probes, and the verdict that follows."""

from __future__ import annotations

import json

import pytest

from shieldwall.doctor import LiveFacts, Recorded, examine, plan_modes
from shieldwall.kernel import libbpf, xdp
from shieldwall.kernel.netns import enter_netns
from shieldwall.lab import netns as ns
from shieldwall.paths import object_path
from tests.helpers import shieldwall


@pytest.fixture()
def veth(topo):
    """A bare veth pair: the server end in the server namespace, both ends up."""
    for name in topo.namespaces:
        ns.create_netns(name)
    ns.create_veth_pair(topo.server_if, topo.server_ns, topo.outside_if, topo.outside_ns)
    ns.set_link_up(topo.server_ns, topo.server_if)
    ns.set_link_up(topo.outside_ns, topo.outside_if)
    return topo


def finding(report, check):
    return next(f for f in report.findings if f.check == check)


def test_live_facts_of_this_machine(veth):
    facts = LiveFacts(netns=veth.server_ns, steal_seconds=0.1)
    iface = facts.interface(veth.server_if)
    assert iface["driver"] == "veth"
    assert iface["link"]["kind"] == "veth" and iface["link"]["mtu"] == 1500
    # Kernel 6.3+ says what the driver does through netlink, from inside the namespace.
    assert iface["xdp_features"]["available"] and "basic" in iface["xdp_features"]["flags"]
    assert iface["xdp"] == {"mode": None, "programs": []}
    assert iface["tcx"] == {"ingress": [], "egress": []}

    host = facts.host()
    # Read outside the namespace: the JIT sysctls exist only in the initial one.
    assert host["sysctl"]["net/core/bpf_jit_enable"] in ("0", "1", "2")
    probes = host["probes"]
    assert probes["prog_types"]["xdp"]["supported"] and probes["prog_types"]["sched_cls"]["supported"]
    assert all(probes["helpers"]["xdp"].values()) and all(probes["map_types"].values())
    # This machine's profile: the kernel has ext, tracing and lsm but refuses them.
    for t in ("ext", "tracing", "lsm"):
        assert probes["prog_types"][t] == {"supported": False, "errno": 1}


def test_live_verdict_on_a_veth(veth):
    report = examine(veth.server_if, LiveFacts(netns=veth.server_ns, steal_seconds=0.1))
    assert finding(report, "iface.native_xdp").status == "ok"
    assert "xdp-features" in finding(report, "iface.native_xdp").evidence
    assert finding(report, "bpf.btf").status == "ok"
    assert finding(report, "kernel.tcx").status == "ok"
    assert finding(report, "bpf.helpers").status == "ok"
    optional = finding(report, "bpf.prog_type.optional")
    assert optional.status == "ok"
    assert "restricted-BPF profile" in optional.evidence and "tail calls" in optional.impact
    assert report.best_mode == "native"
    assert [m for m, _ in plan_modes(report)] == ["native", "generic", "tc", "nft"]


def test_a_foreign_xdp_program_moves_the_verdict_to_tc(veth):
    obj = libbpf.BpfObject(object_path("bare_drop"))
    try:
        obj.load()
        prog = obj.program("sw_bare_drop")
        with enter_netns(veth.server_ns):
            index = xdp.ifindex(veth.server_if)
            xdp.attach(index, prog.fd, "native")
        report = examine(veth.server_if, LiveFacts(netns=veth.server_ns, steal_seconds=0.1))
        f = finding(report, "iface.xdp_programs")
        assert f.status == "fail" and "sw_bare_drop" in f.evidence and "(native)" in f.evidence
        assert report.best_mode == "tc"
        with enter_netns(veth.server_ns):
            xdp.detach(index, "native")
    finally:
        obj.close()


def test_cli_json_and_record_on_this_machine(veth, tmp_path):
    record = tmp_path / "here.json"
    out = shieldwall("doctor", "--netns", veth.server_ns, "--iface", veth.server_if, "--json",
                     "--record", str(record))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["best_mode"] == "native"
    assert {"check", "status", "evidence", "impact", "remedy"} <= set(report["findings"][0])
    replay = examine(veth.server_if, Recorded.load(record))
    assert replay.best_mode == "native"
    assert {f.check: f.status for f in replay.findings if f.check.startswith("iface.")} == {
        f["check"]: f["status"] for f in report["findings"] if f["check"].startswith("iface.")}


def test_cli_clear_errors_for_a_missing_interface_or_namespace(veth):
    out = shieldwall("doctor", "--netns", veth.server_ns, "--iface", "sw-nope0")
    assert out.returncode == 2 and "no interface named 'sw-nope0'" in out.stderr
    assert "Traceback" not in out.stderr
    out = shieldwall("doctor", "--netns", veth.server_ns + "-gone", "--iface", veth.server_if)
    assert out.returncode == 2 and "does not exist" in out.stderr
