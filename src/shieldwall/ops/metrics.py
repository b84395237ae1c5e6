"""Prometheus metrics, read from exactly what `status` reads, at the moment of a scrape.

Nothing is cached or sampled: each scrape runs `lifecycle.status` (the pinned maps, or
nftables' counters in nft mode) and turns its report into metric families, so a scrape
and a `status --json` taken with no traffic between them agree to the packet.

    shieldwall_attached{iface, mode}                  1 while shieldwall decides there
    shieldwall_revision{iface}                        the revision in force
    shieldwall_packets_total{iface, action, reason}   every verdict, as status counts it
    shieldwall_bytes_total{iface, action, reason}
    shieldwall_rule_packets_total{iface, rule}        each rule's hits; rule "(default)"
    shieldwall_rule_bytes_total{iface, rule}          is the default action's
    shieldwall_rule_would_drop_total{iface, rule}     monitor rules' would-be drops
    shieldwall_scrape_problem{iface, problem}         1 when status names a problem
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

DEFAULT_RULE = "(default)"

Reports = Callable[[], list[dict]]


def status_reports(iface: str | None) -> Reports:
    """What a scrape reads: `status` for the interface (every interface without one), in
    the calling thread's network namespace (a server's threads start in the namespace
    of the thread that started them)."""
    def read() -> list[dict]:
        from ..engine import lifecycle
        return lifecycle.status(iface)
    return read


class StatusCollector(Collector):
    def __init__(self, reports: Reports) -> None:
        self.reports = reports

    def collect(self) -> Iterator[Metric]:
        return iter(families(self.reports()))


def families(reports: Iterable[dict]) -> list[Metric]:
    attached = GaugeMetricFamily("shieldwall_attached", "1 while shieldwall decides the "
                                 "interface's packets, in this mode", labels=["iface", "mode"])
    revision = GaugeMetricFamily("shieldwall_revision", "The revision in force",
                                 labels=["iface"])
    packets = CounterMetricFamily("shieldwall_packets", "Packets by verdict and reason",
                                  labels=["iface", "action", "reason"])
    octets = CounterMetricFamily("shieldwall_bytes", "Bytes by verdict and reason",
                                 labels=["iface", "action", "reason"])
    rule_packets = CounterMetricFamily("shieldwall_rule_packets", "Packets each rule decided "
                                       "or counted", labels=["iface", "rule"])
    rule_bytes = CounterMetricFamily("shieldwall_rule_bytes", "Bytes each rule decided or "
                                     "counted", labels=["iface", "rule"])
    would_drop = CounterMetricFamily("shieldwall_rule_would_drop", "Packets a monitor rule "
                                     "would have dropped", labels=["iface", "rule"])
    problem = GaugeMetricFamily("shieldwall_scrape_problem", "1 when status names a problem "
                                "with the interface", labels=["iface", "problem"])
    for r in reports:
        iface = r["iface"]
        attached.add_metric([iface, r.get("mode") or "none"], 1 if r.get("attached") else 0)
        number = (r.get("revision") or {}).get("revision")
        if isinstance(number, int):
            revision.add_metric([iface], number)
        for c in r.get("counters", ()):
            packets.add_metric([iface, c["action"], c["reason"]], c["packets"])
            octets.add_metric([iface, c["action"], c["reason"]], c["bytes"])
        for rule in r.get("rules", ()):
            name = rule.get("name") or DEFAULT_RULE
            rule_packets.add_metric([iface, name], rule.get("packets", 0))
            rule_bytes.add_metric([iface, name], rule.get("bytes", 0))
            if rule.get("would_drop"):
                would_drop.add_metric([iface, name], rule["would_drop"])
        if r.get("problem"):
            problem.add_metric([iface, str(r["problem"])], 1)
    return [attached, revision, packets, octets, rule_packets, rule_bytes, would_drop, problem]
