"""The attack definitions and the scenarios' policies, as data: frames that parse and
check out, sources inside the declared prefixes, policies that load."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether

from shieldwall import abi
from shieldwall.lab import scenarios
from shieldwall.lab.attacks import ATTACKS, FRAME, attack, check_run, template
from shieldwall.lab.topology import LabTopology
from shieldwall.policy import parse_policy

from ..helpers import checksums_right, shieldwall

TOPO = LabTopology(server_mac="02:00:00:00:00:01", outside_mac="02:00:00:00:00:02")
DOCUMENTATION = [ipaddress.ip_network(n) for n in
                 ("198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]
LAB_OWN = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8:0:1::/64")]
PARTS = [(a.name, i, part) for a in ATTACKS.values() for i, part in enumerate(a.parts)]


@pytest.mark.parametrize("name, index, part", PARTS, ids=[f"{n}-{i}" for n, i, _ in PARTS])
def test_every_template_parses_and_its_sources_stay_in_their_prefix(name, index, part):
    t = template(part, TOPO)
    frame = Ether(t.frame)
    assert len(t.frame) == max(FRAME, part.size)
    net = ipaddress.ip_network(part.sources)
    ip = frame[IPv6] if net.version == 6 else frame[IP]
    assert (t.family == abi.SW_FAMILY_IPV6) == (net.version == 6)
    # The generator draws the low src_bits of the template's source: every source it
    # can make is inside the part's prefix, which is documentation space, and never
    # the lab's own network.
    assert ipaddress.ip_address(ip.src) == net.network_address
    assert net.max_prefixlen - t.src_bits == net.prefixlen
    assert any(net.subnet_of(doc) for doc in DOCUMENTATION if doc.version == net.version)
    assert not any(net.overlaps(own) for own in LAB_OWN if own.version == net.version)
    assert ip.dst in (TOPO.server_v4, TOPO.server_v6)
    kind = {"syn": TCP, "ack": TCP, "udp": UDP, "fragment-first": UDP,
            "icmp": ICMPv6EchoRequest if net.version == 6 else ICMP}.get(part.kind)
    if kind is not None:
        assert kind in frame
    if part.kind in ("syn", "ack"):
        assert frame[TCP].flags == ("S" if part.kind == "syn" else "A")
    if part.kind.startswith("fragment"):
        assert frame[IP].flags.MF and (frame[IP].frag > 0) == (part.kind == "fragment-later")
    if part.dport is not None:
        assert frame[kind].dport == part.dport
    else:
        assert part.kind.startswith("icmp") or part.kind == "fragment-later" \
            or t.rewrite & abi.SW_GEN_RW_DPORT
    if part.kind.startswith("reflected"):
        assert frame[UDP].sport == part.sport and t.rewrite & abi.SW_GEN_RW_DPORT
        assert not t.rewrite & abi.SW_GEN_RW_SPORT  # the reflector's port stays
    if part.kind == "reflected-first":
        assert frame[IP].flags.MF and frame[IP].frag == 0
    elif not part.kind.startswith("fragment"):
        assert checksums_right(frame)
        assert t.rewrite & abi.SW_GEN_RW_CSUM


def test_attacks_fit_the_generator_and_names_are_checked():
    for a in ATTACKS.values():
        assert 0 < len(a.parts) <= abi.SW_GEN_TEMPLATES
    with pytest.raises(ValueError, match="unknown attack 'nope'; one of: syn, ack"):
        attack("nope")
    with pytest.raises(ValueError, match="--rate"):
        check_run(-1, 1)
    with pytest.raises(ValueError, match="--seconds"):
        check_run(None, 601)


def test_slow_sources_stay_under_a_per_source_limit():
    # 2^80 sources over 65,536 /64s: even at 5 Mpps every /64 sends under 100 pps.
    net = ipaddress.ip_network(attack("slow").parts[0].sources)
    assert 5_000_000 / 2 ** (64 - net.prefixlen) < 100


@pytest.mark.parametrize("s", scenarios.SCENARIOS, ids=lambda s: s.name)
def test_every_scenario_policy_loads_and_names_what_exists(s):
    assert s.attack.name == s.name
    parse_policy(scenarios.shieldwall_policy(s), f"scenario {s.name}", ".")
    assert all(name in scenarios.PEER_RULES for name in s.peers)
    assert s.distinguishable == (not s.why)


def test_rate_limits_join_the_policies_that_name_them():
    heavy = scenarios.BY_NAME["heavy"]
    assert "limits" not in scenarios.shieldwall_policy(scenarios.BY_NAME["udp"])
    doc = scenarios.shieldwall_policy(heavy)
    assert doc["limits"] == {"udp-per-source": {"per": "source", "prefix4": 32, "prefix6": 64,
                                                "pps": 1000, "burst": 2000, "block": "60s"}}
    assert doc["rules"][-1] == {"name": "udp", "match": {"proto": "udp"},
                                "action": {"limit": "udp-per-source"}}


@pytest.mark.parametrize("args, said", [
    (["lab", "attack", "nope"], "argument NAME: unknown attack 'nope'"),
    (["lab", "attack", "udp", "--rate", "-5"], "argument --rate: expected a positive number"),
    (["lab", "attack", "udp", "--seconds", "0"], "argument --seconds: expected a positive number"),
    (["lab", "attack", "udp", "--seconds", "601"], "--seconds must be above 0 and at most 600"),
    (["bench", "--scenarios", "--seconds", "x"], "argument --seconds: expected a positive number"),
    (["bench", "--seconds", "3"], "--seconds and --rate are options of bench --scenarios"),
])
def test_bad_attack_input_is_named(args, said):
    out = shieldwall(*args)
    assert out.returncode == 2 and said in out.stderr and "Traceback" not in out.stderr


def test_the_attack_help_names_every_attack():
    out = shieldwall("lab", "attack", "--help", env={"COLUMNS": "1000"})  # no wrapping
    said = " ".join(out.stdout.split())
    assert out.returncode == 0
    assert all(name in said for name in ATTACKS), sorted(n for n in ATTACKS if n not in said)
