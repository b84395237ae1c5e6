"""The bpffs root where an attached pipeline keeps its pins, one directory per interface."""

from __future__ import annotations

import fcntl
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..kernel.errors import BpfError

BPFFS = Path(os.environ.get("SHIELDWALL_BPFFS", "/sys/fs/bpf"))
BPF_FS_MAGIC = 0xCAFE4A11


class EnvironmentProblem(BpfError):
    """The host cannot do what was asked: no privileges, no bpffs."""


LOCK_FILE = Path(os.environ.get("SHIELDWALL_LOCK", "/run/lock/shieldwall.lock"))


@contextmanager
def exclusive() -> Iterator[None]:
    """One change at a time: two reloads must not build the same idle ruleset slot."""
    require_root()
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def require_root() -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem(1, "shieldwall needs root (CAP_BPF and CAP_NET_ADMIN) for this",
                                 "run it with sudo, or as root")


def _is_bpffs(path: Path) -> bool:
    try:
        with open("/proc/self/mounts") as mounts:
            return any(line.split()[1] == str(path) and line.split()[2] == "bpf" for line in mounts)
    except OSError:
        return False


def ensure_bpffs() -> Path:
    """bpffs mounted at BPFFS, mounting it when it is missing (as systemd would)."""
    if _is_bpffs(BPFFS):
        return BPFFS
    require_root()
    BPFFS.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], capture_output=True, text=True)
    if proc.returncode != 0 or not _is_bpffs(BPFFS):
        raise EnvironmentProblem(19, f"no bpffs at {BPFFS} and it could not be mounted",
                                 proc.stderr.strip() or "mount it: mount -t bpf bpf /sys/fs/bpf")
    return BPFFS


def netns_scope() -> str:
    """Pins are per network namespace as well as per interface: names repeat across them.
    A named namespace (ip netns) is known by its name; any other is "host"."""
    try:
        # thread-self: a thread may have entered a namespace on its own (setns).
        mine = os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return "host"
    named = Path("/run/netns")
    for entry in sorted(named.iterdir()) if named.is_dir() else []:
        try:
            if entry.stat().st_ino == mine:
                return f"netns-{entry.name}"
        except OSError:
            continue
    return "host"


def pin_dir(iface: str) -> Path:
    return BPFFS / "shieldwall" / netns_scope() / iface


def remove_netns_pins(netns: str) -> None:
    """Drops every pipeline pinned for a named namespace (one that is going away)."""
    scope = BPFFS / "shieldwall" / f"netns-{netns}"
    if scope.is_dir():
        for iface in list(scope.iterdir()):
            remove_pins(iface)


def remove_pins(directory: Path) -> None:
    if not directory.exists():
        return
    for entry in directory.iterdir():
        entry.unlink()
    directory.rmdir()
    # Leave no empty scope directories behind.
    for parent in (directory.parent, directory.parent.parent):
        try:
            parent.rmdir()
        except OSError:
            break
