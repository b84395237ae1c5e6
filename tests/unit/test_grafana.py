"""The Grafana dashboard in docs/ is a dashboard Grafana imports (a Prometheus data
source variable, panels with queries) and every query uses only metrics, and labels
of them, that shieldwall exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from shieldwall.ops.metrics import metric_labels

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "shieldwall.json"
METRIC = re.compile(r"\b(shieldwall_[a-z0-9_]+)\s*(\{[^}]*\})?")
BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(d: dict) -> list[dict]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def _exprs(d: dict) -> list[str]:
    return [t["expr"] for p in _panels(d) for t in p.get("targets", [])]


def test_it_is_a_dashboard_with_a_prometheus_datasource_variable():
    d = _dashboard()
    assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int)
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in _panels(d)]
    assert len(ids) == len(set(ids))
    for p in _panels(d):
        assert {"x", "y", "w", "h"} <= set(p["gridPos"])
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"


def test_every_query_uses_exported_metrics_and_their_labels():
    exported = metric_labels()
    used = set()
    exprs = _exprs(_dashboard())
    assert len(exprs) > 15
    for expr in exprs:
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        names = METRIC.findall(expr)
        assert names, f"a query with no shieldwall metric: {expr}"
        labels_here: set[str] = set()
        for name, selector in names:
            assert name in exported, f"{name} is not exported (in {expr})"
            used.add(name)
            labels_here |= exported[name]
            for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", selector or ""):
                assert label in exported[name], f"{name} has no label {label} (in {expr})"
        for group in BY.findall(expr):
            for label in filter(None, (x.strip() for x in group.split(","))):
                assert label in labels_here, f"no metric of {expr} has a label {label}"
    # What the issue asks the dashboard to show.
    for wanted in ("shieldwall_packets_total", "shieldwall_rule_packets_total", "shieldwall_blocks_active",
                   "shieldwall_map_entries", "shieldwall_update_duration_seconds_bucket",
                   "shieldwall_attached", "shieldwall_doctor_info"):
        assert wanted in used, wanted
    assert any("by (stage, reason)" in e for e in exprs)


def test_the_interface_variable_reads_an_exported_metric():
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    name = METRIC.search(variables["iface"]["definition"]).group(1)
    assert "iface" in metric_labels()[name]
