"""Namespace tier: labs of the test's own, real traffic, pins on the run's own bpffs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shieldwall.lab import LabTopology, lab_down, lab_up
from shieldwall.lab import netns as ns

from .peer_lab import PeerLab


@pytest.fixture(scope="session", autouse=True)
def _pins_of_this_run(private_bpffs):
    yield private_bpffs


@pytest.fixture(scope="module")
def peer_lab() -> Iterator[PeerLab]:
    """Two namespaces and a veth of this module's own, and a way to see which frames got
    past a hook (peer_lab.py)."""
    made = PeerLab.create()
    try:
        yield made
    finally:
        made.destroy()


@pytest.fixture()
def topo() -> Iterator[LabTopology]:
    """Names for this test alone (nothing is built yet); whatever the test builds under
    them is torn down afterwards, and only that."""
    topo = LabTopology.unique()
    yield topo
    lab_down(topo)
    assert not [name for name in topo.namespaces if ns.netns_exists(name)]


@pytest.fixture()
def lab(topo: LabTopology) -> LabTopology:
    """A lab of the test's own, up, with its MACs and ifindexes read back."""
    return lab_up(topo)
