"""The metric families a status report becomes, and the --listen address."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shieldwall.ops.serve import exposition, parse_listen

REPORT = {
    "iface": "eth1", "attached": True, "mode": "tc", "revision": {"revision": 7},
    "counters": [{"action": "drop", "reason": "rule", "packets": 5, "bytes": 300},
                 {"action": "pass", "reason": "default", "packets": 2, "bytes": 120}],
    "rules": [{"id": 0, "name": None, "packets": 2, "bytes": 120, "would_drop": 0},
              {"id": 1, "name": "no-dns", "packets": 5, "bytes": 300, "would_drop": 0},
              {"id": 2, "name": "watch", "packets": 1, "bytes": 60, "would_drop": 1}],
}


def samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_a_report_becomes_families_with_its_exact_counts():
    got = samples(exposition(lambda: [REPORT, {"iface": "eth2", "attached": False, "mode": None,
                                              "problem": "shieldwall is not attached here"}]))
    assert got[("shieldwall_attached", (("iface", "eth1"), ("mode", "tc")))] == 1
    assert got[("shieldwall_attached", (("iface", "eth2"), ("mode", "none")))] == 0
    assert got[("shieldwall_revision", (("iface", "eth1"),))] == 7
    assert got[("shieldwall_packets_total", (("action", "drop"), ("iface", "eth1"), ("reason", "rule")))] == 5
    assert got[("shieldwall_bytes_total", (("action", "pass"), ("iface", "eth1"), ("reason", "default")))] == 120
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
