"""Automatic mitigation without a kernel: detection from sampled events built here
(bounded memory under never-repeating sources, samples scaled back), and the
decisions (block, renew rather than re-add, release after the source stays below the
lower threshold, bounds, spared prefixes, monitor mode, an entry reverted by hand)."""

from __future__ import annotations

import ipaddress
import random
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from shieldwall.ops.detect import BASELINES, DESTINATIONS, MIN_SAMPLES, Detector, SpaceSaving
from shieldwall.ops.events import Event
from shieldwall.ops.mitigate import Mitigator
from shieldwall.policy.mitigation import Mitigation

SERVER = "192.0.2.10"
HEAVY = "203.0.113.7"


def event(src: str, action: str = "pass", every: int = 1, lost: int = 0, dst: str = SERVER,
          proto: int = 17, ts: float = 0.0, rule: int | None = None) -> Event:
    return Event(ts=ts, cpu=0, action=action, reason="default" if action == "pass" else "rule",
                 stage="policy", rule=rule, family=6 if ":" in src else 4, src=src, dst=dst,
                 proto=proto, sport=1234, dport=53, tcp_flags=0, frame_len=64, data=b"",
                 every=every, lost=lost)


def settings_(**kw) -> Mitigation:
    base = dict(mode="enforce", set="auto_block", kind="block", rules=(1,), heavy_pps=1000,
                heavy_share=0.2, release_pps=200, ttl=10.0, max_entries=100,
                max_per_minute=50, anomaly_warmup=1e9)
    base.update(kw)
    return Mitigation(**base)


class Lab:
    """A mitigator with a set of its own: what apply wrote, what a person took off."""

    def __init__(self, **kw) -> None:
        self.lines: list[dict] = []
        self.entries: dict[str, float | None] = {}
        self.applied: list[list] = []
        self.own = ["192.0.2.10"]
        self.m = Mitigator("sw0", settings_(**kw), self.lines.append, self.apply,
                           lambda: dict(self.entries), lambda: self.own, now=0.0)

    def apply(self, changes) -> None:
        self.applied.append(changes)
        for op, prefix, expires in changes:
            if op == "add":
                self.entries[prefix] = expires
            else:
                self.entries.pop(prefix, None)

    def window(self, now: float, rates: dict[str, int], seconds: float = 0.5, every: int = 1) -> None:
        """Traffic of `seconds` at `rates` pps per source, sampled 1 in `every`,
        then the window closes at `now` (after an empty one, if the last closed
        earlier: the daemon closes one every WINDOW seconds)."""
        while self.m.detector.window_start < now - seconds - 1e-9:
            self.m.close(min(self.m.detector.window_start + seconds, now - seconds))
        events = []
        for src, pps in rates.items():
            n = int(pps * seconds / every)
            events += [event(src, every=every, ts=now) for _ in range(n)]
        random.Random(now).shuffle(events)
        self.m.feed(events)
        self.m.close(now)

    def actions(self, name: str | None = None) -> list[dict]:
        return [line for line in self.lines if name is None or line["mitigation"] == name]


# -- the heavy-hitter summary ------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(1, 50)), min_size=1, max_size=2000),
       st.integers(4, 64))
def test_space_saving_bounds_hold_and_memory_stays_bounded(stream, k):
    summary = SpaceSaving(k)
    truth: Counter = Counter()
    for key, weight in stream:
        summary.add(key, weight)
        truth[key] += weight
    assert len(summary) <= k and len(summary.heap) <= k
    assert summary.total == sum(truth.values())
    for key in summary.counts:
        assert summary.lower(key) <= truth[key] <= summary.count(key)
    for key, weight in truth.items():
        if weight > summary.total / k:
            assert key in summary.counts, (key, weight, summary.total / k)


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 1000))
def test_detector_memory_is_bounded_under_never_repeating_sources(seed, every):
    rng = random.Random(seed)
    detector = Detector(sources=256, anomaly_min_pps=1, warmup=0)
    for window in range(4):
        events = [event(str(ipaddress.IPv6Address((0x20010db8 << 96) | rng.getrandbits(80))),
                        every=every, lost=rng.randrange(5),
                        dst=str(ipaddress.IPv4Address(rng.getrandbits(32))), proto=rng.randrange(256))
                  for _ in range(3000)]
        detector.feed(events)
        assert len(detector.sources) <= 256 and len(detector.dsts) <= DESTINATIONS
        found = detector.close(window + 1.0)
        assert len(detector.baselines) <= BASELINES
        # No spoofed source is ever seen often enough to be called hot.
        assert all(src.samples < MIN_SAMPLES for src in found.sources.values())


