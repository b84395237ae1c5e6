"""The bpffs root where an attached pipeline keeps its pins, one directory per interface."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..kernel.errors import BpfError

DEFAULT_ROOT = Path("/sys/fs/bpf")
DEFAULT_LOCK = Path("/run/lock/shieldwall.lock")
BPF_FS_MAGIC = 0xCAFE4A11

# Bits of the capability sets in /proc/<pid>/status (linux/capability.h).
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_BPF = 39


class EnvironmentProblem(BpfError):
    """The host cannot do what was asked: no privileges, no bpffs."""


def root() -> Path:
    """The bpffs that holds the pins: $SHIELDWALL_BPFFS, else /sys/fs/bpf.

    Read on every call, not once at import, so that a process can point itself and the
    processes it starts at a bpffs of its own (a test run next to a user's pins)."""
    return Path(os.environ.get("SHIELDWALL_BPFFS") or DEFAULT_ROOT)


def lock_file() -> Path:
    """$SHIELDWALL_LOCK, else /run/lock/shieldwall.lock; read on every call like root()."""
    return Path(os.environ.get("SHIELDWALL_LOCK") or DEFAULT_LOCK)


def __getattr__(name: str) -> Path:
    # The names these paths had as constants; they follow the environment now.
    if name == "BPFFS":
        return root()
    if name == "LOCK_FILE":
        return lock_file()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextmanager
def exclusive() -> Iterator[None]:
    """One change at a time: two reloads must not build the same idle ruleset slot."""
    require_root()
    lock = lock_file()
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _effective_capabilities() -> int | None:
    """This thread's effective capability set, None if /proc cannot tell."""
    for status in ("/proc/thread-self/status", "/proc/self/status"):
        try:
            with open(status) as lines:
                for line in lines:
                    if line.startswith("CapEff:"):
                        return int(line.split()[1], 16)
        except (OSError, ValueError, IndexError):
            continue
    return None


def missing_capabilities() -> list[str]:
    """What this process lacks to load, pin and attach XDP programs; empty when nothing.

    Being uid 0 is not the point: root can run with capabilities dropped (containers,
    systemd units, setpriv), and then every bpf() call would fail with a bare EPERM."""
    caps = _effective_capabilities()
    if caps is None:
        return [] if os.geteuid() == 0 else ["CAP_BPF (or CAP_SYS_ADMIN)", "CAP_NET_ADMIN"]
    missing = []
    # CAP_SYS_ADMIN still grants everything CAP_BPF does (and is all there is before 5.8).
    if not (caps >> CAP_BPF & 1 or caps >> CAP_SYS_ADMIN & 1):
        missing.append("CAP_BPF (or CAP_SYS_ADMIN)")
    if not caps >> CAP_NET_ADMIN & 1:
        missing.append("CAP_NET_ADMIN")
    return missing


def require_root() -> None:
    missing = missing_capabilities()
    if missing:
        lacks = " and ".join(missing)
        raise EnvironmentProblem(
            errno.EPERM, f"shieldwall needs root for this; this process lacks {lacks}",
            "run it with sudo, or as root with CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN")


def _is_bpffs(path: Path) -> bool:
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                # Blanks in a mount point are octal escapes in this file.
                if fields[1].replace("\\040", " ") == target and fields[2] == "bpf":
                    return True
    except OSError:
        pass
    return False


def ensure_bpffs() -> Path:
    """bpffs mounted at root(), mounting it when it is missing (as systemd would)."""
    where = root()
    if _is_bpffs(where):
        return where
    require_root()
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "bpf", "bpf", str(where)], capture_output=True, text=True)
    if proc.returncode != 0 or not _is_bpffs(where):
        raise EnvironmentProblem(errno.ENODEV, f"no bpffs at {where} and it could not be mounted",
                                 proc.stderr.strip() or f"mount it: mount -t bpf bpf {where}")
    return where


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
    return root() / "shieldwall" / netns_scope() / iface


def netns_pin_scope(netns: str) -> Path:
    """Where the pipelines attached inside named namespace `netns` are pinned."""
    return root() / "shieldwall" / f"netns-{netns}"


def remove_netns_pins(netns: str) -> None:
    """Drops every pipeline pinned for a named namespace (one that is going away)."""
    scope = netns_pin_scope(netns)
    if scope.is_dir():
        for iface in list(scope.iterdir()):
            remove_pins(iface)


def remove_pins(directory: Path) -> None:
    """Removes a pin directory with what it holds (no symlink followed), and the scope
    directories it leaves empty."""
    remove_tree(directory)
    remove_empty_parents(directory)


def remove_tree(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        return
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            remove_tree(entry)
        else:
            entry.unlink()
    path.rmdir()


def remove_empty_parents(directory: Path) -> None:
    """Leaves no empty scope directories behind."""
    for parent in (directory.parent, directory.parent.parent):
        try:
            parent.rmdir()
        except OSError:
            break
