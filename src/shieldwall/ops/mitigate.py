"""Automatic mitigation: what the daemon does with what detect.py sees
(docs/operations.md, "Automatic mitigation"; the policy's `mitigation:` section).

Every WINDOW seconds a window closes. A source that is hot over the last two — its
estimated rate at least `heavy.pps` (or `anomaly.pps` while traffic that reaches the
host is anomalous) and at least `heavy.share` of the traffic sampled — gets an
expiring entry in the policy's block (or limit) set,
through the same path as `shieldwall set add --ttl` (engine.livesets.change). While it
stays at or above the lower `release.pps` its entry is renewed before it runs out, not
added again; once it has stayed below for the rest of the entry's TTL, the entry
expires (in the data plane, or with the release's change of the set where the set
compiled it) and the block is released. In `monitor` mode the same
decisions are made and reported (would-block, would-renew, would-release) and nothing
is changed.

Bounds: at most `max_entries` entries held at once, at most `max_per_minute` new ones
in any 60 seconds; never a prefix of `never`, of the host's own addresses, or of the
sources the policy allows. An entry taken off by hand (`shieldwall set del`) is seen
as reverted: that source is not blocked again for one TTL.

Every action is one line of JSON on the daemon's log and a count in the
`shieldwall_mitigation_*` metrics.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..policy.mitigation import Mitigation
from ..policy.model import PrefixTable
from .detect import MIN_SAMPLES, Detector, Window

# Seconds per detection window: a flood is judged at the close of the first window
# whose samples and counters show it.
WINDOW = 0.5
# A held entry is renewed once less than this share of its TTL is left.
RENEW_AT = 0.5
# Refusals and reverts remembered per prefix (a refusal is said once per TTL).
REMEMBERED = 4096
ACTIONS = ("would-block", "block", "would-renew", "renew", "would-release", "release",
           "refused", "reverted", "failed", "anomaly", "anomaly-end")


@dataclass
class Held:
    """A prefix the mitigation holds in its set (or, in monitor mode, would)."""

    prefix: str
    expires: float
    since: float
    renewals: int = 0


Apply = Callable[[list[tuple[str, str, float | None]]], None]  # (op, prefix, expires)
Present = Callable[[], dict[str, float | None]]                # the set's live entries


class Mitigator:
    """The decisions. `apply` adds and removes entries of the set (enforce mode);
    `present` reads the set's live entries (to notice an entry taken off by hand);
    `own` is the host's own addresses; `log` gets every action as a dict."""

    def __init__(self, iface: str, settings: Mitigation, log: Callable[[dict], None],
                 apply: Apply | None = None, present: Present | None = None,
                 own: Callable[[], Iterable] = tuple, now: float | None = None) -> None:
        self.iface = iface
        self.log = log
        self.apply = apply
        self.present = present
        self.own = own
        self.held: dict[str, Held] = {}
        self.added: deque[float] = deque()
        self.quiet: OrderedDict[str, float] = OrderedDict()   # prefix -> not before
        self.said: OrderedDict[str, float] = OrderedDict()    # refusals already logged
        self.counts = dict.fromkeys(ACTIONS, 0)
        self.anomalies: dict[tuple[str, str], float] = {}
        self.settings = settings
        self.spared = settings.spared()
        self._own: list = []
        self._own_table = PrefixTable(())
        self._verdicts: OrderedDict[str, str | None] = OrderedDict()
        started = time.time() if now is None else now
        self.detector = Detector(settings.prefix4, settings.prefix6, settings.anomaly_factor,
                                 settings.anomaly_min_pps, settings.anomaly_warmup, started)
        if settings.enforce and present is not None:
            self._adopt(started)

    # -- settings --------------------------------------------------------------------

    def update(self, settings: Mitigation) -> None:
        """A reloaded policy's section; what is held stays held unless the set changed
        (entries of the old set then run out on their own)."""
        if (settings.set, settings.mode) != (self.settings.set, self.settings.mode):
            self.held.clear()
            self.detector.held.clear()
        self.settings = settings
        self.spared = settings.spared()
        self._verdicts.clear()
        d = self.detector
        d.prefix4, d.prefix6 = settings.prefix4, settings.prefix6
        d.factor, d.min_pps, d.warmup = (settings.anomaly_factor, settings.anomaly_min_pps,
                                         settings.anomaly_warmup)

    def _adopt(self, now: float) -> None:
        """Expiring entries of the set, left by a daemon before this one, are taken
        over: renewed while their source stays hot, released when they run out."""
        for prefix, expires in self._present().items():
            if expires is not None and expires > now and len(self.held) < self.settings.max_entries:
                self.held[prefix] = Held(prefix, expires, now)
                self.detector.held.add(prefix)

    def _present(self) -> dict[str, float | None]:
        try:
            return self.present() if self.present else {}
        except (OSError, ValueError) as exc:
            self._say("failed", None, problem=f"cannot read the set's live entries: {exc}")
            return {}

    # -- one window ------------------------------------------------------------------

    def feed(self, events: Iterable) -> None:
        self.detector.feed(events)

    def counters(self, now: float, totals: dict[str, int]) -> None:
        self.detector.counters(now, totals)

    def close(self, now: float) -> Window:
        """Ends the detection window and acts on it."""
        window = self.detector.close(now)
        self.step(window, now)
        return window

    def step(self, window: Window, now: float) -> None:
        s = self.settings
        self._anomalies(window, now)
        self._reverted(now)
        # What reaches the host running far above normal makes the bar for a source
        # lower; a rise of what is dropped anyway does not.
        pressing = [a for a in window.anomalies if (a.kind, a.key) != ("traffic", "drop")]
        threshold = min(s.under_anomaly_pps, s.heavy_pps) if pressing else s.heavy_pps
        changes: list[tuple[str, str, float | None]] = []
        released = False
        for prefix, held in list(self.held.items()):
            if held.expires <= now:
                self._release(held, now)
                released = True
            elif window.rate(prefix) >= s.release and held.expires - now < s.ttl * RENEW_AT:
                held.expires = now + s.ttl
                held.renewals += 1
                changes.append(("add", prefix, held.expires))
                self._say("renew", prefix, pps=round(window.rate(prefix)), ttl=s.ttl,
                          renewals=held.renewals)
        hot = sorted((src for src in window.sources.values()
                      if src.prefix not in self.held and src.samples >= MIN_SAMPLES
                      and src.pps >= threshold and src.share >= s.heavy_share),
                     key=lambda src: -src.pps)
        for src in hot:
            why = self._refusal(src.prefix, now)
            if why:
                self._refuse(src, why, now)
                continue
            self.held[src.prefix] = Held(src.prefix, now + s.ttl, now)
            self.detector.held.add(src.prefix)
            self.added.append(now)
            changes.append(("add", src.prefix, now + s.ttl))
            self._say("block", src.prefix, pps=round(src.pps), share=round(src.share, 3),
                      samples=src.samples, ttl=s.ttl,
                      anomalies=[f"{a.kind}={a.key}" for a in pressing] or None)
        # An entry laid over in place runs out in the data plane by itself; one the set
        # had to compile (a prefix, a small ruleset's constants) leaves with the next
        # change of the set, which this is.
        if (changes or released) and s.enforce and self.apply is not None:
            try:
                self.apply(changes)
            except Exception as exc:  # noqa: BLE001 - the daemon stays up; the log says why
                self._say("failed", None, problem=str(exc) or type(exc).__name__,
                          prefixes=[p for _, p, _ in changes])
                for _, prefix, _ in changes:
                    if self.held.get(prefix) and self.held[prefix].since == now:
                        self._forget(prefix)

    def _release(self, held: Held, now: float) -> None:
        self._forget(held.prefix)
        self._say("release", held.prefix, held_seconds=round(now - held.since, 1),
                  renewals=held.renewals)

    def _forget(self, prefix: str) -> None:
        self.held.pop(prefix, None)
        self.detector.held.discard(prefix)

    def _refusal(self, prefix: str, now: float) -> str | None:
        s = self.settings
        spared = self._spared(prefix)
        if spared:
            return spared
        if self.quiet.get(prefix, 0) > now:
            return "reverted"
        if len(self.held) >= s.max_entries:
            return "max_entries"
        while self.added and self.added[0] <= now - 60:
            self.added.popleft()
        if len(self.added) >= s.max_per_minute:
            return "max_per_minute"
        return None

    def _spared(self, prefix: str) -> str | None:
        """Why a prefix must never be blocked ("never": the section's list or the
        policy's allowed sources; "own": the host's addresses), or None. A spared
        address inside a wider prefix spares the prefix."""
        own = list(self.own())
        if own != self._own:
            self._own, self._own_table = own, PrefixTable(_nets(own))
            self._verdicts.clear()
        if prefix not in self._verdicts:
            net = ipaddress.ip_network(prefix)
            self._verdicts[prefix] = ("never" if self.spared.overlaps(net) else
                                      "own" if self._own_table.overlaps(net) else None)
            while len(self._verdicts) > REMEMBERED:
                self._verdicts.popitem(last=False)
        return self._verdicts[prefix]

    def _refuse(self, src, why: str, now: float) -> None:
        if self.said.get(src.prefix, 0) > now:
            return
        self.said[src.prefix] = now + self.settings.ttl
        self.said.move_to_end(src.prefix)
        while len(self.said) > REMEMBERED:
            self.said.popitem(last=False)
        self._say("refused", src.prefix, bound=why, pps=round(src.pps), share=round(src.share, 3))

    def _reverted(self, now: float) -> None:
        """Entries taken off by hand before their time: not added again for a TTL."""
        if not self.held or not self.settings.enforce or self.present is None:
            return
        present = self._present()
        for prefix, held in list(self.held.items()):
            if prefix not in present and held.expires > now + 1.0 and held.since < now:
                self._forget(prefix)
                self.quiet[prefix] = now + self.settings.ttl
                self.quiet.move_to_end(prefix)
                while len(self.quiet) > REMEMBERED:
                    self.quiet.popitem(last=False)
                self._say("reverted", prefix, quiet_seconds=self.settings.ttl)

    def _anomalies(self, window: Window, now: float) -> None:
        seen = {(a.kind, a.key): a for a in window.anomalies}
        for key, a in seen.items():
            if key not in self.anomalies:
                self.anomalies[key] = now
                self._say("anomaly", None, kind=a.kind, key=a.key, pps=round(a.pps),
                          baseline=round(a.baseline, 1))
        for key in [k for k in self.anomalies if k not in seen]:
            since = self.anomalies.pop(key)
            self._say("anomaly-end", None, kind=key[0], key=key[1], seconds=round(now - since, 1))

    # -- reporting -------------------------------------------------------------------

    def _say(self, action: str, prefix: str | None, **fields) -> None:
        """One action: counted, and logged as one JSON line. Monitor mode names what
        enforce would have done."""
        if not self.settings.enforce and action in ("block", "renew", "release"):
            action = f"would-{action}"
        self.counts[action] += 1
        line = {"mitigation": action, "iface": self.iface, "mode": self.settings.mode}
        if prefix is not None:
            line.update(prefix=prefix, set=self.settings.set)
        line.update({k: v for k, v in fields.items() if v is not None})
        line["ts"] = round(time.time(), 3)
        self.log(line)