def test_samples_scale_back_with_every_and_lost():
    detector = Detector()
    # 40 events of 1 in 100, each after 4 refused candidates: 40 * 100 * 5 = 20,000
    # packets, and the CPU's event before them (100): 20,100 in 0.5 s, all from one
    # source.
    detector.feed([event(HEAVY, every=100, ts=0.0)])
    detector.feed([event(HEAVY, every=100, lost=4, ts=0.01 * i) for i in range(40)])
    window = detector.close(0.5)
    src = window.sources[f"{HEAVY}/32"]
    assert src.pps == 40_200 and src.share == 1.0 and src.samples == 41


def test_refusals_left_by_a_flood_long_gone_weigh_nothing():
    """A flood that stopped mid-second leaves its refusals on the budget; the CPU's next
    sample, much later, carries them."""
    detector = Detector()
    detector.feed([event(HEAVY, ts=1.0)])
    detector.close(1.5)
    detector.feed([event(HEAVY, lost=90_000, ts=60.0 + i) for i in range(10)])
    window = detector.close(70.0)
    # The first sample of the ten weighs 1; the next ones come a second apart: fresh.
    # (Sources are judged over two windows: 0 to 70 s here.)
    assert window.sources[f"{HEAVY}/32"].upper == pytest.approx((2 + 9 * 90_001) / 70)
    # The first event a reader sees has no known previous one: its lost are not counted.
    detector = Detector()
    detector.feed([event(HEAVY, lost=90_000, ts=5.0)])
    assert detector.close(0.5).sources[f"{HEAVY}/32"].upper == 2.0


def test_prefix_lengths_group_sources():
    detector = Detector(prefix4=24, prefix6=64)
    detector.feed([event("198.51.100.7"), event("198.51.100.9"), event("2001:db8:1:2::5"),
                   event("2001:db8:1:2:ffff::1")])
    window = detector.close(1.0)
    assert set(window.sources) == {"198.51.100.0/24", "2001:db8:1:2::/64"}
    assert all(src.samples == 2 for src in window.sources.values())


def test_drops_count_only_for_held_sources():
    detector = Detector()
    detector.held.add(f"{HEAVY}/32")
    detector.feed([event(HEAVY, action="drop") for _ in range(10)]
                  + [event("198.51.100.1", action="drop") for _ in range(10)])
    window = detector.close(1.0)
    assert set(window.sources) == {f"{HEAVY}/32"}


# -- decisions ---------------------------------------------------------------------------

def test_a_heavy_hitter_is_blocked_in_its_first_window():
    lab = Lab()
    lab.window(0.5, {HEAVY: 20_000, "198.51.100.1": 100, "198.51.100.2": 100}, every=10)
    [block] = lab.actions("block")
    assert block["prefix"] == f"{HEAVY}/32" and block["set"] == "auto_block"
    assert block["pps"] >= 19_000 and block["mode"] == "enforce"
    assert lab.applied == [[("add", f"{HEAVY}/32", 10.5)]]
    assert lab.m.counts["block"] == 1


def test_share_and_samples_guard_against_small_or_rare_sources():
    lab = Lab()
    # Over heavy.pps, but a small share of the traffic: not hot.
    lab.window(0.5, {HEAVY: 1_500, **{f"198.51.100.{i}": 800 for i in range(1, 11)}})
    # One event that stands for many (a budget's lost candidates): too few samples.
    lab.m.feed([event("198.51.100.99", every=1, lost=100_000)])
    lab.m.close(1.0)
    assert not lab.actions("block") and not lab.applied


