"""The same policy in every mode decides the same frames the same way.

A policy is attached on a veth end in a namespace of this test's own, in native,
generic, tc and nft mode in turn; the same crafted frames are sent from the other end,
and what got past the mode's hook (peer_lab's observer, at netdev ingress after every
one of them) is compared frame by frame with the reference model. nft mode differs only
where docs/modes.md says it does (nftables_passes carries those differences)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from shieldwall.config import load_config
from shieldwall.engine import lifecycle
from shieldwall.kernel.netns import enter_netns

from ..peer_expectations import shieldwall_passes
from ..policy_strategies import packets, policy_data
from .peer_lab import PeerLab
from .test_peer_equivalence import FAST, FIXED_FRAMES, _explain

pytestmark = pytest.mark.netns

BPF_MODES = ("native", "generic", "tc")


@pytest.fixture(scope="module")
def peer_lab():
    made = PeerLab.create()
    try:
        yield made
    finally:
        made.destroy()


def _attached(peer_lab, path: Path, mode: str):
    with enter_netns(peer_lab.ns_b):
        return lifecycle.up(peer_lab.if_b, lifecycle.proposal(load_config(path), path, "up"), mode=mode)


def _down(peer_lab) -> None:
    with enter_netns(peer_lab.ns_b):
        lifecycle.down(peer_lab.if_b, forget=True)


def _passed_in(peer_lab, path: Path, mode: str, frames: list[bytes]) -> list[bool]:
    result = _attached(peer_lab, path, mode)
    try:
        assert result.mode == mode, result
        with peer_lab.observer("ingress") as obs:
            return obs.passed(frames)
    finally:
        _down(peer_lab)


def _policy_file(tmp_path_factory, data: dict) -> Path:
    path = tmp_path_factory.mktemp("modes") / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@settings(max_examples=12, **FAST)
@given(policy_data(max_rules=8), st.lists(packets(), min_size=16, max_size=24))
def test_every_mode_decides_like_the_reference(peer_lab, tmp_path_factory, data, frames):
    path = _policy_file(tmp_path_factory, data)
    policy = load_config(path).policy
    frames = FIXED_FRAMES + frames
    want = [shieldwall_passes(policy, f) for f in frames]
    for mode in BPF_MODES:
        got = _passed_in(peer_lab, path, mode, frames)
        assert got == want, f"{mode} mode: " + _explain(policy, path.read_text(), frames, got, want)
