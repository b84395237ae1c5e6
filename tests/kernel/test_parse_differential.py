"""The root's parser against its Python reference (shieldwall.model.parse) on generated
packets: same verdict for packets the root decides, same fields for the others."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, ICMPv6EchoRequest)
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from shieldwall import abi
from shieldwall.model.parse import ParsedPacket, parse

from .conftest import harness_runs

pytestmark = pytest.mark.kernel

V4 = st.sampled_from(["192.0.2.1", "198.51.100.9", "203.0.113.200"])
V6 = st.sampled_from(["2001:db8::1", "2001:db8:ffff::42", "2001:db8:1:2:3:4:5:6",
                      "::ffff:192.0.2.1"])
EXT = st.sampled_from([IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrDestOpt, "frag"])


@st.composite
def l4(draw, family: int):
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "other", "none"]))
    if kind == "tcp":
        return TCP(sport=draw(st.integers(0, 65535)), dport=draw(st.integers(0, 65535)),
                   flags=draw(st.integers(0, 255)),
                   dataofs=draw(st.sampled_from([None, None, None, 2, 6, 15])))
    if kind == "udp":
        return UDP(sport=draw(st.integers(0, 65535)), dport=draw(st.integers(0, 65535)))
    if kind == "icmp":
        return ICMP(type=draw(st.integers(0, 255))) if family == 4 else ICMPv6EchoRequest()
    if kind == "other":
        return Raw(b"\x47" * draw(st.integers(0, 8)))
    return None


@st.composite
def packets(draw):
    frame = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
    for _ in range(draw(st.integers(0, 3))):
        frame = frame / draw(st.sampled_from([Dot1Q, Dot1AD]))(vlan=draw(st.integers(0, 4095)))
    family = draw(st.sampled_from([4, 6, 0]))
    if family == 4:
        ip = IP(src=draw(V4), dst=draw(V4), ttl=draw(st.integers(0, 255)),
                flags=draw(st.sampled_from([0, 1, 2])), frag=draw(st.sampled_from([0, 0, 1, 185])),
                options=draw(st.sampled_from([b"", b"\x01\x01\x01\x00", b"\x01" * 8])))
        frame = frame / ip
    elif family == 6:
        frame = frame / IPv6(src=draw(V6), dst=draw(V6), hlim=draw(st.integers(0, 255)),
                             plen=draw(st.sampled_from([None, None, None, 0, 65500, 65535])))
        for ext in draw(st.lists(EXT, max_size=8)):
            if ext == "frag":
                frame = frame / IPv6ExtHdrFragment(offset=draw(st.sampled_from([0, 0, 7])),
                                                   m=draw(st.integers(0, 1)))
            else:
                frame = frame / ext()
    else:
        frame.type = draw(st.sampled_from([0x0806, 0x88cc, 0x1234]))
    upper = draw(l4(family)) if family else None
    if upper is not None:
        frame = frame / upper
    frame = frame / Raw(b"p" * draw(st.integers(0, 40)))
    data = bytearray(bytes(frame))
    # Corruption and truncation reach the malformed paths.
    for _ in range(draw(st.integers(0, 2))):
        if len(data) > 14:
            data[draw(st.integers(14, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[:draw(st.integers(14, len(data)))]
    return bytes(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets())
def test_kernel_parser_equals_reference(bare_pipeline, cpu, frame):
    assume(harness_runs(bare_pipeline.config.hook, frame))
    retval, kernel = bare_pipeline.run_traced(frame, cpu)
    fields, decision = parse(frame)
    if decision is not None:
        assert (abi.action_name(retval), abi.reason_name(kernel.reason)) == \
            (abi.action_name(decision.action), abi.reason_name(decision.reason))
        return
    assert abi.reason_name(kernel.reason) == "end_of_chain"
    for f in dataclasses.fields(ParsedPacket):
        got = getattr(kernel, f.name)
        got = bytes(got) if f.name in ("src", "dst") else got
        assert got == getattr(fields, f.name), f.name