def _nets(addresses: Iterable) -> Iterator:
    for address in addresses:
        try:
            yield ipaddress.ip_network(address)
        except ValueError:
            continue


# -- in the daemon ---------------------------------------------------------------------


def log_line(line: dict) -> None:
    print(json.dumps(line, sort_keys=False), flush=True)


def host_addresses() -> list[str]:
    """Every address of the network namespace's interfaces (the daemon's: it runs in
    the interface's namespace)."""
    import subprocess
    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True,
                             timeout=5, check=True).stdout
        return [info["local"] for link in json.loads(out) for info in link.get("addr_info", [])
                if "local" in info]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return []


def live_apply(iface: str, set_name: str) -> Apply:
    """Entries changed through the path `shieldwall set add --ttl` takes."""
    from ..engine import livesets
    from ..policy.sets import parse_prefix

    def apply(changes: list[tuple[str, str, float | None]]) -> None:
        out = livesets.change(iface, [livesets.Decision(op, set_name, parse_prefix(prefix), expires)
                                      for op, prefix, expires in changes])
        if out.problems:
            raise ValueError("; ".join(out.problems))
    return apply


def live_present(iface: str, set_name: str) -> Present:
    from ..engine.livesets import Entries
    from ..engine.records import Records

    def present() -> dict[str, float | None]:
        return dict(Entries.load(Records(iface)).sets.get(set_name, {}))
    return present


