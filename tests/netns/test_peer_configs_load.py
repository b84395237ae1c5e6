"""Every translation is accepted by its tool: nftables rulesets by `nft -c -f` (a check
that applies nothing), ipset and iptables texts by `ipset restore` and
`iptables-restore --test` in a namespace of this test's own."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from shieldwall.lab import peers
from shieldwall.lab.peers import iptables as ipt
from shieldwall.lab.peers import nftables as nft
from shieldwall.policy import load_policy

from ..peer_strategies import same_shape_policies
from ..policy_strategies import policies

pytestmark = pytest.mark.netns

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FAST = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow],
            phases=[Phase.explicit, Phase.reuse, Phase.generate])


def _run(argv, stdin=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def netns():
    name = f"pw-{secrets.token_hex(3)}-c"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], timeout=30)


def check_nft(policy) -> None:
    for counters in (False, True):
        ruleset = nft.nftables_ruleset(policy, "pwcheck0", table=f"pw_check_{secrets.token_hex(3)}",
                                       counters=counters)
        proc = _run(["nft", "-c", "-f", "-"], ruleset.text)
        assert proc.returncode == 0, proc.stderr + ruleset.text


def check_iptables(netns: str, policy) -> None:
    for counters in (False, True):
        config = ipt.iptables_rules(policy, "pwcheck0", counters=counters)
        if isinstance(config, peers.NotExpressible):
            return
        proc = _run(["ip", "netns", "exec", netns, "ipset", "restore"], config.ipset)
        try:
            assert proc.returncode == 0, proc.stderr + config.ipset
            for tool in ("iptables-legacy-restore", "iptables-nft-restore"):
                for text in (config.ipv4, config.ipv6):
                    if not text:
                        continue
                    restore = tool if text is config.ipv4 else tool.replace("iptables", "ip6tables")
                    proc = _run(["ip", "netns", "exec", netns, restore, "--test", "--noflush"], text)
                    assert proc.returncode == 0, f"{restore}: {proc.stderr}\n{text}"
        finally:
            for name in config.sets:
                _run(["ip", "netns", "exec", netns, "ipset", "destroy", name])


@pytest.mark.parametrize("name", ["basic.yaml", "tor-relays.yaml"])
def test_examples_load(netns, name):
    policy = load_policy(EXAMPLES / name)
    check_nft(policy)
    check_iptables(netns, policy)


@settings(max_examples=60, **FAST)
@given(policies())
def test_generated_policies_load(netns, policy):
    check_nft(policy)
    check_iptables(netns, policy)


@settings(max_examples=20, **FAST)
@given(same_shape_policies())
def test_merged_policies_load(netns, policy):
    check_nft(policy)
    check_iptables(netns, policy)
