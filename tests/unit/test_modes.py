"""The modes' order and what each loses; how a plan of modes is grouped into loads."""

from __future__ import annotations

import pytest

from shieldwall import modes
from shieldwall.engine.lifecycle import _by_hook, mode_plan


def test_modes_best_first_and_each_says_what_it_loses():
    assert modes.MODES == ("native", "generic", "tc", "nft")
    assert set(modes.LOSES) == set(modes.MODES)
    assert modes.after("generic") == ("tc", "nft")
    assert modes.after("nft") == ()


def test_an_unknown_mode_names_the_choices():
    with pytest.raises(ValueError, match="unknown mode 'xdp'.*auto, native, generic, tc, nft"):
        modes.check_mode("xdp")
    with pytest.raises(ValueError, match="unknown mode 'auto'"):
        modes.check_mode("auto", allow_auto=False)


def test_one_load_serves_native_and_generic():
    plan = [("native", "a"), ("generic", "b"), ("tc", "c"), ("nft", "d")]
    assert _by_hook(plan) == [("xdp", [("native", "a"), ("generic", "b")]),
                              ("tc", [("tc", "c")]), ("nft", [("nft", "d")])]
    assert _by_hook([("tc", "c"), ("native", "a")]) == [("tc", [("tc", "c")]), ("xdp", [("native", "a")])]


def test_a_requested_mode_is_the_whole_plan():
    assert mode_plan("eth0", "tc") == ([("tc", "asked for with --mode")], [])
    with pytest.raises(ValueError, match="unknown mode"):
        mode_plan("eth0", "offload")
