"""The lock that makes changes one at a time (two reloads must not build the same idle
ruleset slot), and that no other user can touch.

It lives in a root-only directory (/run/shieldwall, created 0700): in a directory others
can write to (/run/lock is 1777) a user could put a link where the lock goes and have
root create or truncate the file it points to, or hold the lock forever. The file is
opened without following a link and must be root's regular file.

A process that finds the lock held says by whom, once, and gives up after a timeout
instead of hanging behind a stuck one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..settings import env_seconds
from .rootonly import UnsafePath, make_dir, trusted_owner

DEFAULT_LOCK = Path("/run/shieldwall/lock")
DEFAULT_TIMEOUT = 30.0
POLL_SECONDS = 0.05


class LockTimeout(RuntimeError):
    """The lock stayed held for longer than this process would wait."""


def lock_file() -> Path:
    """$SHIELDWALL_LOCK, else /run/shieldwall/lock; read on every call, so that a process
    can give itself and the commands it starts a lock of their own (a test run)."""
    return Path(os.environ.get("SHIELDWALL_LOCK") or DEFAULT_LOCK)


def timeout() -> float:
    """Seconds to wait for the lock: $SHIELDWALL_LOCK_TIMEOUT, else 30."""
    return env_seconds("SHIELDWALL_LOCK_TIMEOUT", DEFAULT_TIMEOUT, zero=True)


@contextmanager
def held() -> Iterator[None]:
    """The lock, for the duration of a block."""
    path = lock_file()
    wait = timeout()
    # Never suggest removing a directory shieldwall did not choose (SHIELDWALL_LOCK=/tmp/x).
    make_dir(path.parent, fix="" if path == DEFAULT_LOCK else
             "set SHIELDWALL_LOCK to a file in a directory only root can write to")
    fd = _open(path)
    try:
        _acquire(fd, path, wait)
        # For operators and for the next process's message when /proc/locks is hidden.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # which releases the lock


def _open(path: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"the lock {path} is a symbolic link; shieldwall never follows "
                             f"one there: remove it (rm {path})") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or not trusted_owner(st.st_uid):
        os.close(fd)
        what = ("not a regular file" if not stat.S_ISREG(st.st_mode)
                else f"owned by uid {st.st_uid}, not root")
        raise UnsafePath(f"the lock {path} is {what}: remove it (rm {path}) and run "
                         "shieldwall again")
    if stat.S_IMODE(st.st_mode) != 0o600:
        # Root's file in root's directory: only its mode is off (an older umask).
        os.fchmod(fd, 0o600)
    return fd


def _acquire(fd: int, path: Path, wait: float) -> None:
    if _try(fd):
        return
    print(f"shieldwall: waiting for the lock held by {_holder(fd)} ({path})",
          file=sys.stderr, flush=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        if _try(fd):
            return
    raise LockTimeout(f"the lock {path} is still held by {_holder(fd)} after {wait:g} s; "
                      "another shieldwall command is running (or stuck: look at that "
                      "process). SHIELDWALL_LOCK_TIMEOUT=SECONDS waits longer")


def _try(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(fd: int) -> str:
    """'pid N' for the process holding the lock on fd's file, as the kernel lists it in
    /proc/locks, else as the holder wrote it into the file."""
    st = os.fstat(fd)
    key = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                # "1: FLOCK ADVISORY WRITE <pid> <maj>:<min>:<ino> 0 EOF"; waiters have "->".
                if len(fields) < 6 or fields[1] != "FLOCK":
                    continue
                major, minor, ino = fields[5].split(":")
                if (int(major, 16), int(minor, 16), int(ino)) == key:
                    return f"pid {int(fields[4])}"
    except (OSError, ValueError):
        pass
    written = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"pid {written}" if written.isdigit() else "another process"
