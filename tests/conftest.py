"""Shared pytest configuration.

Kernel and namespace tests are not optional: on a machine without BPF they fail, and a
skipped test anywhere fails the run, so a green suite always means the tiers ran.

A run keeps to what it creates: its labs have names of their own (LabTopology.unique())
and its pins live on a bpffs mounted for the run alone, so it neither sees nor touches a
user's lab, another run's, or anything pinned under /sys/fs/bpf.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus: int) -> None:  # noqa: ANN001
    if _skipped:
        terminalreporter.write_line(
            f"FAILED: {len(_skipped)} test(s) skipped; every tier must run here: "
            + ", ".join(_skipped[:5]), red=True)


def _unmount(where: Path) -> bool:
    if subprocess.run(["umount", str(where)], capture_output=True).returncode == 0:
        return True
    # Busy (a process still inside a directory of it): detached now, freed when it lets go.
    return subprocess.run(["umount", "--lazy", str(where)], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def private_bpffs() -> Iterator[Path]:
    """A bpffs mounted for this run, with a lock of its own, for this process and the
    commands it starts (SHIELDWALL_BPFFS, SHIELDWALL_LOCK), and a directory for the
    revisions and journals (SHIELDWALL_STATE); unmounted and removed at the end.

    It is not under /sys: `ip netns exec` gives a command a fresh /sys, without it.
    Whatever the run left pinned there fails the run.
    """
    base = Path(tempfile.mkdtemp(prefix="shieldwall-test-"))
    where = base / "bpffs"
    where.mkdir()
    mount = subprocess.run(["mount", "-t", "bpf", "bpf", str(where)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        shutil.rmtree(base)
        pytest.fail(f"mounting a bpffs for this run at {where}: {mount.stderr.strip()}")
    saved = {name: os.environ.get(name)
             for name in ("SHIELDWALL_BPFFS", "SHIELDWALL_LOCK", "SHIELDWALL_STATE")}
    os.environ["SHIELDWALL_BPFFS"] = str(where)
    os.environ["SHIELDWALL_LOCK"] = str(base / "shieldwall.lock")
    os.environ["SHIELDWALL_STATE"] = str(base / "state")
    leftovers: list[str] = []
    fresh = set(where.iterdir())  # what the kernel puts on every new bpffs
    try:
        yield where
        leftovers = sorted(str(path.relative_to(where)) for path in where.rglob("*")
                           if path not in fresh)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if _unmount(where):
            shutil.rmtree(base)
    assert not leftovers, f"pins left behind on this run's bpffs: {', '.join(leftovers)}"


@pytest.fixture(autouse=True, scope="session")
def frames_never_ask_the_host_network() -> Iterator[None]:
    """A scapy frame built without MAC addresses makes scapy ask the network (ARP on the
    host's own interfaces) for them: every test must name them, and one that forgets
    fails here instead."""
    import scapy.layers.l2  # noqa: F401  (it sets conf.neighbor up: a run of one file may not)
    from scapy.config import conf

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test frame without MAC addresses: scapy would ARP on the "
                             "host's network; give Ether(src=..., dst=...)")

    saved = conf.neighbor.resolve
    conf.neighbor.resolve = refuse
    try:
        yield
    finally:
        conf.neighbor.resolve = saved
