"""Root-only directories: what is refused, what is made, and removal that never follows a
link. (The run is root: chown plays the other user. The same against a real bpffs and a
real unprivileged process: tests/kernel/test_local_attacker.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shieldwall.dataplane.rootonly import UnsafePath, check_dir, make_dir, remove_tree

NOBODY = 65534


def test_a_root_only_directory_passes(tmp_path: Path):
    (tmp_path / "d").mkdir(mode=0o755)
    check_dir(tmp_path / "d")


@pytest.mark.parametrize("make,said", [
    (lambda p: p.symlink_to(p.parent / "real", target_is_directory=True), "is a symbolic link"),
    (lambda p: p.write_text(""), "is not a directory"),
    (lambda p: (p.mkdir(), os.chown(p, NOBODY, NOBODY)), "belongs to uid 65534, not root"),
    (lambda p: (p.mkdir(), p.chmod(0o777)), "can be written by other users (mode 0777)"),
    (lambda p: (p.mkdir(), p.chmod(0o770)), "can be written by other users (mode 0770)"),
    (lambda p: (p.mkdir(), p.chmod(0o1777)), "can be written by other users (mode 1777)"),
])
def test_what_another_user_could_change_is_refused(tmp_path: Path, make, said):
    (tmp_path / "real").mkdir(mode=0o700)
    make(tmp_path / "d")
    with pytest.raises(UnsafePath, match="rm -r") as refused:
        check_dir(tmp_path / "d")
    assert said in str(refused.value)
    with pytest.raises(UnsafePath):
        make_dir(tmp_path / "d")


def test_sticky_is_accepted_only_where_asked(tmp_path: Path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d").chmod(0o1777)
    check_dir(tmp_path / "d", sticky_ok=True)
    (tmp_path / "d").chmod(0o777)
    with pytest.raises(UnsafePath):
        check_dir(tmp_path / "d", sticky_ok=True)


def test_made_0700_whatever_the_umask(tmp_path: Path):
    old = os.umask(0)
    try:
        make_dir(tmp_path / "d")
    finally:
        os.umask(old)
    assert (tmp_path / "d").stat().st_mode & 0o7777 == 0o700
    make_dir(tmp_path / "d")  # again: it is there, and fine


def test_remove_tree_removes_nested_directories(tmp_path: Path):
    top = tmp_path / "pins"
    (top / "gen-1" / "deeper").mkdir(parents=True)
    (top / "link_pin").write_text("")
    (top / "gen-1" / "map").write_text("")
    (top / "gen-1" / "deeper" / "prog").write_text("")
    assert remove_tree(top)
    assert not top.exists()
    assert not remove_tree(top)  # gone already


def test_remove_tree_follows_no_link_and_removes_nothing_when_it_finds_one(tmp_path: Path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    top = tmp_path / "pins"
    (top / "gen-1").mkdir(parents=True)
    (top / "map").write_text("")
    (top / "gen-1" / "evil").symlink_to(victim, target_is_directory=True)
    with pytest.raises(UnsafePath, match="is a symbolic link.*nothing was removed"):
        remove_tree(top)
    assert (victim / "precious").read_text() == "keep me"
    assert (top / "map").exists() and (top / "gen-1" / "evil").is_symlink()


def test_remove_tree_refuses_a_directory_of_another_user_inside(tmp_path: Path):
    top = tmp_path / "pins"
    (top / "theirs").mkdir(parents=True)
    os.chown(top / "theirs", NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match="not a root-only directory"):
        remove_tree(top)
    assert (top / "theirs").is_dir()


def test_remove_tree_refuses_a_link_as_the_top(tmp_path: Path):
    (tmp_path / "real").mkdir()
    (tmp_path / "pins").symlink_to(tmp_path / "real", target_is_directory=True)
    with pytest.raises(UnsafePath, match="is a symbolic link"):
        remove_tree(tmp_path / "pins")
    assert (tmp_path / "real").is_dir()
