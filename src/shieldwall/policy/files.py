"""Reading the files a policy names (the policy itself, its set files), bounded.

Only regular files are read: a FIFO would hang the command and /dev/zero would fill its
memory. A link to a regular file is fine (operators link to generated lists). The file is
opened non-blocking, so that a FIFO is found out by fstat instead of waiting for a
writer, and read up to its limit: a file that grows while it is read cannot exceed it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


class NotReadable(ValueError):
    """A file the policy may not read: not a regular file, or too large."""


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of the regular file at path (links followed), at most `limit` of them;
    OSError when it cannot be opened, NotReadable when it is no file to read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "something else")
            raise NotReadable(f"it is {kind}, not a regular file")
        if st.st_size > limit:
            raise _too_large(limit)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # it grew while being read
        raise _too_large(limit)
    return data


def _too_large(limit: int) -> NotReadable:
    return NotReadable(f"it is larger than {limit >> 20} MiB, the limit")