def test_hysteresis_renews_while_hot_and_releases_after_it_cools():
    lab = Lab()
    prefix = f"{HEAVY}/32"
    lab.window(0.5, {HEAVY: 5_000})
    assert len(lab.actions("block")) == 1
    now = 0.5
    # Above release.pps (200) but below heavy.pps (1000): kept, by renewals only.
    for _ in range(40):
        now += 0.5
        lab.window(now, {HEAVY: 500, "198.51.100.1": 10})
    assert len(lab.actions("block")) == 1
    renewals = lab.actions("renew")
    assert renewals and all(r["prefix"] == prefix for r in renewals)
    assert all(c[0][0] == "add" for c in lab.applied) and len(lab.applied) == 1 + len(renewals)
    # Renewed only when less than half its TTL is left, not every window.
    assert len(renewals) <= 40 * 0.5 / 5 + 1
    last = lab.m.held[prefix].expires
    # Below release.pps: not renewed; released once the entry runs out.
    while now < last - 0.5:
        now += 0.5
        lab.window(now, {HEAVY: 100})
        assert not lab.actions("release")
    now = last
    lab.window(now, {HEAVY: 100})
    [release] = lab.actions("release")
    assert release["prefix"] == prefix and prefix not in lab.m.held
    # Hot again: a new block.
    lab.window(now + 0.5, {HEAVY: 5_000})
    assert len(lab.actions("block")) == 2


def test_drop_samples_of_a_held_source_keep_it_held():
    lab = Lab()
    lab.window(0.5, {HEAVY: 5_000})
    now = 0.5
    for _ in range(30):
        now += 0.5
        lab.m.feed([event(HEAVY, action="drop", rule=1) for _ in range(300)])
        lab.m.close(now)
    assert lab.actions("renew") and not lab.actions("release")


def test_bounds_max_entries_and_max_per_minute():
    lab = Lab(max_entries=3, heavy_share=0.01)
    sources = {f"198.51.100.{i}": 5_000 for i in range(1, 6)}
    lab.window(0.5, sources)
    assert len(lab.actions("block")) == 3
    refused = lab.actions("refused")
    assert len(refused) == 2 and {r["bound"] for r in refused} == {"max_entries"}
    # Said once per TTL, not every window.
    lab.window(1.0, sources)
    assert len(lab.actions("refused")) == 2

    lab = Lab(max_per_minute=2, heavy_share=0.01, ttl=5.0)
    now = 0.0
    for i in range(1, 5):
        now += 6.0  # each block has expired before the next
        lab.window(now, {f"198.51.100.{i}": 5_000})
    assert len(lab.actions("block")) == 2
    assert [r["bound"] for r in lab.actions("refused")] == ["max_per_minute"] * 2
    lab.window(now + 60, {"198.51.100.9": 5_000})
    assert len(lab.actions("block")) == 3


def test_never_own_and_allowed_sources_are_never_blocked():
    never = (ipaddress.ip_network("198.51.100.0/25"),)
    allowed = (ipaddress.ip_network("2001:db8::7/128"),)
    lab = Lab(never=never, allowed=allowed, heavy_share=0.01, prefix6=64)
    lab.window(0.5, {"198.51.100.5": 5_000, "192.0.2.10": 5_000, "2001:db8::9": 5_000,
                     HEAVY: 5_000})
    assert [b["prefix"] for b in lab.actions("block")] == [f"{HEAVY}/32"]
    bounds = {r["prefix"]: r["bound"] for r in lab.actions("refused")}
    # The /64 holds an allowed address: blocking it would block that one too.
    assert bounds == {"198.51.100.5/32": "never", "192.0.2.10/32": "own",
                      "2001:db8::/64": "never"}


def test_monitor_mode_reports_and_changes_nothing():
    lab = Lab(mode="monitor")
    lab.window(0.5, {HEAVY: 5_000})
    now = 0.5
    for _ in range(12):
        now += 0.5
        lab.window(now, {HEAVY: 5_000})
    for _ in range(30):
        now += 0.5
        lab.window(now, {})
    names = [line["mitigation"] for line in lab.lines]
    assert names[0] == "would-block" and "would-renew" in names and names[-1] == "would-release"
    assert not {"block", "renew", "release"} & set(names)
    assert lab.applied == [] and lab.entries == {}
    assert all(line["mode"] == "monitor" for line in lab.lines)


def test_an_entry_taken_off_by_hand_is_not_added_again_for_a_ttl():
    lab = Lab()
    prefix = f"{HEAVY}/32"
    lab.window(0.5, {HEAVY: 5_000})
    del lab.entries[prefix]  # shieldwall set del
    lab.window(1.0, {HEAVY: 5_000})
    [reverted] = lab.actions("reverted")
    assert reverted["prefix"] == prefix and prefix not in lab.m.held
    assert [r["bound"] for r in lab.actions("refused")] == ["reverted"]
    lab.window(12.0, {HEAVY: 5_000})
    assert len(lab.actions("block")) == 2 and lab.entries[prefix] == 22.0


