"""Sampled events (bpf/lib/events.h) against their model (model/events.py): generated
policies and frames run through the real pipeline on one CPU, and the ring must hold
exactly the events the model sends, each carrying the packet's decision, parse and
first bytes. The model is given the data plane's own clock, read around each run: a
run the clock ticked during is not one the model can be asked about, and the example
is set aside (a tick comes every 100 ms; a run takes microseconds)."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
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


def _clock(pipeline) -> int:
    raw = pipeline.maps["sw_ev_clock"].lookup_raw(0)  # struct sw_clock: a bpf_timer, now
    return int.from_bytes(raw[16:24], "little")


def _run_timed(pipeline, frame: bytes, cpu: int):
    """The verdict, and the clock the run read (the clock starts with a load's first
    packet, so a run before it ticked reads what it set)."""
    before = _clock(pipeline)
    verdict = pipeline.run(frame, cpu)
    now = _clock(pipeline)
    assume(before in (0, now))
    return verdict, now


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
@given(rate=st.sampled_from([1, 3, 10, 20, 40, 60]), drops=st.integers(1, 3), passes=st.integers(0, 3),
       sequence=st.lists(frames(), min_size=1, max_size=40))
def test_events_equal_model(pipeline, cpu, ring, hook, rate, drops, passes, sequence):
    _apply(pipeline, {"rate": rate, "drops": drops, "passes": passes})
    ring.take()
    model = EventSampler(rate, drops, passes)
    want = []
    for frame in sequence:
        if not harness_runs(hook, frame):
            continue
        verdict, now = _run_timed(pipeline, frame, cpu)
        sent = model.offer(verdict.action, now)
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


def test_budget_spreads_a_second_and_counts_what_it_refused(pipeline, cpu, ring):
    """A flood of drops: a tick's share of the rate (rate/10) goes out at once, the rest
    is counted; a later tick's first event says how many were refused before it."""
    _apply(pipeline, {"rate": 50})
    ring.take()
    flood = bytes(Ether(**ETH) / IP(src="203.0.113.9", dst="192.0.2.1") / UDP(sport=9, dport=9))
    model = EventSampler(50)
    sent = 0
    while True:
        before = _clock(pipeline)
        verdict, now = pipeline.run(flood, cpu), _clock(pipeline)
        if before not in (0, now):  # ticked during the run: start again from a fresh budget
            return test_budget_spreads_a_second_and_counts_what_it_refused(pipeline, cpu, ring)
        assert verdict.action == "drop"
        sent += model.offer("drop", now) is not None
        if sent == 5:
            break
    for _ in range(45):
        pipeline.run(flood, cpu)
    first = ring.take()
    assert [(e.lost, e.rule_name, e.rule) for e in first] == [(0, None, 3)] * 5
    time.sleep(0.25)  # a later tick (the clock ticks every 100 ms)
    pipeline.run(flood, cpu)
    later = ring.take()
    # The new tick spaces its candidates by the last one's: 50 seen, 5 a tick's share.
    assert [(e.lost, e.every) for e in later] == [(45, 10)]
    counted = read_events(pipeline.maps["sw_config"].lookup(0), pipeline.maps["sw_ev_budget"])
    assert (counted["rate"], counted["drops_sent"], counted["drops_refused"],
            counted["passes_sent"]) == (50, 6, 45, 0)


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


def test_a_tick_spaces_its_candidates_by_the_last_one(pipeline, cpu, ring):
    """Two sources in bursts, over two ticks of the clock: the first tick's share goes
    to the first burst; the next tick takes 1 in 20 candidates (100 seen over a share
    of 5) and so samples both, as the model says."""
    for _ in range(5):  # a tick during a burst spoils the attempt: try again
        _apply(pipeline, {"rate": 50})
        ring.take()
        model = EventSampler(50)
        want, clocks = [], set()
        for burst in range(2):
            if burst:  # wait for the next tick
                start = _clock(pipeline)
                while _clock(pipeline) == start:
                    time.sleep(0.01)
            for src in ("203.0.113.9", "203.0.113.10"):
                frame = bytes(Ether(**ETH) / IP(src=src, dst="192.0.2.1") / UDP(sport=9, dport=9))
                for _ in range(50):
                    verdict = pipeline.run(frame, cpu)
                    now = _clock(pipeline)
                    clocks.add(now)
                    if (sent := model.offer(verdict.action, now)) is not None:
                        want.append((src, *sent))
        if len(clocks) == 2:
            break
    else:
        pytest.fail("the clock ticked during every attempt")
    got = [(e.src, e.every, e.lost) for e in ring.take()]
    assert got == want
    assert {src for src, every, _ in got if every == 1} == {"203.0.113.9"}
    assert {src for src, every, _ in got if every == 20} == {"203.0.113.9", "203.0.113.10"}
