"""Entering a named network namespace (the /run/netns/NAME files `ip netns` manages)
from the calling thread, for as long as a block runs."""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .names import BadName, check_netns_name

NETNS_RUN_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000


class NamespaceError(RuntimeError):
    """A namespace that does not exist, cannot be entered, or is not a plain name."""


def check_name(name: str) -> str:
    """A namespace name is one path component: `ip netns` never makes any other, and a
    name with a slash or dots would reach outside /run/netns."""
    try:
        return check_netns_name(name)
    except BadName as exc:
        raise NamespaceError(str(exc)) from None


def _setns(fd: int, nstype: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, nstype)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


_entered_from = threading.local()  # each thread's namespace before its first enter_netns


@contextmanager
def starting_netns() -> Iterator[None]:
    """The calling thread, for the block, in the namespace it was in before it first
    entered another with enter_netns (where the command started: for a root shell, the
    host's). Some settings (net.core.bpf_jit_*) exist only in the initial namespace."""
    stack = getattr(_entered_from, "fds", [])
    if not stack:
        yield
        return
    with _entered(stack[0], "the namespace the command started in"):
        yield


@contextmanager
def _entered(target: int, what: str) -> Iterator[None]:
    # thread-self, not self: setns moves one thread, and /proc/self is the main
    # thread's view even when called from another thread.
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    stack = _entered_from.__dict__.setdefault("fds", [])
    stack.append(original)
    try:
        try:
            _setns(target, CLONE_NEWNET)
        except PermissionError:
            raise NamespaceError(f"entering {what} needs root (CAP_SYS_ADMIN)") from None
        try:
            yield
        finally:
            _setns(original, CLONE_NEWNET)
    finally:
        stack.pop()
        os.close(original)


@contextmanager
def enter_netns(name: str) -> Iterator[None]:
    """Move the calling thread into network namespace NAME for the block.

    Only the network namespace changes: the mount namespace (and so the host's
    /sys/fs/bpf) stays. Sockets created inside keep that namespace after the block.
    /sys/class/net still shows the original namespace's devices, because sysfs is bound
    to the namespace it was mounted in: use netlink or socket.if_nametoindex instead.
    """
    try:
        target = os.open(NETNS_RUN_DIR / check_name(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NamespaceError(f"network namespace {name!r} does not exist") from None
    try:
        with _entered(target, f"network namespace {name!r}"):
            yield
    finally:
        os.close(target)
