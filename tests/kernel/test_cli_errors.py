"""Bad input and a bad environment that need no interface: a clear message naming the
problem and a non-zero exit, before anything is loaded or attached."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shieldwall.lab import LabTopology
from shieldwall.pcapio import write_pcap

from ..helpers import shieldwall

pytestmark = pytest.mark.kernel

# A name no interface has: one of a lab that is never built.
ABSENT = LabTopology.unique().server_if


def tiny_pcap(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.pcap"
    write_pcap(path, [b"\x02" * 12 + b"\x08\x06" + b"\x00" * 28])
    return path


def test_unknown_interface():
    out = shieldwall("up", "--allow-empty", "--iface", ABSENT)
    assert out.returncode == 2
    assert f"no interface named '{ABSENT}'" in out.stderr


def test_missing_object(tmp_path: Path):
    out = shieldwall("verdict", "--pcap", str(tiny_pcap(tmp_path)),
                     env={"SHIELDWALL_OBJ_DIR": str(tmp_path / "nothing")})
    assert out.returncode == 2
    assert "root.bpf.o not found" in out.stderr


def without(*caps: str) -> list[str]:
    """Runs a command as root with `caps` dropped (from the bounding and inheritable sets,
    which for uid 0 decide what an exec gets). Everything else root has stays, so the
    command reads the checkout wherever it is, as the user running the tests can."""
    spec = ",".join(f"-{cap}" for cap in caps)
    return ["setpriv", f"--inh-caps={spec}", f"--bounding-set={spec}"]


def run_without(caps: tuple[str, ...], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*without(*caps), sys.executable, "-m", "shieldwall", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("caps,named", [
    (("net_admin",), "lacks CAP_NET_ADMIN"),
    (("bpf", "sys_admin"), "lacks CAP_BPF (or CAP_SYS_ADMIN)"),
])
def test_the_missing_capability_is_named(caps, named):
    # Root with a capability dropped is refused before anything is touched: were the
    # check to pass, `up` would go on to say that the interface does not exist.
    out = run_without(caps, "up", "--allow-empty", "--iface", ABSENT)
    assert out.returncode == 2
    assert "needs root" in out.stderr and named in out.stderr, out.stderr


@pytest.mark.parametrize("command", ["up", "down", "status", "verdict"])
def test_every_privileged_command_says_it_needs_root(command, tmp_path: Path):
    args = {"up": ("up", "--allow-empty", "--iface", ABSENT), "down": ("down", "--iface", ABSENT),
            "status": ("status",), "verdict": ("verdict", "--pcap", str(tiny_pcap(tmp_path)))}
    out = run_without(("bpf", "sys_admin", "net_admin"), *args[command])
    assert out.returncode == 2
    assert "needs root" in out.stderr, out.stderr
    assert "lacks CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_capabilities_are_all_it_needs(tmp_path: Path):
    # Root with every other capability dropped: nothing refused for want of privilege.
    only = ["setpriv", "--inh-caps=-all", "--bounding-set=-all,+bpf,+sys_admin,+net_admin"]
    out = subprocess.run([*only, sys.executable, "-m", "shieldwall", "up", "--allow-empty",
                          "--iface", ABSENT],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and f"no interface named '{ABSENT}'" in out.stderr, out.stderr
