"""Events without the kernel: the policy's `events:` section, the sampling model, the
hub that hands events to the daemon's readers, and how an event is shown."""

from __future__ import annotations

import io
import threading

import pytest

from shieldwall.cli.events import line
from shieldwall.model.events import EventSampler
from shieldwall.ops.events import Event, EventHub, Filter
from shieldwall.pcapio import PcapWriter, read_frames
from shieldwall.policy import parse_policy
from shieldwall.policy.errors import PolicyError


def _policy(events):
    return parse_policy({"version": 1, "default_action": "pass", "events": events}, "p.yaml", ".")


def _event(**kw) -> Event:
    base = dict(ts=1_700_000_000.25, cpu=1, action="drop", reason="rule", stage="policy", rule=3,
                family=4, src="198.51.100.9", dst="192.0.2.1", proto=6, sport=4444, dport=80,
                tcp_flags=0x02, frame_len=60, data=b"\x00" * 60, every=1, lost=0, rule_name="spoofed")
    return Event(**{**base, **kw})


def test_events_section_defaults_and_off():
    assert _policy({}).events == _policy({"rate": 1000}).events
    assert (_policy({}).events.rate, _policy({}).events.drops, _policy({}).events.passes) == (1000, 1, 0)
    assert _policy("off").events.rate == 0
    assert _policy({"rate": "10k", "passes": 64}).events.rate == 10_000


@pytest.mark.parametrize("events, problem", [
    ({"rate": "lots"}, "events.rate: expected a rate of events"),
    ({"rate": 1_000_000}, "events.rate: a rate of events a second per CPU 1000000 is out of range"),
    ({"drops": 0}, "events.drops: expected a whole number from 1"),
    ({"passes": "half"}, "events.passes: expected a whole number from 0"),
    ({"sample": 3}, "events: unknown key 'sample'"),
    ([1], "events: expected a mapping"),
])
def test_a_bad_events_section_is_named(events, problem):
    with pytest.raises(PolicyError) as err:
        _policy(events)
    assert problem in str(err.value)


def test_sampler_model_one_in_n_and_budget():
    s = EventSampler(rate=20, drops=3)  # a tick's share: 2 events; one costs 50 ms
    sent = [s.offer("drop", 10**9) for _ in range(12)]
    # Candidates are the 3rd, 6th, 9th, 12th; two fit the tick's share, a later tick's
    # first says two were refused.
    assert sent == [None, None, (3, 0), None, None, (3, 0)] + [None] * 6
    assert s.offer("pass", 10**9) is None  # passes off
    for _ in range(2):
        s.offer("drop", 10**9 + 100_000_000)
    # The next tick takes 1 in 2 candidates (the last one saw 4, twice its share): its
    # first stands for 3 * 2 packets, and the two refused before it.
    assert s.offer("drop", 10**9 + 100_000_000) == (6, 2)


def test_sampler_spreads_a_second_over_its_ticks():
    """A flood for a second: rate events, a tenth of them each tick, not all at once."""
    s = EventSampler(rate=1000)
    per_tick = [sum(s.offer("drop", tick * 100_000_000) is not None for _ in range(10_000))
                for tick in range(10, 20)]
    assert per_tick == [100] * 10


def test_sampler_spaces_a_tick_by_the_last_one():
    """Two sources in bursts: the first tick's share goes to the first burst, the next
    ticks' samples are spread over both, each standing for 1 in 100."""
    s = EventSampler(rate=1000)
    taken = []
    for tick in range(10, 13):
        for i in range(10_000):
            source = "a" if i < 5_000 else "b"
            if (sent := s.offer("drop", tick * 100_000_000)) is not None:
                taken.append((tick, source, sent[0]))
    first = [src for tick, src, _ in taken if tick == 10]
    assert first == ["a"] * 100
    later = [(src, every) for tick, src, every in taken if tick > 10]
    assert later.count(("a", 100)) == later.count(("b", 100)) == 100


def test_hub_hands_every_subscriber_the_events_and_bounds_a_slow_one():
    hub = EventHub(recent=5)
    fast, slow = hub.subscribe(), hub.subscribe(maxlen=3)
    hub.publish([_event(sport=i) for i in range(8)])
    assert [e.sport for e in fast.get(0)] == list(range(8))
    assert [e.sport for e in slow.get(0)] == [5, 6, 7] and slow.missed == 5
    assert [e.sport for e in hub.recent()] == [3, 4, 5, 6, 7]
    slow.close()
    hub.publish([_event()])
    assert slow.get(0) == [] and len(fast.get(0)) == 1


def test_a_subscriber_waits_for_the_next_events():
    hub = EventHub()
    sub = hub.subscribe()
    timer = threading.Timer(0.05, lambda: hub.publish([_event()]))
    timer.start()
    assert len(sub.get(5.0)) == 1
    timer.join()


def test_filter_by_reason_rule_name_or_id_and_action():
    ev = _event()
    assert Filter()(ev) and Filter(reason="rule")(ev) and Filter(rule="spoofed")(ev)
    assert Filter(rule="3")(ev) and Filter(action="drop")(ev)
    assert not Filter(reason="blocked")(ev) and not Filter(rule="web")(ev)
    assert not Filter(action="pass")(ev)


def test_line_shows_flow_flags_and_sampling():
    text = line(_event(every=8, lost=12))
    assert "drop rule [policy rule spoofed] 198.51.100.9:4444 > 192.0.2.1:80 tcp S len 60" in text
    assert "1/8" in text and "(+12 not sent)" in text
    assert "[2001:db8::1]:53 > [2001:db8::2]:53 udp" in line(
        _event(family=6, src="2001:db8::1", dst="2001:db8::2", proto=17, sport=53, dport=53))
    assert "non-IP frame 0806" in line(_event(family=0, src=None, dst=None,
                                              data=b"\x00" * 12 + b"\x08\x06"))


def test_pcap_writer_keeps_time_and_wire_length(tmp_path):
    path = tmp_path / "x.pcap"
    with open(path, "wb") as out:
        w = PcapWriter(out, snaplen=128)
        w.write(b"\x01" * 128, timestamp=12.000000123, orig_len=1500)
    frames = read_frames(path)
    assert len(frames) == 1 and frames[0].orig_len == 1500 and len(frames[0].data) == 128
    assert frames[0].timestamp == pytest.approx(12.000000123)
    buf = io.BytesIO()
    PcapWriter(buf).write(b"ab")
    assert len(buf.getvalue()) == 24 + 16 + 2


def test_status_line_of_events():
    from shieldwall.cli import _events_line
    base = {"rate": 1000, "drops": 1, "passes": 0, "drops_sent": 5, "drops_refused": 45,
            "drops_ring_full": 0, "passes_sent": 0, "passes_refused": 0, "passes_ring_full": 0}
    assert _events_line(base) == ("events: 1 in 1 drops, at most 1000/s per CPU each; 5 drop events "
                                  "sent, 45 refused (shieldwall events)")
    assert "1 in 64 passes" in _events_line({**base, "passes": 64})
    assert "(7 for a full ring: no reader)" in _events_line({**base, "drops_ring_full": 7})
    assert _events_line({**base, "rate": 0}) == "events: off"