class MitigationCollector(Collector):
    """The `shieldwall_mitigation_*` metrics, read from the task at each scrape."""

    def __init__(self, task: "MitigationTask") -> None:
        self.task = task

    def collect(self) -> Iterator[Metric]:
        m = self.task.mitigator
        iface = self.task.iface
        actions = CounterMetricFamily("shieldwall_mitigation_actions", "Automatic mitigation's "
                                      "actions: block, renew, release (would-* in monitor mode), "
                                      "refused by a bound, reverted by hand, failed, anomalies",
                                      labels=["iface", "action"])
        held = GaugeMetricFamily("shieldwall_mitigation_entries", "Entries automatic mitigation "
                                 "holds now (would hold, in monitor mode)", labels=["iface", "set", "mode"])
        anomalies = GaugeMetricFamily("shieldwall_mitigation_anomalies", "Destinations and protocols "
                                      "running above their baseline now", labels=["iface", "kind"])
        seen = CounterMetricFamily("shieldwall_mitigation_events", "Sampled events detection "
                                   "has read", labels=["iface"])
        missed = CounterMetricFamily("shieldwall_mitigation_events_missed", "Sampled events "
                                     "the hub dropped because detection lagged", labels=["iface"])
        missed.add_metric([iface], self.task.missed)
        if m is not None:
            for action, n in m.counts.items():
                actions.add_metric([iface, action], n)
            held.add_metric([iface, m.settings.set, m.settings.mode], len(m.held))
            for kind in ("dst", "proto", "traffic"):
                anomalies.add_metric([iface, kind], sum(1 for k in list(m.anomalies) if k[0] == kind))
            seen.add_metric([iface], m.detector.events_seen)
        return iter((actions, held, anomalies, seen, missed))


