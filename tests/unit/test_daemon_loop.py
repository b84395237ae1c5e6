"""The daemon's main loop and its policy-file watch, without a kernel: tasks run on
their period, a failing task is logged once (until its problem changes) and never
stops the loop, and the watch sees a change only once the file has stopped changing."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from shieldwall.ops.daemon import Daemon, Watch


def quiet_daemon(tmp_path) -> Daemon:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\n")
    daemon = Daemon("sw0", policy)
    daemon.tasks.clear()  # only the test's own tasks
    daemon.logged = []
    daemon.log = daemon.logged.append
    return daemon


def test_tasks_run_on_their_period_and_failures_never_stop_the_loop(tmp_path):
    daemon = quiet_daemon(tmp_path)
    runs = {"fast": 0, "slow": 0, "bad": 0}

    def counting(name, line=None):
        def run():
            runs[name] += 1
            return line
        return run

    def bad():
        runs["bad"] += 1
        raise RuntimeError("the table is gone")

    daemon.every(0.05, "fast", counting("fast", "fast ran"))
    daemon.every(10.0, "slow", counting("slow"))
    daemon.every(0.05, "bad", bad)
    loop = threading.Thread(target=daemon._loop)
    loop.start()
    time.sleep(0.6)
    daemon.stop()
    loop.join(timeout=3)
    assert not loop.is_alive()
    assert runs["fast"] >= 5 and runs["slow"] == 1 and runs["bad"] >= 5, runs
    assert daemon.logged.count("bad: the table is gone") == 1, daemon.logged  # once, not each time
    assert "fast ran" in daemon.logged
    assert [t.last_error for t in daemon.tasks if t.name == "bad"] == ["the table is gone"]


def test_the_watch_waits_for_a_file_to_settle(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\n")
    watch = Watch(path)
    watch.stats, watch.digest = watch.look(), watch.content()
    before = watch.digest
    path.write_text("version: 1\ndefault_action: drop\n")
    first = watch.look()
    assert first != watch.stats  # changed...
    assert watch.content() != before
    # ... a set file it names counts as the policy
    (tmp_path / "list.txt").write_text("192.0.2.0/24\n")
    watch.files = [tmp_path / "list.txt"]
    assert watch.look() != first
    digest = watch.content()
    (tmp_path / "list.txt").write_text("192.0.2.0/25\n")
    assert watch.content() != digest
    (tmp_path / "list.txt").unlink()
    assert isinstance(watch.look()[1], int)  # a missing file is a state too, not an error


def test_check_policy_reads_a_change_on_its_second_look(tmp_path, monkeypatch):
    daemon = quiet_daemon(tmp_path)
    daemon.watch.stats, daemon.watch.digest = daemon.watch.look(), daemon.watch.content()
    applied = []
    from shieldwall.engine import lifecycle, segments

    def proposal(path, drop_live=False):
        applied.append(path.read_text())
        return SimpleNamespace(config=SimpleNamespace(policy=None))
    # The engine's side is tested on a lab (tests/netns/test_api.py); here, the timing.
    monkeypatch.setattr(segments, "proposal", proposal)
    monkeypatch.setattr(lifecycle, "reload", lambda iface, change: SimpleNamespace(
        revision=9, notes=(), failed=()))
    assert daemon.check_policy() is None
    daemon.config.write_text("version: 1\ndefault_action: drop\n")
    assert daemon.check_policy() is None and applied == []  # first look: wait
    line = daemon.check_policy()
    assert line.startswith("reloaded sw0: revision 9 in force") and len(applied) == 1
    assert daemon.check_policy() is None  # nothing new
    assert daemon.check_policy(force=True).startswith("SIGHUP: ") and len(applied) == 1
