"""The protect stage against its reference model: generated `protect:` sections (each
filter off, monitor or drop; bogon exceptions) and packets made to trip every filter,
through the whole pipeline: same verdict, reason and module, and each filter's counter
grows by the packets the model says it matched."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrRouting
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from shieldwall.config import configure
from shieldwall.dataplane.pipeline import Pipeline, PipelineConfig
from shieldwall.model.parse import parse
from shieldwall.policy import evaluate, parse_policy
from shieldwall.stages import stages
from shieldwall.stages.protect import FILTERS, SEEN

from ..policy_strategies import packets

pytestmark = pytest.mark.kernel

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])
ETH = dict(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
SOURCES_V4 = ["192.0.2.7", "198.51.100.9", "10.1.2.3", "127.0.0.1", "8.8.8.8", "224.0.0.5"]
SOURCES_V6 = ["2001:db8::1", "fe80::1", "2606:4700::1111", "ff02::1", "::1"]
FLAGS = [0x00, 0x29, 0x03, 0x06, 0x01, 0x11, 0x02, 0x12, 0x10, 0x3F]


@pytest.fixture(scope="module")
def pipeline():
    with Pipeline.load(PipelineConfig()) as p:
        yield p


@st.composite
def protect_sections(draw) -> dict:
    spec = {name: draw(st.sampled_from(["off", "monitor", "drop"]))
            for name in draw(st.lists(st.sampled_from(list(FILTERS)), unique=True))}
    if "bogons" in spec and draw(st.booleans()):
        spec["bogons"] = {"mode": spec["bogons"],
                          "except": draw(st.lists(st.sampled_from(["192.0.2.0/24", "10.0.0.0/8",
                                                                   "fe80::/10"]), unique=True)) or
                          ["192.0.2.0/25"],
                          "extra": ["8.8.8.0/24"]}
    return spec


@st.composite
def anomalies(draw) -> bytes:
    """Frames that trip the filters, and their near misses."""
    v6 = draw(st.booleans())
    src = draw(st.sampled_from(SOURCES_V6 if v6 else SOURCES_V4))
    dst = src if draw(st.integers(0, 4)) == 0 else ("2001:db8::99" if v6 else "192.0.2.99")
    kind = draw(st.sampled_from(["tcp", "udp", "frag", "options", "rh0"]))
    sport, dport = draw(st.sampled_from([(0, 80), (40000, 0), (40000, 80), (0, 0)]))
    if v6:
        ip = IPv6(src=src, dst=dst)
        if kind == "rh0":
            ip = ip / IPv6ExtHdrRouting(type=draw(st.sampled_from([0, 2])), addresses=["2001:db8::5"])
        elif kind == "frag":
            ip = ip / IPv6ExtHdrFragment(offset=draw(st.sampled_from([0, 1, 2])), m=1, nh=6)
            return bytes(Ether(**ETH) / ip / Raw(b"\x00" * 24))
    else:
        ip = IP(src=src, dst=dst)
        if kind == "options":
            ip.options = [draw(st.sampled_from([IPOption_NOP(), IPOption_RR()]))]
        elif kind == "frag":
            ip.flags, ip.frag, ip.proto = 1, draw(st.sampled_from([0, 1, 2])), 6
            if ip.frag:
                return bytes(Ether(**ETH) / ip / Raw(b"\x00" * 24))
    l4 = UDP(sport=sport, dport=dport) if kind == "udp" else TCP(sport=sport, dport=dport,
                                                                 flags=draw(st.sampled_from(FLAGS)))
    return bytes(Ether(**ETH) / ip / l4)


def _seen(pipeline) -> dict[str, int]:
    return {name: sum(int(c) for c in pipeline.maps[SEEN].lookup(number))
            for name, (number, _) in FILTERS.items()}


@settings(max_examples=80, **SETTINGS)
@given(protect_sections(), st.lists(st.one_of(anomalies(), packets()), min_size=20, max_size=40),
       st.sampled_from(["pass", "drop"]))
def test_protect_equals_reference(pipeline, cpu, spec, frames, default):
    policy = parse_policy({"version": 1, "default_action": default, "protect": spec}, "p.yaml", ".")
    pipeline.apply(configure(policy))
    stage = stages()["protect"]
    section = policy.sections["protect"]
    before = _seen(pipeline) if "protect" in pipeline.stages else None
    want_seen: dict[str, int] = {}
    for frame in frames:
        fields, root = parse(frame)
        if root is not None:
            continue  # malformed: the root decides, no stage sees it
        want = evaluate(policy, fields)
        got = pipeline.run(frame, cpu)
        module = "protect" if want.reason in stage.reasons else (
            "root" if want.reason in ("end_of_chain", "non_ip") else "policy")
        assert (got.action, got.reason, got.module) == (want.action, want.reason, module), \
            (spec, fields)
        if before is not None and fields.family:
            for name in stage.monitored(section, fields):
                want_seen[name] = want_seen.get(name, 0) + 1
    if before is not None:
        after = _seen(pipeline)
        assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == want_seen


def test_defaults(pipeline, cpu):
    policy = parse_policy({"version": 1, "default_action": "pass",
                           "protect": {"bogons": {"mode": "monitor", "own": "keep"}}}, "p.yaml", ".")
    pipeline.apply(configure(policy))
    xmas = bytes(Ether(**ETH) / IP(src="8.8.8.8", dst="192.0.2.1") / TCP(flags="FPU"))
    doc = bytes(Ether(**ETH) / IP(src="192.0.2.7", dst="192.0.2.1") / TCP(sport=4000, dport=80, flags="S"))
    land = bytes(Ether(**ETH) / IP(src="192.0.2.1", dst="192.0.2.1") / TCP(sport=4000, dport=80, flags="S"))
    rh0 = bytes(Ether(**ETH) / IPv6(src="2606:4700::1", dst="2001:db8::1")
                / IPv6ExtHdrRouting(type=0, addresses=["2001:db8::5"]) / TCP(sport=4000, dport=80, flags="S"))
    assert pipeline.run(xmas, cpu).reason == "bad_tcp_flags"
    assert pipeline.run(doc, cpu).reason == "end_of_chain" or pipeline.run(doc, cpu).action == "pass"
    assert pipeline.run(land, cpu).reason == "land"
    assert pipeline.run(rh0, cpu).reason == "ipv6_rh0"
    assert _seen(pipeline)["bogons"] >= 1  # monitored by default: counted, passed