class MitigationTask:
    """The daemon's mitigation: a thread that reads a subscription of the event hub,
    closes a detection window every WINDOW seconds and acts. `settings` None (no
    `mitigation:` section): it holds no subscription and does nothing. `follow`, asked
    every window, gives a new section after a reload (None: nothing changed); `lock`
    is held around every change of the set (the daemon's: one change at a time)."""

    def __init__(self, iface: str, settings: Mitigation | None, subscribe: Callable,
                 log: Callable[[dict], None] = log_line, enforce_apply: Apply | None = None,
                 present: Present | None = None, own: Callable[[], Iterable] = host_addresses,
                 totals: Callable[[], dict[str, int] | None] | None = None,
                 follow: Callable[[], tuple[Mitigation | None] | None] | None = None,
                 lock=None) -> None:
        self.iface = iface
        self.subscribe = subscribe
        self.log = log
        self.totals = totals if totals is not None else status_totals(iface)
        self.follow = follow
        self.lock = lock
        self._apply, self._present, self.own = enforce_apply, present, _cached(own, 60.0)
        self.mitigator: Mitigator | None = None
        # Events the hub had to drop because this reader lagged (its queue was full).
        self.missed = self._missed_before = 0
        self._problem: str | None = None
        self.update(settings)

    def update(self, settings: Mitigation | None) -> None:
        if settings is None:
            if self.mitigator is not None:
                self.log({"mitigation": "stop", "iface": self.iface, "ts": round(time.time(), 3)})
            self.mitigator = None
        elif self.mitigator is None or self.mitigator.settings.set != settings.set:
            apply = self._apply or live_apply(self.iface, settings.set)
            if self.lock is not None:
                apply = _locked(apply, self.lock)
            present = self._present or live_present(self.iface, settings.set)
            self.mitigator = Mitigator(self.iface, settings, self.log, apply, present, self.own)
            self.log({"mitigation": "start", "iface": self.iface, "mode": settings.mode,
                      "set": settings.set, "held": len(self.mitigator.held),
                      "ts": round(time.time(), 3)})
        else:
            self.mitigator.update(settings)
            self.log({"mitigation": "update", "iface": self.iface, "mode": settings.mode,
                      "set": settings.set, "held": len(self.mitigator.held),
                      "ts": round(time.time(), 3)})

    def run(self, stop) -> None:
        """Until `stop` (a threading.Event) is set."""
        sub = None
        deadline = time.monotonic() + WINDOW
        try:
            while not stop.is_set():
                m = self.mitigator
                if m is not None and sub is None:
                    sub = self.subscribe()
                    self._count(m)  # the first window's rate needs a count before it
                elif m is None and sub is not None:
                    sub.close()
                    sub = None
                    self._missed_before = self.missed
                if sub is not None:
                    events = sub.get(max(0.0, deadline - time.monotonic()))
                    self.missed = self._missed_before + getattr(sub, "missed", 0)
                    if m is not None and events:
                        try:
                            m.feed(events)
                        except Exception as exc:  # noqa: BLE001 - as in _close
                            self._failed(f"reading events: {type(exc).__name__}: {exc}")
                else:
                    stop.wait(max(0.0, deadline - time.monotonic()))
                if time.monotonic() < deadline:
                    continue
                # A late window (a slow change) is not caught up: the next is a whole one.
                deadline = max(deadline + WINDOW, time.monotonic() + WINDOW / 2)
                if m is not None:
                    self._count(m)
                    self._close(m)
                self._follow()
        finally:
            if sub is not None:
                sub.close()

    def report(self) -> dict | None:
        """For the daemon's status: the section in force and what it holds."""
        m = self.mitigator
        if m is None:
            return None
        now = time.time()
        return {"mode": m.settings.mode, "set": m.settings.set, "events_read": m.detector.events_seen,
                "events_missed": self.missed,
                "held": [{"prefix": h.prefix, "ttl_seconds": round(h.expires - now, 1),
                          "since": round(h.since, 3), "renewals": h.renewals}
                         for h in list(m.held.values())][:100],
                "held_count": len(m.held),
                "anomalies": [{"kind": k[0], "key": k[1], "since": round(t, 3)}
                              for k, t in list(m.anomalies.items())],
                "actions": {a: n for a, n in m.counts.items() if n}}

    def _close(self, m: Mitigator) -> None:
        """A window's decisions; whatever goes wrong there is said, and the next window
        comes (a mitigation that died silently would leave floods unanswered)."""
        try:
            m.close(time.time())
        except Exception as exc:  # noqa: BLE001
            self._failed(f"{type(exc).__name__}: {exc}")

    def _failed(self, problem: str) -> None:
        """Said once until the problem changes: a lasting one does not flood the log."""
        if problem != self._problem:
            self._problem = problem
            self.log({"mitigation": "failed", "iface": self.iface, "problem": problem,
                      "ts": round(time.time(), 3)})

    def _follow(self) -> None:
        if self.follow is None:
            return
        try:
            changed = self.follow()
        except Exception as exc:  # noqa: BLE001 - a policy that cannot be read changes nothing
            self.log({"mitigation": "failed", "iface": self.iface,
                      "problem": f"reading the policy's mitigation section: {exc}",
                      "ts": round(time.time(), 3)})
            return
        if changed is not None:
            self.update(changed[0])

    def _count(self, m: Mitigator) -> None:
        try:
            found = self.totals()
        except Exception:  # noqa: BLE001 - counters are a help to detection, not a need
            return
        if found is not None:
            m.counters(time.time(), found)


