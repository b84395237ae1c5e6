"""The bpffs root where an attached pipeline keeps its pins, one directory per interface.

Every directory shieldwall uses there is root's alone (created 0700, checked before it
is used): a bpffs is mounted world-writable and sticky by default, and pins another
user could plant or swap would be loaded and trusted by root (docs/architecture.md,
"Security").
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..kernel.errors import BpfError
from ..kernel.names import check_ifname, check_netns_name
from . import lock, rootonly

DEFAULT_ROOT = Path("/sys/fs/bpf")
DEFAULT_LOCK = lock.DEFAULT_LOCK
TREE = "shieldwall"
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


def tree() -> Path:
    """<bpffs>/shieldwall: every pin shieldwall makes is below it."""
    return root() / TREE


def lock_file() -> Path:
    """$SHIELDWALL_LOCK, else /run/shieldwall/lock; read on every call like root()."""
    return lock.lock_file()


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
    with lock.held():
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
    """bpffs mounted at root(), mounting it when it is missing (as systemd would), with
    its pin tree checked."""
    where = root()
    if not _is_bpffs(where):
        require_root()
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mode=0700: a bpffs of shieldwall's own is root's alone, not world-writable.
        proc = subprocess.run(["mount", "-t", "bpf", "-o", "mode=0700", "bpf", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not _is_bpffs(where):
            raise EnvironmentProblem(errno.ENODEV, f"no bpffs at {where} and it could not be mounted",
                                     proc.stderr.strip() or f"mount it: mount -t bpf bpf {where}")
    check_tree()
    return where


def check_tree() -> None:
    """The bpffs root may be world-writable if it is sticky (the kernel's default, 1777):
    then nobody can move what root made there. Anybody can still create the pin tree
    before shieldwall does; it is refused, never followed."""
    st = rootonly.check_dir(root(), sticky_ok=True,
                            fix=f"mount a bpffs there as root (mount -t bpf -o mode=0700 bpf {root()})")
    try:
        _check_existing(tree())
    except rootonly.UnsafePath as exc:
        if st.st_mode & 0o002:
            raise rootonly.UnsafePath(f"{exc}. Every user can create directories in {root()} "
                                      f"(mode {st.st_mode & 0o7777:04o}); mounted with "
                                      "mode=0700 (as systemd does), it would be root's alone") from None
        raise


def _check_existing(directory: Path) -> None:
    """Each directory from the tree down to `directory` that exists is root's alone."""
    top = tree()
    for part in [top, *(top / p for p in _below(directory))]:
        try:
            rootonly.check_dir(part)
        except FileNotFoundError:
            return


def _below(directory: Path) -> list[Path]:
    """The cumulative parts of `directory` below the tree: a/b/c -> a, a/b, a/b/c."""
    rel = directory.relative_to(tree())
    return [Path(*rel.parts[: i + 1]) for i in range(len(rel.parts))]


def make_pin_dir(directory: Path) -> Path:
    """`directory` (below the tree) and each directory above it up to the tree, created
    mode 0700 where missing and checked where not."""
    top = tree()
    for part in [top, *(top / p for p in _below(directory))]:
        rootonly.make_dir(part)
    return directory


def _pinnable(directory: Path) -> Path:
    """`directory`, if bpffs can hold it: it refuses every name with a dot (EPERM, even
    to lstat), so a name such as eth0.100 is said to be the problem, up front."""
    if any("." in part for part in directory.relative_to(tree()).parts):
        raise EnvironmentProblem(
            errno.EPERM, f"cannot keep pins in {directory}",
            "bpffs refuses names with a dot, so an interface or namespace named with one "
            "(eth0.100) cannot have pins; give it a name without a dot")
    _check_existing(directory)
    return directory


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
    """The interface's pin directory in this namespace's scope, with what exists of it
    checked (a name is a name, never a path: `../x` is refused)."""
    return _pinnable(tree() / netns_scope() / check_ifname(iface))


def netns_pin_scope(netns: str) -> Path:
    """Where the pipelines attached inside named namespace `netns` are pinned."""
    return _pinnable(tree() / f"netns-{check_netns_name(netns)}")


def remove_netns_pins(netns: str) -> None:
    """Drops every pipeline pinned for a named namespace (one that is going away)."""
    remove_pins(netns_pin_scope(netns))


def remove_pins(directory: Path) -> None:
    """Removes a pin directory and all below it (never following a link), then the
    directories above it that are left empty, up to the tree."""
    if remove_tree(directory):
        remove_empty_parents(directory)


def remove_tree(path: Path) -> bool:
    """See rootonly.remove_tree: nothing is removed if a link or another user's
    directory is found in it."""
    return rootonly.remove_tree(path)


def remove_empty_parents(directory: Path) -> None:
    top = tree()
    for parent in directory.parents:
        if parent != top and top not in parent.parents:
            break
        try:
            parent.rmdir()
        except OSError:
            break
