"""A local user against the command line: what uid 65534 (nobody) can prepare in the
places shieldwall uses (the lock, the pin tree on a bpffs mounted with the kernel's
default mode 1777) is refused, never followed, and left as it was."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shieldwall.dataplane import bpffs
from shieldwall.lab import LabTopology

from ..helpers import shieldwall

pytestmark = pytest.mark.kernel

NOBODY = 65534
ABSENT = LabTopology.unique().server_if


def as_nobody(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           *argv], capture_output=True, text=True, timeout=60)


@pytest.fixture()
def shared() -> Iterator[Path]:
    """A directory nobody can reach (pytest's tmp_path is root's alone): 0755, in /tmp."""
    base = Path(tempfile.mkdtemp(prefix="shieldwall-attack-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


@pytest.fixture()
def world_bpffs(shared: Path) -> Iterator[Path]:
    """A bpffs as the kernel mounts it by default: mode 1777, anybody may create in it."""
    where = shared / "bpffs"
    where.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(where)], check=True)
    try:
        assert where.stat().st_mode & 0o7777 == 0o1777
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


# --- the lock ---------------------------------------------------------------------------


def lock_env(lock: Path, **more: str) -> dict[str, str]:
    return {"SHIELDWALL_LOCK": str(lock), **more}


def down(lock: Path, **more: str) -> subprocess.CompletedProcess:
    """A command that takes the lock and changes nothing (nothing is attached to ABSENT)."""
    return shieldwall("down", "--iface", ABSENT, env=lock_env(lock, **more))


def test_the_lock_is_made_root_only(shared: Path):
    lock = shared / "run" / "lock"
    out = down(lock)
    assert out.returncode == 0, out.stderr
    assert (lock.parent.stat().st_mode & 0o7777, lock.parent.stat().st_uid) == (0o700, 0)
    st = os.lstat(lock)
    assert (st.st_mode & 0o7777, st.st_uid) == (0o600, 0)
    assert lock.read_text().strip().isdigit()  # the pid of the last holder
    assert "Permission denied" in as_nobody("cat", str(lock)).stderr  # nobody can hold it


@pytest.mark.parametrize("prepare,said", [
    (lambda d: (d.mkdir(), os.chown(d, NOBODY, NOBODY)), "belongs to uid 65534, not root"),
    (lambda d: (d.mkdir(), d.chmod(0o777)), "can be written by other users (mode 0777)"),
    (lambda d: (d.mkdir(), d.chmod(0o1777)), "can be written by other users (mode 1777)"),
    (lambda d: d.symlink_to(d.parent, target_is_directory=True), "is a symbolic link"),
])
def test_a_lock_directory_others_can_change_is_refused(shared: Path, prepare, said):
    prepare(shared / "run")
    out = down(shared / "run" / "lock")
    assert out.returncode == 2 and said in out.stderr, out.stderr
    assert "SHIELDWALL_LOCK" in out.stderr and "rm -r" not in out.stderr  # not its directory
    assert not os.path.lexists(shared / "run" / "lock") and not (shared / "lock").exists()


def test_a_link_planted_by_another_user_is_never_followed(shared: Path):
    victim = shared / "victim"
    victim.write_text("precious\n")
    theirs = shared / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    assert as_nobody("ln", "-s", str(victim), str(theirs / "lock")).returncode == 0
    out = down(theirs / "lock")
    assert out.returncode == 2 and "belongs to uid 65534" in out.stderr
    # And had the link got into root's own directory somehow: refused all the same.
    mine = shared / "mine"
    mine.mkdir(mode=0o700)
    (mine / "lock").symlink_to(victim)
    out = down(mine / "lock")
    assert out.returncode == 2 and "is a symbolic link" in out.stderr
    assert victim.read_text() == "precious\n" and victim.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("prepare,said", [
    (lambda f: os.mkfifo(f), "is not a regular file"),
    (lambda f: (f.write_text(""), os.chown(f, NOBODY, NOBODY)), "owned by uid 65534, not root"),
    (lambda f: f.mkdir(), "Is a directory"),
])
def test_a_lock_that_is_not_roots_regular_file_is_refused(shared: Path, prepare, said):
    (shared / "run").mkdir(mode=0o700)
    prepare(shared / "run" / "lock")
    out = down(shared / "run" / "lock")
    assert out.returncode == 2 and said in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold(lock: Path, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_held_lock_names_its_holder_and_is_given_up_on(shared: Path):
    lock = shared / "run" / "lock"
    lock.parent.mkdir(mode=0o700)
    holder = hold(lock, 60)
    try:
        started = time.monotonic()
        out = down(lock, SHIELDWALL_LOCK_TIMEOUT="1")
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 2
    assert out.stderr.count(f"waiting for the lock held by pid {holder.pid}") == 1, out.stderr
    assert f"still held by pid {holder.pid} after 1 s" in out.stderr
    assert "Traceback" not in out.stderr and 1 <= took < 20


def test_a_lock_let_go_is_taken(shared: Path):
    lock = shared / "run" / "lock"
    lock.parent.mkdir(mode=0o700)
    holder = hold(lock, 1)
    out = down(lock, SHIELDWALL_LOCK_TIMEOUT="30")
    holder.wait()
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("waiting for the lock held by pid") == 1


def test_a_bad_timeout_is_said():
    out = shieldwall("down", "--iface", ABSENT, env={"SHIELDWALL_LOCK_TIMEOUT": "soon"})
    assert out.returncode == 2 and "SHIELDWALL_LOCK_TIMEOUT='soon'" in out.stderr


# --- the pin tree -------------------------------------------------------------------------


@pytest.mark.parametrize("plant,said", [
    (["mkdir", "{tree}"], "belongs to uid 65534, not root"),
    (["mkdir", "-m", "0700", "{tree}"], "belongs to uid 65534, not root"),
    (["ln", "-s", "/tmp", "{tree}"], "is a symbolic link"),
])
@pytest.mark.parametrize("command", [("status",), ("up", "--allow-empty", "--iface", ABSENT),
                                     ("down", "--iface", ABSENT), ("gc",)])
def test_a_pin_tree_planted_by_another_user_is_refused(world_bpffs: Path, plant, said, command):
    tree = world_bpffs / "shieldwall"
    assert as_nobody(*(arg.format(tree=tree) for arg in plant)).returncode == 0
    before = sorted(os.listdir(tree)) if tree.is_dir() and not tree.is_symlink() else None
    out = shieldwall(*command, env={"SHIELDWALL_BPFFS": str(world_bpffs)})
    assert out.returncode == 2, out.stderr
    assert said in out.stderr and f"rm -r {tree}" in out.stderr
    assert "mode=0700" in out.stderr  # why it could happen, and how to prevent it
    assert os.lstat(tree).st_uid == NOBODY  # left as it was, for the operator to look at
    if before is not None:
        assert sorted(os.listdir(tree)) == before


def test_a_bpffs_shieldwall_mounts_is_root_only(shared: Path):
    where = shared / "own"
    out = shieldwall("status", env={"SHIELDWALL_BPFFS": str(where)})
    try:
        assert out.returncode == 0, out.stderr
        assert bpffs._is_bpffs(where)
        assert where.stat().st_mode & 0o777 == 0o700  # (the kernel adds the sticky bit)
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_pin_directories_are_root_only_and_removed_whole(bare_pipeline):
    directory = bpffs.pin_dir(ABSENT)
    bare_pipeline.pin(directory / "gen-1", directory / "state")
    try:
        for d in (bpffs.tree(), directory.parent, directory):
            assert (d.stat().st_mode & 0o7777, d.stat().st_uid) == (0o700, 0), d
        # A generation inside the interface's directory, as the engine keeps them.
        generation = bpffs.make_pin_dir(directory / "gen-2")
        bare_pipeline.maps["sw_config"].pin(generation / "sw_config")
        assert generation.stat().st_mode & 0o7777 == 0o700
    finally:
        bpffs.remove_pins(directory)
    assert not bpffs.tree().exists()  # no empty scope left behind


def test_a_link_in_the_pins_stops_their_removal(bare_pipeline, tmp_path: Path):
    directory = bpffs.pin_dir(ABSENT)
    bare_pipeline.pin(directory / "gen-1", directory / "state")
    os.symlink(tmp_path, directory / "evil")  # bpffs has links; only root could put one here
    try:
        with pytest.raises(RuntimeError, match="is a symbolic link in shieldwall's pins"):
            bpffs.remove_pins(directory)
        assert (directory / "gen-1" / "prog_root").exists()
    finally:
        os.unlink(directory / "evil")
        bpffs.remove_pins(directory)


def test_names_are_checked_below_the_command_line():
    with pytest.raises(ValueError, match="is not an interface name"):
        bpffs.pin_dir("../../etc")
    with pytest.raises(ValueError, match="is not a network namespace name"):
        bpffs.netns_pin_scope("../host")
    assert not re.search(r"\.\.", str(bpffs.netns_pin_scope("x")))
    # A valid name bpffs cannot hold (it refuses dots, even to lstat): said up front.
    with pytest.raises(bpffs.EnvironmentProblem, match="bpffs refuses names with a dot"):
        bpffs.pin_dir("eth0.100")
