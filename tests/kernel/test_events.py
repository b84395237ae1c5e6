"""Sampled events (bpf/lib/events.h) against their model (model/events.py): generated
policies and frames run through the real pipeline on one CPU, and the ring must hold
exactly the events the model sends, each carrying the packet's decision, parse and
first bytes. Every example runs within one budget window (well under a second)."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from shieldwall import abi
from shieldwall.config import configure
from shieldwall.dataplane.pipeline import Pipeline, PipelineConfig, read_events
from shieldwall.kernel.libbpf import RingBuffer
from shieldwall.model.events import EventSampler
from shieldwall.ops.events import decode, wall_offset
from shieldwall.policy import parse_policy

from .conftest import harness_runs

pytestmark = pytest.mark.kernel

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large,
                                                      HealthCheck.function_scoped_fixture])
ETH = dict(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
RULES = [{"name": "web", "match": {"proto": "tcp", "dport": [80, 443]}, "action": "pass"},
         {"name": "dns", "match": {"proto": "udp", "dport": 53}, "action": "pass"},
         {"name": "spoofed", "match": {"src": "203.0.113.0/24"}, "action": "drop"}]


@pytest.fixture(scope="module")
def pipeline(hook):
    with Pipeline.load(PipelineConfig(hook=hook)) as p:
        yield p


class Ring:
    """The pipeline's event ring, drained into a list."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.got: list[bytes] = []
        self.ring = RingBuffer(pipeline.maps["sw_events"].fd, self.got.append)

    def take(self) -> list:
        self.ring.consume()
        out, self.got[:] = [decode(r, wall_offset()) for r in self.got], []
        return out

    def close(self) -> None:
        self.ring.close()


@pytest.fixture
def ring(pipeline):
    r = Ring(pipeline)
    r.take()  # what earlier tests left
    yield r
    r.close()


def _apply(pipeline, events) -> object:
    policy = parse_policy({"version": 1, "default_action": "drop", "rules": RULES,
                           "events": events}, "p.yaml", ".")
    pipeline.apply(configure(policy))  # a fresh clock; the ring and the budgets are kept
    for kind in (abi.SW_EV_DROPS, abi.SW_EV_PASSES):  # each example from a fresh budget
        pipeline.maps["sw_ev_budget"].update(kind, {})
    return policy


@st.composite
def frames(draw) -> bytes:
    v6 = draw(st.booleans())
    src = draw(st.sampled_from(["2001:db8::7", "2001:db8:1::9"] if v6 else
                               ["198.51.100.7", "203.0.113.9", "192.0.2.44"]))
    ip = IPv6(src=src, dst="2001:db8:ff::1") if v6 else IP(src=src, dst="192.0.2.1")
    kind = draw(st.sampled_from(["tcp", "udp", "arp", "pad"]))
    if kind == "arp":
        return bytes(Ether(**ETH) / ARP(psrc="192.0.2.9", pdst="192.0.2.1"))
    sport = draw(st.integers(1, 65535))
    dport = draw(st.sampled_from([22, 53, 80, 443, 8080]))
    l4 = UDP(sport=sport, dport=dport) if kind == "udp" else TCP(sport=sport, dport=dport, flags="S")
    pad = b"x" * (draw(st.integers(0, 300)) if kind == "pad" else 0)
    return bytes(Ether(**ETH) / ip / l4 / pad)


@settings(max_examples=40, **SETTINGS)
@given(rate=st.integers(1, 6), drops=st.integers(1, 3), passes=st.integers(0, 3),
       sequence=st.lists(frames(), min_size=1, max_size=40))
def test_events_equal_model(pipeline, cpu, ring, hook, rate, drops, passes, sequence):
    _apply(pipeline, {"rate": rate, "drops": drops, "passes": passes})
    ring.take()
    model = EventSampler(rate, drops, passes)
    want = []
    for frame in sequence:
        if not harness_runs(hook, frame):
            continue
        verdict = pipeline.run(frame, cpu)
        sent = model.offer(verdict.action, 0)
        if sent is not None:
            want.append((frame, verdict, sent))
    got = ring.take()
    assert len(got) == len(want)
    for ev, (frame, verdict, (every, lost)) in zip(got, want):
        assert (ev.action, ev.reason, ev.stage, ev.rule or 0) == \
            (verdict.action, verdict.reason, verdict.module, verdict.rule_id)
        assert (ev.every, ev.lost, ev.cpu) == (every, lost, cpu)
        assert ev.data == frame[:abi.SW_EVENT_SNAP]
        assert ev.frame_len == len(frame)
        eth = Ether(frame)
        if IP in eth or IPv6 in eth:
            ip = eth[IP] if IP in eth else eth[IPv6]
            assert (ev.src, ev.dst, ev.family) == (ip.src, ip.dst, 4 if IP in eth else 6)
            l4 = eth[TCP] if TCP in eth else eth[UDP]
            assert (ev.proto, ev.sport, ev.dport) == (ip.payload.__class__ is TCP and 6 or 17,
                                                     l4.sport, l4.dport)
        else:
            assert ev.family == 0 and ev.src is None


def test_budget_is_per_second_and_counts_what_it_refused(pipeline, cpu, ring):
    """A flood of drops: `rate` events in a window, the rest counted; the next window's
    first event says how many were refused."""
    _apply(pipeline, {"rate": 5})
    ring.take()
    flood = bytes(Ether(**ETH) / IP(src="203.0.113.9", dst="192.0.2.1") / UDP(sport=9, dport=9))
    for _ in range(50):
        assert pipeline.run(flood, cpu).action == "drop"
    first = ring.take()
    assert [(e.lost, e.rule_name, e.rule) for e in first] == [(0, None, 3)] * 5
    time.sleep(1.25)  # the next window (the clock ticks every 100 ms)
    pipeline.run(flood, cpu)
    later = ring.take()
    assert len(later) == 1 and later[0].lost == 45
    counted = read_events(pipeline.maps["sw_config"].lookup(0), pipeline.maps["sw_ev_budget"])
    assert (counted["rate"], counted["drops_sent"], counted["drops_refused"],
            counted["passes_sent"]) == (5, 6, 45, 0)


def test_no_events_section_sends_none(pipeline, cpu, ring):
    """`events: off` compiles the sampling out: nothing reaches the ring."""
    _apply(pipeline, "off")
    flood = bytes(Ether(**ETH) / IP(src="203.0.113.9", dst="192.0.2.1") / UDP(sport=9, dport=9))
    for _ in range(20):
        pipeline.run(flood, cpu)
    assert ring.take() == []


def test_a_policy_without_events_section_samples_drops(pipeline, cpu, ring):
    """The default: drops sampled, at most 1000 a second per CPU; passes not."""
    policy = _apply(pipeline, {})
    assert (policy.events.rate, policy.events.drops, policy.events.passes) == (1000, 1, 0)
    drop = bytes(Ether(**ETH) / IP(src="203.0.113.9", dst="192.0.2.1") / UDP(sport=9, dport=9))
    allowed = bytes(Ether(**ETH) / IP(src="198.51.100.7", dst="192.0.2.1") / UDP(sport=9, dport=53))
    for _ in range(10):
        pipeline.run(drop, cpu)
        pipeline.run(allowed, cpu)
    got = ring.take()
    assert [e.action for e in got] == ["drop"] * 10
