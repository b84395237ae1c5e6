"""`shieldwall gc`: the pins of interfaces and namespaces that no longer exist, and the
records of those namespaces.

Pins outlive what they were made for: `ip netns delete` or a removed veth leaves
<bpffs>/shieldwall/netns-NAME/IFACE behind, holding programs and maps in the kernel, and
a later interface of the same name would find them. Only what is certainly gone is
removed: a namespace whose /run/netns entry is missing, an interface missing from a
namespace shieldwall could enter. Anything it cannot judge is kept, and said.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from ..dataplane import bpffs, rootonly
from ..dataplane.rootonly import UnsafePath
from ..kernel.names import BadName, check_ifname, check_netns_name
from ..kernel.netns import NETNS_RUN_DIR, NamespaceError, enter_netns
from .records import state_root

HOST = "host"
NETNS_PREFIX = "netns-"


@dataclass
class Collected:
    removed: list[tuple[Path, str]] = field(default_factory=list)
    kept: list[tuple[Path, str]] = field(default_factory=list)


def collect() -> Collected:
    """Removes stale pins under the lock; returns what it removed and what it kept."""
    with bpffs.exclusive():
        bpffs.ensure_bpffs()
        done = Collected()
        top = bpffs.tree()
        scopes = sorted(top.iterdir()) if top.is_dir() else []
        for scope in scopes:
            if scope.name == HOST:
                _host(scope, done)
            elif scope.name.startswith(NETNS_PREFIX):
                _named(scope, scope.name[len(NETNS_PREFIX):], done)
        _records(done)
        return done


def _records(done: Collected) -> None:
    """The records (revisions, live entries) of namespaces that no longer exist: a
    namespace made again under the name is another one. An interface's records in a
    namespace that exists stay, for `up --revision` when it comes back."""
    top = state_root()
    for scope in sorted(top.iterdir()) if top.is_dir() else []:
        name = scope.name[len(NETNS_PREFIX):]
        if not scope.name.startswith(NETNS_PREFIX) or os.path.lexists(NETNS_RUN_DIR / name):
            continue
        try:
            check_netns_name(name)
            rootonly.remove_tree(scope)
        except BadName:
            continue
        except UnsafePath as exc:
            done.kept.append((scope, str(exc)))
        else:
            done.removed.append((scope, f"records of network namespace {name!r}, which no longer exists"))


def _host(scope: Path, done: Collected) -> None:
    if not _judges_host():
        done.kept.append((scope, "only gc run in the host's own network namespace judges it"))
        return
    _interfaces(scope, done)


def _named(scope: Path, name: str, done: Collected) -> None:
    try:
        check_netns_name(name)
    except BadName:
        return  # not a directory shieldwall makes: not ours to judge
    if not os.path.lexists(NETNS_RUN_DIR / name):
        _remove(scope, f"network namespace {name!r} no longer exists", done)
        return
    try:
        with enter_netns(name):
            _interfaces(scope, done)
    except (NamespaceError, OSError) as exc:
        done.kept.append((scope, f"cannot enter network namespace {name!r}: {exc}"))


def _interfaces(scope: Path, done: Collected) -> None:
    """Removes the pin directories in `scope` of interfaces this thread's namespace lacks."""
    for directory in sorted(scope.iterdir()):
        try:
            check_ifname(directory.name)
        except BadName:
            continue
        if not directory.is_dir() or directory.is_symlink():
            continue
        try:
            socket.if_nametoindex(directory.name)  # asks this thread's namespace
        except OSError:
            _remove(directory, f"interface {directory.name!r} no longer exists", done)


def _remove(directory: Path, why: str, done: Collected) -> None:
    try:
        bpffs.remove_pins(directory)
    except UnsafePath as exc:
        done.kept.append((directory, str(exc)))
    else:
        done.removed.append((directory, why))


def _judges_host() -> bool:
    """Whether this thread sees the interfaces of the "host" scope: it pins there itself
    (its namespace has no name), and it is not in a namespace of its own beside init's
    (`unshare -n`), when /proc/1 lets that be seen."""
    if bpffs.netns_scope() != HOST:
        return False
    try:
        return os.stat("/proc/thread-self/ns/net").st_ino == os.stat("/proc/1/ns/net").st_ino
    except OSError:
        return True