def test_expiring_entries_left_by_an_earlier_daemon_are_taken_over():
    lines: list[dict] = []
    entries = {f"{HEAVY}/32": 5.0, "198.51.100.1/32": None}
    m = Mitigator("sw0", settings_(), lines.append, lambda changes: None, lambda: entries,
                  tuple, now=1.0)
    assert set(m.held) == {f"{HEAVY}/32"}  # an entry without a TTL is someone else's


def test_a_failed_change_is_logged_and_not_held():
    lines: list[dict] = []

    def broken(changes):
        raise OSError("no such interface")
    m = Mitigator("sw0", settings_(), lines.append, broken, dict, tuple, now=0.0)
    m.feed([event(HEAVY) for _ in range(3000)])
    m.close(0.5)
    assert [line["mitigation"] for line in lines] == ["block", "failed"]
    assert "no such interface" in lines[1]["problem"] and not m.held


def test_anomaly_after_warmup_lowers_the_source_threshold():
    lab = Lab(anomaly_warmup=5.0, anomaly_factor=4.0, anomaly_min_pps=1000, anomaly_pps=300,
              heavy_pps=100_000, heavy_share=0.2)
    now = 0.0
    # Learning: 400 pps to the server from 40 sources.
    normal = {f"198.51.100.{i}": 10 for i in range(1, 41)}
    for _ in range(20):
        now += 0.5
        lab.window(now, normal)
    assert not lab.actions("anomaly")
    # A flood of 3,000 pps from one source: far over the baseline, under heavy.pps.
    now += 0.5
    lab.window(now, {**normal, HEAVY: 3_000})
    [anomaly] = [a for a in lab.actions("anomaly") if a["kind"] == "dst"]
    assert anomaly["key"] == SERVER and anomaly["baseline"] < 1000
    [block] = lab.actions("block")
    assert block["prefix"] == f"{HEAVY}/32" and f"dst={SERVER}" in block["anomalies"]
    for _ in range(4):
        now += 0.5
        lab.window(now, normal)
    assert any(a["kind"] == "dst" for a in lab.actions("anomaly-end"))


def test_no_anomaly_during_warmup():
    lab = Lab(anomaly_warmup=60.0, anomaly_min_pps=10)
    lab.window(0.5, {f"198.51.100.{i}": 100 for i in range(1, 20)})
    lab.window(1.0, {f"198.51.100.{i}": 10_000 for i in range(1, 20)})
    assert not lab.actions("anomaly")


def test_counters_feed_a_traffic_baseline_and_only_passed_traffic_lowers_the_bar():
    lab = Lab(anomaly_warmup=5.0, anomaly_factor=4.0, anomaly_min_pps=1000, anomaly_pps=300,
              heavy_pps=100_000, heavy_share=0.2)
    # 2,000 pps from 40 sources: a source of 3,000 more is not an anomaly of the
    # destination or the protocol (5,000 < 4 x 2,000).
    normal = {f"198.51.100.{i}": 50 for i in range(1, 41)}
    now, passed, dropped = 0.0, 0, 0
    for _ in range(20):
        now += 0.5
        passed, dropped = passed + 1000, dropped + 100
        lab.m.counters(now, {"pass": passed, "drop": dropped})
        lab.window(now, normal)
    # Drops jump: reported, but the bar for sources stays where it was.
    now += 0.5
    dropped += 1_000_000
    lab.m.counters(now, {"pass": passed, "drop": dropped})
    lab.window(now, {**normal, HEAVY: 3_000})
    assert [(a["kind"], a["key"]) for a in lab.actions("anomaly")] == [("traffic", "drop")]
    assert not lab.actions("block")
    # Passes jump too: now a source of 3,000 pps is enough.
    now += 0.5
    passed += 100_000
    lab.m.counters(now, {"pass": passed, "drop": dropped + 1_000_000})
    lab.window(now, {**normal, HEAVY: 3_000})
    assert ("traffic", "pass") in [(a["kind"], a["key"]) for a in lab.actions("anomaly")]
    [block] = lab.actions("block")
    assert block["anomalies"] == ["traffic=pass"]


