"""The main job: `shieldwall demo` (make demo) runs its checks and leaves nothing behind."""

from __future__ import annotations

import re

import pytest

from shieldwall.dataplane import bpffs
from shieldwall.lab import DEFAULT_TOPOLOGY
from shieldwall.lab import netns as ns

from ..helpers import shieldwall

pytestmark = pytest.mark.netns


def test_demo_passes_its_checks_and_cleans_up():
    out = shieldwall("demo")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[FAIL]" not in out.stdout and "drop blocklisted" in out.stdout
    assert "drop-attacker" in out.stdout
    assert "in force in place" in out.stdout and "TTL ran out: reached" in out.stdout
    # The heavy hitter passes its burst, then its source is blocked.
    assert "200 passed (its burst)" in out.stdout and "1 block in force" in out.stdout
    assert re.search(r"drop blocked\s+[1-9]", out.stdout), out.stdout
    # The SYN flood is answered from XDP; none of it reaches the listen queue.
    assert re.search(r"tx syn_cookie\s+[1-9]", out.stdout), out.stdout
    assert re.search(r"SyncookiesSent [0-5], ListenOverflows 0, ListenDrops 0", out.stdout), out.stdout
    # The demo names its lab; the names are its own, and gone with their pins.
    built = re.search(r"^lab: (\S+) \(.*\) <-> (\S+) \(", out.stdout, re.MULTILINE)
    assert built, out.stdout
    namespaces = built.groups()
    assert not set(namespaces) & set(DEFAULT_TOPOLOGY.namespaces)
    assert not [name for name in namespaces if ns.netns_exists(name)]
    assert not [name for name in namespaces if bpffs.netns_pin_scope(name).exists()]
