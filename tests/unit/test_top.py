"""Unit tier: what `shieldwall top` computes and prints, from status reports read a
second apart and from sampled drop events."""

from __future__ import annotations

import pytest

from shieldwall.ops import top

from shieldwall.ops.events import Event


def ev(src: str | None, ts: float, reason: str = "rule", action: str = "drop", every: int = 1,
       lost: int = 0) -> Event:
    return Event(ts=ts, cpu=0, action=action, reason=reason, stage="policy", rule=None, family=4,
                 src=src, dst="192.0.2.1", proto=17, sport=1234, dport=53, tcp_flags=0,
                 frame_len=60, data=b"", every=every, lost=lost)


def report(counters: dict, rules: dict | None = None, **extra) -> dict:
    return {"iface": "eth1", "attached": True, "mode": "native",
            "counters": [{"action": a, "reason": r, "packets": p, "bytes": b}
                         for (a, r), (p, b) in counters.items()],
            "rules": [{"id": i, "name": n, "packets": p, "bytes": b, "would_drop": 0,
                       "last_hit_seconds_ago": 0.1 if p else None}
                      for i, (n, (p, b)) in enumerate((rules or {}).items())],
            **extra}


BEFORE = report({("pass", "rule"): (100, 10_000), ("drop", "default"): (50, 3_000),
                 ("drop", "syn_cookie"): (0, 0)},
                {None: (50, 3_000), "web": (100, 10_000), "dns": (7, 700)},
                stages={"limit": {"blocks": 1, "limits": {}}})
AFTER = report({("pass", "rule"): (300, 30_000), ("drop", "default"): (4_050, 243_000),
                ("tx", "syn_cookie"): (400, 24_000)},
               {None: (4_050, 243_000), "web": (300, 30_000), "dns": (7, 700)},
               stages={"limit": {"blocks": 3, "limits": {"udp": {"passed": 5, "limited": 2,
                                                                 "bucketed": 1, "blocks": 2}}}},
               maps={"sw_lim_blocks": {"entries": 3, "max_entries": 65536},
                     "sw_ct_flows": {"entries": 60_000, "max_entries": 65536}},
               revision={"revision": 4, "when": "2026-11-22 20:00:00", "origin": "reload",
                         "source": "/etc/shieldwall/eth1.yaml"},
               updates={"reload": {"last": {"at": 990.0, "seconds": 0.25, "ok": True, "revision": 4}},
                        "set": {"last": {"at": 995.0, "seconds": 0.004, "ok": False,
                                         "error": "no set 'deny'", "revision": None}}})


def test_rates_are_counter_deltas_over_the_interval():
    got = {(r.action, r.reason): r for r in top.rates(BEFORE, AFTER, 2.0)}
    assert got[("drop", "default")].pps == 2000 and got[("drop", "default")].bps == 8 * 120_000
    assert got[("pass", "rule")].pps == 100
    assert got[("tx", "syn_cookie")].pps == 200 and got[("tx", "syn_cookie")].stage == "syn"
    assert got[("drop", "default")].stage == "policy"
    assert [(r.action, r.reason) for r in top.rates(BEFORE, AFTER, 2.0)][0] == ("drop", "default")
    assert top.rates(BEFORE, AFTER, 0) == []


def test_a_counter_that_went_back_was_reset():
    reset = report({("drop", "default"): (10, 600)})
    assert top.rates(BEFORE, reset, 1.0)[0].pps == 10


def test_rules_ranked_by_rate_then_total():
    got = top.rule_rates(BEFORE, AFTER, 2.0)
    assert [r.rule for r in got] == ["(default)", "web", "dns"]
    assert got[0].pps == 2000 and got[1].pps == 100 and got[2].pps == 0


def test_top_sources_scale_samples_and_keep_the_window():
    now = 1000.0
    events = ([ev("203.0.113.9", now - 1, every=10)] * 30 + [ev("198.51.100.7", now - 2, "blocked")] * 40
              + [ev("198.51.100.7", now - 2, "blocked", lost=1)] * 5  # and 5 refused before them
              + [ev("198.51.100.7", now - 2, "rate_limited")] * 10
              + [ev("192.0.2.200", now - 30)] * 500           # older than the window
              + [ev("192.0.2.201", now - 1, action="pass")] * 500  # not a drop
              + [ev(None, now - 1)] * 5)                       # not IP
    got = top.top_sources(events, now)
    assert [(s.src, s.packets, s.events) for s in got] == [("203.0.113.9", 300, 30), ("198.51.100.7", 60, 55)]
    assert got[0].share == pytest.approx(300 / 360)
    assert got[1].reason == "blocked"


def test_event_window_forgets_old_events():
    w = top.EventWindow(seconds=5)
    w.add([ev("192.0.2.1", 100.0), ev("192.0.2.2", 104.0)])
    assert [e.src for e in w.recent(106.0)] == ["192.0.2.2"]


def test_indicators_name_the_flood():
    f = top.frame(BEFORE, AFTER, 2.0, now=1000.0)
    text = "\n".join(f.indicators)
    assert "dropped" in text and "SYN flood" in text and "2 new block(s)" in text
    assert "map sw_ct_flows 92% full" in text
    quiet = top.frame(BEFORE, BEFORE, 2.0, now=1000.0)
    assert quiet.indicators == []


def test_plain_frame_shows_every_part():
    events = [ev("203.0.113.9", 999.0, every=4)] * 3
    text = top.plain(top.frame(BEFORE, AFTER, 2.0, events, now=1000.0, block_list=["192.0.2.66/32 for 50 s more"]))
    lines = text.splitlines()
    assert lines[0] == "shieldwall top: eth1, native mode, over 2.0 s"
    assert "revision 4, applied 2026-11-22 20:00:00 (reload): /etc/shieldwall/eth1.yaml" in text
    assert "last change: set, 5 s ago, took 4 ms, FAILED: no set 'deny'" in text
    verdicts = lines.index("verdicts (pps, bps):")
    assert lines[verdicts + 1].split()[:5] == ["drop", "default", "policy", "2.00k", "pps"]
    rules = lines.index("top rules:")
    assert lines[rules + 1].split()[:2] == ["(default)", "2.00k"]
    sources = lines.index("top dropped sources (sampled):")
    assert lines[sources + 1].split()[:2] == ["203.0.113.9", "~12"]
    assert "limit udp: 5 passed, 2 rate-limited, 2 blocks set" in text
    assert "blocks in force: 3" in text and "192.0.2.66/32 for 50 s more" in text
    assert "sw_ct_flows" in text


def test_render_builds_a_layout_rich_can_draw():
    from rich.console import Console
    console = Console(width=160, height=40, record=True, file=open("/dev/null", "w"))
    console.print(top.render(top.frame(BEFORE, AFTER, 2.0, [ev("203.0.113.9", 999.0)], now=1000.0)))
    drawn = console.export_text()
    assert "203.0.113.9" in drawn and "syn_cookie" in drawn and "web" in drawn
    assert "map sw_ct_flows 92% full" in drawn  # the last of four indicators still shows


def test_pick_needs_an_interface_when_several_run():
    with pytest.raises(ValueError, match="choose one with --iface"):
        top.pick([{"iface": "a"}, {"iface": "b"}], None)
    with pytest.raises(ValueError, match="not attached to any"):
        top.pick([], None)
    assert top.pick([{"iface": "a"}], None)["iface"] == "a"


def test_an_event_comes_back_from_its_json():
    e = ev("2001:db8::7", 1000.25, "blocked", every=3, lost=2)
    assert Event.from_json(e.as_json()) == e
