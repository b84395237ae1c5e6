"""The metric families a status report becomes, and the --listen address."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shieldwall.ops.metrics import DOCTOR_MAX_AGE, DoctorCache
from shieldwall.ops.serve import exposition, parse_listen

REPORT = {
    "iface": "eth1", "attached": True, "mode": "tc", "revision": {"revision": 7},
    "counters": [{"action": "drop", "reason": "rule", "packets": 5, "bytes": 300},
                 {"action": "pass", "reason": "default", "packets": 2, "bytes": 120},
                 {"action": "drop", "reason": "blocked", "packets": 9, "bytes": 540},
                 {"action": "drop", "reason": "truncated_l4", "packets": 1, "bytes": 40}],
    "rules": [{"id": 0, "name": None, "packets": 2, "bytes": 120, "would_drop": 0,
               "last_hit": None},
              {"id": 1, "name": "no-dns", "packets": 5, "bytes": 300, "would_drop": 0,
               "last_hit": 1700000000.5},
              {"id": 2, "name": "watch", "packets": 1, "bytes": 60, "would_drop": 1}],
    "stages": {"limit": {"limits": {"udp": {"passed": 10, "limited": 4, "bucketed": 2, "blocks": 3}},
                         "blocks": 2}},
    "live_entries": {"deny": 4},
    "canary": {"arm": "10% of flows", "against": 6,
               "arms": {"in force": {"revision": 6, "packets": 90},
                        "canary": {"revision": 7, "packets": 10}}},
    "maps": {"sw_lim_blocks": {"entries": 2, "max_entries": 65536}},
    "events": {"rate": 1000, "drops": 1, "passes": 0, "drops_sent": 40, "drops_refused": 7,
               "drops_ring_full": 1, "passes_sent": 0, "passes_refused": 0, "passes_ring_full": 0},
    "updates": {"reload": {"count": 3, "failures": 1, "sum": 0.9, "bounds": [0.1, 0.5, 1.0],
                           "buckets": [1, 2, 3],
                           "last": {"seconds": 0.4, "at": 1700000001.0, "ok": False}}},
}

DOCTOR = {"eth1": {"best_mode": "native", "findings": {"fail": 1, "warn": 2, "ok": 30}}}


def samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_a_report_becomes_families_with_its_exact_counts():
    got = samples(exposition(lambda: [REPORT, {"iface": "eth2", "attached": False, "mode": None,
                                              "problem": "shieldwall is not attached here"}],
                             lambda reports: DOCTOR))
    assert got[("shieldwall_attached", (("iface", "eth1"), ("mode", "tc")))] == 1
    assert got[("shieldwall_attached", (("iface", "eth2"), ("mode", "none")))] == 0
    assert got[("shieldwall_revision", (("iface", "eth1"),))] == 7
    assert got[("shieldwall_packets_total", (("action", "drop"), ("iface", "eth1"), ("reason", "rule"),
                                             ("stage", "policy")))] == 5
    assert got[("shieldwall_bytes_total", (("action", "pass"), ("iface", "eth1"), ("reason", "default"),
                                           ("stage", "policy")))] == 120
    assert got[("shieldwall_packets_total", (("action", "drop"), ("iface", "eth1"), ("reason", "blocked"),
                                             ("stage", "limit")))] == 9
    assert got[("shieldwall_packets_total", (("action", "drop"), ("iface", "eth1"),
                                             ("reason", "truncated_l4"), ("stage", "root")))] == 1
    assert got[("shieldwall_rule_packets_total", (("iface", "eth1"), ("rule", "(default)")))] == 2
    assert got[("shieldwall_rule_would_drop_total", (("iface", "eth1"), ("rule", "watch")))] == 1
    assert ("shieldwall_rule_would_drop_total", (("iface", "eth1"), ("rule", "no-dns"))) not in got
    assert got[("shieldwall_scrape_problem",
                (("iface", "eth2"), ("problem", "shieldwall is not attached here")))] == 1


@pytest.mark.parametrize("text,want", [("127.0.0.1:9100", ("127.0.0.1", 9100)),
                                       (":9100", ("0.0.0.0", 9100)),
                                       ("[::1]:9100", ("::1", 9100))])
def test_listen_addresses(text, want):
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["9100", "host:", "host:0", "host:70000", "host:http"])
def test_a_bad_listen_address_names_the_option(text):
    with pytest.raises(ValueError, match="--listen: .* is not ADDR:PORT"):
        parse_listen(text)


def test_the_new_families_carry_the_reports_figures():
    got = samples(exposition(lambda: [REPORT], lambda reports: DOCTOR))
    e = (("iface", "eth1"),)
    assert got[("shieldwall_rule_last_hit_timestamp_seconds", e + (("rule", "no-dns"),))] == 1700000000.5
    assert ("shieldwall_rule_last_hit_timestamp_seconds", e + (("rule", "(default)"),)) not in got
    assert got[("shieldwall_limit_packets_total", e + (("limit", "udp"), ("outcome", "passed")))] == 10
    assert got[("shieldwall_limit_packets_total", e + (("limit", "udp"), ("outcome", "limited")))] == 4
    assert got[("shieldwall_limit_blocks_total", e + (("limit", "udp"),))] == 3
    assert got[("shieldwall_blocks_active", e)] == 2
    assert got[("shieldwall_live_set_entries", e + (("set", "deny"),))] == 4
    assert got[("shieldwall_canary_active", (("arm", "10% of flows"), ("iface", "eth1")))] == 1
    assert got[("shieldwall_canary_packets_total", (("arm", "canary"), ("iface", "eth1"), ("revision", "7")))] == 10
    assert got[("shieldwall_canary_packets_total", (("arm", "in_force"), ("iface", "eth1"), ("revision", "6")))] == 90
    assert got[("shieldwall_map_entries", e + (("map", "sw_lim_blocks"),))] == 2
    assert got[("shieldwall_map_max_entries", e + (("map", "sw_lim_blocks"),))] == 65536
    r = e + (("op", "reload"),)
    assert got[("shieldwall_update_duration_seconds_bucket", (("iface", "eth1"), ("le", "0.1"), ("op", "reload")))] == 1
    assert got[("shieldwall_update_duration_seconds_bucket", (("iface", "eth1"), ("le", "+Inf"), ("op", "reload")))] == 3
    assert got[("shieldwall_update_duration_seconds_count", r)] == 3
    assert got[("shieldwall_update_duration_seconds_sum", r)] == 0.9
    assert got[("shieldwall_update_failures_total", r)] == 1
    assert got[("shieldwall_update_last_success", r)] == 0
    assert got[("shieldwall_update_last_duration_seconds", r)] == 0.4
    assert got[("shieldwall_events_sent_total", e + (("kind", "drops"),))] == 40
    assert got[("shieldwall_events_refused_total", e + (("kind", "drops"),))] == 7
    assert got[("shieldwall_events_ring_full_total", e + (("kind", "drops"),))] == 1
    assert got[("shieldwall_doctor_info", (("best_mode", "native"), ("iface", "eth1"), ("mode", "tc")))] == 1
    assert got[("shieldwall_doctor_findings", e + (("status", "warn"),))] == 2


def test_the_doctor_is_judged_once_per_attach():
    calls = []
    now = [0.0]
    cache = DoctorCache(examine=lambda iface: calls.append(iface) or {"best_mode": "native", "findings": {}},
                        attach_id=lambda r: r["link"], clock=lambda: now[0])
    report = {"iface": "eth1", "attached": True, "mode": "native", "link": 1}
    for _ in range(3):
        assert cache([report])["eth1"]["best_mode"] == "native"
    assert calls == ["eth1"]
    cache([{**report, "link": 2}])  # down and up: another link
    cache([{**report, "link": 2, "mode": "generic"}])
    assert calls == ["eth1"] * 3
    now[0] = DOCTOR_MAX_AGE + 1
    cache([{**report, "link": 2, "mode": "generic"}])
    assert len(calls) == 4
    assert cache([{**report, "attached": False}]) == {}