def test_a_flood_that_empties_the_budget_is_measured_by_the_counters():
    """The budget's second opens with its events sent at once, none carrying `lost`
    yet: the samples say who, the counters how much."""
    lab = Lab(heavy_pps=20_000)
    lab.m.counters(0.0, {"pass": 0, "drop": 0})
    lab.m.feed([event(HEAVY) for _ in range(1000)] + [event("198.51.100.1") for _ in range(20)])
    lab.m.counters(0.5, {"pass": 50_000, "drop": 0})
    window = lab.m.close(0.5)
    assert window.sources[f"{HEAVY}/32"].pps > 45_000
    [block] = lab.actions("block")
    assert block["prefix"] == f"{HEAVY}/32"
    # Without counters, the same samples are 2,000 pps: not enough.
    lab = Lab(heavy_pps=20_000)
    lab.m.feed([event(HEAVY) for _ in range(1000)] + [event("198.51.100.1") for _ in range(20)])
    lab.m.close(0.5)
    assert not lab.actions("block")


# -- the policy's section ----------------------------------------------------------------

POLICY = """\
version: 1
default_action: pass
sets:
  auto_block: {type: prefix}
  throttled: {type: prefix}
  admins: {type: prefix, entries: [192.0.2.0/28]}
events: {passes: 100}
fastpath: {allow: ['@admins']}
limits:
  slow: {pps: 100}
rules:
  - {name: auto, match: {src: '@auto_block'}, action: drop}
  - {name: slow, match: {src: '@throttled'}, action: {limit: slow}}
  - {name: ssh, match: {src: [203.0.113.9], dport: 22}, action: pass}
"""


def problems(text: str) -> list[str]:
    from shieldwall.policy.errors import PolicyError
    from shieldwall.policy.load import parse_policy_text
    try:
        parse_policy_text(text, "p.yaml", ".")
    except PolicyError as err:
        return [str(issue) for issue in err.issues]
    return []


def test_the_section_read_with_its_defaults_and_what_it_spares():
    from shieldwall.policy.load import parse_policy_text
    policy = parse_policy_text(POLICY + "mitigation: {mode: enforce, block_set: auto_block, "
                               "never: [198.51.100.0/24], heavy: {pps: 20k}, ttl: 90s}\n",
                               "p.yaml", ".")
    m = policy.mitigation
    assert (m.mode, m.set, m.kind, m.rules, m.heavy_pps, m.ttl) == ("enforce", "auto_block", "block", (1,), 20_000, 90.0)
    assert m.release == 5_000 and m.under_anomaly_pps == 5_000 and m.max_entries == 1_000
    spared = m.spared()
    assert ipaddress.ip_address("198.51.100.9") in spared       # never
    assert ipaddress.ip_address("192.0.2.3") in spared          # fastpath.allow
    assert ipaddress.ip_address("203.0.113.9") in spared        # a pass rule's src
    assert ipaddress.ip_address("203.0.113.7") not in spared
    limited = parse_policy_text(POLICY + "mitigation: {mode: monitor, limit_set: throttled}\n",
                                "p.yaml", ".").mitigation
    assert (limited.kind, limited.rules, limited.enforce) == ("limit", (2,), False)
    assert parse_policy_text(POLICY, "p.yaml", ".").mitigation is None


def test_problems_name_their_field():
    found = problems(POLICY + "mitigation: {mode: x, block_set: nope, heavy: {pps: 0, share: 2}, "
                     "ttl: 9y, max_entries: -1, never: [1.2.3.4/8], prefix6: 200, bogus: 1}\n")
    fields = [line.split(": ")[1] for line in found]
    assert fields == ["mitigation", "mitigation.mode", "mitigation.block_set", "mitigation.heavy.pps",
                      "mitigation.heavy.share", "mitigation.ttl", "mitigation.max_entries",
                      "mitigation.prefix6", "mitigation.never[0]"], found
    assert "unknown key 'bogus'" in found[0] and "unknown set 'nope'" in found[2]


