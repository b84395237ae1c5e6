"""The same policy in every mode decides the same frames the same way.

A policy is attached on a veth end in a namespace of this test's own, in native,
generic, tc and nft mode in turn; the same crafted frames are sent from the other end,
and what got past the mode's hook (peer_lab's observer, at netdev ingress after every
one of them) is compared frame by frame with the reference model. nft mode differs only
where docs/modes.md says it does (nftables_passes carries those differences)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from shieldwall.config import load_config
from shieldwall.engine import lifecycle
from shieldwall.kernel import libbpf, xdp
from shieldwall.kernel.libbpf import BpfObject
from shieldwall.kernel.netns import enter_netns
from shieldwall.paths import object_path
from scapy.layers.inet import IP, UDP

from ..peer_expectations import nftables_passes, shieldwall_passes
from ..policy_strategies import packets, policy_data
from ..helpers import shieldwall
from .peer_lab import CLIENT_MAC, SERVER_MAC
from .test_peer_equivalence import FAST, FIXED_FRAMES, _explain

pytestmark = pytest.mark.netns

BPF_MODES = ("native", "generic", "tc")


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


def _eth():
    from scapy.layers.l2 import Ether
    return Ether(src=CLIENT_MAC, dst=SERVER_MAC)


def _ifindex(peer_lab) -> int:
    with enter_netns(peer_lab.ns_b):
        return xdp.ifindex(peer_lab.if_b)


@contextmanager
def _foreign_tc_program(peer_lab) -> Iterator[int]:
    """Another tool's program on the TC ingress hook (one that only watches), held by
    this test on a tcx link of its own."""
    with BpfObject(object_path("conntrack")) as obj, enter_netns(peer_lab.ns_b):
        obj.load()
        prog = obj.program("sw_ct_egress")
        link = libbpf.tcx_link_create(prog.fd, xdp.ifindex(peer_lab.if_b), True, "a test")
        try:
            yield prog.id
        finally:
            os.close(link)


def _policy_file(tmp_path_factory, data: dict) -> Path:
    path = tmp_path_factory.mktemp("modes") / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@settings(max_examples=15, **FAST)
@given(policy_data(max_rules=8), st.lists(packets(), min_size=16, max_size=24))
def test_every_mode_decides_like_the_reference(peer_lab, tmp_path_factory, data, frames):
    path = _policy_file(tmp_path_factory, data)
    policy = load_config(path).policy
    frames = FIXED_FRAMES + frames
    want = [shieldwall_passes(policy, f) for f in frames]
    for mode in BPF_MODES:
        got = _passed_in(peer_lab, path, mode, frames)
        assert got == want, f"{mode} mode: " + _explain(policy, path.read_text(), frames, got, want)
    # nftables differs only where its documented differences say (nftables_passes).
    got = _passed_in(peer_lab, path, "nft", frames)
    want = [nftables_passes(policy, f) for f in frames]
    assert got == want, "nft mode: " + _explain(policy, path.read_text(), frames, got, want)


def _cli(peer_lab, *args: str):
    return shieldwall(*args, "--netns", peer_lab.ns_b, "--iface", peer_lab.if_b)


def test_tc_mode_reloads_in_place_and_down_leaves_only_foreign_programs(peer_lab, tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\ndefault_action: pass\nrules:\n"
                      "  - {name: no-dns, match: {proto: udp, dport: 53}, action: drop}\n")
    index = _ifindex(peer_lab)
    with _foreign_tc_program(peer_lab) as foreign:
        out = _cli(peer_lab, "up", "--mode", "tc", "--config", str(policy))
        assert out.returncode == 0, out.stderr
        assert "in tc mode" in out.stdout and "loses" in out.stdout, out.stdout
        status = _cli(peer_lab, "status")
        assert "attached, tc mode" in status.stdout and "tc mode loses" in status.stdout, status.stdout
        first = json.loads(_cli(peer_lab, "status", "--json").stdout)[0]["prog_id"]
        with peer_lab.observer("ingress") as obs:
            dns = _eth() / IP(src="198.51.100.3", dst="192.0.2.1") / UDP(dport=53)
            other = _eth() / IP(src="198.51.100.3", dst="192.0.2.1") / UDP(dport=54)
            assert obs.passed([bytes(dns), bytes(other)]) == [False, True]
        out = _cli(peer_lab, "reload", "--config", str(policy))
        assert out.returncode == 0, out.stderr
        after = json.loads(_cli(peer_lab, "status", "--json").stdout)[0]
        assert after["mode"] == "tc" and after["prog_id"] != first
        assert [c for c in after["counters"] if c["reason"] == "rule"][0]["packets"] == 1
        # One link, its program swapped, after the one that was there first.
        with enter_netns(peer_lab.ns_b):
            assert libbpf.tcx_programs(index, True) == [foreign, after["prog_id"]]
        assert _cli(peer_lab, "down").returncode == 0
        with enter_netns(peer_lab.ns_b):
            assert libbpf.tcx_programs(index, True) == [foreign]


def test_auto_falls_back_and_says_why(tmp_path):
    """A bridge has no native XDP: the doctor rules native out, auto says so and runs in
    the next mode."""
    ns = f"swm-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "swbr0", "type", "bridge"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "swbr0", "up"], check=True)
        policy = tmp_path / "p.yaml"
        policy.write_text("version: 1\ndefault_action: pass\n")
        out = shieldwall("up", "--netns", ns, "--iface", "swbr0", "--config", str(policy))
        try:
            assert out.returncode == 0, out.stderr
            assert "tried native: ruled out by the doctor: iface.native_xdp" in out.stdout, out.stdout
            assert "in generic mode" in out.stdout and "tried generic: attached" in out.stdout, out.stdout
            status = shieldwall("status", "--netns", ns, "--iface", "swbr0")
            assert "attached, generic mode" in status.stdout and "generic mode loses" in status.stdout
        finally:
            assert shieldwall("down", "--netns", ns, "--iface", "swbr0").returncode == 0
    finally:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
