"""Directories only root can change: what makes it safe for a root process to use a path
by name (the lock, the pin tree).

A path that another user created, or can still change, is refused, never followed and
never repaired: it may be an attack (a link to a file root would then overwrite, pins
someone else planted), and only the operator can tell. Every refusal says what is wrong
and how to fix it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnsafePath(RuntimeError):
    """A path that someone other than root could have made or could change."""


def trusted_owner(uid: int) -> bool:
    # Root, or the user shieldwall runs as (a service account given the capabilities).
    return uid in (0, os.geteuid())


def check_dir(path: Path, sticky_ok: bool = False, fix: str = "") -> os.stat_result:
    """path's lstat if it is a directory (not a link to one) owned by root that nobody
    else may write to; `sticky_ok` accepts a world-writable sticky directory (/tmp, a
    bpffs mount's root), where nobody can rename or remove what others made.
    FileNotFoundError when it does not exist."""
    st = os.lstat(path)
    fix = fix or f"remove it (rm -r {path}) and run shieldwall again"
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{path} is a symbolic link; shieldwall never follows a link "
                         f"there: {fix}")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path} is not a directory: {fix}")
    if not trusted_owner(st.st_uid):
        raise UnsafePath(f"{path} belongs to uid {st.st_uid}, not root: another user "
                         f"created it, and could change what is in it; {fix}")
    if st.st_mode & 0o022 and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        raise UnsafePath(f"{path} can be written by other users (mode "
                         f"{stat.S_IMODE(st.st_mode):04o}): {fix}")
    return st


def make_dir(path: Path, fix: str = "") -> None:
    """path as a root-only directory, created mode 0700 when it is missing.

    mkdir without exist_ok, then a check: a directory someone made first is found out
    whatever the timing."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    check_dir(path, fix=fix)


def remove_tree(path: Path) -> bool:
    """Removes a root-only directory and everything in it; False if it was not there.

    Nothing is removed when a link or a directory of another user is found anywhere in
    it (all of it is looked at first), and nothing is ever followed: removal works on
    directory descriptors, not on paths that could change under it."""
    try:
        check_dir(path)
    except FileNotFoundError:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _walk(fd, path, remove=False)
        _walk(fd, path, remove=True)
    finally:
        os.close(fd)
    os.rmdir(path)
    return True


def _walk(fd: int, where: Path, remove: bool) -> None:
    for entry in list(os.scandir(fd)):
        if entry.is_symlink():
            raise UnsafePath(f"{where / entry.name} is a symbolic link in shieldwall's pins; "
                             "nothing was removed: look at who made it, then remove it")
        if not entry.is_dir(follow_symlinks=False):
            if remove:
                os.unlink(entry.name, dir_fd=fd)
            continue
        st = entry.stat(follow_symlinks=False)
        if not trusted_owner(st.st_uid) or st.st_mode & 0o022:
            raise UnsafePath(f"{where / entry.name} is not a root-only directory; nothing "
                             "was removed: look at who made it, then remove it")
        sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                      dir_fd=fd)
        try:
            _walk(sub, where / entry.name, remove)
        finally:
            os.close(sub)
        if remove:
            os.rmdir(entry.name, dir_fd=fd)