def test_a_set_no_rule_of_the_kind_reads_is_refused():
    [found] = problems(POLICY + "mitigation: {mode: enforce, block_set: admins}\n")
    assert "mitigation.block_set: set 'admins' is read by no drop rule" in found
    [found] = problems(POLICY + "mitigation: {mode: enforce, limit_set: auto_block}\n")
    assert "mitigation.limit_set: set 'auto_block' is read by no limit rule" in found
    [found] = problems(POLICY + "mitigation: {mode: enforce, block_set: auto_block, limit_set: throttled}\n")
    assert "one of the two" in found
    [found] = problems(POLICY + "mitigation: {mode: enforce}\n")
    assert found.startswith("p.yaml: mitigation: name the set")
    # A negated item beside the set: not every member of the set would be dropped.
    negated = POLICY.replace("src: '@auto_block'}", "src: ['@auto_block', '!198.51.100.1']}")
    assert "read by no drop rule" in problems(negated + "mitigation: {mode: enforce, block_set: auto_block}\n")[0]
    # The fastpath's deny list reads it: fine.
    denied = POLICY.replace("fastpath: {allow: ['@admins']}",
                            "fastpath: {allow: ['@admins'], deny: ['@throttled']}")
    assert not problems(denied + "mitigation: {mode: enforce, block_set: throttled}\n")


def test_mitigation_without_pass_samples_is_refused():
    for events in ("events: {passes: 100}\n", "events: {drops: 1}\n", "events: off\n",
                   "events: {rate: 0, passes: 10}\n"):
        text = POLICY.replace("events: {passes: 100}\n", events)
        found = problems(text + "mitigation: {mode: monitor, block_set: auto_block}\n")
        if events.startswith("events: {passes"):
            assert not found
        else:
            assert len(found) == 1 and "events: {passes: N}" in found[0], (events, found)
    no_events = POLICY.replace("events: {passes: 100}\n", "")
    assert "needs samples of passed packets" in problems(
        no_events + "mitigation: {mode: monitor, block_set: auto_block}\n")[0]


def test_release_above_heavy_is_refused():
    [found] = problems(POLICY + "mitigation: {mode: enforce, block_set: auto_block, "
                       "heavy: {pps: 1000}, release: {pps: 5000}}\n")
    assert found.startswith("p.yaml: mitigation.release.pps: 5000 is above heavy.pps (1000)")


# -- the task, on a hub ------------------------------------------------------------------

def test_the_task_reads_the_hub_and_follows_reloads():
    import threading
    import time

    from shieldwall.ops.events import EventHub
    from shieldwall.ops.mitigate import WINDOW, MitigationTask

    hub = EventHub()
    lines: list[dict] = []
    applied: list = []
    lock = threading.Lock()
    following: list = []
    task = MitigationTask("sw0", settings_(), hub.subscribe, log=lines.append,
                          enforce_apply=applied.append, present=dict, own=tuple,
                          totals=lambda: None, follow=lambda: following.pop() if following else None,
                          lock=lock)
    stop = threading.Event()
    thread = threading.Thread(target=task.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not applied and time.monotonic() < deadline:
            hub.publish([event(HEAVY) for _ in range(500)])
            time.sleep(0.05)
        assert applied and applied[0][0][:2] == ("add", f"{HEAVY}/32")
        assert [line["mitigation"] for line in lines[:2]] == ["start", "block"]
        # A reload without the section: the task lets go of the hub.
        following.append((None,))
        time.sleep(3 * WINDOW)
        assert task.mitigator is None and lines[-1]["mitigation"] == "stop"
        assert not hub._subs
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_metrics_count_every_action():
    from prometheus_client import CollectorRegistry, generate_latest

    from shieldwall.ops.mitigate import MitigationCollector, MitigationTask

    task = MitigationTask("sw0", settings_(), subscribe=lambda: None, log=lambda line: None,
                          enforce_apply=lambda changes: None, present=dict, own=tuple,
                          totals=lambda: None)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MitigationCollector(task))
    task.mitigator.feed([event(HEAVY, ts=0.1) for _ in range(3000)])
    task.mitigator.close(0.5)
    text = generate_latest(registry).decode()
    assert 'shieldwall_mitigation_actions_total{action="block",iface="sw0"} 1.0' in text
    assert 'shieldwall_mitigation_actions_total{action="refused",iface="sw0"} 0.0' in text
    assert 'shieldwall_mitigation_entries{iface="sw0",mode="enforce",set="auto_block"} 1.0' in text
    assert 'shieldwall_mitigation_events_total{iface="sw0"} 3000.0' in text
    assert 'shieldwall_mitigation_anomalies{iface="sw0",kind="dst"} 0.0' in text
    assert 'shieldwall_mitigation_events_missed_total{iface="sw0"} 0.0' in text
    # And in the daemon's status.
    report = task.report()
    assert (report["mode"], report["set"], report["held_count"]) == ("enforce", "auto_block", 1)
    assert report["held"][0]["prefix"] == f"{HEAVY}/32" and report["actions"] == {"block": 1}


