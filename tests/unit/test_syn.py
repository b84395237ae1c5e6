"""The syn stage without a kernel: its section as the loader reads it (every problem
names its field), the reference model's verdicts, the nftables table cookie mode asks
the host for, and the auth mode's challenge."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from shieldwall.config import configure
from shieldwall.model.parse import parse
from shieldwall.policy import PolicyError, evaluate, parse_policy
from shieldwall.stages import stages
from shieldwall.stages.syn import challenge, synproxy_ruleset

ETH = dict(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")


def load(syn, **protect):
    return parse_policy({"version": 1, "default_action": "pass",
                         "protect": {"syn": syn, **protect}}, "p.yaml", ".")


def problems(syn) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(syn)
    return [str(issue) for issue in caught.value.issues]


def test_minimal_section():
    policy = load({"ports": [443, 80], "mode": "cookie"})
    syn = policy.sections["syn"]
    assert syn.ports == (80, 443) and syn.mode == "cookie" and syn.always
    assert (syn.mss, syn.mss6, syn.wscale) == (1460, 1440, 7)
    assert "syn" in configure(policy).chain
    assert "syn" not in policy.sections["protect"].modes  # the protect stage never sees it


def test_every_key():
    syn = load({"ports": [80], "mode": "auth", "auth_ttl": "10m", "mss": 1400, "wscale": 9,
                "activate": {"above": "20k", "below": 5000}}).sections["syn"]
    assert (syn.mode, syn.auth_ttl, syn.mss, syn.wscale) == ("auth", 600, 1400, 9)
    assert (syn.always, syn.above, syn.below) == (False, 20000, 5000)


@pytest.mark.parametrize("syn, where", [
    ({"mode": "cookie"}, "protect.syn: missing key 'ports'"),
    ({"ports": [80, 0]}, "protect.syn.ports[1]"),
    ({"ports": [80, "x"]}, "protect.syn.ports[1]"),
    ({"ports": []}, "protect.syn.ports"),
    ({"ports": 80}, "protect.syn.ports"),
    ({"ports": [80], "mode": "proxy"}, "protect.syn.mode"),
    ({"ports": [80], "activate": "sometimes"}, "protect.syn.activate"),
    ({"ports": [80], "activate": {"above": 10}}, "protect.syn.activate"),
    ({"ports": [80], "activate": {"above": 10, "below": 20}}, "protect.syn.activate.below"),
    ({"ports": [80], "activate": {"above": "lots", "below": 1}}, "protect.syn.activate.above"),
    ({"ports": [80], "auth_ttl": "5m"}, "protect.syn.auth_ttl"),
    ({"ports": [80], "mode": "auth", "auth_ttl": "2d"}, "protect.syn.auth_ttl"),
    ({"ports": [80], "mode": "auth", "auth_ttl": "soon"}, "protect.syn.auth_ttl"),
    ({"ports": [80], "mss": 100}, "protect.syn.mss"),
    ({"ports": [80], "wscale": 15}, "protect.syn.wscale"),
    ({"ports": [80], "window": 1}, "protect.syn: unknown key 'window'"),
    ("80", "protect.syn"),
])
def test_problems_name_their_field(syn, where):
    found = problems(syn)
    assert any(where in p for p in found), found


def _frame(flags: str, dport: int = 80, v6: bool = False) -> bytes:
    ip = IPv6(src="2001:db8:1::9", dst="2001:db8::1") if v6 else IP(src="198.51.100.9", dst="192.0.2.1")
    return bytes(Ether(**ETH) / ip / TCP(sport=40000, dport=dport, flags=flags))


@pytest.mark.parametrize("mode, flags, dport, want", [
    ("cookie", "S", 80, ("tx", "syn_cookie")),
    ("cookie", "A", 80, ("drop", "bad_cookie")),  # no socket, and a random cookie fails
    ("cookie", "R", 80, ("drop", "bad_cookie")),
    ("cookie", "S", 22, ("pass", "default")),
    ("auth", "S", 80, ("tx", "syn_challenge")),
    ("auth", "R", 80, ("drop", "bad_cookie")),    # not the challenge's answer
    ("auth", "A", 80, ("pass", "default")),       # the host's stack answers
])
def test_reference_model(mode, flags, dport, want):
    policy = load({"ports": [80], "mode": mode}, bogons="off")
    for v6 in (False, True):
        fields, _ = parse(_frame(flags, dport, v6))
        got = evaluate(policy, fields)
        assert (got.action, got.reason) == want


def test_activation_by_rate_starts_inactive():
    policy = load({"ports": [80], "activate": {"above": 1000, "below": 100}}, bogons="off")
    fields, _ = parse(_frame("S"))
    assert evaluate(policy, fields).reason == "default"


def test_synproxy_table():
    syn = load({"ports": [80, 443], "mss": 1400, "wscale": 5}).sections["syn"]
    text = synproxy_ruleset(syn)
    assert "priority raw" in text and "notrack" in text
    assert "tcp dport { 80, 443 }" in text
    assert "meta nfproto ipv4 tcp dport { 80, 443 } ct state invalid,untracked synproxy mss 1400 wscale 5" in text
    assert "synproxy mss 1380 wscale 5 timestamp sack-perm" in text
    assert "ct state invalid drop" in text
    need = stages()["syn"].host(syn, "eth-1.5")
    assert need.table == "shieldwall_syn_eth_1_5"
    assert need.sysctls["net/ipv4/tcp_syncookies"] == "2"
    assert "protect.syn.mode" in need.unavailable and "auth" in need.unavailable
    auth = load({"ports": [80], "mode": "auth"}).sections["syn"]
    assert stages()["syn"].host(auth, "eth0") is None  # auth mode needs nothing of the host


def test_challenge_depends_on_every_input():
    src, dst = bytes(10) + b"\xff\xff" + bytes([198, 51, 100, 9]), bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])
    base = challenge(1, 2, src, dst, 40000, 80, 7)
    assert 0 <= base < 2**64 and challenge(1, 2, src, dst, 40000, 80, 7) == base
    others = [challenge(3, 2, src, dst, 40000, 80, 7), challenge(1, 4, src, dst, 40000, 80, 7),
              challenge(1, 2, dst, src, 40000, 80, 7), challenge(1, 2, src, dst, 40001, 80, 7),
              challenge(1, 2, src, dst, 40000, 81, 7), challenge(1, 2, src, dst, 40000, 80, 8)]
    assert base not in others and len(set(others)) == len(others)
