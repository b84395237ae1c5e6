"""Prometheus metrics, read from exactly what `status` reads, at the moment of a scrape.

Nothing is cached or sampled: each scrape runs `lifecycle.status` (the pinned maps, or
nftables' counters in nft mode, and the interface's records) and turns its report into
metric families, so a scrape and a `status --json` taken with no traffic between them
agree to the packet. The one exception is the doctor's verdict: examining the host
takes a third of a second, so it is judged once per attach (and again after
DOCTOR_MAX_AGE seconds, since a host changes under a running attach too) and cached.
docs/operations.md lists the metrics.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.registry import Collector

from .reasons import stage_of

DEFAULT_RULE = "(default)"
DOCTOR_MAX_AGE = 600.0

Reports = Callable[[], list[dict]]
Verdicts = Callable[[list[dict]], dict[str, dict]]


def status_reports(iface: str | None) -> Reports:
    """What a scrape reads: `status` for the interface (every interface without one), in
    the calling thread's network namespace (a server's threads start in the namespace
    of the thread that started them)."""
    def read() -> list[dict]:
        from ..engine import lifecycle
        return lifecycle.status(iface)
    return read


class DoctorCache:
    """The doctor's verdict per interface, judged again only when the interface was
    attached anew (another bpf_link, another mode) or the verdict is DOCTOR_MAX_AGE old."""

    def __init__(self, examine: Callable[[str], dict] | None = None,
                 attach_id: Callable[[dict], object] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.examine = examine or _examine
        self.attach_id = attach_id or _attach_id
        self.clock = clock
        self.cache: dict[str, tuple[object, float, dict]] = {}

    def __call__(self, reports: list[dict]) -> dict[str, dict]:
        found = {}
        for r in reports:
            if not r.get("attached"):
                continue
            iface, key, now = r["iface"], (r.get("mode"), self.attach_id(r)), self.clock()
            held = self.cache.get(iface)
            if held is None or held[0] != key or now - held[1] > DOCTOR_MAX_AGE:
                held = (key, now, self.examine(iface))
                self.cache[iface] = held
            found[iface] = held[2]
        return found


def _examine(iface: str) -> dict:
    from ..doctor import LiveFacts, examine
    try:
        report = examine(iface, LiveFacts(steal_seconds=0))
    except (OSError, ValueError) as exc:
        return {"best_mode": "unknown", "problem": str(exc), "findings": {}}
    counts: dict[str, int] = {}
    for f in report.findings:
        counts[f.status] = counts.get(f.status, 0) + 1
    return {"best_mode": report.best_mode or "none", "summary": report.summary,
            "findings": counts}


def _attach_id(report: dict) -> object:
    """The pinned link's id: the same across reloads, another after down and up."""
    if report.get("mode") == "nft":
        return None
    try:
        import os

        from ..engine.transaction import Layout
        from ..kernel import libbpf
        fd = libbpf.obj_get(Layout.of(report["iface"]).link)
        try:
            return libbpf.link_info(fd).id
        finally:
            os.close(fd)
    except OSError:
        return None


class StatusCollector(Collector):
    def __init__(self, reports: Reports, verdicts: Verdicts | None = None) -> None:
        self.reports = reports
        self.verdicts = verdicts

    def collect(self) -> Iterator[Metric]:
        reports = self.reports()
        verdicts = self.verdicts(reports) if self.verdicts else {}
        return iter(families(reports, verdicts))


