"""The main job: `shieldwall demo` (make demo) runs its checks and leaves nothing behind."""

from __future__ import annotations

import subprocess

import pytest

from shieldwall.dataplane import bpffs

from .test_attach import shieldwall

pytestmark = pytest.mark.netns


def test_demo_passes_its_checks_and_cleans_up():
    out = shieldwall("demo")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[FAIL]" not in out.stdout and "drop blocklisted" in out.stdout
    assert "drop-attacker" in out.stdout
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name.startswith("sw-") for name in namespaces.split())
    assert not list((bpffs.BPFFS / "shieldwall").glob("netns-sw-*"))
