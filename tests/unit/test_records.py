"""Unit tier: the on-disk records of changes (revisions, blobs, journal) and the plan a
dry run prints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shieldwall.config import Config, configure
from shieldwall.engine import records as rec
from shieldwall.engine.plan import changes
from shieldwall.policy.load import parse_policy_text


@pytest.fixture()
def state(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "state"
    monkeypatch.setenv("SHIELDWALL_STATE", str(root))
    return root


@pytest.mark.skipif(os.geteuid() != 0, reason="the state directory must be root's")
def test_revisions_and_blobs_round_trip(state):
    r = rec.Records("eth9")
    digest = r.store_blob(b"version: 1\n")
    assert r.blob(digest).read_bytes() == b"version: 1\n"
    for n in (1, 2, 3):
        r.save(rec.Revision(n, 1000.0 + n, "/etc/p.yaml", digest, {}, "reload", "s"))
    r.set_current(2)
    assert [x.number for x in r.revisions()] == [1, 2, 3]
    assert r.current() == 2 and r.next_number() == 4
    assert (r.dir.stat().st_mode & 0o777) == 0o700
    with pytest.raises(ValueError, match="no revision 7 \\(kept: 1, 2, 3\\)"):
        r.revision(7)
    r.write_journal({"op": "reload", "from": 2, "to": 3})
    assert r.journal()["to"] == 3
    r.clear_journal()
    assert r.journal() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="the state directory must be root's")
def test_old_revisions_and_their_blobs_are_pruned(state, monkeypatch):
    monkeypatch.setattr(rec, "KEEP_REVISIONS", 2)
    r = rec.Records("eth9")
    digests = [r.store_blob(f"policy {n}".encode()) for n in range(4)]
    for n, d in enumerate(digests, start=1):
        r.save(rec.Revision(n, float(n), "/p.yaml", d))
    r.set_current(4)
    assert [x.number for x in r.revisions()] == [3, 4]
    assert sorted(p.name for p in (r.dir / "blobs").iterdir()) == sorted(digests[2:])


@pytest.mark.skipif(os.geteuid() != 0, reason="the state directory must be root's")
def test_a_state_directory_others_control_is_refused(state):
    state.mkdir()
    os.chmod(state, 0o777)
    with pytest.raises(rec.StateDirError, match="can be written by other users"):
        rec.Records("eth9").write_journal({})
    os.chmod(state, 0o700)
    (state / "host").symlink_to("/tmp")
    with pytest.raises(rec.StateDirError, match="is a symbolic link"):
        rec.Records("eth9").write_journal({})


def test_a_journal_planted_as_a_symlink_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("{}")
    (tmp_path / "journal").symlink_to(target)
    with pytest.raises(OSError):
        rec.read_json(tmp_path / "journal")


def _config(text: str) -> Config:
    policy = parse_policy_text(text, "p.yaml", ".")
    return Config(policy, configure(policy))


def test_the_plan_names_each_entity_that_changes():
    old = _config("version: 1\ndefault_action: pass\nfastpath: {deny: [198.51.100.0/24]}\nrules:\n"
                  "  - {name: a, match: {proto: tcp}, action: drop}\n"
                  "  - {name: b, match: {proto: udp}, action: drop}\n")
    new = _config("version: 1\ndefault_action: drop\nsets: {s: {type: prefix, entries: [192.0.2.0/24]}}\n"
                  "rules:\n  - {name: b, match: {proto: udp}, action: drop}\n"
                  "  - {name: a, match: {proto: tcp, dport: 22}, action: drop}\n"
                  "  - {name: c, match: {src: '@s'}, action: pass}\n")
    assert changes(old, new) == [
        "chain: (fastpath, policy) -> (policy)",
        "set s: new set, +1 -0 prefixes (1 in all)",
        "fastpath.deny: +0 -1 prefixes (0 in all)",
        "policy.default_action: pass -> drop",
        "rules added: c",
        "rules changed: a",
        "rules moved: b, a",
    ]
    assert changes(new, new) == ["nothing changes"]