def status_totals(iface: str) -> Callable[[], dict[str, int] | None]:
    """Packets by action so far, from the per-CPU counters `status` reads."""
    def read() -> dict[str, int] | None:
        from ..engine import lifecycle
        report = lifecycle.status(iface)[0]
        if not report.get("attached"):
            return None
        out: dict[str, int] = {}
        for c in report.get("counters", []):
            if c.get("action") in ("pass", "drop"):
                out[c["action"]] = out.get(c["action"], 0) + int(c.get("packets", 0))
        return out
    return read


def _cached(read: Callable[[], Iterable], seconds: float) -> Callable[[], list]:
    """The host's addresses change rarely; read them again at most every `seconds`."""
    memo: list = [0.0, []]

    def get() -> list:
        if time.monotonic() - memo[0] > seconds:
            memo[0], memo[1] = time.monotonic(), list(read())
        return memo[1]
    return get


def _locked(apply: Apply, lock) -> Apply:
    def locked(changes: list[tuple[str, str, float | None]]) -> None:
        with lock:
            apply(changes)
    return locked


def settings_of(config) -> Mitigation | None:
    """The `mitigation:` section of a policy file (None: it has none)."""
    from ..config import load_config
    return getattr(load_config(config).policy, "mitigation", None)


def mitigation_task(daemon) -> MitigationTask | None:
    """Automatic mitigation in a daemon (ops/daemon.py), in a thread of its own until
    the daemon stops. It reads the daemon's `iface`, `config` (the policy file),
    `hub` (the event hub) and `events` (why it has none, if so), `changes` (the lock
    every change is made under), `stopping`,
    `watch.revision` (to follow reloads), `log`, `on_stop` and, when there is one,
    `registry` (the metrics). None when the daemon has no events (nft mode)."""
    try:
        settings = settings_of(daemon.config)
    except Exception as exc:  # noqa: BLE001 - the daemon runs on; a good reload brings it
        daemon.log(json.dumps({"mitigation": "failed", "iface": daemon.iface,
                               "problem": f"reading the policy's mitigation section: {exc}"}))
        settings = None
    hub = getattr(daemon, "hub", None)
    if getattr(daemon, "events", None):  # why the daemon reads no events
        hub = None
    if hub is None:
        if settings is not None:
            daemon.log(json.dumps({"mitigation": "off", "iface": daemon.iface,
                                   "problem": "no sampled events here (nft mode has none): "
                                              "automatic mitigation does nothing"}))
        return None
    watch = getattr(daemon, "watch", None)
    seen = [getattr(watch, "revision", None)]

    def follow() -> tuple[Mitigation | None] | None:
        revision = getattr(watch, "revision", None)
        if revision == seen[0] or getattr(watch, "refused", None):
            return None
        seen[0] = revision
        return (settings_of(daemon.config),)

    task = MitigationTask(daemon.iface, settings, hub.subscribe,
                          log=lambda line: daemon.log(json.dumps(line)),
                          follow=follow if watch is not None else None,
                          lock=getattr(daemon, "changes", None))
    stop = getattr(daemon, "stopping", None) or threading.Event()
    thread = threading.Thread(target=task.run, args=(stop,), name="mitigation", daemon=True)
    thread.start()
    on_stop = getattr(daemon, "on_stop", None)
    if on_stop is not None:
        on_stop(lambda: (stop.set(), thread.join(timeout=2 * WINDOW + 5)))
    registry = getattr(daemon, "registry", None)
    if registry is not None:
        registry.register(MitigationCollector(task))
    return task