def test_mitigation_task_on_a_daemon_follows_its_reloads(tmp_path):
    """What mitigation_task reads of a daemon object (ops/daemon.py's Daemon): its
    policy file, hub, lock, stop, log, and the revision its watch put in force."""
    import json
    import threading
    import time
    from types import SimpleNamespace

    from shieldwall.ops.events import EventHub
    from shieldwall.ops.mitigate import WINDOW, mitigation_task

    path = tmp_path / "policy.yaml"
    path.write_text(POLICY + "mitigation: {mode: monitor, block_set: auto_block}\n")
    lines: list[str] = []
    closers: list = []
    daemon = SimpleNamespace(iface="sw-nowhere0", config=path, hub=EventHub(),
                             changes=threading.Lock(), stopping=threading.Event(),
                             watch=SimpleNamespace(revision=1, refused=None), log=lines.append,
                             on_stop=closers.append)
    task = mitigation_task(daemon)
    try:
        assert json.loads(lines[0])["mitigation"] == "start" and task.mitigator.settings.mode == "monitor"
        path.write_text(POLICY + "mitigation: {mode: enforce, block_set: auto_block}\n")
        daemon.watch.revision = 2
        deadline = time.monotonic() + 5
        while task.mitigator.settings.mode != "enforce" and time.monotonic() < deadline:
            time.sleep(WINDOW / 5)
        assert json.loads(lines[-1])["mitigation"] == "update"
        path.write_text(POLICY)
        daemon.watch.revision = 3
        while task.mitigator is not None and time.monotonic() < deadline:
            time.sleep(WINDOW / 5)
        assert json.loads(lines[-1])["mitigation"] == "stop"
    finally:
        for closer in closers:
            closer()
    assert daemon.stopping.is_set()
    # Without a hub (nft mode) it says so and does nothing.
    path.write_text(POLICY + "mitigation: {mode: monitor, block_set: auto_block}\n")
    daemon.hub = None
    assert mitigation_task(daemon) is None and json.loads(lines[-1])["mitigation"] == "off"


def test_check_says_what_it_does_and_not_that_its_set_is_empty():
    from shieldwall.policy import analyze
    from shieldwall.policy.load import parse_policy_text
    text = POLICY.replace("rules:\n", "rules:\n  - {name: never, match: {src: '@throttled'}, action: drop}\n")
    plain = analyze(parse_policy_text(text, "p.yaml", "."))
    assert {(w.path, w.problem) for w in plain.warnings} >= {
        ("sets.auto_block", "the set is empty: nothing matches it"),
        ("rules[1]", "never matches: src matches no value")}
    report = analyze(parse_policy_text(text + "mitigation: {mode: enforce, block_set: auto_block}\n",
                                       "p.yaml", "."))
    found = {(w.path, w.problem) for w in report.warnings}
    assert not any("auto_block" in path or path == "rules[1]" for path, _ in found), found
    # Other empty sets are still said.
    assert ("sets.throttled", "the set is empty: nothing matches it") in found
    assert ("rules[0]", "never matches: src matches no value") in found
    [line] = report.summary.stages["mitigation"]
    assert line.startswith("mitigation: enforce (acts): blocks sources of at least 10,000 pps")
    assert "through set auto_block (read by auto)" in line


def test_a_release_changes_the_set_so_a_compiled_entry_leaves():
    lab = Lab(ttl=2.0)
    lab.window(0.5, {HEAVY: 5_000})
    now = 0.5
    while not lab.actions("release"):
        now += 0.5
        lab.window(now, {})
    # The release is a change of the set with no decision: what expired leaves.
    assert lab.applied[-1] == []
    lab = Lab(ttl=2.0, mode="monitor")
    lab.window(0.5, {HEAVY: 5_000})
    for i in range(10):
        lab.window(1.0 + i / 2, {})
    assert lab.actions("would-release") and lab.applied == []
