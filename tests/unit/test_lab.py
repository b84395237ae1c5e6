"""The lab's pure parts: topology facts and names, command errors, parsing. Nothing here
builds a namespace or needs root."""

from __future__ import annotations

import pytest

from shieldwall.kernel.netns import NamespaceError
from shieldwall.lab import (DEFAULT_TOPOLOGY, LabError, LabTopology, enter_netns, lab_down,
                            lab_status, run)
from shieldwall.lab import netns as ns
from shieldwall.lab import topology


def test_topology_facts() -> None:
    topo = LabTopology()
    assert topo == DEFAULT_TOPOLOGY
    assert topo.namespaces == ("sw-outside", "sw-server")
    assert (topo.outside_if, topo.server_if) == ("sw-out0", "sw-srv0")
    assert topo.server_cidrs() == ["192.0.2.1/24", "2001:db8:0:1::1/64"]
    assert topo.outside_cidrs()[0] == "192.0.2.2/24"


def test_unique_topologies_have_names_of_their_own() -> None:
    topos = [LabTopology.unique() for _ in range(50)]
    names = [name for t in topos for name in (*t.namespaces, t.outside_if, t.server_if)]
    assert len(set(names)) == len(names)
    for t in topos:
        assert t.outside_ns.startswith("sw-") and t.outside_ns.endswith("-outside")
        assert t.server_ns.startswith("sw-") and t.server_ns.endswith("-server")
        assert all(len(name) <= 15 for name in (t.outside_if, t.server_if))
        assert t.outside_ns.split("-")[1] == t.server_if.split("-")[1]  # one token per lab
        assert (t.server_v4, t.mtu) == (DEFAULT_TOPOLOGY.server_v4, DEFAULT_TOPOLOGY.mtu)
    assert LabTopology.unique(mtu=9000).mtu == 9000
    with pytest.raises(ValueError):
        LabTopology.unique(prefix="sw-much-too-long-")  # its interface names would not fit


def test_unique_skips_a_token_an_existing_namespace_carries(monkeypatch) -> None:
    tokens = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(topology.secrets, "token_hex", lambda n: next(tokens))
    monkeypatch.setattr(ns, "list_netns", lambda prefix="": ["sw-aaaaaa-server"])
    assert LabTopology.unique().outside_ns == "sw-bbbbbb-outside"


@pytest.mark.parametrize("field,name", [
    ("server_if", "sw-0123456789abc"),  # 16 bytes: one more than the kernel keeps
    ("outside_if", ""),
    ("outside_if", "sw/0"),
    ("server_ns", "../etc"),
])
def test_unusable_names_are_refused(field, name) -> None:
    with pytest.raises(ValueError):
        LabTopology(**{field: name})


def test_a_lab_that_does_not_exist() -> None:
    topo = LabTopology.unique()
    lab_down(topo)
    lab_down(topo)
    status = lab_status(topo)
    assert status["healthy"] is False
    assert status["namespaces"] == {topo.outside_ns: False, topo.server_ns: False}
    assert status["links"][topo.server_if]["present"] is False


def test_run_errors_name_the_command() -> None:
    absent = LabTopology.unique().server_if
    with pytest.raises(LabError, match=rf"ip link show dev {absent}.*exit status"):
        run(["ip", "link", "show", "dev", absent])
    with pytest.raises(LabError, match="sw-no-such-binary"):
        run(["sw-no-such-binary"])
    assert run(["false"], check=False).returncode == 1


def test_enter_netns_unknown_namespace() -> None:
    absent = LabTopology.unique().server_ns
    with pytest.raises(NamespaceError, match=absent):
        with enter_netns(absent):
            pass
    with pytest.raises(NamespaceError, match="not a network namespace name"):
        with enter_netns("../x"):
            pass


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



def test_replayed_counts_each_frame_from_per_cpu_counts() -> None:
    from shieldwall.lab.trafgen import replayed
    # CPU 0 sent frames 3..9 (7 frames), CPU 1 frames 0..11 (three rounds of 4).
    assert replayed([3, 0], [10, 12], 4) == [3 + 2, 3 + 2, 3 + 1, 3 + 2]
    assert replayed([5, 7], [5, 7], 3) == [0, 0, 0]
    assert sum(replayed([1, 2, 3], [1001, 2002, 3003], 18)) == 6000
    with pytest.raises(ValueError):
        replayed([5], [4], 2)
    with pytest.raises(ValueError):
        replayed([0], [1], 0)