def families(reports: Iterable[dict], verdicts: dict[str, dict] | None = None) -> list[Metric]:
    def counter(name: str, doc: str, *labels: str) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, labels=["iface", *labels])

    def gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=["iface", *labels])

    attached = gauge("shieldwall_attached", "1 while shieldwall decides the interface's "
                     "packets, in this mode", "mode")
    revision = gauge("shieldwall_revision", "The revision in force")
    packets = counter("shieldwall_packets", "Packets by verdict, reason and the stage that "
                      "gives the reason", "action", "reason", "stage")
    octets = counter("shieldwall_bytes", "Bytes by verdict, reason and stage",
                     "action", "reason", "stage")
    rule_packets = counter("shieldwall_rule_packets", "Packets each rule decided or counted", "rule")
    rule_bytes = counter("shieldwall_rule_bytes", "Bytes each rule decided or counted", "rule")
    would_drop = counter("shieldwall_rule_would_drop", "Packets a monitor rule would have "
                         "dropped", "rule")
    last_hit = gauge("shieldwall_rule_last_hit_timestamp_seconds", "When a rule last matched "
                     "(unix time, to a tenth of a second); absent for a rule never hit", "rule")
    limit_packets = counter("shieldwall_limit_packets", "Packets a rate limit let through "
                            "(passed) or dropped (limited)", "limit", "outcome")
    limit_blocks = counter("shieldwall_limit_blocks", "Blocks a rate limit set (a source "
                           "went over a limit with `block`)", "limit")
    blocks = gauge("shieldwall_blocks_active", "Source prefixes blocked now")
    live = gauge("shieldwall_live_set_entries", "Live entries in a set (shieldwall set)", "set")
    canary = gauge("shieldwall_canary_active", "1 while a canary runs, with the traffic it "
                   "gets", "arm")
    canary_packets = counter("shieldwall_canary_packets", "Packets each arm of a running "
                             "canary decided since it started", "arm", "revision")
    entries = gauge("shieldwall_map_entries", "Entries in a map that fills with traffic or "
                    "live entries (hash and LRU tables)", "map")
    capacity = gauge("shieldwall_map_max_entries", "The capacity of that map", "map")
    duration = HistogramMetricFamily("shieldwall_update_duration_seconds", "How long each "
                                     "change took (reload, set, up, rollback, canary)",
                                     labels=["iface", "op"])
    failures = counter("shieldwall_update_failures", "Changes that failed", "op")
    last_update = gauge("shieldwall_update_last_timestamp_seconds", "When the last change "
                        "of this kind ended (unix time)", "op")
    last_seconds = gauge("shieldwall_update_last_duration_seconds", "How long the last "
                         "change of this kind took", "op")
    last_ok = gauge("shieldwall_update_last_success", "1 if the last change of this kind "
                    "went in, 0 if it failed", "op")
    ev_sent = counter("shieldwall_events_sent", "Sampled events the data plane sent to the ring",
                      "kind")
    ev_refused = counter("shieldwall_events_refused", "Event candidates a CPU's budget refused "
                         "(counted, not sent)", "kind")
    ev_ring_full = counter("shieldwall_events_ring_full", "Events lost because the ring was "
                           "full (no reader kept up)", "kind")
    doctor = gauge("shieldwall_doctor_info", "The doctor's verdict for the interface: the best "
                   "mode it can run, beside the mode in force (judged once per attach)",
                   "best_mode", "mode")
    findings = gauge("shieldwall_doctor_findings", "The doctor's findings by status "
                     "(judged once per attach)", "status")
    problem = gauge("shieldwall_scrape_problem", "1 when status names a problem with the "
                    "interface", "problem")
    verdicts = verdicts or {}
    for r in reports:
        iface = r["iface"]
        attached.add_metric([iface, r.get("mode") or "none"], 1 if r.get("attached") else 0)
        number = (r.get("revision") or {}).get("revision")
        if isinstance(number, int):
            revision.add_metric([iface], number)
        for c in r.get("counters", ()):
            labels = [iface, c["action"], c["reason"], stage_of(c["reason"])]
            packets.add_metric(labels, c["packets"])
            octets.add_metric(labels, c["bytes"])
        for rule in r.get("rules", ()):
            name = rule.get("name") or DEFAULT_RULE
            rule_packets.add_metric([iface, name], rule.get("packets", 0))
            rule_bytes.add_metric([iface, name], rule.get("bytes", 0))
            if rule.get("would_drop"):
                would_drop.add_metric([iface, name], rule["would_drop"])
            if rule.get("last_hit"):
                last_hit.add_metric([iface, name], rule["last_hit"])
        limit = r.get("stages", {}).get("limit", {})
        for name, s in limit.get("limits", {}).items():
            limit_packets.add_metric([iface, name, "passed"], s["passed"])
            limit_packets.add_metric([iface, name, "limited"], s["limited"])
            limit_blocks.add_metric([iface, name], s["blocks"])
        if "blocks" in limit:
            blocks.add_metric([iface], limit["blocks"])
        for name, n in r.get("live_entries", {}).items():
            live.add_metric([iface, name], n)
        if "canary" in r:
            c = r["canary"]
            canary.add_metric([iface, str(c.get("arm"))], 1)
            for arm, a in c.get("arms", {}).items():
                canary_packets.add_metric([iface, arm.replace(" ", "_"), str(a["revision"])],
                                          a["packets"])
        for name, m in r.get("maps", {}).items():
            entries.add_metric([iface, name], m["entries"])
            capacity.add_metric([iface, name], m["max_entries"])
        for op, u in sorted(r.get("updates", {}).items()):
            bounds = u.get("bounds") or _update_bounds()
            duration.add_metric([iface, op], [*((_le(b), n) for b, n in zip(bounds, u["buckets"])),
                                              ("+Inf", u["count"])], u["sum"])
            failures.add_metric([iface, op], u["failures"])
            last = u.get("last") or {}
            if last:
                last_update.add_metric([iface, op], last["at"])
                last_seconds.add_metric([iface, op], last["seconds"])
                last_ok.add_metric([iface, op], 1 if last.get("ok") else 0)
        events = r.get("events", {})
        for kind in ("drops", "passes"):
            if f"{kind}_sent" in events:
                ev_sent.add_metric([iface, kind], events[f"{kind}_sent"])
                ev_refused.add_metric([iface, kind], events[f"{kind}_refused"])
                ev_ring_full.add_metric([iface, kind], events[f"{kind}_ring_full"])
        v = verdicts.get(iface)
        if v is not None:
            doctor.add_metric([iface, v["best_mode"], r.get("mode") or "none"], 1)
            for status in ("fail", "warn", "ok"):
                findings.add_metric([iface, status], v["findings"].get(status, 0))
        if r.get("problem"):
            problem.add_metric([iface, str(r["problem"])], 1)
    return [attached, revision, packets, octets, rule_packets, rule_bytes, would_drop, last_hit,
            limit_packets, limit_blocks, blocks, live, canary, canary_packets, entries, capacity,
            duration, failures, last_update, last_seconds, last_ok, ev_sent, ev_refused,
            ev_ring_full, doctor, findings, problem]


def _update_bounds() -> tuple[float, ...]:
    from ..engine.updates import BUCKETS
    return BUCKETS


def _le(bound: float) -> str:
    return repr(float(bound))


def metric_labels() -> dict[str, set[str]]:
    """Every sample name an exposition can hold, with its labels (a dashboard or an
    alert may use only these)."""
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",),
                "histogram": ("_bucket", "_sum", "_count", "_created")}
    found = {}
    for family in families([]):
        labels = set(getattr(family, "_labelnames", ()))
        for suffix in suffixes[family.type]:
            found[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return found
