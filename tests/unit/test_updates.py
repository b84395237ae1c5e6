"""Unit tier: the durations and failures of changes, kept in an interface's records
(engine/updates.py), as every process that changes the interface adds to them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from shieldwall.engine import records as rec
from shieldwall.engine import updates

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the state directory must be root's")


@pytest.fixture()
def state(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "state"
    monkeypatch.setenv("SHIELDWALL_STATE", str(root))
    return root


@dataclass
class Result:
    revision: int


def test_durations_land_in_their_buckets_and_failures_count(state):
    r = rec.Records("eth9")
    updates.add(r, "reload", 0.03, None, 4, now=1000.0)
    updates.add(r, "reload", 0.7, "the verifier refused it", None, now=1001.0)
    updates.add(r, "set", 0.002, None)
    got = updates.read(r)
    reload = got["reload"]
    assert reload["count"] == 2 and reload["failures"] == 1
    assert reload["sum"] == pytest.approx(0.73)
    bounds = reload["bounds"]
    assert bounds == list(updates.BUCKETS)
    assert reload["buckets"][bounds.index(0.025)] == 0
    assert reload["buckets"][bounds.index(0.05)] == 1
    assert reload["buckets"][bounds.index(1.0)] == 2
    assert reload["last"] == {"seconds": 0.7, "at": 1001.0, "ok": False,
                              "error": "the verifier refused it", "revision": None}
    assert got["set"]["count"] == 1 and got["set"]["failures"] == 0


def test_timed_records_success_and_failure_and_keeps_the_error(state):
    rec.private_dir(rec.Records("eth9").dir)

    @updates.timed("reload")
    def change(iface: str, fail: bool) -> Result:
        if fail:
            raise ValueError("no such set\nmore")
        return Result(8)

    assert change("eth9", False).revision == 8
    with pytest.raises(ValueError, match="no such set"):
        change("eth9", True)
    got = updates.read(rec.Records("eth9"))["reload"]
    assert got["count"] == 2 and got["failures"] == 1
    assert got["last"]["error"] == "no such set" and got["last"]["ok"] is False


def test_an_interface_without_records_gets_none(state):
    @updates.timed("reload")
    def change(iface: str) -> None:
        raise OSError("not attached")

    with pytest.raises(OSError):
        change("eth8")
    assert not rec.Records("eth8").dir.exists()
    assert updates.read(rec.Records("eth8")) == {}
